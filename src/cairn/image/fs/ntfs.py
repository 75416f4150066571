"""NTFS: used clusters from the $Bitmap file, found through the MFT without any library.

The boot sector gives the cluster size and where the MFT starts; MFT record 0 ($MFT) maps MFT
record numbers to clusters (the MFT may be fragmented), record 6 is $Bitmap, whose unnamed
$DATA attribute's run list says where the bitmap lives. Records are protected by update
sequence fixups, applied before anything in them is trusted. A $Bitmap whose data sits in
another record ($ATTRIBUTE_LIST, a hugely fragmented volume) is not followed: the volume is then
imaged whole. The backup boot sector lies past the last cluster and is always read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cairn.image.device import ReadAt
from cairn.image.fs import FsError, FsInfo, bitmap_runs

BITMAP_PIECE = 1 << 20  # bitmap bytes read at a time (8 Mi clusters, 32 GiB at 4 KiB)
FIXUP_STRIDE = 512
ATTR_DATA, ATTR_VOLUME_NAME, ATTR_END = 0x80, 0x60, 0xFFFFFFFF


@dataclass(frozen=True)
class Geometry:
    cluster: int
    clusters: int
    bitmap_runs: tuple[tuple[int, int], ...]
    """(first cluster, count) of the $Bitmap data, in file order."""


def _record_size(boot: bytes, cluster: int) -> int:
    raw = struct.unpack_from("<b", boot, 0x40)[0]
    return cluster * raw if raw > 0 else 1 << -raw


def apply_fixups(record: bytearray) -> None:
    if record[:4] != b"FILE":
        raise FsError("an MFT record lacks its FILE signature")
    usa_offset, usa_count = struct.unpack_from("<HH", record, 4)
    if usa_count < 1 or usa_offset + 2 * usa_count > len(record) or (usa_count - 1) * FIXUP_STRIDE > len(record):
        raise FsError("an MFT record has a bad update sequence")
    check = record[usa_offset : usa_offset + 2]
    for i in range(1, usa_count):
        end = i * FIXUP_STRIDE
        if record[end - 2 : end] != check:
            raise FsError("an MFT record is torn (update sequence mismatch)")
        record[end - 2 : end] = record[usa_offset + 2 * i : usa_offset + 2 * i + 2]


def attributes(record: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, attribute bytes) of every unnamed attribute of a fixed-up record."""
    at = struct.unpack_from("<H", record, 0x14)[0]
    while at + 16 <= len(record):
        kind, size = struct.unpack_from("<II", record, at)
        if kind == ATTR_END:
            return
        if size < 16 or at + size > len(record):
            raise FsError("an MFT attribute runs past its record")
        if record[at + 9] == 0:  # unnamed
            yield kind, record[at : at + size]
        at += size


def decode_runs(attr: bytes) -> list[tuple[int | None, int]]:
    """A non-resident attribute's run list as (first cluster or None if sparse, count)."""
    at = struct.unpack_from("<H", attr, 0x20)[0]
    runs: list[tuple[int | None, int]] = []
    lcn = 0
    while at < len(attr) and attr[at]:
        size_len, off_len = attr[at] & 0x0F, attr[at] >> 4
        if size_len == 0 or size_len > 8 or off_len > 8 or at + 1 + size_len + off_len > len(attr):
            raise FsError("a malformed NTFS run list")
        count = int.from_bytes(attr[at + 1 : at + 1 + size_len], "little")
        if off_len:
            lcn += int.from_bytes(attr[at + 1 + size_len : at + 1 + size_len + off_len], "little", signed=True)
            runs.append((lcn, count))
        else:
            runs.append((None, count))
        at += 1 + size_len + off_len
    return runs


def _data_attribute(record: bytes) -> bytes:
    for kind, attr in attributes(record):
        if kind == ATTR_DATA:
            return attr
    raise FsError("an MFT record has no unnamed $DATA attribute in its base record")


def probe(read: ReadAt, length: int) -> FsInfo | None:
    if length < 8192:
        return None
    boot = read(0, 512)
    if boot[3:11] != b"NTFS    " or boot[510:512] != b"\x55\xaa":
        return None
    bps, spc_raw = struct.unpack_from("<HB", boot, 0x0B)
    total_sectors, mft_lcn = struct.unpack_from("<QQ", boot, 0x28)
    spc = spc_raw if spc_raw <= 0x80 else 1 << (256 - spc_raw)
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
        return None
    cluster = bps * spc
    clusters = total_sectors // spc
    record_size = _record_size(boot, cluster)
    if total_sectors * bps > length or not 0 < mft_lcn < clusters or record_size not in (1024, 2048, 4096):
        raise FsError("NTFS geometry does not fit the volume")

    def record_at(offset: int) -> bytes:
        if offset + record_size > clusters * cluster:
            raise FsError("an MFT record lies outside the volume")
        rec = bytearray(read(offset, record_size))
        apply_fixups(rec)
        return bytes(rec)

    mft_runs = decode_runs(_data_attribute(record_at(mft_lcn * cluster)))

    def record(number: int) -> bytes:
        vcn, within = divmod(number * record_size, cluster)
        for lcn, count in mft_runs:
            if vcn < count and lcn is not None:
                return record_at((lcn + vcn) * cluster + within)
            vcn -= count
        raise FsError(f"MFT record {number} is not mapped")

    bitmap_attr = _data_attribute(record(6))
    if not bitmap_attr[8]:
        raise FsError("a resident $Bitmap is not expected on a real volume")
    runs = decode_runs(bitmap_attr)
    needed = -(-clusters // 8)
    have = 0
    for lcn, count in runs:
        if lcn is None or lcn < 0 or lcn + count > clusters:
            raise FsError("$Bitmap data lies outside the volume or is sparse")
        have += count * cluster
    if have < needed:
        raise FsError("$Bitmap is shorter than the volume needs")
    label = ""
    for kind, attr in attributes(record(3)):
        if kind == ATTR_VOLUME_NAME and not attr[8]:
            size, offset = struct.unpack_from("<IH", attr, 0x10)
            label = attr[offset : offset + size].decode("utf-16-le", "replace")
    geo = Geometry(cluster, clusters, tuple((lcn, count) for lcn, count in runs if lcn is not None))
    return FsInfo("ntfs", cluster, clusters * cluster, 0, label, geo)


def used_ranges(read: ReadAt, info: FsInfo) -> Iterator[tuple[int, int]]:
    geo = info.extra
    assert isinstance(geo, Geometry)
    remaining = -(-geo.clusters // 8)
    bit_base = 0
    pending: tuple[int, int] | None = None
    for lcn, count in geo.bitmap_runs:
        offset, run_bytes = lcn * geo.cluster, count * geo.cluster
        pos = 0
        while pos < run_bytes and remaining > 0:
            n = min(BITMAP_PIECE, run_bytes - pos, remaining)
            piece = read(offset + pos, n)
            for a, b in bitmap_runs(piece, bit_base, min(n * 8, geo.clusters - bit_base)):
                start, end = a * geo.cluster, b * geo.cluster
                if pending is not None and pending[1] == start:
                    pending = (pending[0], end)
                    continue
                if pending is not None:
                    yield pending
                pending = (start, end)
            pos += n
            remaining -= n
            bit_base += n * 8
    if pending is not None:
        yield pending
