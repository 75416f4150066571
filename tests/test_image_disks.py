"""The disks the issue names, imaged and restored onto a target full of unrelated bytes:

* GPT: an EFI FAT32 partition, an ext4 root with files, swap, and free space;
* MBR: a primary FAT16, an extended partition with a logical ext4 and a logical NTFS.

What a user checks: the partition tables are equal (and valid), the boot code and gap are
equal, every region a filesystem uses is byte-equal, each filesystem's fsck is clean, and the
files read back equal. All on files (no root needed): ext4 is read back with debugfs, FAT
with mtools, NTFS with ntfscat.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from test_image_fat_ntfs import make_fat, make_ntfs
from test_image_support import (
    MiB, file_sha, image_of, mkfs_ext4, needs, new_repo, partitions_of, put, random_file, restore_to,
    run, sfdisk, source_tree, trees_equal,
)

from cairn.image import fs as fs_mod
from cairn.image.device import Device

GPT_SCRIPT = "label: gpt\nsize=64M, type=uefi, name=EFI\nsize=120M, type=linux, name=root\nsize=16M, type=swap\n"
MBR_SCRIPT = (
    "label: dos\n1 : start=2048, size=65536, type=e\n2 : start=67584, size=331776, type=5\n"
    "5 : start=69632, size=131072, type=83\n6 : start=202752, size=131072, type=7\n"
)


def extract(disk: Path, part: dict[str, int], out: Path) -> Path:
    with open(disk, "rb") as f:
        f.seek(part["start"] * 512)
        out.write_bytes(f.read(part["size"] * 512))
    return out


def used_ranges(volume: Path) -> list[tuple[int, int]]:
    with Device(str(volume)) as dev:
        read = dev.volume(0, dev.size)
        info, plugin = fs_mod.probe(read, dev.size)
        assert info is not None and plugin is not None
        return list(fs_mod.used_in_volume(plugin, read, info, dev.size))


def assert_used_equal(source: Path, restored: Path) -> None:
    with open(source, "rb") as a, open(restored, "rb") as b:
        for start, end in used_ranges(source):
            a.seek(start)
            b.seek(start)
            assert a.read(end - start) == b.read(end - start), f"used bytes {start}-{end} differ"


def assert_tables_equal(source: Path, restored: Path) -> None:
    assert partitions_of(restored) == [
        {**p, "node": p["node"].replace(str(source), str(restored))} for p in partitions_of(source)
    ]
    assert file_sha(restored, 0, MiB) == file_sha(source, 0, MiB)  # MBR, boot code, GPT, gap


def ext4_files(volume: Path, tree: Path, work: Path) -> None:
    check = subprocess.run(["e2fsck", "-fn", str(volume)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    out = work / "ext4-files"
    out.mkdir()
    run("debugfs", "-R", f"rdump / {out}", str(volume))
    trees_equal(tree, out)


def fat_files(volume: Path, tree: Path, work: Path) -> None:
    check = subprocess.run(["fsck.vfat", "-n", str(volume)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    out = work / "fat-files"
    out.mkdir()
    run("mcopy", "-s", "-i", str(volume), "::/*", str(out))
    trees_equal(tree, out)


def gpt_disk(tmp_path: Path) -> tuple[Path, list[dict[str, int]], Path]:
    tree = source_tree(tmp_path / "tree")
    disk = tmp_path / "gpt.img"
    parts = sfdisk(disk, 256 * MiB, GPT_SCRIPT)
    put(disk, 0, b"\xeb\x63\x90" + b"boot code " * 40)  # MBR boot code area (before 440)
    put(disk, 34 * 512, b"core.img " * 3000)  # a boot loader in the gap before partition 1
    esp = tmp_path / "esp.img"
    random_file(esp, 64 * MiB, seed=1)
    make_fat(esp, 32, 0, tree)
    root = tmp_path / "root.img"
    random_file(root, 120 * MiB, seed=2)
    mkfs_ext4(root, 120 * MiB, tree, "-b", "4096", "-E", "nodiscard")
    swap = tmp_path / "swap.img"
    swap.write_bytes(bytes(16 * MiB))
    run("mkswap", str(swap))
    for part, volume in zip(parts, (esp, root, swap)):
        put(disk, part["start"] * 512, volume)
    return disk, parts, tree


@needs("sfdisk", "sgdisk", "mkfs.vfat", "mcopy", "fsck.vfat", "mkfs.ext4", "e2fsck", "debugfs", "mkswap")
def test_gpt_disk_with_efi_root_swap_and_free_space(tmp_path: Path) -> None:
    disk, parts, tree = gpt_disk(tmp_path)
    repo = new_repo()
    result = image_of(repo, disk, verify=True)
    assert [p.fs for p in result.partitions] == ["fat32", "ext4", "raw"] and result.verified
    assert result.bytes_read < 100 * MiB  # not the 256 MiB disk, nor the garbage in free blocks
    target = tmp_path / "target.img"
    random_file(target, 256 * MiB, seed=9)  # a "wiped" disk full of unrelated bytes
    restore_to(repo, result.snapshot_id, target, delta=False, verify=True)
    assert_tables_equal(disk, target)
    assert "No problems found" in run("sgdisk", "-v", str(target))
    for part, check in zip(parts, (fat_files, ext4_files, None)):
        source = extract(disk, part, tmp_path / f"src-{part['start']}")
        restored = extract(target, part, tmp_path / f"out-{part['start']}")
        if check is None:  # swap: read whole, so equal whole
            assert file_sha(source) == file_sha(restored)
            continue
        assert_used_equal(source, restored)
        check(restored, tree, tmp_path)


def mbr_disk(tmp_path: Path) -> tuple[Path, dict[int, dict[str, int]], Path, dict[int, Path]]:
    """The MBR disk: (disk file, partitions by number, the tree put into each filesystem,
    the volume files by partition number)."""
    tree = source_tree(tmp_path / "tree")
    disk = tmp_path / "mbr.img"
    parts = {int(p["node"].rsplit("img", 1)[1]): p for p in sfdisk(disk, 200 * MiB, MBR_SCRIPT)}
    fat = make_fat(tmp_path / "fat.img", 16, 32 * 1024, tree)
    ext = mkfs_ext4(tmp_path / "ext.img", 64 * MiB, tree, "-b", "4096")
    ntfs = make_ntfs(tmp_path / "ntfs.img", 64 * MiB, tree)
    volumes = {1: fat, 5: ext, 6: ntfs}
    for number, volume in volumes.items():
        put(disk, parts[number]["start"] * 512, volume)
    return disk, parts, tree, volumes


@needs("sfdisk", "mkfs.vfat", "mcopy", "fsck.vfat", "mkfs.ext4", "e2fsck", "debugfs", "mkntfs", "ntfscp", "ntfsfix", "ntfscat")
def test_mbr_disk_with_logical_ext4_and_ntfs(tmp_path: Path) -> None:
    disk, parts, tree, volumes = mbr_disk(tmp_path)
    fat, ext, ntfs = volumes[1], volumes[5], volumes[6]
    repo = new_repo()
    result = image_of(repo, disk)
    assert {p.number: p.fs for p in result.partitions} == {1: "fat16", 5: "ext4", 6: "ntfs"}
    target = tmp_path / "target.img"
    random_file(target, 200 * MiB, seed=8)
    restore_to(repo, result.snapshot_id, target, delta=False)
    assert_tables_equal(disk, target)
    for number, volume in ((1, fat), (5, ext), (6, ntfs)):
        restored = extract(target, parts[number], tmp_path / f"out{number}")
        assert_used_equal(volume, restored)
    fat_files(tmp_path / "out1", tree, tmp_path)
    ext4_files(tmp_path / "out5", tree, tmp_path)
    fix = subprocess.run(["ntfsfix", "-n", str(tmp_path / "out6")], capture_output=True, text=True)
    assert fix.returncode == 0, fix.stdout + fix.stderr
    blob = subprocess.run(["ntfscat", str(tmp_path / "out6"), "blob.bin"], capture_output=True)
    assert blob.stdout == (tree / "sub" / "blob.bin").read_bytes()
