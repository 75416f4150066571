"""`cairn image-restore SNAPSHOT TARGET`: put an image back onto a device or into a file.

Refusals come before any write: a target that is mounted or used as swap (also through a loop
device or one of its partitions), a device smaller than the image, a device whose sector size
differs from the image's partition table. A device or an existing file is only overwritten once
`confirm` agrees (the CLI asks, or `--yes`). An existing target is restored as a delta by
default: it is read and compared chunk by chunk, and only what differs is written.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from cairn.errors import UsageError, VerifyFailed
from cairn.image import format as disk_format
from cairn.image import mounts
from cairn.image.device import Device
from cairn.image.pages import load_page
from cairn.image.verify import compare
from cairn.image.writer import Writer, selected
from cairn.ops.access import read_lock
from cairn.repo.repository import Repository


@dataclass(frozen=True)
class RestoreProgress:
    """`phase` is ``restoring`` or ``verifying``; bytes of chunks to restore or compare."""

    phase: str
    bytes_done: int
    total_bytes: int


@dataclass
class ImageRestoreOptions:
    snapshot: str
    target: str
    partition: int | None = None
    """Restore only this partition, to offset 0 of the target (a partition device or file)."""
    yes: bool = False
    delta: bool | None = None
    """Compare before writing; None = when the target already exists."""
    sparse: bool = True
    verify: bool = False
    workers: int = 0


@dataclass
class ImageRestoreResult:
    snapshot_id: bytes
    target: str
    target_size: int
    delta: bool
    bytes_total: int
    bytes_written: int
    bytes_compared: int
    chunks_written: int
    chunks_same: int
    chunks_skipped: int
    gpt_moved: bool
    duration: float
    verified: bool | None = None

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["snapshot_id"] = self.snapshot_id.hex()
        return data


def load_disk(repo: Repository, ref: str) -> tuple[bytes, disk_format.Disk]:
    """An image snapshot's id and validated description."""
    snap = repo.find_snapshot(ref)
    if snap.kind != "image":
        raise UsageError(f"snapshot {snap.short_id} is a {snap.kind} snapshot, not an image: use 'cairn restore'")
    what = f"disk description of snapshot {snap.short_id}"
    return snap.id, disk_format.decode(load_page(repo, snap.root, what), what)


def _open_target(path: str, needed: int, options: ImageRestoreOptions, confirm: Callable[[str], bool] | None) -> tuple[Device, bool]:
    exists = os.path.exists(path)
    if exists:
        mode = os.stat(path).st_mode
        if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
            raise UsageError(f"{path} is neither a block device nor a regular file")
        busy = mounts.uses_of(path)
        if busy:
            where = ", ".join(f"{u.mountpoint} ({u.fstype})" for u in busy)
            raise UsageError(f"{path} is in use at {where}: unmount it before restoring onto it")
    dev = Device(path, writable=True, create=not exists)
    try:
        if dev.is_device and dev.size < needed:
            raise UsageError(f"{path} holds {dev.size:,} bytes, the image needs {needed:,}")
        if exists and (dev.is_device or dev.size > 0) and not options.yes:
            what = "device" if dev.is_device else "file"
            question = f"overwrite the {what} {path} ({dev.size:,} bytes) with the image?"
            if confirm is None or not confirm(question):
                raise UsageError(f"not restoring onto {path}: not confirmed (use --yes to skip the question)")
        fresh = not dev.is_device and dev.size == 0
        if not dev.is_device and dev.size < needed:
            os.ftruncate(dev.fd, needed)
            dev.size = needed
        return dev, fresh
    except BaseException:
        dev.close()
        if not exists:
            os.unlink(path)
        raise


def image_restore(
    repo: Repository, options: ImageRestoreOptions, confirm: Callable[[str], bool] | None = None,
    progress: Callable[[RestoreProgress], None] | None = None,
) -> ImageRestoreResult:
    """Restore `options.snapshot` onto `options.target`.

    A new or empty file is written sparse (holes for zero and unused chunks); anything else is
    compared first unless `options.delta` is False.
    """
    start = time.monotonic()
    target = os.path.abspath(options.target)
    with ExitStack() as stack:
        stack.enter_context(read_lock(repo, "image-restore"))
        snapshot_id, disk = load_disk(repo, options.snapshot)
        try:
            regions, shift = selected(disk, options.partition)
        except LookupError as exc:
            raise UsageError(str(exc)) from None
        needed = regions[0].length if options.partition is not None else disk.size
        dev, fresh = _open_target(target, needed, options, confirm)
        stack.enter_context(dev)
        if dev.is_device and disk.table != "none" and options.partition is None and dev.sector != disk.sector:
            raise UsageError(f"{target} has {dev.sector}-byte sectors, the image's partition table {disk.sector}")
        delta = (not fresh) if options.delta is None else options.delta
        report = (lambda d, t: progress(RestoreProgress("restoring", d, t))) if progress else None
        writer = Writer(repo, disk, dev, delta=delta, fresh=fresh, sparse=options.sparse, workers=options.workers, progress=report)
        stats = writer.run(options.partition)
        verified = None
        if options.verify:
            dev.drop_cache()
            check = (lambda d, t: progress(RestoreProgress("verifying", d, t))) if progress else None
            problems = compare(repo, disk, dev, regions, shift, writer.final_tables, options.workers, check)
            if problems:
                raise VerifyFailed(f"the restored {target} does not match the image: {problems[0]} ({len(problems)} problems)")
            verified = True
    return ImageRestoreResult(
        snapshot_id, target, dev.size, writer.delta, stats.bytes_total, stats.bytes_written, stats.bytes_compared,
        stats.chunks_written, stats.chunks_same, stats.chunks_skipped, stats.gpt_moved, time.monotonic() - start, verified,
    )
