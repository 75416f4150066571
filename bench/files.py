"""File-backup benchmark: cairn beside restic and borg on the same data, in one run.

    python bench/files.py --dataset real --runs 2 [--json results.json]

Each run of each tool starts from a fresh copy of the data set and a fresh repository and cache,
then times: first backup, unchanged re-backup, re-backup after 1% of files changed (10 bytes
appended to every 100th file in sorted order, as in ../shared/research/peer-baselines.md), and a
full restore of the latest snapshot. Tools alternate within a run, so machine noise hits all of
them alike. Figures: wall, CPU (user+sys), peak RSS (GNU time), repository size. The table shows
medians and the cairn/peer ratios; absolute seconds mean little on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import DATASETS, prepare  # noqa: E402

PASSWORD = "bench-password"
SCENARIOS = ("first", "unchanged", "changed_1pct", "restore")
CAIRN = [sys.executable, "-m", "cairn"]


def tool_commands(tool: str, repo: Path, cache: Path, data: Path, target: Path) -> dict[str, list[str]]:
    if tool == "cairn":
        return {
            "init": [*CAIRN, "-r", str(repo), "init"],
            "backup": [*CAIRN, "-r", str(repo), "backup", str(data)],
            "restore": [*CAIRN, "-r", str(repo), "restore", "latest", "--target", str(target)],
        }
    if tool == "restic":
        base = ["restic", "-r", str(repo), "--cache-dir", str(cache), "-q"]
        return {
            "init": [*base, "init"],
            "backup": [*base, "backup", str(data)],
            "restore": [*base, "restore", "latest", "--target", str(target)],
        }
    if tool == "borg":
        return {
            "init": ["borg", "init", "-e", "repokey-blake2", str(repo)],
            "backup": ["borg", "create", "--compression", "zstd,3", f"{repo}::{{now:%Y%m%d%H%M%S%f}}", str(data)],
            "restore": ["sh", "-c", f'cd "{target}" && borg extract "{repo}::$(borg list --short --last 1 "{repo}")"'],
        }
    raise ValueError(tool)


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S %M", *cmd], env=env, capture_output=True, text=True
    )
    # 3 is cairn's "snapshot saved, some files skipped": still a timed backup, but say so.
    if out.returncode == 3:
        print(f"warning: some files skipped: {' '.join(cmd)}", file=sys.stderr)
    elif out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    wall, user, sys_, rss = out.stderr.strip().splitlines()[-1].split()
    return {"wall": float(wall), "cpu": float(user) + float(sys_), "rss_mib": int(rss) / 1024}


@contextlib.contextmanager
def restore_target(work: Path, size: int, files: int = 0) -> Iterator[Path]:
    """A folder to restore into: on a new ext4 of its own when we may make one (root, mkfs.ext4).

    Restoring into the filesystem that just lost the previous run's tree measured the kernel more
    than the tools: ext4 avoids reusing inodes freed in the last minutes (`recently_deleted`,
    about 20% of all samples in `perf record -a`), so whichever tool followed a large deletion
    paid for it (cairn's restore of `real` took 14 s in one run and 31 s in the next). A new
    filesystem per restore is the "new disk after a crash" case, the same for every tool.
    """
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        (work / "restore-here").mkdir()
        yield work / "restore-here"
        return
    image, mount = work / "restore.ext4", work / "restore-fs"
    with open(image, "wb") as f:
        f.truncate(2 * size + (1 << 30))
    # inodes for two restores of every file (the full one and the single-file one keeps its
    # folders), else 100,000 small files fill the default one inode per 16 KiB
    inodes = ["-N", str(3 * files + 65536)] if files else []
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", *inodes, str(image)],
                   check=True)  # no lazy init: its kernel thread would write beside the restore
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        image.unlink(missing_ok=True)


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def change_one_percent(data: Path) -> int:
    files = sorted(p for p in data.rglob("*") if p.is_file() and not p.is_symlink())
    for p in files[::100]:
        with open(p, "ab") as f:
            f.write(b"0123456789")
    return len(files[::100])


def run_tool(tool: str, source: Path, work: Path) -> dict[str, dict[str, float]]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, repo, cache = work / "data", work / "repo", work / "cache"
    subprocess.run(["cp", "-a", str(source), str(data)], check=True)
    with restore_target(work, du(data), sum(1 for _ in data.rglob("*"))) as fresh:
        results = _scenarios(tool, data, repo, cache, work, fresh / "restore")
    shutil.rmtree(work, ignore_errors=True)
    return results


def _scenarios(tool: str, data: Path, repo: Path, cache: Path, work: Path, target: Path) -> dict[str, dict[str, float]]:
    target.mkdir()
    env = dict(os.environ, CAIRN_PASSWORD=PASSWORD, RESTIC_PASSWORD=PASSWORD, BORG_PASSPHRASE=PASSWORD,
               BORG_BASE_DIR=str(cache), XDG_CACHE_HOME=str(cache), HOME=str(work))
    cmds = tool_commands(tool, repo, cache, data, target)
    subprocess.run(cmds["init"], env=env, check=True, capture_output=True)
    subprocess.run(["sh", "-c", f'tar cf - "{data}" | cat > /dev/null'], check=True, stderr=subprocess.DEVNULL)
    results: dict[str, dict[str, float]] = {}
    results["first"] = timed(cmds["backup"], env)
    results["first"]["repo_bytes"] = du(repo)
    results["unchanged"] = timed(cmds["backup"], env)
    results["unchanged"]["repo_bytes"] = du(repo)
    change_one_percent(data)
    results["changed_1pct"] = timed(cmds["backup"], env)
    results["changed_1pct"]["repo_bytes"] = du(repo)
    results["restore"] = timed(cmds["restore"], env)
    results["restore"]["restored_bytes"] = du(target)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="real", choices=sorted(DATASETS))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tools", default="cairn,restic,borg")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cairn-bench"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    tools = [t for t in args.tools.split(",") if t == "cairn" or shutil.which(t)]
    source = prepare(args.dataset, Path(args.workdir) / "datasets")
    raw: dict[str, list[dict[str, dict[str, float]]]] = {t: [] for t in tools}
    for run in range(args.runs):
        for tool in tools:
            print(f"run {run + 1}/{args.runs}: {tool}", file=sys.stderr)
            raw[tool].append(run_tool(tool, source, Path(args.workdir) / "work"))
    medians = {
        t: {s: {k: statistics.median(r[s][k] for r in runs) for k in runs[0][s]} for s in SCENARIOS}
        for t, runs in raw.items()
    }
    print_table(medians, tools)
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": args.dataset, "runs": raw, "medians": medians}, indent=1))


def print_table(medians: dict, tools: list[str]) -> None:
    peers = [t for t in tools if t != "cairn"]
    header = f"{'scenario':<14}{'metric':<11}" + "".join(f"{t:>12}" for t in tools)
    header += "".join(f"{'cairn/' + p:>14}" for p in peers if "cairn" in tools)
    print(header)
    for s in SCENARIOS:
        for metric in ("wall", "cpu", "rss_mib", "repo_bytes"):
            if metric not in medians[tools[0]][s]:
                continue
            row = f"{s:<14}{metric:<11}" + "".join(f"{medians[t][s][metric]:>12.4g}" for t in tools)
            if "cairn" in tools:
                for p in peers:
                    peer = medians[p][s][metric]
                    row += f"{medians['cairn'][s][metric] / peer:>14.2f}" if peer else f"{'-':>14}"
            print(row)


if __name__ == "__main__":
    main()
