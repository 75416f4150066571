"""How many saver threads a backup should run: the CPU count, or the backend's connection count.

    python bench/savers.py [--mib 192] [--runs 3] [--rate 8e6]

Savers seal chunks and upload the packs they fill, so their number caps the uploads in flight.
This times a first backup with ``SAVERS`` savers (the CPU rule) against as many savers as the
backend has connections (the connection rule), on three targets: a local folder (4
connections), SeaweedFS S3 on loopback (8), and the same behind a proxy that caps each TCP
connection at ``--rate`` bytes/s, as a long-distance link caps each flow. cairn uses the
connection rule for remote backends only (`cairn.files.pipeline.saver_count`). Runs alternate,
so machine noise hits both rules alike; the table shows medians.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from servers import ACCESS_KEY, SECRET_KEY, SeaweedFS, s3_client  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

PASSWORD = "bench-password"
TARGETS = ("local", "s3", "s3-slow")
# Runs cairn with the saver rule chosen by CAIRN_BENCH_SAVERS ("cpu" or "connections").
RUNNER = """
import os, sys
import cairn.files.pipeline as p
if os.environ["CAIRN_BENCH_SAVERS"] == "cpu":
    p.saver_count = lambda connections, remote: p.SAVERS
elif os.environ["CAIRN_BENCH_SAVERS"] == "connections":
    p.saver_count = lambda connections, remote: max(p.SAVERS, min(connections, p.MAX_SAVERS))
from cairn.cli.main import main
sys.argv[0] = "cairn"
main()
"""


def make_data(root: Path, mib: int) -> None:
    """Half incompressible, half compressible text, in files of 1-8 MiB."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    left, i = mib << 20, 0
    while left > 0:
        size = min(left, rng.randrange(1, 9) << 20)
        data = rng.randbytes(size) if i % 2 else (b"cairn bench line %d\n" % i) * (size // 20)
        (root / f"f{i:03}.bin").write_bytes(data[:size])
        left -= size
        i += 1


def backup(rule: str, location: str, data: Path, work: Path, env: dict[str, str]) -> float:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**env, "CAIRN_BENCH_SAVERS": rule, "CAIRN_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(work / "cache")}
    base = [sys.executable, "-c", RUNNER, "-q", "-r", location]
    subprocess.run([*base, "init", "--kdf-iterations", "1", "--kdf-memory-kib", "8", "--kdf-lanes", "1"], env=env, check=True, capture_output=True)
    start = time.perf_counter()
    subprocess.run([*base, "backup", str(data)], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=192)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=8e6, help="bytes/s per proxied S3 connection")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="cairn-bench-savers-"))
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"), AWS_ACCESS_KEY_ID=ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    (top / "seaweedfs").mkdir()
    server = SeaweedFS(top / "seaweedfs")
    server.start()
    proxy = TcpProxy(server.s3_port, rate=args.rate)
    times: dict[tuple[str, str], list[float]] = {}
    try:
        s3_client(server.endpoint).create_bucket(Bucket="bench")
        make_data(top / "data", args.mib)
        for run in range(args.runs):
            for target in TARGETS:
                for rule in ("cpu", "connections") if run % 2 == 0 else ("connections", "cpu"):
                    port = proxy.port if target == "s3-slow" else server.s3_port
                    location = (str(top / "repo") if target == "local"
                                else f"s3:http://127.0.0.1:{port}/bench/{target}-{rule}-{run}")
                    shutil.rmtree(top / "repo", ignore_errors=True)
                    seconds = backup(rule, location, top / "data", top / "work", env)
                    times.setdefault((target, rule), []).append(seconds)
                    print(f"run {run + 1} {target} {rule}: {seconds:.1f} s", file=sys.stderr)
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(top, ignore_errors=True)
    print(f"first backup of {args.mib} MiB, {os.cpu_count()} CPUs, median of {args.runs}; "
          f"S3 through a proxy at {args.rate / 1e6:g} MB/s per connection")
    print(f"{'':8}{'cpu rule':>10}{'connections':>13}{'ratio':>8}")
    for target in TARGETS:
        cpu, conn = (statistics.median(times[(target, r)]) for r in ("cpu", "connections"))
        print(f"{target:8}{cpu:>9.1f}s{conn:>12.1f}s{conn / cpu:>8.2f}")


if __name__ == "__main__":
    main()
