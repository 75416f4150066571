"""FAT12/16/32: a cluster is in use when its FAT entry is not zero (and not marked bad).

Everything before the data area (boot sector, reserved sectors with the FAT32 FSInfo and backup
boot sector, every FAT copy, the FAT12/16 root directory) is always used. The type follows the
cluster count, as the specification says, not the label in the boot sector. Bad clusters are
left out: reading them would fail, and their content means nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cairn.image.device import ReadAt
from cairn.image.fs import FsError, FsInfo

FAT_PIECE = 4 << 20  # bytes of FAT read at a time: a 2 TB FAT32 has a FAT of up to 256 MiB


@dataclass(frozen=True)
class Geometry:
    sector: int
    cluster: int
    fat_offset: int
    data_offset: int
    clusters: int
    bits: int


def probe(read: ReadAt, length: int) -> FsInfo | None:
    if length < 512 * 4:
        return None
    boot = read(0, 512)
    if boot[510:512] != b"\x55\xaa" or boot[0] not in (0xEB, 0xE9) or boot[3:11] == b"NTFS    ":
        return None
    bps, spc, reserved, fats, root_entries, total16, media, fat16 = struct.unpack_from("<HBHBHHBH", boot, 11)
    total32, fat32 = struct.unpack_from("<II", boot, 32)
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or reserved == 0 or fats == 0:
        return None
    if media != 0xF0 and media < 0xF8:
        return None
    fat_sectors = fat16 or fat32
    total = total16 or total32
    root_sectors = -(-root_entries * 32 // bps)
    data_start = reserved + fats * fat_sectors + root_sectors
    if fat_sectors == 0 or total <= data_start or total * bps > length:
        raise FsError("FAT geometry does not fit the volume")
    clusters = (total - data_start) // spc
    bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    if bits == 32 and (fat16 or root_entries):
        raise FsError("FAT32 by cluster count but with FAT16 fields")
    if (clusters + 2) * bits > fat_sectors * bps * 8:
        raise FsError("the FAT is too small for the clusters")
    label_at = 0x47 if bits == 32 else 0x2B
    label = boot[label_at : label_at + 11].decode("ascii", "replace").strip()
    geo = Geometry(bps, spc * bps, reserved * bps, data_start * bps, clusters, bits)
    block = _alignment(geo.cluster, geo.data_offset)
    return FsInfo(f"fat{bits}", block, total * bps, 0, label, geo)


def _alignment(cluster: int, data_offset: int) -> int:
    """The largest power of two that divides both, so masks line up with clusters and the
    data area at once (mkfs tools do not always align the data area to a cluster)."""
    block = cluster
    while data_offset % block:
        block //= 2
    return max(block, 512)


def _entries(raw: bytes, bits: int) -> np.ndarray:
    if bits == 32:
        return np.frombuffer(raw, dtype="<u4") & 0x0FFFFFFF
    if bits == 16:
        return np.frombuffer(raw, dtype="<u2").astype(np.uint32)
    b = np.frombuffer(raw + b"\0" * (-len(raw) % 3), dtype=np.uint8).reshape(-1, 3).astype(np.uint32)
    return np.stack([b[:, 0] | (b[:, 1] & 0x0F) << 8, b[:, 1] >> 4 | b[:, 2] << 4], axis=1).reshape(-1)


def used_ranges(read: ReadAt, info: FsInfo) -> Iterator[tuple[int, int]]:
    geo = info.extra
    assert isinstance(geo, Geometry)
    yield 0, geo.data_offset
    bad = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}[geo.bits]
    count = geo.clusters + 2  # entries 0 and 1 are reserved
    per_piece = FAT_PIECE * 8 // geo.bits if geo.bits != 12 else count
    pending: tuple[int, int] | None = None
    for first in range(0, count, per_piece):
        n = min(per_piece, count - first)
        raw = read(geo.fat_offset + first * geo.bits // 8, -(-n * geo.bits // 8))
        entries = _entries(raw, geo.bits)[:n]
        used = (entries != 0) & (entries != bad)
        if first == 0:
            used[:2] = False
        edges = np.flatnonzero(np.diff(np.concatenate(([0], used.astype(np.int8), [0]))))
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            start = geo.data_offset + (first + a - 2) * geo.cluster
            end = geo.data_offset + (first + b - 2) * geo.cluster
            if pending is not None and pending[1] == start:
                pending = (pending[0], end)
                continue
            if pending is not None:
                yield pending
            pending = (start, end)
    if pending is not None:
        yield pending
