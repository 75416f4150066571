"""Partition tables: what lies where on a disk, and which sectors hold the tables themselves.

Detection order: a valid GPT (primary header, else the backup at the last sector), then a
filesystem boot sector at LBA 0 (a "superfloppy": FAT or NTFS without a table, whose 0x55AA
signature must not be taken for an MBR), then an MBR with its extended/logical chain, else no
table. A table that is damaged or contradicts itself (overlapping partitions) is recorded as
a warning and the disk imaged as one raw region: nothing is skipped on a table's word that
cannot be trusted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cairn.image import gpt
from cairn.image.device import ReadAt

MBR_ENTRY = struct.Struct("<B3sB3sII")
EXTENDED = (0x05, 0x0F, 0x85)
PROTECTIVE = 0xEE
MAX_LOGICAL = 256


@dataclass(frozen=True)
class Partition:
    """One partition, in bytes from the start of the disk."""

    number: int
    start: int
    length: int
    type: str
    uuid: str = ""
    label: str = ""

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class Layout:
    """A disk's table kind, partitions and the byte spans of the table sectors."""

    table: str
    sector: int
    disk_id: str = ""
    partitions: list[Partition] = field(default_factory=list)
    tables: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def find(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        numbers = [p.number for p in self.partitions]
        raise LookupError(f"the disk has no partition {number} (it has {numbers or 'none'})")


def _mbr_entries(sector0: bytes) -> list[tuple[int, int, int, int]]:
    """(status, type, first LBA, sector count) of the four primary slots."""
    out = []
    for slot in range(4):
        status, _, kind, _, lba, count = MBR_ENTRY.unpack_from(sector0, 446 + slot * 16)
        out.append((status, kind, lba, count))
    return out


def _detect_gpt(read: ReadAt, size: int, sector: int) -> Layout | None:
    sectors = size // sector
    warnings = []
    found = gpt.read_header(read, 1, sector, sectors)
    backup = None
    if found is not None:
        backup = gpt.read_header(read, found[0].alt_lba, sector, sectors)
        if backup is None:
            warnings.append("the GPT backup header is missing or damaged; only the primary is kept")
    else:
        backup = gpt.read_header(read, sectors - 1, sector, sectors)
        if backup is None:
            return None
        warnings.append("the primary GPT header is damaged; partitions come from the backup")
    header, entries = found or backup  # type: ignore[misc]
    spans = [(0, sector)]
    for hdr in (found[0] if found else None, backup[0] if backup else None):
        if hdr is not None:
            spans.append((hdr.my_lba * sector, sector))
            spans.append((hdr.entries_lba * sector, gpt.entry_sectors(hdr, sector) * sector))
    parts = []
    for e in gpt.parse_entries(header, entries):
        if not header.first_usable <= e.first_lba <= e.last_lba <= header.last_usable:
            warnings.append(f"GPT partition {e.number} lies outside the usable area")
        parts.append(
            Partition(e.number, e.first_lba * sector, (e.last_lba - e.first_lba + 1) * sector, e.type_guid, e.part_guid, e.name)
        )
    disk_id = gpt.guid_text(header.disk_guid)
    return Layout("gpt", sector, disk_id, parts, _merge(spans), warnings)


def _detect_mbr(read: ReadAt, size: int, sector: int) -> Layout | None:
    sector0 = read(0, sector)
    if sector0[510:512] != b"\x55\xaa":
        return None
    sectors = size // sector
    entries = _mbr_entries(sector0)
    used = [(n + 1, e) for n, e in enumerate(entries) if e[1] != 0 and e[3] != 0]
    if not used or any(status not in (0, 0x80) for status, *_ in entries):
        return None
    if any(lba == 0 or lba >= sectors for _, (_, _, lba, _) in used):
        return None
    layout = Layout("mbr", sector, f"0x{struct.unpack_from('<I', sector0, 440)[0]:08x}", tables=[(0, sector)])
    for number, (_, kind, lba, count) in used:
        if kind in EXTENDED:
            _walk_extended(read, layout, lba, min(count, sectors - lba))
        else:
            layout.partitions.append(Partition(number, lba * sector, count * sector, f"0x{kind:02x}"))
    layout.partitions.sort(key=lambda p: p.start)
    return layout


def _walk_extended(read: ReadAt, layout: Layout, ext_start: int, ext_count: int) -> None:
    """Follow the EBR chain; each EBR's first slot is a logical partition relative to the EBR,
    the second points at the next EBR relative to the extended partition's start."""
    sector = layout.sector
    ebr = ext_start
    seen: set[int] = set()
    number = 5
    while len(seen) < MAX_LOGICAL:
        if ebr in seen or not ext_start <= ebr < ext_start + ext_count:
            layout.warnings.append(f"the extended partition's EBR chain is broken at sector {ebr}")
            return
        seen.add(ebr)
        raw = read(ebr * sector, sector)
        if raw[510:512] != b"\x55\xaa":
            layout.warnings.append(f"the EBR at sector {ebr} has no signature")
            return
        layout.tables.append((ebr * sector, sector))
        entries = _mbr_entries(raw)
        _, kind, lba, count = entries[0]
        if kind != 0 and count != 0:
            layout.partitions.append(Partition(number, (ebr + lba) * sector, count * sector, f"0x{kind:02x}"))
            number += 1
        _, next_kind, next_lba, next_count = entries[1]
        if next_kind == 0 or next_count == 0:
            return
        ebr = ext_start + next_lba


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, length in sorted(spans):
        if out and start <= out[-1][0] + out[-1][1]:
            prev_start, prev_len = out[-1]
            out[-1] = (prev_start, max(prev_start + prev_len, start + length) - prev_start)
        else:
            out.append((start, length))
    return out


def _check(layout: Layout, size: int) -> Layout:
    """Clip partitions to the disk; fall back to no table if anything overlaps."""
    parts = []
    for p in layout.partitions:
        if p.start >= size:
            layout.warnings.append(f"partition {p.number} starts past the end of the disk; ignored")
            continue
        if p.end > size:
            layout.warnings.append(f"partition {p.number} runs past the end of the disk; clipped")
            p = Partition(p.number, p.start, size - p.start, p.type, p.uuid, p.label)
        parts.append(p)
    layout.partitions = sorted(parts, key=lambda p: p.start)
    layout.tables = _merge(layout.tables)
    spans = sorted([(p.start, p.end) for p in parts] + [(s, s + n) for s, n in layout.tables])
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])) or any(s + n > size for s, n in layout.tables):
        return Layout(
            "none", layout.sector, layout.disk_id,
            warnings=layout.warnings + [f"the {layout.table} table has overlapping areas: imaging the disk whole"],
        )
    return layout


def detect(read: ReadAt, size: int, sector: int, is_volume: bool) -> Layout:
    """The layout of a disk of `size` bytes; `is_volume` says a filesystem starts at byte 0."""
    if size >= 3 * sector:
        candidates = [sector] if sector != 512 else [512, 4096]
        for guess in candidates:
            found = _detect_gpt(read, size, guess) if size >= 3 * guess else None
            if found is not None:
                return _check(found, size)
    if not is_volume and size >= sector:
        found = _detect_mbr(read, size, sector)
        if found is not None:
            if any(p.type == f"0x{PROTECTIVE:02x}" for p in found.partitions):
                found.warnings.append("a protective MBR without a valid GPT: imaging the disk whole")
                return Layout("none", sector, warnings=found.warnings)
            return _check(found, size)
    return Layout("none", sector)
