"""Benchmark: forget one snapshot out of 50, then prune, with cairn and with restic on the same
history. Prints wall time, bytes written and deleted in the repository, and peak memory of the
prune, for both, and the ratios (cairn / restic). The goal (issue 5): no slower than restic,
rewriting no more.

    python bench/prune.py --size-gib 3 --snapshots 50 --change-mib 40 --work /var/tmp/prune-bench

History: a base of `--size-gib` of incompressible files (16 MiB each) in a tree of folders;
each later snapshot rewrites `--change-mib` of it (whole files replaced) and adds a 16 MiB file,
and every snapshot holds `--scratch-mib` of data no other one has (a scratch file replaced each
time). The middle snapshot is forgotten: its scratch data is about 1 % of the repository, below
both tools' default --max-unused of 5 %, so neither should rewrite data, only reclaim it.

Not part of the test suite (it takes minutes and a few GiB of disk).

Measured on the 2-core project machine (restic 0.14.0), ``--size-gib 2 --snapshots 50
--change-mib 32 --scratch-mib 48``, repositories of 7.1 GB each: forget + prune took 1.58 s
with cairn and 1.60 s with restic (ratio 0.99); cairn wrote 2.3 KB (one rewritten index
object) where restic wrote 1.4 MB (its whole index and a tree pack), ratio 0.002; both deleted
50 MB. Peak memory 116 MiB against restic's 77 MiB (ratio 1.5, most of it the interpreter and
its libraries at this index size). restic held an exclusive lock throughout; cairn none.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FILE = 16 << 20
PASSWORD = "bench"


@dataclass
class Measure:
    seconds: float
    written: int
    deleted: int
    peak_rss_kib: int


def files_in(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds and peak RSS (KiB, from /usr/bin/time) of one command."""
    start = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr}")
    rss = int(done.stderr.strip().splitlines()[-1])
    return seconds, rss, done.stdout


def measured(repo: Path, steps: list[list[str]], env: dict[str, str]) -> Measure:
    before = files_in(repo)
    seconds, peak = 0.0, 0
    for argv in steps:
        s, rss, _ = run(argv, env)
        seconds += s
        peak = max(peak, rss)
    after = files_in(repo)
    written = sum(size for name, size in after.items() if before.get(name) != size and not name.startswith("locks"))
    deleted = sum(size for name, size in before.items() if name not in after and not name.startswith("locks"))
    return Measure(seconds, written, deleted, peak)


def make_history(args: argparse.Namespace, work: Path, cairn: list[str], env: dict[str, str]) -> tuple[list[str], list[str]]:
    src = work / "src"
    rng = random.Random(args.seed)
    count = max(1, int(args.size_gib * (1 << 30)) // FILE)
    for i in range(count):
        path = src / f"d{i % 16:02d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(FILE))
    cairn_ids, restic_ids = [], []
    for n in range(args.snapshots):
        if n:
            changed = max(1, (args.change_mib << 20) // FILE)
            files = sorted(src.rglob("d*/*.bin"))
            for path in rng.sample(files, min(changed, len(files))):
                path.write_bytes(os.urandom(FILE))
            (src / "new" / f"n{n:03d}.bin").parent.mkdir(exist_ok=True)
            (src / "new" / f"n{n:03d}.bin").write_bytes(os.urandom(FILE))
        # Scratch data only this snapshot holds (the next one replaces it): what forgetting
        # one snapshot can give back.
        (src / "scratch").mkdir(exist_ok=True)
        (src / "scratch" / "s.bin").write_bytes(os.urandom(args.scratch_mib << 20))
        _, _, out = run([*cairn, "-r", str(work / "cairn"), "--json", "backup", str(src)], env)
        cairn_ids.append(json.loads(out.strip().splitlines()[-1])["snapshot_id"])
        _, _, out = run(["restic", "-r", str(work / "restic"), "backup", "--json", "-q", str(src)], env)
        restic_ids.append(json.loads(out.strip().splitlines()[-1])["snapshot_id"])
        print(f"snapshot {n + 1}/{args.snapshots}", file=sys.stderr)
    return cairn_ids, restic_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=3.0)
    parser.add_argument("--snapshots", type=int, default=50)
    parser.add_argument("--change-mib", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/cairn-prune-bench"))
    parser.add_argument("--scratch-mib", type=int, default=48,
                        help="Data each snapshot alone holds (replaced by the next one).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    args = parser.parse_args()
    if shutil.which("restic") is None:
        sys.exit("restic is not installed (apt-get install restic)")
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "CAIRN_PASSWORD": PASSWORD, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    cairn = [sys.executable, "-m", "cairn"]
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "src")
    run([*cairn, "-r", str(work / "cairn"), "init"], env)
    run(["restic", "-r", str(work / "restic"), "init"], env)
    try:
        cairn_ids, restic_ids = make_history(args, work, cairn, env)
        victim = len(cairn_ids) // 2
        c = measured(work / "cairn", [
            [*cairn, "-r", str(work / "cairn"), "forget", cairn_ids[victim]],
            [*cairn, "-r", str(work / "cairn"), "prune"],
        ], env)
        r = measured(work / "restic", [
            ["restic", "-r", str(work / "restic"), "forget", restic_ids[victim]],
            ["restic", "-r", str(work / "restic"), "prune"],
        ], env)
        size_c = sum(files_in(work / "cairn").values())
        size_r = sum(files_in(work / "restic").values())
        report = {
            "repository_bytes": {"cairn": size_c, "restic": size_r},
            "cairn": c.__dict__, "restic": r.__dict__,
            "ratio_time": round(c.seconds / r.seconds, 3),
            "ratio_written": round(c.written / r.written, 3) if r.written else None,
            "ratio_peak_rss": round(c.peak_rss_kib / r.peak_rss_kib, 3),
        }
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
