"""A live source: a read-write mounted filesystem is refused unless frozen or forced."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_image_support import (
    MiB, image_of, loop, mkfs_ext4, mounted, needs, needs_root, new_repo, put, random_file, restore_to, sfdisk,
)

from cairn.errors import UsageError
from cairn.image import mounts

pytestmark = [pytest.mark.root, needs_root, needs("mkfs.ext4", "losetup", "mount", "e2fsck")]


def test_a_read_write_mount_is_refused_and_force_records_a_warning(tmp_path: Path) -> None:
    fs = mkfs_ext4(tmp_path / "fs.img", 64 * MiB)
    repo = new_repo()
    with loop(fs) as device, mounted(device, tmp_path / "mnt", "rw") as where:
        (where / "live.txt").write_text("changing")
        for source in (device, fs):  # the device, and the file behind the loop
            with pytest.raises(UsageError, match="mounted read-write"):
                image_of(repo, source)
        result = image_of(repo, device, force=True)
    assert any("--force" in w for w in result.warnings)
    snap = repo.find_snapshot(result.snapshot_id.hex())
    assert snap.summary["warnings"] == result.warnings


def test_a_read_only_mount_needs_no_flag(tmp_path: Path) -> None:
    fs = mkfs_ext4(tmp_path / "fs.img", 64 * MiB)
    repo = new_repo()
    with loop(fs) as device, mounted(device, tmp_path / "mnt", "ro"):
        result = image_of(repo, device)
    assert result.warnings == [] and result.partitions[0].fs == "ext4"


def test_freeze_images_a_consistent_point_and_thaws(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    fs = mkfs_ext4(tmp_path / "fs.img", 64 * MiB, None, "-b", "4096")
    repo = new_repo()
    with loop(fs) as device, mounted(device, tmp_path / "mnt", "rw") as where:
        random_file(where / "data.bin", 2 * MiB, seed=4)
        result = image_of(repo, device, freeze=True, verify=True)
        (where / "after.txt").write_text("thawed")  # would block forever if still frozen
        expected = (where / "data.bin").read_bytes()
    assert result.verified and result.warnings == []
    assert result.partitions[0].fs == "ext4"  # the freeze cleared the needs-recovery flag
    out = tmp_path / "out.img"
    restore_to(repo, result.snapshot_id, out)
    with loop(out) as device, mounted(device, tmp_path / "mnt2") as where:
        assert (where / "data.bin").read_bytes() == expected


def test_a_freeze_that_outlives_its_bound_fails_the_image(tmp_path: Path) -> None:
    fs = mkfs_ext4(tmp_path / "fs.img", 64 * MiB)
    repo = new_repo()
    with loop(fs) as device, mounted(device, tmp_path / "mnt", "rw") as where:
        with pytest.raises(UsageError, match="frozen longer"):
            image_of(repo, device, freeze=True, freeze_timeout=0.000001)
        (where / "after.txt").write_text("thawed")
    assert repo.snapshot_ids() == []


def test_a_mounted_partition_does_not_block_imaging_another(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    parts = sfdisk(disk, 96 * MiB, "label: gpt\nsize=40M, type=linux\nsize=40M, type=linux\n")
    for i, part in enumerate(parts):
        put(disk, part["start"] * 512, mkfs_ext4(tmp_path / f"fs{i}.img", 40 * MiB))
    start, length = parts[0]["start"] * 512, parts[0]["size"] * 512
    repo = new_repo()
    with loop(disk, offset=start, sizelimit=length) as partition, mounted(partition, tmp_path / "mnt", "rw"):
        uses = mounts.uses_of(str(disk))
        assert [(u.start, u.length, u.read_only) for u in uses] == [(start, length, False)]
        with pytest.raises(UsageError, match="mounted read-write"):
            image_of(repo, disk)
        with pytest.raises(UsageError, match="mounted read-write"):
            image_of(repo, disk, partition=1)
        second = image_of(repo, disk, partition=2)
        with pytest.raises(UsageError, match="not a consistent block device"):
            image_of(repo, disk, snapshot="btrfs")
    assert second.warnings == [] and second.partitions[0].fs == "ext4"
