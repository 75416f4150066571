"""Parsers of untrusted bytes, fed mutated input: they answer, or raise the one documented error.

Disk descriptions and pages come from the repository (DamagedObject only); partition tables and
filesystem structures come from the source disk (a layout with warnings, None, or FsError: the
region is then imaged whole). Seeded, so a failure reproduces.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_image_fat_ntfs import make_fat, make_ntfs
from test_image_support import MiB, mkfs_ext4, needs, sfdisk, source_tree

from cairn.errors import DamagedObject
from cairn.image import format as disk_format
from cairn.image import fs as fs_mod
from cairn.image import partitions
from cairn.image.device import OutsideVolume
from cairn.image.pages import DATA, PARTIAL, ZERO, PageBuilder, decode_page


def mutations(data: bytes, count: int, seed: int, hot: tuple[int, int] = (0, 0)) -> list[bytes]:
    """Copies of `data` with a few random bytes changed, mostly inside `hot` if given."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        copy = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            lo, hi = hot if hot != (0, 0) and rng.random() < 0.9 else (0, len(copy))
            copy[rng.randrange(lo, hi)] = rng.randrange(256)
        out.append(bytes(copy))
    return out


def test_mutated_descriptions_decode_or_raise_damaged() -> None:
    disk = disk_format.Disk(
        "disk", 64 * MiB, 512, "gpt", MiB, 16, tables=[(0, b"\1" * 17408)],
        regions=[disk_format.Region("partition", MiB, 32 * MiB, "ext4", 4096, MiB, 1, "T", "U", "L", [b"\2" * 32] * 2),
                 disk_format.Region("gap", 33 * MiB, 31 * MiB, pages=[b"\3" * 32] * 2)],
    )
    encoded = disk_format.encode(disk)
    accepted = 0
    for sample in mutations(encoded, 3000, seed=1, hot=(0, len(encoded) - 17500)):
        try:
            decoded = disk_format.decode(sample)
        except DamagedObject:
            continue
        accepted += 1
        assert all(0 <= r.start and r.end <= decoded.size for r in decoded.regions)
    assert 0 < accepted < 3000


def test_mutated_pages_decode_or_raise_damaged() -> None:
    builder = PageBuilder(32)
    for kind in (ZERO, ZERO, DATA, PARTIAL, DATA, ZERO):
        builder.add(kind, b"\4" * 32 if kind != ZERO else b"", b"\5" * 32 if kind == PARTIAL else b"")
    page = builder.encode()
    for sample in mutations(page, 3000, seed=2):
        try:
            chunks = decode_page(sample, 6, 32, "page")
        except DamagedObject:
            continue
        assert len(chunks) == 6


def probe_all(image: bytes) -> None:
    """Table detection and every filesystem probe over bytes in memory."""

    def read(offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(image):
            raise OutsideVolume(f"{offset}+{size}")
        return image[offset : offset + size]

    partitions.detect(read, len(image), 512, is_volume=False)
    try:
        info, plugin = fs_mod.probe(read, len(image))
        if info is not None and plugin is not None:
            for start, end in fs_mod.used_in_volume(plugin, read, info, len(image)):
                assert 0 <= start < end <= len(image)
    except fs_mod.FsError:
        pass
    except ValueError:  # OutsideVolume: a used-range reader meeting damage the probe let pass
        pass


@needs("sfdisk")
@pytest.mark.parametrize("script", ["label: gpt\nsize=1M\nsize=1M\n", "label: dos\n1 : start=2048, size=2048, type=5\n5 : start=3072, size=512, type=83\n"])
def test_mutated_partition_tables_never_crash(tmp_path: Path, script: str) -> None:
    disk = tmp_path / "disk.img"
    sfdisk(disk, 4 * MiB, script)
    data = disk.read_bytes()
    head = data[: 34 * 512]
    for sample in mutations(head, 300, seed=3, hot=(440, 34 * 512)):
        probe_all(sample + data[len(sample) :])


@needs("mkfs.ext4", "mkfs.vfat", "mcopy", "mkntfs", "ntfscp")
def test_mutated_filesystem_structures_never_crash(tmp_path: Path) -> None:
    tree = source_tree(tmp_path / "tree", big=100_000)
    samples = {
        "ext4": (mkfs_ext4(tmp_path / "e.img", 8 * MiB, tree).read_bytes(), (1024, 1024 + 1024 + 4096)),
        "fat": (make_fat(tmp_path / "f.img", 16, 20 * 1024, tree).read_bytes(), (0, 512)),
        "ntfs": (make_ntfs(tmp_path / "n.img", 8 * MiB, tree).read_bytes(), (0, 512)),
    }
    for seed, (data, hot) in enumerate(samples.values()):
        for sample in mutations(data, 150, seed=10 + seed, hot=hot):
            probe_all(sample)
