"""The machine's pipeline ceiling: what the libraries cairn runs per byte can do on this
machine, with no file reading, no pack writing and no Python around them but a loop.

    python bench/ceiling.py [--file F] [--mib 512] [--procs 2] [--runs 3] [--json out.json]

Issue 7 asks a first backup of large incompressible files to reach 60% of "the machine's
measured pipeline ceiling"; the research notes estimate ~1 GB/s from compressible data, where
zstd-3 is the slowest stage. Incompressible data skips most of zstd's work, so its ceiling is
another figure, measured here rather than assumed. `--file` is read once into memory (default:
--mib of os.urandom); each of --procs processes (forked, one per core) runs the stages over
its own copy, and the aggregate MB/s of the slowest process's wall time is reported, for:

* `libraries`: the issue's stages back to back per chunk: FastCDC cut (cairn's chunker
  parameters), keyed BLAKE3, a zstd-3 attempt of the whole chunk, AES-256-GCM encryption.
* `cairn_stages`: what a cairn backup worker does per chunk after reading, through cairn's own
  functions: cut, keyed BLAKE3, `blob_parts` (a compression probe, then zstd or the raw
  bytes behind a flag), sealing into a pack-sized buffer and verifying it (decrypt + compare).
* `cut`, `hash`, `encrypt`: each stage alone, one process, for where the time goes.

Compare a first backup's MB/s of the same file against `libraries` (the issue's ceiling) and
`cairn_stages` (the same work without reading, writing packs or processes talking).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import blake3  # noqa: E402
import zstandard  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from pyfastcdc import FastCDC  # noqa: E402

from cairn.files.chunker import fastcdc  # noqa: E402
from cairn.repo.blob import BlobType, blob_parts, seal_blob_into  # noqa: E402
from cairn.repo.config import ChunkerParams  # noqa: E402
from cairn.repo.crypto import OVERHEAD, Sealer  # noqa: E402

KEY = bytes(range(32))
MB = 1e6


def cutter() -> FastCDC:
    """The cutter a backup cuts big files' slots with, with a new repository's parameters."""
    return fastcdc(ChunkerParams())


def libraries(data: bytes) -> None:
    aead, zstd = AESGCM(KEY), zstandard.ZstdCompressor(level=3)
    nonce = bytes(12)
    for chunk in cutter().cut_buf(data):
        view = chunk.data
        blake3.blake3(view, key=KEY).digest()
        packed = zstd.compress(view)
        aead.encrypt(nonce, view if len(packed) >= len(view) else packed, None)


def cairn_stages(data: bytes) -> None:
    sealer = Sealer(KEY)
    out = bytearray(16 << 20)
    for chunk in cutter().cut_buf(data):
        view = chunk.data
        blob_id = blake3.blake3(view, key=KEY).digest()
        parts = blob_parts(view, 3)
        seal_blob_into(sealer, BlobType.DATA, blob_id, view, parts, memoryview(out)[: len(parts[0]) + len(parts[1]) + OVERHEAD])


def cut(data: bytes) -> None:
    for _ in cutter().cut_buf(data):
        pass


def hash_only(data: bytes) -> None:
    step = 1 << 20
    view = memoryview(data)
    for at in range(0, len(data), step):
        blake3.blake3(view[at : at + step], key=KEY).digest()


def encrypt(data: bytes) -> None:
    aead, step, view = AESGCM(KEY), 1 << 20, memoryview(data)
    for at in range(0, len(data), step):
        aead.encrypt(bytes(12), view[at : at + step], None)


STAGES: dict[str, tuple[Callable[[bytes], None], bool]] = {
    "libraries": (libraries, True),
    "cairn_stages": (cairn_stages, True),
    "cut": (cut, False),
    "hash": (hash_only, False),
    "encrypt": (encrypt, False),
}


def timed(work: Callable[[bytes], None], data: bytes, procs: int) -> float:
    """Wall seconds until every one of `procs` forked processes has run `work` over `data`."""
    start = time.monotonic()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                work(data)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status:
            raise SystemExit(f"a worker failed (status {status})")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="data to use (default: random bytes)")
    parser.add_argument("--mib", type=int, default=512, help="bytes per process, MiB")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    size = args.mib << 20
    if args.file:
        with open(args.file, "rb") as f:
            data = f.read(size)
    else:
        data = os.urandom(size)
    results: dict[str, float] = {}
    print(f"{len(data) / MB:.0f} MB per process, {args.procs} processes, best of {args.runs}; load {os.getloadavg()[0]:.2f}")
    for name, (work, parallel) in STAGES.items():
        procs = args.procs if parallel else 1
        best = min(timed(work, data, procs) for _ in range(args.runs))
        results[name] = procs * len(data) / MB / best
        print(f"{name:14} {procs} proc  {results[name]:8.0f} MB/s")
    if args.json:
        args.json.write_text(json.dumps({"procs": args.procs, "bytes": len(data), "mb_per_s": results}, indent=2))


if __name__ == "__main__":
    main()
