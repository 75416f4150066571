"""One imaging plugin per filesystem: `probe()` says whether it is one, `used_ranges()` where.

Each plugin module (ext, fat, ntfs, raw) exposes::

    probe(read, length) -> FsInfo | None
    used_ranges(read, info) -> Iterator[(start, end)]   # bytes, sorted, disjoint

`probe` reads and checks everything a later step will trust (group descriptors, the FAT
geometry, the $Bitmap run list), so that a damaged filesystem is met here and imaged raw, not
halfway through an image. `used_ranges` streams: a 2 TB filesystem's bitmap is never held whole.
Bytes of the volume past `info.size` (an NTFS backup boot sector, slack after the last group)
are always read: `used_in_volume` adds them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cairn.image.device import ReadAt


class FsError(Exception):
    """The volume looks like a filesystem but its structures do not add up; image it raw."""


@dataclass(frozen=True)
class FsInfo:
    """What a probe learnt: the kind, allocation unit, how far the filesystem reaches, and
    whatever the plugin needs again in `used_ranges` (`extra`)."""

    kind: str
    block: int
    size: int
    used: int = 0
    label: str = ""
    extra: object = None


class Plugin(Protocol):
    def probe(self, read: ReadAt, length: int) -> FsInfo | None: ...

    def used_ranges(self, read: ReadAt, info: FsInfo) -> Iterator[tuple[int, int]]: ...


def plugins() -> list[Plugin]:
    from cairn.image.fs import ext, fat, ntfs

    return [ext, ntfs, fat]  # type: ignore[list-item]


def probe(read: ReadAt, length: int) -> tuple[FsInfo, Plugin] | tuple[None, None]:
    """The first plugin that recognises the volume, or (None, None).

    Raises FsError when a plugin recognises its filesystem but cannot trust it (damaged
    structures, a journal that needs recovery, an unsupported feature): the caller images the
    volume whole and says why.
    """
    for plugin in plugins():
        try:
            info = plugin.probe(read, length)
        except FsError:
            raise
        except (ValueError, IndexError, struct.error) as exc:
            name = getattr(plugin, "__name__", "filesystem").rsplit(".", 1)[-1]
            raise FsError(f"{name} structures do not parse: {exc}") from None
        if info is not None:
            return info, plugin
    return None, None


def used_in_volume(plugin: Plugin, read: ReadAt, info: FsInfo, length: int) -> Iterator[tuple[int, int]]:
    """A plugin's used ranges, checked (sorted, inside the volume) and merged, plus the tail."""
    last_end = 0
    pending: tuple[int, int] | None = None
    for start, end in plugin.used_ranges(read, info):
        if start < last_end or end <= start or end > info.size:
            raise FsError(f"{info.kind}: used range {start}-{end} out of order or outside the filesystem")
        last_end = end
        if pending is not None and pending[1] == start:
            pending = (pending[0], end)
            continue
        if pending is not None:
            yield pending
        pending = (start, end)
    if info.size < length:
        if pending is not None and pending[1] == info.size:
            pending = (pending[0], length)
        else:
            if pending is not None:
                yield pending
            pending = (info.size, length)
    if pending is not None:
        yield pending


def bitmap_runs(bitmap: bytes, base: int, limit: int) -> Iterator[tuple[int, int]]:
    """Runs of set bits (least significant bit first) as (first, end) unit numbers + `base`,
    cut at `limit` units. NumPy finds the edges, so a 32768-bit group costs microseconds."""
    import numpy as np

    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")[:limit]
    if not bits.any():
        return
    edges = np.flatnonzero(np.diff(np.concatenate(([0], bits.astype(np.int8), [0]))))
    for start, end in zip(edges[0::2].tolist(), edges[1::2].tolist()):
        yield base + start, base + end
