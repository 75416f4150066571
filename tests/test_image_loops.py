"""The issue's "What it must show" on real loop devices, through the real command line.

The GPT disk (EFI FAT32, ext4 root with files, swap, free space) and the MBR disk (FAT16, an
extended partition with a logical ext4 and a logical NTFS) are attached whole as `/dev/loopN`
and imaged by `python -m cairn image /dev/loopN`; the target is a second loop device over a
file of random bytes (a "wiped" disk that holds nothing of the image), restored by
`cairn image-restore SNAP /dev/loopM --yes`. Then, as a user would check: the partition tables
read back equal (sfdisk, sgdisk -v), every byte outside the filesystems (tables, boot code, the
boot-loader gap, swap, free space) is equal, every block each filesystem uses is equal, each
restored filesystem's fsck is clean when read through an `--offset/--sizelimit` loop over the
restored device, and the files read back equal (ext4 and NTFS mounted read-only, FAT by mtools).
Last, a few MiB change in the source's ext4 and a delta restore writes only the changed chunks.

Files instead of devices are covered by test_image_disks.py; this module needs root.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD
from test_image_disks import gpt_disk, mbr_disk
from test_image_restore import chunk_ids
from test_image_support import (
    MiB, loop, mounted, needs, needs_root, partitions_of, random_file, run, trees_equal,
)

from cairn.image import fs as fs_mod
from cairn.image.device import Device
from cairn.image.pages import UNUSED, iter_chunks
from cairn.ops.image_restore import load_disk
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend

pytestmark = [
    pytest.mark.root, needs_root,
    needs("losetup", "mount", "sfdisk", "sgdisk", "mkfs.vfat", "mcopy", "fsck.vfat", "mkfs.ext4", "e2fsck",
          "debugfs", "mkswap", "blkid", "mkntfs", "ntfscp", "ntfsfix", "ntfs-3g"),
]

Cairn = Callable[..., subprocess.CompletedProcess[str]]


def cairn_json(run_cairn: Cairn, repo: Path, *args: str) -> dict[str, Any]:
    done = run_cairn("-r", str(repo), "--json", *args, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])  # after the status lines
    assert summary.pop("message_type") == "summary"
    return summary


def folder_bytes(path: Path) -> int:
    """What a local repository takes on disk: its packs, indexes, snapshots and keys."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def table_of(device: str) -> list[dict[str, object]]:
    """sfdisk's view of the partitions, without the device name (which differs)."""
    return [{k: v for k, v in p.items() if k != "node"} for p in partitions_of(Path(device))]


def compare_span(a: Device, b: Device, start: int, end: int, what: str) -> None:
    for at in range(start, end, 4 * MiB):
        size = min(4 * MiB, end - at)
        assert a.read(at, size) == b.read(at, size), f"{what}: bytes {at}-{at + size} differ"


def used_ranges(dev: Device, start: int, length: int) -> list[tuple[int, int]]:
    read = dev.volume(start, length)
    info, plugin = fs_mod.probe(read, length)
    assert info is not None and plugin is not None
    return list(fs_mod.used_in_volume(plugin, read, info, length))


def assert_devices_equal(source: str, target: str, filesystems: list[tuple[int, int]]) -> None:
    """Bytes outside the filesystems equal whole; inside each, every used block equal."""
    with Device(source) as a, Device(target) as b:
        at = 0
        for start, length in sorted(filesystems) + [(a.size, 0)]:
            compare_span(a, b, at, start, "outside the filesystems")
            at = start + length
        for start, length in filesystems:
            for s, e in used_ranges(a, start, length):
                compare_span(a, b, start + s, start + e, f"filesystem at byte {start}")


def chunks_differing(repo: Repository, snapshot: str, source: str, target: str) -> int:
    """Chunks of the image whose used bytes differ between the source and the target, by
    comparing the bytes themselves: what a delta restore must write. A chunk whose id changed
    only because a block was freed (its old bytes now masked) is not among them."""
    _, disk = load_disk(repo, snapshot)
    count = 0
    with Device(source) as a, Device(target) as b:
        for region in disk.regions:
            for ref in iter_chunks(repo, disk, region):
                if ref.kind == UNUSED:
                    continue
                at = region.start + ref.offset
                count += any(
                    a.read(at + s, e - s) != b.read(at + s, e - s) for s, e in ref.used_spans(region.block)
                )
    return count


@pytest.fixture
def partition_of(tmp_path: Path) -> Iterator[Callable[[str, dict[str, int]], str]]:
    """Attach `--offset/--sizelimit` loops over partitions of a device; all detached after."""
    with ExitStack() as stack:

        def attach(device: str, part: dict[str, int]) -> str:
            return stack.enter_context(loop(Path(device), offset=part["start"] * 512, sizelimit=part["size"] * 512))

        yield attach


def fsck_clean(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"


def ext4_files_equal(device: str, tree: Path, where: Path) -> None:
    fsck_clean("e2fsck", "-fn", device)
    with mounted(device, where, "ro,noload"):
        trees_equal(tree, where)


def fat_files_equal(device: str, tree: Path, where: Path) -> None:
    fsck_clean("fsck.vfat", "-n", device)
    where.mkdir()
    run("mcopy", "-s", "-i", device, "::/*", str(where))
    trees_equal(tree, where)


def test_gpt_disk_on_loop_devices(tmp_path: Path, repo_dir: Path, run_cairn: Cairn, partition_of: Callable[[str, dict[str, int]], str]) -> None:
    disk, parts, tree = gpt_disk(tmp_path)
    esp, root, swap = parts
    target_file = tmp_path / "target.img"
    random_file(target_file, os.path.getsize(disk), seed=9)
    with loop(disk, read_only=True) as source:
        made = cairn_json(run_cairn, repo_dir, "image", source, "--verify")
        assert [p["fs"] for p in made["partitions"]] == ["fat32", "ext4", "raw"] and made["verified"]
        assert made["bytes_read"] < 100 * MiB
        with loop(target_file) as target:
            done = cairn_json(run_cairn, repo_dir, "image-restore", str(made["snapshot_id"]), target, "--yes", "--verify")
            assert done["verified"] and done["target_size"] == os.path.getsize(disk)
            assert table_of(target) == table_of(source)
            assert "No problems found" in run("sgdisk", "-v", target)
            fs_spans = [(p["start"] * 512, p["size"] * 512) for p in (esp, root)]
            assert_devices_equal(source, target, fs_spans)
            fat_files_equal(partition_of(target, esp), tree, tmp_path / "fat-out")
            ext4_files_equal(partition_of(target, root), tree, tmp_path / "mnt-root")
            assert run("blkid", "-p", "-o", "value", "-s", "TYPE", partition_of(target, swap)).strip() == "swap"

    # A few MiB change inside the source's ext4, then a second image and a delta restore.
    with loop(disk, offset=root["start"] * 512, sizelimit=root["size"] * 512) as part:
        with mounted(part, tmp_path / "mnt-src", "rw") as where:
            random_file(where / "new.bin", 3 * MiB, seed=41)
            (where / "hello.txt").write_text("hello again, image\n")
    random_file(tree / "new.bin", 3 * MiB, seed=41)
    (tree / "hello.txt").write_text("hello again, image\n")
    with loop(disk, read_only=True) as source, loop(target_file) as target:
        before = folder_bytes(repo_dir)
        again = cairn_json(run_cairn, repo_dir, "image", source)
        # The repository grows by the 3 MiB of new data (incompressible) plus the compressed chunks
        # of what ext4 rewrote around it (bitmaps, inode table, directory, journal, superblock):
        # the goal is at most about 1.2x the change.
        grew = folder_bytes(repo_dir) - before
        assert 3 * MiB <= grew <= 1.2 * 3 * MiB, grew
        repo = Repository.open(LocalBackend(str(repo_dir)), PASSWORD.encode())
        before = chunk_ids(repo, bytes.fromhex(str(made["snapshot_id"])))
        after = chunk_ids(repo, bytes.fromhex(str(again["snapshot_id"])))
        changed = [k for k in after if after[k] != before[k] and after[k][0] != UNUSED]
        assert 3 <= len(changed) <= 12, len(changed)
        differing = chunks_differing(repo, str(again["snapshot_id"]), source, target)
        assert 3 <= differing <= len(changed)
        delta = cairn_json(run_cairn, repo_dir, "image-restore", str(again["snapshot_id"]), target, "--yes")
        assert delta["delta"] and delta["chunks_written"] == differing
        assert delta["bytes_written"] <= differing * MiB
        assert table_of(target) == table_of(source)
        assert_devices_equal(source, target, [(p["start"] * 512, p["size"] * 512) for p in (esp, root)])
        ext4_files_equal(partition_of(target, root), tree, tmp_path / "mnt-root2")


def test_mbr_disk_on_loop_devices(tmp_path: Path, repo_dir: Path, run_cairn: Cairn, partition_of: Callable[[str, dict[str, int]], str]) -> None:
    disk, parts, tree, _ = mbr_disk(tmp_path)
    target_file = tmp_path / "target.img"
    random_file(target_file, os.path.getsize(disk), seed=8)
    with loop(disk, read_only=True) as source, loop(target_file) as target:
        made = cairn_json(run_cairn, repo_dir, "image", source)
        assert {p["number"]: p["fs"] for p in made["partitions"]} == {1: "fat16", 5: "ext4", 6: "ntfs"}
        done = cairn_json(run_cairn, repo_dir, "image-restore", str(made["snapshot_id"]), target, "--yes", "--no-delta")
        assert not done["delta"] and done["bytes_written"] > 0
        assert table_of(target) == table_of(source)
        assert_devices_equal(source, target, [(parts[n]["start"] * 512, parts[n]["size"] * 512) for n in (1, 5, 6)])
        fat_files_equal(partition_of(target, parts[1]), tree, tmp_path / "fat-out")
        ext4_files_equal(partition_of(target, parts[5]), tree, tmp_path / "mnt-ext4")
        ntfs = partition_of(target, parts[6])
        fsck_clean("ntfsfix", "-n", ntfs)
        with mounted(ntfs, tmp_path / "mnt-ntfs", "ro", fuse="ntfs-3g") as where:
            for name, original in (("hello.txt", "hello.txt"), ("text.txt", "text.txt"), ("blob.bin", "sub/blob.bin")):
                assert (where / name).read_bytes() == (tree / original).read_bytes(), name
