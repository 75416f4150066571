"""`cairn image-ls` and `cairn image-dump`: files read straight out of an image snapshot.

Nothing is restored: the partition's filesystem is parsed by The Sleuth Kit over a reader
that loads the image's chunks from the repository as they are needed (image.volume), so
listing a folder of a 1 TB image loads a few MiB, and memory stays at the reader's cache.
The repository is only read (a shared lock, as a restore takes).

Which partition: `--partition N`, else the one partition holding a filesystem cairn knows,
else (for `image-ls`) the partitions are listed so the user can choose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from cairn.errors import UsageError
from cairn.image.format import Disk, Region
from cairn.image.volume import DEFAULT_CACHE_BYTES, RegionReader
from cairn.ops.access import read_lock
from cairn.ops.image_restore import load_disk
from cairn.repo.repository import Repository

if TYPE_CHECKING:  # pytsk3 is imported only when a filesystem is opened (CLI start-up stays quick)
    from cairn.image.tsk import Entry, ImageFs


@dataclass(frozen=True)
class PartitionInfo:
    number: int
    start: int
    length: int
    fs: str
    used: int
    label: str


@dataclass
class ImageLsOptions:
    snapshot: str
    path: str = "/"
    partition: int | None = None
    recursive: bool = False
    show_system: bool = False
    """Also list NTFS metadata files ($MFT, $Bitmap, ...)."""


@dataclass
class ImageLsResult:
    snapshot_id: bytes
    partition: int | None
    """None when no partition was chosen and `partitions` lists them instead."""
    fs: str = ""
    path: str = "/"
    entries: list[Entry] = field(default_factory=list)
    partitions: list[PartitionInfo] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"snapshot_id": self.snapshot_id.hex(), "partition": self.partition}
        if self.partition is None:
            data["partitions"] = [p.__dict__ for p in self.partitions]
        else:
            data.update(fs=self.fs, path=self.path, entries=[e.__dict__ for e in self.entries])
        return data


@dataclass
class ImageDumpOptions:
    snapshot: str
    path: str
    partition: int | None = None


@dataclass
class ImageDumpResult:
    snapshot_id: bytes
    partition: int
    path: str
    bytes: int


def partitions_of(disk: Disk) -> list[PartitionInfo]:
    return [
        PartitionInfo(r.number, r.start, r.length, r.fs, r.used, r.label)
        for r in disk.regions if r.role == "partition"
    ]


def choose(disk: Disk, partition: int | None) -> Region | None:
    """The region to open: partition N, or the only one with a known filesystem, or None."""
    if partition is not None:
        try:
            return disk.partition(partition)
        except LookupError as exc:
            raise UsageError(str(exc)) from None
    regions = [r for r in disk.regions if r.role == "partition"]
    known = [r for r in regions if r.fs != "raw"]
    if len(regions) == 1:
        return regions[0]
    if len(known) == 1:
        return known[0]
    return None


@contextmanager
def opened(
    repo: Repository, snapshot: str, partition: int | None, command: str, cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Iterator[tuple[bytes, Disk, Region | None, Callable[[], ImageFs]]]:
    """The snapshot's description, the chosen region, and a function opening its filesystem,
    all under a shared repository lock."""
    with read_lock(repo, command):
        snapshot_id, disk = load_disk(repo, snapshot)
        region = choose(disk, partition)

        def open_fs() -> ImageFs:
            from cairn.image.tsk import ImageFs

            assert region is not None
            return ImageFs(RegionReader(repo, disk, region, cache_bytes), region.fs)

        yield snapshot_id, disk, region, open_fs


def image_ls(repo: Repository, options: ImageLsOptions) -> ImageLsResult:
    """List a folder (or, with `recursive`, everything under it) of a partition of an image."""
    with opened(repo, options.snapshot, options.partition, "image-ls") as (snapshot_id, disk, region, open_fs):
        if region is None:
            return ImageLsResult(snapshot_id, None, partitions=partitions_of(disk))
        fs = open_fs()
        if options.recursive:
            entries = list(fs.walk(options.path, options.show_system))
        else:
            entries = fs.list(options.path, options.show_system)
        return ImageLsResult(snapshot_id, region.number, region.fs, options.path, entries)


def image_dump(repo: Repository, options: ImageDumpOptions, out: BinaryIO) -> ImageDumpResult:
    """Write one file's bytes from a partition of an image to `out`."""
    with opened(repo, options.snapshot, options.partition, "image-dump") as (snapshot_id, disk, region, open_fs):
        if region is None:
            numbers = ", ".join(f"{p.number} ({p.fs})" for p in partitions_of(disk))
            raise UsageError(f"the image has several partitions ({numbers}): choose one with --partition N")
        size = open_fs().read(options.path, out.write)
        return ImageDumpResult(snapshot_id, region.number, options.path, size)
