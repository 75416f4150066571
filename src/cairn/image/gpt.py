"""GUID partition tables: reading both headers with their CRCs, and moving the backup.

The GPT keeps a primary header (LBA 1) and entry array near the start, and a backup entry array
and header in the last sectors. A restore onto a larger disk must move the backup to the new
end, or firmware and `sgdisk -v` report a damaged table; `relocate` does that and fixes the
CRCs. Partition entries themselves never change, so their CRC stays valid.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, replace

from cairn.errors import DamagedObject
from cairn.image.device import ReadAt

SIGNATURE = b"EFI PART"
HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes, little-endian as on disk
ENTRY = struct.Struct("<16s16sQQQ72s")
MAX_ENTRY_BYTES = 1 << 20


@dataclass(frozen=True)
class Header:
    """A GPT header that passed its signature, size and CRC checks."""

    revision: int
    header_size: int
    my_lba: int
    alt_lba: int
    first_usable: int
    last_usable: int
    disk_guid: bytes
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int

    @property
    def entry_bytes(self) -> int:
        return self.entry_count * self.entry_size

    def pack(self, sector: int) -> bytes:
        """The header sector with a freshly computed CRC."""
        fields = [
            SIGNATURE, self.revision, self.header_size, 0, 0, self.my_lba, self.alt_lba,
            self.first_usable, self.last_usable, self.disk_guid, self.entries_lba,
            self.entry_count, self.entry_size, self.entries_crc,
        ]
        body = bytearray(HEADER.pack(*fields).ljust(self.header_size, b"\0"))
        struct.pack_into("<I", body, 16, zlib.crc32(body))
        return bytes(body).ljust(sector, b"\0")


@dataclass(frozen=True)
class Entry:
    number: int
    first_lba: int
    last_lba: int
    type_guid: str
    part_guid: str
    name: str


def guid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)).upper()


def parse_header(raw: bytes, lba: int, sector: int) -> Header | None:
    """The header in one sector, or None if it is absent or fails a check."""
    if len(raw) < HEADER.size or raw[:8] != SIGNATURE:
        return None
    fields = HEADER.unpack_from(raw)
    size = fields[2]
    if not HEADER.size <= size <= min(sector, len(raw)):
        return None
    body = bytearray(raw[:size])
    body[16:20] = b"\0\0\0\0"
    if zlib.crc32(body) != fields[3]:
        return None
    header = Header(
        revision=fields[1], header_size=size, my_lba=fields[5], alt_lba=fields[6],
        first_usable=fields[7], last_usable=fields[8], disk_guid=fields[9],
        entries_lba=fields[10], entry_count=fields[11], entry_size=fields[12], entries_crc=fields[13],
    )
    if header.my_lba != lba or header.entry_size < 128 or header.entry_size % 8:
        return None
    if not 0 < header.entry_bytes <= MAX_ENTRY_BYTES:
        return None
    return header


def entry_sectors(header: Header, sector: int) -> int:
    return -(-header.entry_bytes // sector)


def read_header(read: ReadAt, lba: int, sector: int, disk_sectors: int) -> tuple[Header, bytes] | None:
    """A header at `lba` and its entry array, if both pass their CRCs and fit on the disk."""
    if not 0 < lba < disk_sectors:
        return None
    header = parse_header(read(lba * sector, sector), lba, sector)
    if header is None or header.entries_lba + entry_sectors(header, sector) > disk_sectors:
        return None
    entries = read(header.entries_lba * sector, header.entry_bytes)
    if zlib.crc32(entries) != header.entries_crc:
        return None
    return header, entries


def parse_entries(header: Header, entries: bytes) -> list[Entry]:
    out = []
    for i in range(header.entry_count):
        at = i * header.entry_size
        type_raw, part_raw, first, last, _attrs, name = ENTRY.unpack_from(entries, at)
        if type_raw == b"\0" * 16:
            continue
        label = name.decode("utf-16-le", "replace").split("\0", 1)[0]
        out.append(Entry(i + 1, first, last, guid_text(type_raw), guid_text(part_raw), label))
    return out


def table_bytes(tables: list[tuple[int, bytes]], offset: int, length: int) -> bytes:
    """Bytes `[offset, offset + length)` out of the stored table areas; they must hold them."""
    for start, data in tables:
        if start <= offset and offset + length <= start + len(data):
            return data[offset - start : offset - start + length]
    raise DamagedObject(f"the disk description lacks the GPT bytes at {offset}")


def relocate(
    tables: list[tuple[int, bytes]], sector: int, new_size: int
) -> tuple[list[tuple[int, bytes]], list[tuple[int, int]]]:
    """Table areas for a larger disk, and the spans of the old backup to clear.

    The primary header gets the new backup position and last usable LBA (so the partitions can
    grow into the new space, as `sgdisk -e` does); the backup header and entries go to the new
    last sectors; a protective MBR's size field is widened.
    """
    primary = parse_header(table_bytes(tables, sector, sector), 1, sector)
    if primary is None:
        raise DamagedObject("the disk description holds no valid primary GPT header")
    entries = table_bytes(tables, primary.entries_lba * sector, primary.entry_bytes)
    if zlib.crc32(entries) != primary.entries_crc:
        raise DamagedObject("the disk description's GPT entries fail their CRC")
    count = entry_sectors(primary, sector)
    last = new_size // sector - 1
    new_primary = replace(primary, alt_lba=last, last_usable=last - count - 1)
    backup = replace(new_primary, my_lba=last, alt_lba=1, entries_lba=last - count)
    old_end = (primary.last_usable + 1) * sector
    kept = [(off, data) for off, data in tables if off + len(data) <= old_end]
    cleared = [(off, len(data)) for off, data in tables if off + len(data) > old_end]
    out = []
    for off, data in kept:
        patched = bytearray(data)
        if off <= sector and off + len(data) >= 2 * sector:
            patched[sector - off : 2 * sector - off] = new_primary.pack(sector)
        if off == 0 and patched[510:512] == b"\x55\xaa":
            for slot in range(4):
                at = 446 + slot * 16
                if patched[at + 4] == 0xEE:
                    struct.pack_into("<I", patched, at + 12, min(new_size // sector - 1, 0xFFFFFFFF))
        out.append((off, bytes(patched)))
    out.append(((last - count) * sector, entries.ljust(count * sector, b"\0") + backup.pack(sector)))
    return out, cleared
