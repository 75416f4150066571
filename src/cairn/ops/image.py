"""`cairn image DEVICE|FILE`: a whole disk or one partition as a new `image` snapshot.

Order: consistency first (a read-write mounted filesystem is refused unless frozen, read
through a temporary LVM snapshot (`--snapshot lvm`, see image.lvm), or forced), then the
table and every filesystem's allocation map are read and checked (damage found here means
"image that region whole", with a warning), then chunks are stored, then the description,
the index, and the snapshot last. `--verify` re-reads the source while it is still
frozen and checks every stored blob opens.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import UsageError, VerifyFailed
from cairn.image import format as disk_format
from cairn.image import lvm, mounts
from cairn.image.device import Device
from cairn.image.imager import DEFAULT_CHUNK, Imager, describe, locate
from cairn.image.verify import verify_source
from cairn.repo import identity
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.version import __version__

SNAPSHOT_MODES = ("lvm", "btrfs")


@dataclass(frozen=True)
class ImageProgress:
    """One progress report: `phase` is ``imaging`` or ``verifying``; bytes of used data."""

    phase: str
    bytes_done: int
    total_bytes: int


@dataclass
class ImageOptions:
    source: str
    partition: int | None = None
    all_blocks: bool = False
    """Read every byte (zero runs still skipped), ignoring what filesystems say is free."""
    freeze: bool = False
    freeze_timeout: float = 600.0
    """Seconds a filesystem may stay frozen; past that it is thawed and the image fails."""
    snapshot: str | None = None
    """``lvm``: image a temporary LVM snapshot of the source LV (``btrfs`` is refused, with why)."""
    snapshot_size: str | int = lvm.DEFAULT_SIZE
    """Copy-on-write space of the LVM snapshot: bytes, or a percentage such as ``10%ORIGIN``."""
    force: bool = False
    """Image a read-write mounted filesystem anyway; the snapshot records a warning."""
    verify: bool = False
    tags: list[str] = field(default_factory=list)
    host: str | None = None
    chunk_size: int = DEFAULT_CHUNK
    workers: int = 0


@dataclass(frozen=True)
class PartitionSummary:
    number: int
    start: int
    length: int
    fs: str
    used: int
    type: str
    label: str


@dataclass
class ImageResult:
    snapshot_id: bytes
    source: str
    disk_size: int
    table: str
    partitions: list[PartitionSummary]
    bytes_used: int
    """What the filesystems use (and gaps and raw regions, whole): what had to be read."""
    bytes_read: int
    bytes_new: int
    """Plaintext of chunks the repository did not have yet."""
    bytes_stored: int
    """What those new chunks take in the repository, compressed and sealed."""
    blobs_new: int
    chunks: dict[str, int]
    duration: float
    warnings: list[str]
    verified: bool | None = None

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["snapshot_id"] = self.snapshot_id.hex()
        data["partitions"] = [p.__dict__ for p in self.partitions]
        return data


def _consistency(options: ImageOptions, dev: Device, start: int, length: int) -> tuple[list[str], list[str]]:
    """(mountpoints to freeze, warnings) for the byte range imaged; raises when refused."""
    if options.snapshot is not None and options.snapshot != "lvm":
        if options.snapshot == "btrfs":
            raise UsageError(
                "--snapshot btrfs gives a consistent file tree, not a consistent block device: use "
                "'cairn backup' on a btrfs snapshot for files, or --freeze to image the device"
            )
        raise UsageError(f"unknown --snapshot {options.snapshot!r}; expected one of {', '.join(SNAPSHOT_MODES)}")
    busy = [u for u in mounts.uses_of(dev.path) if not u.read_only and u.overlaps(start, length)]
    if busy and options.snapshot == "lvm":  # someone mounted our temporary snapshot
        raise UsageError(f"the LVM snapshot {dev.path} was mounted read-write while cairn read it")
    if not busy:
        return [], []
    where = ", ".join(f"{u.mountpoint} ({u.fstype})" for u in busy)
    if options.freeze:
        swaps = [u for u in busy if u.fstype == "swap"]
        if swaps and not options.force:
            raise UsageError(f"{dev.path} holds active swap, which cannot be frozen: swapoff first, or --force")
        return [u.mountpoint for u in busy if u.fstype != "swap"], []
    if options.force:
        return [], [f"{dev.path} was in use read-write ({where}) and imaged without a consistent point (--force)"]
    raise UsageError(
        f"{dev.path} is mounted read-write at {where}: an image read while it changes may not be "
        "restorable. Unmount it, remount it read-only, use --freeze, or --force to image it anyway"
    )


def _refuse_freezing_the_repository(repo: Repository, mountpoints: list[str]) -> None:
    """Writing packs into a frozen filesystem would hang until the freeze bound expires."""
    location = repo.backend.properties.location
    try:
        repo_dev = os.stat(location).st_dev
    except OSError:
        return  # not a local path (object storage): nothing of ours to freeze
    for mountpoint in mountpoints:
        if os.stat(mountpoint).st_dev == repo_dev:
            raise UsageError(f"the repository {location} is on {mountpoint}, which --freeze would freeze")


def check_chunk_size(chunk: int) -> None:
    """The chunk sizes the format allows: a power of two (so chunks align with filesystem
    blocks and a changed block changes one chunk) from 256 KiB to 64 MiB."""
    if not (disk_format.is_power_of_two(chunk) and disk_format.MIN_CHUNK <= chunk <= disk_format.MAX_CHUNK):
        raise UsageError(f"the chunk size must be a power of two from 256 KiB to 64 MiB, not {chunk:,} bytes")


def image(repo: Repository, options: ImageOptions, progress: Callable[[ImageProgress], None] | None = None) -> ImageResult:
    """Image `options.source` into `repo` as a new snapshot."""
    check_chunk_size(options.chunk_size)
    started_ns = time.time_ns()
    start = time.monotonic()
    source = os.path.abspath(options.source)
    with ExitStack() as stack:
        read_path = source
        if options.snapshot == "lvm":
            if options.freeze:
                raise UsageError("give --snapshot lvm or --freeze, not both: the snapshot is the consistent point")
            lvm.size_args(options.snapshot_size)
            origin = lvm.logical_volume(source)  # refused before anything is locked or created
            stack.enter_context(repo.lock(command="image"))
            read_path = stack.enter_context(lvm.snapshot(origin, options.snapshot_size))
        dev = stack.enter_context(Device(read_path))
        disk_start, disk_length = 0, dev.size
        if options.partition is not None:
            try:
                disk_start, disk_length = locate(dev, options.partition)
            except LookupError as exc:
                raise UsageError(str(exc)) from None
        to_freeze, warnings = _consistency(options, dev, disk_start, disk_length)
        _refuse_freezing_the_repository(repo, to_freeze)
        if options.snapshot != "lvm":
            stack.enter_context(repo.lock(command="image"))
        freeze = stack.enter_context(mounts.frozen(to_freeze, options.freeze_timeout))
        if dev.is_device:
            dev.drop_cache()  # pages cached before the freeze may predate the filesystem's last writes
        disk, plans, base, more = describe(dev, options.partition, options.all_blocks, options.chunk_size)
        warnings += more
        report = (lambda d, t: progress(ImageProgress("imaging", d, t))) if progress else None
        imager = Imager(repo, dev, options.workers, report)
        imager.run(disk, plans, base)
        root, _ = repo.save_blob(BlobType.DISK, disk_format.encode(disk))
        repo.flush()
        verified = None
        if options.verify:
            check = (lambda d, t: progress(ImageProgress("verifying", d, t))) if progress else None
            problems = verify_source(repo, disk, dev, base, options.workers, check, load_blobs=True)
            if problems:
                raise VerifyFailed(f"verification failed, no snapshot saved: {problems[0]} ({len(problems)} problems)")
            verified = True
        if freeze.expired:
            raise UsageError(
                f"the filesystems stayed frozen longer than {options.freeze_timeout:g} s and were thawed "
                "before imaging finished; no snapshot saved (raise --freeze-timeout)"
            )
        stats = imager.stats
        stats.settle(repo)  # after flush every new blob is in the index
        stored = stats.bytes_stored
        duration = time.monotonic() - start
        summary = {
            "disk_size": disk.size, "table": disk.table, "bytes_used": stats.bytes_used,
            "bytes_read": stats.bytes_read, "bytes_new": stats.bytes_new, "bytes_stored": stored,
            "blobs_new": stats.blobs_new, "chunks": stats.chunks, "duration": duration,
            "warnings": warnings, "verified": bool(verified),
        }
        snapshot = Snapshot(
            kind="image", root=root, paths=[os.fsencode(source)],
            host=options.host or identity.hostname(), user=identity.username(), time_ns=started_ns,
            tz_offset=time.localtime(started_ns // 1_000_000_000).tm_gmtoff, tags=list(options.tags),
            summary=summary, program=f"cairn {__version__}",
        )
        snapshot_id = repo.save_snapshot(snapshot)
    parts = [
        PartitionSummary(r.number, r.start, r.length, r.fs, r.used, r.type, r.label)
        for r in disk.regions if r.role == "partition"
    ]
    return ImageResult(
        snapshot_id, source, disk.size, disk.table, parts, stats.bytes_used, stats.bytes_read,
        stats.bytes_new, stored, stats.blobs_new, dict(stats.chunks), duration, warnings, verified,
    )
