"""`--verify`: read a device again and compare every stored chunk and table with it.

After imaging, the source is re-read (still frozen, if it was) and each chunk's used bytes
hashed and compared with the stored id; with `load_blobs` every blob is also loaded back from
the repository, which authenticates and re-hashes it. After a restore, the target is re-read
from the medium (its cached pages dropped first) and compared the same way.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from cairn.image.device import Device
from cairn.image.format import Disk, Region
from cairn.image.pages import UNUSED, ZERO, ChunkRef, iter_chunks
from cairn.image.writer import chunk_matches
from cairn.repo.repository import Repository

MAX_REPORTED = 20
Progress = Callable[[int, int], None]


def _check(repo: Repository, dev: Device, at: int, ref: ChunkRef, block: int, load: bool) -> str | None:
    data = bytearray(ref.length)
    dev.readinto(memoryview(data), at)
    if load and ref.kind != ZERO:
        repo.load_blob(ref.blob_id)
    if chunk_matches(repo, memoryview(data), ref, block):
        return None
    return f"bytes {at}-{at + ref.length} differ from the image"


def compare(
    repo: Repository, disk: Disk, dev: Device, regions: list[Region], shift: int,
    tables: list[tuple[int, bytes]], workers: int = 0, progress: Progress | None = None, load_blobs: bool = False,
) -> list[str]:
    """Problems found (at most MAX_REPORTED described, then a count); empty means equal."""
    workers = workers or max(2, os.cpu_count() or 2)
    problems: list[str] = []
    total = sum(r.used for r in regions)
    done = 0
    count = 0

    def settle(item: tuple[int, Future[str | None]]) -> None:
        nonlocal done, count
        used, future = item
        problem = future.result()
        if problem:
            count += 1
            if len(problems) < MAX_REPORTED:
                problems.append(problem)
        done += used
        if progress:
            progress(min(done, total), total)

    with ThreadPoolExecutor(workers, thread_name_prefix="cairn-verify") as pool:
        pending: deque[tuple[int, Future[str | None]]] = deque()
        for region in regions:
            for ref in iter_chunks(repo, disk, region):
                if ref.kind == UNUSED:
                    continue
                at = region.start + shift + ref.offset
                used = sum(b - a for a, b in ref.used_spans(region.block))
                pending.append((used, pool.submit(_check, repo, dev, at, ref, region.block, load_blobs)))
                if len(pending) >= workers * 2:
                    settle(pending.popleft())
        while pending:
            settle(pending.popleft())
    for offset, data in tables:
        if dev.read(offset + shift, len(data)) != data:
            count += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"the partition table bytes at {offset} differ from the image")
    if count > len(problems):
        problems.append(f"... and {count - len(problems)} more")
    return problems


def verify_source(
    repo: Repository, disk: Disk, dev: Device, base: int, workers: int = 0,
    progress: Progress | None = None, load_blobs: bool = True,
) -> list[str]:
    """Compare the source (the disk starting at byte `base` of `dev`) with what was stored."""
    return compare(repo, disk, dev, disk.regions, base, disk.tables, workers, progress, load_blobs)
