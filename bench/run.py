"""The benchmark suite of issue 7: one command, every scenario, one table of medians and ratios.

    python bench/run.py [--datasets real,linux] [--runs 2] [--tools cairn,restic,borg]
                        [--images] [--image-size-mib 2048] [--ceiling] [--json out.json]
                        [--baseline OLD/src]

File backups, per data set (bench/datasets.py), each run of each tool on a fresh copy with a
fresh repository, the tools interleaved scenario by scenario within a run (every tool's first
backup, then every tool's unchanged re-backup, ...) so that machine noise hits all alike: first backup,
unchanged re-backup, re-backup after 1% of files changed, full restore, single-file restore
(the largest file), check reading all data, forget the oldest of the three snapshots + prune.
Commands and timing are bench/files.py's (GNU time: wall, CPU = user+sys, peak RSS).

Images (--images, needs root): bench/image_bench.py's pair of GPT disks (one ext4 partition of
--image-size-mib, half full; then 1% of it changed), cairn (its default chunk size,
in-process) beside `partclone | zstd` (with the table and first MiB, as Clonezilla saves a
disk) and `dd | zstd`: first image, second image, full restore, and cairn's delta restore.

The ceiling goal (--ceiling): four 1 GiB files of random bytes and a repository, both in
/dev/shm (the page cache and tmpfs: no disk in the measure); each run times a first backup of
the four files by cairn between two measurements of the pipeline ceiling (bench/ceiling.py's
`libraries`, one process per core over 512 MiB each in memory), and reports its MB/s as a share
of their mean (issue 7: at least 60%), with its CPU/wall: on a shared machine whose speed
drifts, the ceiling on both sides of the backup. With --baseline, the other cairn's backup too,
the two in turn first, each between two ceilings.

The table shows, per scenario and metric, the median of each tool and cairn/peer ratios (below
1: cairn is better). On a shared machine absolute seconds mean little; ratios are the result.
The load average at start and end is recorded with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from datasets import DATASETS, prepare  # noqa: E402
from files import PASSWORD, change_one_percent, du, restore_target, timed, tool_commands  # noqa: E402

Result = dict[str, float]
FILE_SCENARIOS = ("first", "unchanged", "changed_1pct", "restore", "restore_one", "check_read", "forget_prune")
METRICS = ("wall", "cpu", "rss_mib", "repo_bytes", "restored_bytes", "files_per_s", "mb_per_s")


def extra_commands(tool: str, repo: Path, cache: Path, one_file: Path, target: Path) -> dict[str, list[str]]:
    """The scenarios bench/files.py does not run: single-file restore, check, forget+prune."""
    if tool == "cairn":
        base = [sys.executable, "-m", "cairn", "-q", "-r", str(repo)]
        return {
            "restore_one": [*base, "restore", f"latest:{one_file}", "--target", str(target)],
            "check_read": [*base, "check", "--read-data"],
            "forget": [*base, "forget", "--keep-last", "2"],
            "prune": [*base, "prune"],
        }
    if tool == "restic":
        base = ["restic", "-r", str(repo), "--cache-dir", str(cache), "-q"]
        return {
            "restore_one": [*base, "restore", "latest", "--target", str(target), "--include", str(one_file)],
            "check_read": [*base, "check", "--read-data"],
            "forget": [*base, "forget", "--keep-last", "2"],
            "prune": [*base, "prune"],
        }
    if tool == "borg":
        last = f'"{repo}::$(borg list --short --last 1 "{repo}")"'
        return {
            "restore_one": ["sh", "-c", f'cd "{target}" && borg extract {last} "{str(one_file).lstrip("/")}"'],
            "check_read": ["borg", "check", "--verify-data", str(repo)],
            "forget": ["borg", "prune", "--keep-last", "2", str(repo)],
            "prune": ["borg", "compact", str(repo)],
        }
    raise ValueError(tool)


def du_empty(folder: Path) -> int:
    """What `du -sb` counts for the folders alone (so that restored_bytes is file bytes)."""
    return sum(4096 for p in [folder, *folder.rglob("*")] if p.is_dir())


def largest_file(data: Path) -> Path:
    files = (p for p in data.rglob("*") if p.is_file() and not p.is_symlink())
    return max(files, key=lambda p: (p.stat().st_size, str(p)))


BASELINE = "cairn-base"  # the cairn of another source tree (--baseline): a before/after column


def run_files(tools: list[str], source: Path, workdir: Path, count: int, size: int,
              baseline: Path | None = None) -> dict[str, dict[str, Result]]:
    """One run of every tool, each on its own fresh copy, repository and restore disk,
    interleaved scenario by scenario (every tool's first backup, then every tool's unchanged
    re-backup, ...): the two figures of a ratio are taken seconds apart, not minutes. On this
    shared machine one tool's first backup of `linux` took 10.1 s in one run and 12.9 s an hour
    later, and with a tool's whole series run before the next one's, cairn/restic for the same
    code moved from 0.63 to 0.99."""
    with contextlib.ExitStack() as stack:
        steps = {tool: stack.enter_context(_workspace(tool, source, workdir / f"work-{tool}", count, size, baseline))
                 for tool in tools}
        out: dict[str, dict[str, Result]] = {tool: {} for tool in tools}
        for _ in FILE_SCENARIOS:
            for tool in tools:
                scenario, result = next(steps[tool])
                out[tool][scenario] = result
    return out


@contextlib.contextmanager
def _workspace(tool: str, source: Path, work: Path, count: int, size: int,
               baseline: Path | None) -> Iterator[Generator[tuple[str, Result], None, None]]:
    """A tool's fresh copy of the data, restore disk and scenarios, stepped by the caller."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, repo, cache = work / "data", work / "repo", work / "cache"
    subprocess.run(["cp", "-a", str(source), str(data)], check=True)
    subprocess.run(["sync"], check=True)  # else the copy's writeback lands in the first backup's time
    try:
        with restore_target(work, size, count) as fresh:
            steps = _file_scenarios(tool, fresh, data, repo, cache, work, count, size, baseline)
            try:
                yield steps
            finally:
                steps.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _env(tool: str, cache: Path, work: Path, baseline: Path | None) -> dict[str, str]:
    """A tool's environment: passwords, its cache and HOME, and which cairn runs (`baseline`'s
    for BASELINE)."""
    return dict(os.environ, CAIRN_PASSWORD=PASSWORD, RESTIC_PASSWORD=PASSWORD, BORG_PASSPHRASE=PASSWORD,
                BORG_BASE_DIR=str(cache), XDG_CACHE_HOME=str(cache), HOME=str(work),
                PYTHONPATH=str(baseline if tool == BASELINE and baseline else HERE.parent / "src"))


def _file_scenarios(
    tool: str, fresh: Path, data: Path, repo: Path, cache: Path, work: Path, count: int, size: int, baseline: Path | None
) -> Generator[tuple[str, Result], None, None]:
    """Each scenario of FILE_SCENARIOS in turn, as (name, figures), on this tool's workspace."""
    targets = {name: fresh / name for name in ("restore", "restore_one")}
    for t in targets.values():
        t.mkdir()
    env = _env(tool, cache, work, baseline)
    kind = "cairn" if tool == BASELINE else tool
    cmds = tool_commands(kind, repo, cache, data, targets["restore"])
    extra = extra_commands(kind, repo, cache, largest_file(data), targets["restore_one"])
    subprocess.run(cmds["init"], env=env, check=True, capture_output=True)
    subprocess.run(["sh", "-c", f'tar cf - "{data}" | cat > /dev/null'], check=True, stderr=subprocess.DEVNULL)
    for name in ("first", "unchanged", "changed_1pct"):
        if name == "changed_1pct":
            change_one_percent(data)
        backup = timed(cmds["backup"], env)
        backup["repo_bytes"] = du(repo)
        backup["files_per_s"] = count / backup["wall"]
        backup["mb_per_s"] = size / 1e6 / backup["wall"]
        yield name, backup
    subprocess.run(["sync"], check=True)
    restore = timed(cmds["restore"], env)
    restore["mb_per_s"] = du(targets["restore"]) / 1e6 / restore["wall"]
    yield "restore", restore
    one = timed(extra["restore_one"], env)
    one["restored_bytes"] = du(targets["restore_one"]) - du_empty(targets["restore_one"])
    yield "restore_one", one
    yield "check_read", timed(extra["check_read"], env)
    forget, prune = timed(extra["forget"], env), timed(extra["prune"], env)
    yield "forget_prune", {
        "wall": forget["wall"] + prune["wall"], "cpu": forget["cpu"] + prune["cpu"],
        "rss_mib": max(forget["rss_mib"], prune["rss_mib"]), "repo_bytes": du(repo),
    }


def run_images(size_mib: int, runs: int) -> dict[str, list[Result]]:
    import image_bench
    from cairn.ops.image import DEFAULT_CHUNK

    results: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="cairn-run-image-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        first, second = image_bench.make_partitions(work, size_mib << 20, (size_mib // 2) << 20, max(4, size_mib // 100) << 20)
        first, second = image_bench.make_disks(work, (first, second))
        for p in (first, second):
            subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)
        for _ in range(runs):
            for name, bench in (("partclone|zstd", image_bench.bench_partclone_disk), ("dd|zstd", image_bench.bench_dd)):
                print(f"image: {name}", file=sys.stderr)
                results.setdefault(name, []).append(bench(work, first, second))
            print("image: cairn", file=sys.stderr)
            results.setdefault("cairn", []).append(image_bench.bench_cairn(work, first, second, DEFAULT_CHUNK, restore_runs=1))
    return results


CEILING_FILES, CEILING_MIB = 4, 1024


def run_ceiling(runs: int, baseline: Path | None = None) -> dict[str, list[Result]]:
    """The share of the measured pipeline ceiling a first backup of big random files reaches;
    with `baseline`, that cairn's too, right after (or, every other run, before) this one's."""
    import ceiling

    procs = os.cpu_count() or 2
    tools = ["cairn"] + ([BASELINE] if baseline else [])
    results: dict[str, list[Result]] = {tool: [] for tool in tools}
    with tempfile.TemporaryDirectory(prefix="cairn-run-ceiling-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        for n in range(CEILING_FILES):
            with open(data / f"random{n}", "wb") as out:
                for _ in range(CEILING_MIB // 16):
                    out.write(os.urandom(16 << 20))
        size = CEILING_FILES * (CEILING_MIB << 20)
        sample = (data / "random0").read_bytes()[:512 << 20]
        repo = work / "repo"

        def measured_ceiling() -> float:
            return procs * len(sample) / ceiling.timed(ceiling.libraries, sample, procs) / 1e6

        for run in range(runs):
            print(f"ceiling run {run + 1}/{runs}", file=sys.stderr)
            before = measured_ceiling()
            for tool in tools[::-1 if run % 2 else 1]:
                shutil.rmtree(repo, ignore_errors=True)
                shutil.rmtree(work / "cache", ignore_errors=True)
                env = _env(tool, work / "cache", work, baseline)
                cmds = tool_commands("cairn", repo, work / "cache", data, work)
                subprocess.run(cmds["init"], env=env, check=True, capture_output=True)
                backup = timed(cmds["backup"], env)
                after = measured_ceiling()
                backup["mb_per_s"] = size / 1e6 / backup["wall"]
                backup["ceiling_before"], backup["ceiling_after"] = before, after
                backup["ceiling_mb_per_s"] = (before + after) / 2
                backup["percent"] = 100 * backup["mb_per_s"] / backup["ceiling_mb_per_s"]
                backup["cpu_per_wall"] = backup["cpu"] / backup["wall"]
                results[tool].append(backup)
                before = after
    return results


def medians(runs: list[dict]) -> dict:
    if runs and isinstance(runs[0].get(next(iter(runs[0]))), dict):
        return {s: medians([r[s] for r in runs]) for s in runs[0]}
    return {k: statistics.median(r[k] for r in runs if k in r) for k in runs[0]}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def table(title: str, med: dict[str, dict], scenarios: list[str], metrics: tuple[str, ...]) -> list[dict]:
    """Print one table; return its rows (for the JSON)."""
    tools = sorted(med, key=lambda t: t != "cairn")  # cairn first
    peers = [t for t in tools if t != "cairn"]
    w = max(14, *(len(t) for t in tools)) + 2
    print(f"\n== {title}")
    print(f"{'scenario':<16}{'metric':<13}" + "".join(f"{t:>{w}}" for t in tools) + "".join(f"{'cairn/' + p:>{w + 6}}" for p in peers))
    rows = []
    for s in scenarios:
        for m in metrics:
            values = {t: med[t].get(s, {}).get(m) for t in tools}
            if all(v is None for v in values.values()):
                continue
            row = {"scenario": s, "metric": m, **values, **{f"cairn/{p}": ratio(values.get("cairn"), values[p]) for p in peers}}
            rows.append(row)
            cells = "".join(f"{'-' if values[t] is None else f'{values[t]:.4g}':>{w}}" for t in tools)
            cells += "".join(f"{'-' if row[f'cairn/{p}'] is None else row[f'cairn/{p}']:>{w + 6}}" for p in peers)
            print(f"{s:<16}{m:<13}" + cells)
    return rows


def image_table(results: dict[str, list[Result]]) -> list[dict]:
    med: dict[str, dict[str, dict[str, float]]] = {t: {} for t in results}
    for tool, runs in results.items():
        m = medians(runs)
        for key, value in m.items():
            scenario, _, metric = key.partition("_")
            med[tool].setdefault(scenario, {})[metric or "value"] = value
    scenarios = ["image1", "image2", "restore", "delta"]
    metrics = ("s", "cpu", "bytes", "full_s", "delta_s", "sparse_s", "x", "written")
    return table("images", med, scenarios, metrics)


def markdown(rows: list[dict]) -> str:
    """A table's rows (from the JSON) as a Markdown table, for docs/PERFORMANCE.md."""
    cols = [k for k in rows[0] if k not in ("scenario", "metric")]
    lines = ["| scenario | metric | " + " | ".join(c.replace("|", "\\|") for c in cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for row in rows:
        cells = ["-" if row[c] is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append(f"| {row['scenario']} | {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="real")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tools", default="cairn,restic,borg")
    parser.add_argument("--images", action="store_true")
    parser.add_argument("--image-size-mib", type=int, default=2048)
    parser.add_argument("--ceiling", action="store_true", help="also the pipeline-ceiling goal (8 GiB of /dev/shm)")
    parser.add_argument("--workdir", default="/var/tmp/cairn-bench")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help=f"also run, as tool {BASELINE!r}, the cairn whose package is under SRC (e.g. "
                             "`git archive <commit> src | tar x -C DIR`, then DIR/src), alternating with the "
                             "others: its ratio column is a change's after/before")
    parser.add_argument("--markdown", type=Path, metavar="JSON", help="print the tables of an earlier run's JSON as Markdown")
    args = parser.parse_args()
    if args.markdown:
        earlier = json.loads(args.markdown.read_text())
        for title, rows in earlier["tables"].items():
            print(f"\n{title} (load average {earlier['load_start']} -> {earlier['load_end']}, {earlier['date']})\n")
            print(markdown(rows))
        return
    tools = [t for t in args.tools.split(",") if t == "cairn" or shutil.which(t)]
    if args.baseline:
        tools.append(BASELINE)
    # As `pip install` leaves it: each cairn run would otherwise compile its modules again where
    # PYTHONDONTWRITEBYTECODE is set (as on these machines), which the peers' binaries never pay.
    for src in [HERE.parent / "src"] + ([args.baseline] if args.baseline else []):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)
    report: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "load_start": loadavg(),
                    "cpus": os.cpu_count(), "tools": tools, "files": {}, "tables": {}}
    for name in filter(None, args.datasets.split(",")):
        if name not in DATASETS:
            raise SystemExit(f"unknown data set {name}")
        source = prepare(name, Path(args.workdir) / "datasets")
        count = sum(1 for p in source.rglob("*") if p.is_file() and not p.is_symlink())
        size = du(source)
        raw: dict[str, list] = {t: [] for t in tools}
        for run in range(args.runs):
            order = tools[run % len(tools):] + tools[:run % len(tools)]  # each run starts with another
            print(f"{name} run {run + 1}/{args.runs}: {', '.join(order)}, scenario by scenario", file=sys.stderr)
            for tool, result in run_files(order, source, Path(args.workdir), count, size, args.baseline).items():
                raw[tool].append(result)
        med = {t: medians(r) for t, r in raw.items()}
        report["files"][name] = {"files": count, "bytes": size, "runs": raw, "medians": med}
        report["tables"][name] = table(f"{name}: {count} files, {size / 1e6:.0f} MB", med, list(FILE_SCENARIOS), METRICS)
    if args.images:
        images = run_images(args.image_size_mib, args.runs)
        report["images"] = images
        report["tables"]["images"] = image_table(images)
    if args.ceiling:
        runs = run_ceiling(args.runs, args.baseline)
        report["ceiling"] = runs
        report["tables"]["ceiling"] = table(
            f"ceiling: first backup of {CEILING_FILES} x {CEILING_MIB} MiB random, repository in /dev/shm",
            {tool: {"first": medians(r)} for tool, r in runs.items()}, ["first"],
            ("wall", "cpu", "cpu_per_wall", "rss_mib", "mb_per_s", "ceiling_mb_per_s", "percent"))
        for tool, r in runs.items():
            print(f"{tool}, per run, % of the ceiling: " + ", ".join(f"{one['percent']:.0f}" for one in r))
    report["load_end"] = loadavg()
    print(f"\nload average: start {report['load_start']}, end {report['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
