"""FAT12/16/32 and NTFS: used clusters against independent tools (mtools' cluster chains,
ntfsprogs' free count), and round trips checked with fsck.vfat / ntfsfix and by reading the
files back with mtools / ntfscat."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from test_image_support import (
    MiB, image_of, needs, new_repo, random_file, restore_to, run, source_tree,
)

from cairn.image import fs as fs_mod
from cairn.image.device import Device


def plugin_ranges(path: Path) -> tuple[fs_mod.FsInfo, list[tuple[int, int]]]:
    with Device(str(path)) as dev:
        read = dev.volume(0, dev.size)
        info, plugin = fs_mod.probe(read, dev.size)
        assert info is not None and plugin is not None
        return info, list(fs_mod.used_in_volume(plugin, read, info, dev.size))


def make_fat(path: Path, bits: int, kib: int, tree: Path) -> Path:
    extra = ["-s", "1"] if bits == 32 else []
    if path.exists():  # over existing bytes, which stay in the free clusters
        run("mkfs.vfat", "-F", str(bits), *extra, str(path))
    else:
        run("mkfs.vfat", "-C", "-F", str(bits), *extra, str(path), str(kib))
    run("mcopy", "-s", "-i", str(path), *[str(p) for p in tree.iterdir()], "::/")
    return path


def mtools_clusters(path: Path) -> set[int]:
    """Every cluster of every file and directory (and the FAT32 root) per mshowfat."""
    names = run("mdir", "-/", "-b", "-i", str(path), "::/").split()
    chains = run("mshowfat", "-i", str(path), "::/", *[n.rstrip("/") for n in names])
    used: set[int] = set()
    for a, b in re.findall(r"<(\d+)(?:-(\d+))?>", chains):
        used.update(range(int(a), int(b or a) + 1))
    return used


FAT_SIZES = {12: 3000, 16: 40000, 32: 80000}  # KiB


@needs("mkfs.vfat", "mcopy", "mshowfat")
@pytest.mark.parametrize("bits", [12, 16, 32])
def test_fat_used_clusters_equal_the_file_chains(tmp_path: Path, bits: int) -> None:
    tree = source_tree(tmp_path / "tree", big=MiB if bits == 12 else 3 * MiB)
    fat = make_fat(tmp_path / "fat.img", bits, FAT_SIZES[bits], tree)
    info, ranges = plugin_ranges(fat)
    geo = info.extra
    assert info.kind == f"fat{bits}"
    assert ranges[0][0] == 0  # boot sector, reserved sectors, FATs (and root directory)
    mine: set[int] = set()
    for a, b in ranges:
        a, b = max(a, geo.data_offset), min(b, geo.data_offset + geo.clusters * geo.cluster)  # type: ignore[attr-defined]
        if b > a:
            mine.update(range(2 + (a - geo.data_offset) // geo.cluster, 2 + (b - geo.data_offset) // geo.cluster))  # type: ignore[attr-defined]
    assert mine == mtools_clusters(fat)


@needs("mkfs.vfat", "mcopy", "fsck.vfat")
@pytest.mark.parametrize("bits", [12, 16, 32])
def test_fat_round_trip_is_clean_and_files_read_back(tmp_path: Path, bits: int) -> None:
    tree = source_tree(tmp_path / "tree", big=MiB if bits == 12 else 3 * MiB)
    fat = tmp_path / "fat.img"
    random_file(fat, FAT_SIZES[bits] * 1024, seed=bits)  # garbage in what will be free clusters
    make_fat(fat, bits, FAT_SIZES[bits], tree)
    repo = new_repo()
    result = image_of(repo, fat)
    (part,) = result.partitions
    assert part.fs == f"fat{bits}" and result.bytes_read == part.used < fat.stat().st_size // 2
    out = tmp_path / "out.img"
    restore_to(repo, result.snapshot_id, out)
    check = subprocess.run(["fsck.vfat", "-n", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    back = tmp_path / "back"
    back.mkdir()
    run("mcopy", "-s", "-i", str(out), "::/*", str(back))
    for name in ("hello.txt", "text.txt", "sub/blob.bin", "sub/deeper/small.bin"):
        assert (back / name).read_bytes() == (tree / name).read_bytes(), name


def make_ntfs(path: Path, size: int, tree: Path) -> Path:
    """mkntfs, then files copied in with ntfscp (no mount, no FUSE needed)."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)
    run("mkntfs", "-q", "-F", "-L", "cairn-test", str(path))
    for name in ("hello.txt", "text.txt"):
        run("ntfscp", str(path), str(tree / name), name)
    run("ntfscp", str(path), str(tree / "sub" / "blob.bin"), "blob.bin")
    return path


@needs("mkntfs", "ntfscp", "ntfscluster")
def test_ntfs_used_clusters_match_ntfsprogs_free_count(tmp_path: Path) -> None:
    ntfs = make_ntfs(tmp_path / "ntfs.img", 64 * MiB, source_tree(tmp_path / "tree"))
    info, ranges = plugin_ranges(ntfs)
    assert info.kind == "ntfs" and info.label == "cairn-test"
    report = run("ntfscluster", "-f", str(ntfs))
    free = int(re.search(r"clusters of free space\s*:\s*(\d+)", report).group(1))  # type: ignore[union-attr]
    clusters = info.size // info.block
    inside = sum(min(b, info.size) - a for a, b in ranges if a < info.size)
    assert inside == (clusters - free) * info.block
    assert ranges[-1][1] == ntfs.stat().st_size  # the backup boot sector past the last cluster


@needs("mkntfs", "ntfscp", "ntfscat", "ntfsfix")
def test_ntfs_round_trip_is_clean_and_files_read_back(tmp_path: Path) -> None:
    tree = source_tree(tmp_path / "tree")
    ntfs = tmp_path / "ntfs.img"
    random_file(ntfs, 64 * MiB, seed=3)
    make_ntfs(ntfs, 64 * MiB, tree)
    repo = new_repo()
    result = image_of(repo, ntfs)
    (part,) = result.partitions
    assert part.fs == "ntfs" and result.bytes_read == part.used < 16 * MiB
    out = tmp_path / "out.img"
    restore_to(repo, result.snapshot_id, out)
    check = subprocess.run(["ntfsfix", "-n", str(out)], capture_output=True, text=True)
    assert check.returncode == 0 and "corrupt" not in check.stdout.lower(), check.stdout + check.stderr
    cat = subprocess.run(["ntfscat", str(out), "blob.bin"], capture_output=True)
    assert cat.returncode == 0 and cat.stdout == (tree / "sub" / "blob.bin").read_bytes()
    assert run("ntfscat", str(out), "hello.txt") == (tree / "hello.txt").read_text()
