"""The fallback for anything no plugin understands (swap, unknown filesystems, gaps, or
`--all-blocks`): every byte is in use. Zero chunks still cost nothing: the imager stores them
as ZERO runs, so unallocated space and empty swap are cheap without being understood."""

from __future__ import annotations

from collections.abc import Iterator

from cairn.image.device import ReadAt
from cairn.image.fs import FsInfo


def probe(read: ReadAt, length: int) -> FsInfo:
    return FsInfo("raw", 512, length)


def used_ranges(read: ReadAt, info: FsInfo) -> Iterator[tuple[int, int]]:
    yield 0, info.size
