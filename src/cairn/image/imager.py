"""Imaging: a device or disk-image file into extent pages and a disk description.

The pipeline per region: the filesystem plugin streams used ranges, `chunk_plans` turns them
into one read plan per chunk, and a thread pool reads, hashes, compresses and encrypts chunks
(`Repository.save_blob` is thread-safe; reads and zstd release the GIL, AES-GCM does not). At
most `window` chunks are in flight, so memory stays at a few chunk buffers whatever the disk
size. Results are consumed in order, which is what the run-length pages need.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cairn.errors import NotFound
from cairn.image import chunks as chunks_mod
from cairn.image import fs as fs_mod
from cairn.image import partitions
from cairn.image.device import Device, ReadAt
from cairn.image.format import Disk, Region
from cairn.image.fs import raw
from cairn.image.pages import DATA, PARTIAL, UNUSED, ZERO, PageBuilder, mask_length
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository

DEFAULT_CHUNK = 512 << 10
"""Chosen by measurement (bench/image_bench.py, docs/PERFORMANCE.md "Image chunk size"): after
20 MiB of scattered writes into a 1 GiB ext4, a second image grows the repository by 1.21x the
change at 512 KiB, 1.32x at 1 MiB and 1.56x at 4 MiB (a small write restores its whole chunk),
and a delta restore does least work; the first image costs the same CPU and 1.7 % more bytes
than at 1 MiB. The price is twice the index entries of 1 MiB (about 100 MB of memory per TB
used); `--chunk-size 1M` halves that for very large disks."""
PAGE_BYTES = 64 << 30
SETTLE_EVERY = 256
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) of the used data to read, from the calling thread."""


@dataclass
class ImageStats:
    """What imaging did: what the filesystems use, what was read, what was new."""

    bytes_used: int = 0
    bytes_read: int = 0
    chunks: dict[str, int] = field(default_factory=lambda: {"data": 0, "partial": 0, "zero": 0, "unused": 0})
    blobs_new: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    """Sealed size of the new blobs, counted once their pack is uploaded (see `settle`)."""
    pending: list[bytes] = field(default_factory=list)

    def settle(self, repo: Repository) -> None:
        """Count the stored size of new blobs whose pack has reached the index; the rest wait.
        Keeps memory bounded by one pack's worth of ids rather than one id per new chunk."""
        waiting = []
        for blob_id in self.pending:
            try:
                self.bytes_stored += repo.lookup(blob_id).length
            except NotFound:
                waiting.append(blob_id)
        self.pending = waiting


@dataclass
class Plan:
    """A region to image, with the reader of its volume and the plugin that knows its blocks."""

    region: Region
    read: ReadAt
    info: fs_mod.FsInfo
    plugin: fs_mod.Plugin

    def used_ranges(self) -> Iterable[tuple[int, int]]:
        return fs_mod.used_in_volume(self.plugin, self.read, self.info, self.region.length)


class _Shifted:
    """A device seen from a partition's first byte, for imaging one partition alone."""

    def __init__(self, dev: Device, base: int) -> None:
        self._dev, self._base = dev, base

    def volume(self, start: int, length: int) -> ReadAt:
        return self._dev.volume(self._base + start, length)


def _plan_region(dev: Device | _Shifted, region: Region, all_blocks: bool, chunk: int, warnings: list[str]) -> Plan:
    """Pick the plugin for a region (raw for gaps, `--all-blocks` or anything not understood)
    and count its used bytes, which also meets any damage before imaging starts."""
    read = dev.volume(region.start, region.length)
    plan = None
    if not all_blocks and region.role != "gap":
        try:
            info, plugin = fs_mod.probe(read, region.length)
            if info is not None and plugin is not None:
                plan = Plan(region, read, info, plugin)
                region.used = sum(b - a for a, b in plan.used_ranges())
        except (fs_mod.FsError, ValueError, IndexError, struct.error) as exc:
            warnings.append(f"{_name(region)}: {exc}; imaged whole")
            plan = None
    if plan is None:
        plan = Plan(region, read, raw.probe(read, region.length), raw)  # type: ignore[arg-type]
        region.used = region.length
    region.fs = plan.info.kind
    region.block = max(512, min(plan.info.block, chunk // 8))
    if plan.info.label and not region.label:
        region.label = plan.info.label
    return plan


def _name(region: Region) -> str:
    return f"partition {region.number}" if region.role == "partition" else f"gap at byte {region.start}"


def read_layout(dev: Device) -> partitions.Layout:
    """The partition table of the disk on `dev`; a filesystem at byte 0 means there is none."""
    whole = dev.volume(0, dev.size)
    try:
        is_volume = fs_mod.probe(whole, dev.size)[0] is not None
    except fs_mod.FsError:
        is_volume = True  # damaged, but a filesystem all the same: not a table
    return partitions.detect(whole, dev.size, dev.sector, is_volume)


def locate(dev: Device, partition: int) -> tuple[int, int]:
    """(start, length) in bytes of partition `partition` of the disk on `dev`."""
    part = read_layout(dev).find(partition)
    return part.start, part.length


def describe(
    dev: Device, partition: int | None, all_blocks: bool, chunk: int
) -> tuple[Disk, list[Plan], int, list[str]]:
    """Read the partition table and probe every region; nothing is stored yet.

    Returns the description (pages still empty), the plans, the byte of the device where the
    imaged disk starts (a partition's start with `partition`, else 0) and warnings.
    """
    layout = read_layout(dev)
    warnings = list(layout.warnings)
    page_chunks = max(1, min(PAGE_BYTES // chunk, 65536))
    if partition is not None:
        part = layout.find(partition)
        disk = Disk("partition", part.length, layout.sector, "none", chunk, page_chunks, disk_id=layout.disk_id)
        region = Region("partition", 0, part.length, number=part.number, type=part.type, uuid=part.uuid, label=part.label)
        disk.regions = [region]
        return disk, [_plan_region(_Shifted(dev, part.start), region, all_blocks, chunk, warnings)], part.start, warnings
    disk = Disk("disk", dev.size, layout.sector, layout.table, chunk, page_chunks, disk_id=layout.disk_id)
    disk.tables = [(start, dev.read(start, length)) for start, length in layout.tables]
    regions = [
        Region("partition", p.start, p.length, number=p.number, type=p.type, uuid=p.uuid, label=p.label)
        for p in layout.partitions
    ]
    if layout.table == "none":
        regions = [Region("partition", 0, dev.size)]
    taken = sorted([(r.start, r.end) for r in regions] + [(s, s + n) for s, n in layout.tables])
    at = 0
    for start, end in taken + [(dev.size, dev.size)]:
        if start > at:
            regions.append(Region("gap", at, start - at))
        at = max(at, end)
    regions.sort(key=lambda r: r.start)
    disk.regions = regions
    plans = [_plan_region(dev, r, all_blocks, chunk, warnings) for r in regions]
    return disk, plans, 0, warnings


class Imager:
    """Stores the chunks of planned regions; one instance per image run."""

    def __init__(self, repo: Repository, dev: Device, workers: int = 0, progress: Progress | None = None) -> None:
        self.repo = repo
        self.dev = dev
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.window = self.workers * 2
        self.progress = progress
        self.stats = ImageStats()
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0
        self._settle_at = SETTLE_EVERY

    def run(self, disk: Disk, plans: list[Plan], base: int = 0) -> None:
        """Image every planned region; `base` is the byte on the device where the disk starts."""
        self._total = sum(p.region.used for p in plans)
        self.stats.bytes_used = self._total
        with ThreadPoolExecutor(self.workers, thread_name_prefix="cairn-image") as pool:
            for plan in plans:
                self._region(pool, disk, plan, base + plan.region.start)

    def _region(self, pool: ThreadPoolExecutor, disk: Disk, plan: Plan, at: int) -> None:
        region = plan.region
        mask_size = mask_length(disk.chunk, region.block)
        builder = PageBuilder(mask_size)
        in_flight: deque[tuple[list[tuple[int, int]], int, Future[tuple[bytes, bool] | None]]] = deque()
        region.pages = []

        def finish_one() -> None:
            nonlocal builder
            spans, length, future = in_flight.popleft()
            result = future.result()
            used = sum(b - a for a, b in spans)
            if not spans:
                builder.add(UNUSED)
                self.stats.chunks["unused"] += 1
            elif result is None:
                builder.add(ZERO)
                self.stats.chunks["zero"] += 1
            elif chunks_mod.is_full(spans, length):
                builder.add(DATA, result[0])
                self.stats.chunks["data"] += 1
            else:
                builder.add(PARTIAL, result[0], chunks_mod.mask_of(spans, region.block, mask_size))
                self.stats.chunks["partial"] += 1
            if result is not None and result[1]:
                self.stats.blobs_new += 1
                self.stats.bytes_new += length
                self.stats.pending.append(result[0])
                if len(self.stats.pending) >= self._settle_at:
                    self.stats.settle(self.repo)
                    self._settle_at = max(SETTLE_EVERY, 2 * len(self.stats.pending))
            if used:
                self._done += used
                if self.progress is not None:
                    # spans widened to whole mask blocks may pass the used bytes counted up front
                    self.progress(min(self._done, self._total), self._total)
            if builder.chunks == disk.page_chunks:
                self._save_page(region, builder)
                builder = PageBuilder(mask_size)

        plans = chunks_mod.chunk_plans(plan.used_ranges(), region.length, disk.chunk, region.block)
        for index, spans in enumerate(plans):
            offset = index * disk.chunk
            length = min(disk.chunk, region.length - offset)
            future: Future[tuple[bytes, bool] | None]
            if spans:
                future = pool.submit(self._store_chunk, at + offset, length, spans)
            else:
                future = Future()
                future.set_result(None)
            in_flight.append((spans, length, future))
            if len(in_flight) >= self.window:
                finish_one()
        while in_flight:
            finish_one()
        if builder.chunks:
            self._save_page(region, builder)

    def _save_page(self, region: Region, builder: PageBuilder) -> None:
        page_id, _ = self.repo.save_blob(BlobType.DISK, builder.encode())
        region.pages.append(page_id)

    def _store_chunk(self, at: int, length: int, spans: list[tuple[int, int]]) -> tuple[bytes, bool] | None:
        """Read the used spans (unused bytes stay zero), then store unless all zero."""
        buf = bytearray(length)
        view = memoryview(buf)
        for a, b in spans:
            self.dev.readinto(view[a:b], at + a)
        with self._lock:
            self.stats.bytes_read += sum(b - a for a, b in spans)
        if chunks_mod.is_zero(buf):
            return None
        blob_id = self.repo.blob_id(view)
        return self.repo.save_blob(BlobType.DATA, view, blob_id)
