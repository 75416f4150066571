"""ext2/3/4: used blocks from the block bitmaps, the way the kernel itself reads them.

Three things make the on-disk bitmaps alone wrong, and each is handled here:

* A group flagged BLOCK_UNINIT (only honoured with group-descriptor checksums, as the kernel
  does) has no bitmap on disk: its used blocks are its superblock backup, descriptor and
  reserved-GDT blocks, plus any group's bitmaps or inode table placed in it (flex_bg).
* With meta_bg the descriptor blocks are spread over the first, second and last group of each
  meta group; with sparse_super2 only two groups hold superblock backups.
* The last group's bitmap is padded with ones past the end of the filesystem.

A journal that still needs recovery means the bitmaps may lag behind the journal: such a
filesystem is refused here (and so imaged whole), since copying only the blocks the stale
bitmaps name could lose data that the journal replay would point at.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cairn.image.device import ReadAt
from cairn.image.fs import FsError, FsInfo, bitmap_runs

MAGIC = 0xEF53
COMPAT_SPARSE_SUPER2 = 0x200
INCOMPAT_RECOVER, INCOMPAT_JOURNAL_DEV, INCOMPAT_META_BG, INCOMPAT_64BIT = 0x4, 0x8, 0x10, 0x80
INCOMPAT_EXT4 = 0x40 | 0x80 | 0x100 | 0x200 | 0x8000  # extents, 64bit, mmp, flex_bg, inline data
RO_SPARSE_SUPER, RO_GDT_CSUM, RO_BIGALLOC, RO_METADATA_CSUM = 0x1, 0x10, 0x200, 0x400
RO_EXT4 = 0x8 | 0x10 | 0x20 | 0x40 | 0x400
COMPAT_HAS_JOURNAL = 0x4
BG_BLOCK_UNINIT = 0x2
MAX_GROUPS = 1 << 20  # 128 TiB at 4 KiB blocks; bounds what a hostile superblock can make us hold


@dataclass(frozen=True)
class Geometry:
    """The superblock fields and group descriptors used-block reading needs."""

    block: int
    blocks: int
    first_data_block: int
    per_group: int
    groups: int
    has_super: tuple[bool, ...]
    base_meta: tuple[int, ...]
    bitmaps: tuple[int, ...]
    uninit: tuple[bool, ...]
    metadata: tuple[tuple[int, int], ...]
    """(first block, count) of every group's bitmaps and inode table, for uninit groups."""

    def group_start(self, group: int) -> int:
        return self.first_data_block + group * self.per_group


def _u16(raw: bytes | bytearray, at: int) -> int:
    return int(struct.unpack_from("<H", raw, at)[0])


def _u32(raw: bytes | bytearray, at: int) -> int:
    return int(struct.unpack_from("<I", raw, at)[0])


def _is_power(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


def _has_super(group: int, compat: int, ro: int, backups: tuple[int, int]) -> bool:
    if group == 0:
        return True
    if compat & COMPAT_SPARSE_SUPER2:
        return group in backups
    if group <= 1 or not ro & RO_SPARSE_SUPER:
        return True
    return group % 2 == 1 and (_is_power(group, 3) or _is_power(group, 5) or _is_power(group, 7))


def probe(read: ReadAt, length: int) -> FsInfo | None:
    if length < 2048:
        return None
    sb = read(1024, 1024)
    if _u16(sb, 0x38) != MAGIC:
        return None
    compat, incompat, ro = _u32(sb, 0x5C), _u32(sb, 0x60), _u32(sb, 0x64)
    if incompat & INCOMPAT_JOURNAL_DEV:
        return None  # an external journal, not a filesystem: imaged whole
    if ro & RO_BIGALLOC:
        raise FsError("ext bigalloc (cluster bitmaps) is not understood yet")
    if incompat & INCOMPAT_RECOVER:
        raise FsError("the ext journal needs recovery (not cleanly unmounted)")
    geometry = _geometry(read, sb, compat, incompat, ro, length)
    kind = "ext4" if incompat & INCOMPAT_EXT4 or ro & RO_EXT4 else "ext3" if compat & COMPAT_HAS_JOURNAL else "ext2"
    free = _u32(sb, 0x0C) + ((_u32(sb, 0x158) << 32) if incompat & INCOMPAT_64BIT else 0)
    label = sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace")
    used = max(0, geometry.blocks - free) * geometry.block
    return FsInfo(kind, geometry.block, geometry.blocks * geometry.block, used, label, geometry)


def _geometry(read: ReadAt, sb: bytes, compat: int, incompat: int, ro: int, length: int) -> Geometry:
    log = _u32(sb, 0x18)
    if log > 6:
        raise FsError("impossible ext block size")
    block = 1024 << log
    blocks = _u32(sb, 0x04) + ((_u32(sb, 0x150) << 32) if incompat & INCOMPAT_64BIT else 0)
    first = _u32(sb, 0x14)
    per_group = _u32(sb, 0x20)
    inodes_per_group = _u32(sb, 0x28)
    inode_size = _u16(sb, 0x58) if _u32(sb, 0x4C) >= 1 else 128
    desc_size = _u16(sb, 0xFE) if incompat & INCOMPAT_64BIT else 32
    if not (first in (0, 1) and 0 < per_group <= 8 * block and blocks > first and blocks * block <= length):
        raise FsError("ext superblock geometry does not fit the volume")
    if desc_size < 32 or desc_size > block or desc_size & (desc_size - 1) or inode_size < 128:
        raise FsError("impossible ext descriptor or inode size")
    groups = -(-(blocks - first) // per_group)
    if per_group < 256 or per_group % 8 or groups > MAX_GROUPS:
        raise FsError("impossible ext group geometry")
    per_block = block // desc_size
    gdt_blocks = -(-groups // per_block)
    backups = (_u32(sb, 0x24C), _u32(sb, 0x250))
    meta_bg = bool(incompat & INCOMPAT_META_BG)
    first_meta = _u32(sb, 0x104) if meta_bg else gdt_blocks
    reserved = _u16(sb, 0xCE)
    has_super = tuple(_has_super(g, compat, ro, backups) for g in range(groups))

    def group_start(g: int) -> int:
        return first + g * per_group

    raw = bytearray()
    for i in range(gdt_blocks):
        where = first + 1 + i if i < first_meta else group_start(i * per_block) + has_super[i * per_block]
        if where >= blocks:
            raise FsError("ext descriptor block outside the filesystem")
        raw += read(where * block, block)
    checksums = bool(ro & (RO_GDT_CSUM | RO_METADATA_CSUM))
    base, bitmaps, uninit, metadata = [], [], [], []
    table_blocks = -(-inodes_per_group * inode_size // block)
    for g in range(groups):
        d = g * desc_size
        wide = desc_size >= 64
        bitmap = _u32(raw, d) | ((_u32(raw, d + 0x20) << 32) if wide else 0)
        inode_bitmap = _u32(raw, d + 4) | ((_u32(raw, d + 0x24) << 32) if wide else 0)
        table = _u32(raw, d + 8) | ((_u32(raw, d + 0x28) << 32) if wide else 0)
        flags = _u16(raw, d + 0x12)
        if not meta_bg or g < first_meta * per_block:
            count = has_super[g] * (1 + (first_meta if meta_bg else gdt_blocks) + reserved)
        else:
            in_meta = g % per_block
            count = has_super[g] + (in_meta in (0, 1, per_block - 1))
        base.append(count)
        bitmaps.append(bitmap)
        uninit.append(checksums and bool(flags & BG_BLOCK_UNINIT))
        if not uninit[-1] and not first <= bitmap < blocks:
            raise FsError(f"ext group {g} has its block bitmap outside the filesystem")
        metadata.extend([(bitmap, 1), (inode_bitmap, 1), (table, table_blocks)])
    return Geometry(
        block, blocks, first, per_group, groups, has_super, tuple(base), tuple(bitmaps),
        tuple(uninit), tuple(sorted(metadata)),
    )


def used_ranges(read: ReadAt, info: FsInfo) -> Iterator[tuple[int, int]]:
    geo = info.extra
    assert isinstance(geo, Geometry)
    bs = geo.block
    if geo.first_data_block:  # a 1 KiB-block filesystem: block 0 (boot sector) is in no group
        yield 0, bs
    longest = max((n for _, n in geo.metadata), default=1)
    for g in range(geo.groups):
        start = geo.group_start(g)
        count = min(geo.per_group, geo.blocks - start)
        end = start + count
        if not geo.uninit[g]:
            bitmap = read(geo.bitmaps[g] * bs, bs)
            for a, b in bitmap_runs(bitmap, start, count):
                yield a * bs, b * bs
            continue
        # No bitmap on disk: what the kernel would synthesise, plus other groups' metadata.
        used = [(start, start + geo.base_meta[g])] if geo.base_meta[g] else []
        i = bisect.bisect_left(geo.metadata, (start - longest, 0))
        while i < len(geo.metadata) and geo.metadata[i][0] < end:
            first, n = geo.metadata[i]
            if first + n > start:
                used.append((max(first, start), min(first + n, end)))
            i += 1
        for a, b in _merge(used):
            yield a * bs, b * bs


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
