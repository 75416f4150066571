"""Restore: a disk description back onto a device or file, whole, delta, or one partition.

* **Full** onto a fresh file: only DATA and PARTIAL chunks are written; ZERO and UNUSED
  chunks stay holes (sparse output).
* **Full** onto a device or existing file: ZERO chunks are zeroed too (BLKZEROOUT, a punched
  hole, or written zeros), UNUSED chunks are left alone: the filesystem does not read them.
* **Delta**: each chunk of the target is read and hashed (unused blocks of a PARTIAL chunk
  masked out, as when it was imaged) and written only if it differs, so a target that holds
  an older state of the same disk costs a read and the changed chunks.

Tables go last, so an interrupted restore never leaves a valid table in front of half-written
partitions. Onto a larger target the GPT backup moves to the new end (gpt.relocate). Every
write is bounded by the target size and every blob checked to be exactly its chunk's length.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cairn.errors import DamagedObject
from cairn.image import chunks as chunks_mod
from cairn.image import gpt
from cairn.image.device import Device
from cairn.image.format import Disk, Region
from cairn.image.pages import PARTIAL, UNUSED, ZERO, ChunkRef, iter_chunks
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository

Progress = Callable[[int, int], None]


@dataclass
class RestoreStats:
    """What a restore did to the target."""

    bytes_total: int = 0
    bytes_written: int = 0
    bytes_compared: int = 0
    chunks_written: int = 0
    chunks_same: int = 0
    chunks_skipped: int = 0
    tables_written: int = 0
    gpt_moved: bool = False


def masked(data: bytes, ref: ChunkRef, block: int) -> bytes | bytearray:
    """The chunk as it was stored: bytes of blocks the filesystem did not use set to zero."""
    if ref.kind != PARTIAL:
        return data
    out = bytearray(len(data))
    for a, b in ref.used_spans(block):
        out[a:b] = data[a:b]
    return out


def chunk_matches(repo: Repository, data: bytes, ref: ChunkRef, block: int) -> bool:
    """Whether bytes read from a device are what the image holds for this chunk."""
    if ref.kind == ZERO:
        return chunks_mod.is_zero(data)
    return repo.blob_id(masked(data, ref, block)) == ref.blob_id


def selected(disk: Disk, partition: int | None) -> tuple[list[Region], int]:
    """The regions to restore and how far to shift them (a partition goes to offset 0)."""
    if partition is None:
        return disk.regions, 0
    region = disk.partition(partition)
    return [region], -region.start


class Writer:
    """Restores one image onto one open target; `fresh` means the target is a new empty file."""

    def __init__(
        self, repo: Repository, disk: Disk, target: Device, *, delta: bool, fresh: bool,
        sparse: bool = True, workers: int = 0, progress: Progress | None = None,
    ) -> None:
        self.repo, self.disk, self.target = repo, disk, target
        self.delta = delta and not fresh
        self.fresh = fresh
        self.sparse = sparse and not target.is_device
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.progress = progress
        self.stats = RestoreStats()
        self.final_tables: list[tuple[int, bytes]] = []
        """The table bytes as written (moved for a larger disk), for verification."""
        self._lock = threading.Lock()

    def needed_size(self, partition: int | None) -> int:
        return self.disk.partition(partition).length if partition is not None else self.disk.size

    def run(self, partition: int | None = None) -> RestoreStats:
        regions, shift = selected(self.disk, partition)
        needed = self.needed_size(partition)
        if self.target.size < needed:
            raise DamagedObject(f"internal: target of {self.target.size} bytes is smaller than {needed}")
        self.stats.bytes_total = sum(
            ref.length for region in regions for ref in iter_chunks(self.repo, self.disk, region) if ref.kind != UNUSED
        )
        done = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="cairn-restore") as pool:
            in_flight: deque[tuple[int, Future[None]]] = deque()
            for region, ref in self._chunks(regions):
                if ref.kind == UNUSED or (ref.kind == ZERO and self.fresh and self.sparse):
                    self.stats.chunks_skipped += 1
                    if ref.kind != UNUSED:
                        done += ref.length
                    continue
                at = region.start + shift + ref.offset
                in_flight.append((ref.length, pool.submit(self._chunk, at, ref, region.block)))
                while len(in_flight) >= self.workers * 2 or (in_flight and in_flight[0][1].done()):
                    length, future = in_flight.popleft()
                    future.result()
                    done += length
                    if self.progress:
                        self.progress(done, self.stats.bytes_total)
            while in_flight:
                length, future = in_flight.popleft()
                future.result()
                done += length
                if self.progress:
                    self.progress(done, self.stats.bytes_total)
        if partition is None:
            self._tables()
        self.target.sync()
        return self.stats

    def _chunks(self, regions: list[Region]) -> Iterator[tuple[Region, ChunkRef]]:
        for region in regions:
            for ref in iter_chunks(self.repo, self.disk, region):
                yield region, ref

    def _chunk(self, at: int, ref: ChunkRef, block: int) -> None:
        if self.delta:
            current = self.target.read(at, ref.length)
            self._count(compared=ref.length)
            if chunk_matches(self.repo, current, ref, block):
                self._count(same=1)
                return
        if ref.kind == ZERO:
            self.target.zero(at, ref.length, self.target.size, self.sparse)
        else:
            if self.repo.lookup(ref.blob_id).blob_type != BlobType.DATA:
                raise DamagedObject(f"blob {ref.blob_id.hex()[:12]} named as disk data is not a data blob")
            data = self.repo.load_blob(ref.blob_id)
            if len(data) != ref.length:
                raise DamagedObject(f"blob {ref.blob_id.hex()[:12]} is not as long as its chunk")
            self.target.write(at, data, self.target.size)
        self._count(written=ref.length)

    def _count(self, compared: int = 0, same: int = 0, written: int = 0) -> None:
        # Called from worker threads; integer += on attributes is not atomic in general.
        with self._lock:
            self.stats.bytes_compared += compared
            self.stats.chunks_same += same
            if written:
                self.stats.bytes_written += written
                self.stats.chunks_written += 1

    def _tables(self) -> None:
        tables = self.disk.tables
        sector = self.disk.sector
        if self.disk.table == "gpt" and self.target.size // sector > self.disk.size // sector:
            tables, cleared = gpt.relocate(tables, sector, self.target.size)
            for offset, length in cleared:
                self._put(offset, bytes(length))
            self.stats.gpt_moved = True
        for offset, data in tables:
            self._put(offset, data)
        self.final_tables = tables

    def _put(self, offset: int, data: bytes) -> None:
        if self.delta or not self.fresh:
            if self.target.read(offset, len(data)) == data:
                return
        self.target.write(offset, data, self.target.size)
        self.stats.bytes_written += len(data)
        self.stats.tables_written += 1

