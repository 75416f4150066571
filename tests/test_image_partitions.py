"""Partition tables as sfdisk writes them: GPT (both headers, CRCs), MBR with logical
partitions, and the damaged and contradictory tables that must fall back to a whole-disk read."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from test_image_support import MiB, needs, partitions_of, put, run, sfdisk

from cairn.image import gpt, partitions
from cairn.image.device import Device


def layout_of(path: Path) -> partitions.Layout:
    with Device(str(path)) as dev:
        return partitions.detect(dev.volume(0, dev.size), dev.size, dev.sector, is_volume=False)


GPT_SCRIPT = "label: gpt\nsize=8M, type=uefi, name=esp\nsize=20M, type=linux\nsize=4M, type=swap\n"
MBR_SCRIPT = """label: dos
1 : start=2048, size=16384, type=83
2 : start=18432, size=81920, type=5
3 : start=100352, size=16384, type=c
5 : start=20480, size=20480, type=83
6 : start=43008, size=20480, type=7
"""


@needs("sfdisk")
def test_gpt_partitions_match_sfdisk(tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    expected = sfdisk(disk, 64 * MiB, GPT_SCRIPT)
    layout = layout_of(disk)
    assert layout.table == "gpt" and not layout.warnings
    assert [(p.start, p.length, p.type, p.uuid) for p in layout.partitions] == [
        (e["start"] * 512, e["size"] * 512, e["type"], e["uuid"]) for e in expected
    ]
    assert layout.partitions[0].label == "esp"
    # LBA 0-33 (protective MBR, header, 128 entries) and the last 33 sectors (entries, header)
    assert layout.tables == [(0, 34 * 512), (64 * MiB - 33 * 512, 33 * 512)]


@needs("sfdisk")
def test_gpt_with_a_damaged_primary_header_is_read_from_the_backup(tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    expected = sfdisk(disk, 64 * MiB, GPT_SCRIPT)
    put(disk, 512 + 40, b"\xff")  # first usable LBA changes: the header CRC no longer matches
    layout = layout_of(disk)
    assert layout.table == "gpt"
    assert any("backup" in w for w in layout.warnings)
    assert [p.start for p in layout.partitions] == [e["start"] * 512 for e in expected]


@needs("sfdisk")
def test_gpt_entries_failing_their_crc_are_not_trusted(tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    sfdisk(disk, 64 * MiB, GPT_SCRIPT)
    put(disk, 1024 + 32, b"\x01")  # first entry's start LBA in the primary array
    layout = layout_of(disk)
    assert layout.table == "gpt" and any("backup" in w for w in layout.warnings)
    put(disk, 64 * MiB - 33 * 512 + 32, b"\x01")  # the same in the backup array
    assert layout_of(disk).table == "none"


@needs("sfdisk")
def test_mbr_with_extended_and_logical_partitions(tmp_path: Path) -> None:
    disk = tmp_path / "mbr.img"
    expected = sfdisk(disk, 64 * MiB, MBR_SCRIPT)
    layout = layout_of(disk)
    assert layout.table == "mbr" and not layout.warnings
    real = {int(e["node"].rsplit("img", 1)[1]): e for e in expected if e["type"] != "5"}
    assert sorted(real) == [1, 3, 5, 6]
    assert sorted((p.number, p.start, p.length, p.type) for p in layout.partitions) == [
        (n, e["start"] * 512, e["size"] * 512, f"0x{int(e['type'], 16):02x}") for n, e in sorted(real.items())
    ]
    # The MBR and one EBR per logical partition, each a sector in front of its partition.
    ebrs = [start for start, _ in layout.tables[1:]]
    assert layout.tables[0] == (0, 512) and len(ebrs) == 2
    assert all(any(p.start - 2048 * 512 <= e < p.start for p in layout.partitions) for e in ebrs)


@needs("sfdisk")
def test_an_ebr_chain_that_loops_ends_with_a_warning(tmp_path: Path) -> None:
    disk = tmp_path / "mbr.img"
    expected = sfdisk(disk, 64 * MiB, MBR_SCRIPT)
    extended = next(e for e in expected if e["type"] == "5")
    first_ebr = extended["start"] * 512
    # Point the first EBR's "next" slot back at itself.
    put(disk, first_ebr + 446 + 16, struct.pack("<B3sB3sII", 0, b"", 5, b"", 0, 100))
    layout = layout_of(disk)
    assert any("chain" in w for w in layout.warnings)
    assert sorted(p.number for p in layout.partitions) == [1, 3, 5]


def test_overlapping_mbr_partitions_mean_no_table(tmp_path: Path) -> None:
    disk = tmp_path / "bad.img"
    sector0 = bytearray(512)
    struct.pack_into("<B3sB3sII", sector0, 446, 0, b"", 0x83, b"", 2048, 20000)
    struct.pack_into("<B3sB3sII", sector0, 462, 0, b"", 0x83, b"", 10000, 20000)
    sector0[510:512] = b"\x55\xaa"
    with open(disk, "wb") as f:
        f.truncate(32 * MiB)
    put(disk, 0, bytes(sector0))
    layout = layout_of(disk)
    assert layout.table == "none" and any("overlapping" in w for w in layout.warnings)


@needs("mkfs.vfat")
def test_a_filesystem_at_byte_zero_is_not_an_mbr(tmp_path: Path) -> None:
    volume = tmp_path / "fat.img"
    run("mkfs.vfat", "-C", str(volume), str(16 * 1024))
    with Device(str(volume)) as dev:
        layout = partitions.detect(dev.volume(0, dev.size), dev.size, 512, is_volume=True)
    assert layout.table == "none"


@needs("sfdisk", "sgdisk")
def test_relocating_the_gpt_for_a_larger_disk_gives_a_valid_table(tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    sfdisk(disk, 64 * MiB, GPT_SCRIPT)
    layout = layout_of(disk)
    data = disk.read_bytes()
    tables = [(start, data[start : start + length]) for start, length in layout.tables]
    moved, cleared = gpt.relocate(tables, 512, 96 * MiB)
    assert cleared == [(64 * MiB - 33 * 512, 33 * 512)]
    bigger = tmp_path / "bigger.img"
    with open(bigger, "wb") as f:
        f.truncate(96 * MiB)
    for start, blob in moved:
        put(bigger, start, blob)
    verdict = run("sgdisk", "-v", str(bigger))
    assert "No problems found" in verdict, verdict
    assert [p["start"] for p in partitions_of(bigger)] == [p["start"] for p in partitions_of(disk)]
    header = gpt.parse_header(moved[-1][1][-512:], 96 * MiB // 512 - 1, 512)
    assert header is not None and header.alt_lba == 1
    primary = moved[0][1][512:1024]
    assert zlib.crc32(primary[:16] + b"\0" * 4 + primary[20:92]) == struct.unpack_from("<I", primary, 16)[0]
