"""Restores beyond the plain case: delta onto an older state, a larger disk, refusals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_image_ext import assert_used_blocks_equal, dumpe2fs_used, ext_disk
from test_image_support import (
    MiB, file_sha, image_of, loop, mounted, needs, needs_root, new_repo, partitions_of, put, random_file,
    restore_to, run,
)

from cairn.errors import UsageError
from cairn.image import writer
from cairn.image.device import Device
from cairn.image.pages import UNUSED, iter_chunks
from cairn.ops.image_restore import load_disk
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot


def chunk_ids(repo: Repository, snapshot: bytes) -> dict[tuple[int, int], tuple[int, bytes]]:
    _, disk = load_disk(repo, snapshot.hex())
    return {
        (region.start, ref.index): (ref.kind, ref.blob_id)
        for region in disk.regions for ref in iter_chunks(repo, disk, region)
    }


@needs("sfdisk", "mkfs.ext4", "debugfs", "dumpe2fs")
def test_delta_restore_writes_only_the_chunks_that_changed(tmp_path: Path) -> None:
    disk, fs, part = ext_disk(tmp_path)
    repo = new_repo()
    old = image_of(repo, disk).snapshot_id
    target = tmp_path / "target.img"
    restore_to(repo, old, target)  # the target now holds the older state
    random_file(tmp_path / "new.bin", 3 * MiB, seed=31)
    run("debugfs", "-w", "-R", f"write {tmp_path / 'new.bin'} new.bin", str(fs))
    put(disk, part["start"] * 512, fs)
    new = image_of(repo, disk).snapshot_id
    before, after = chunk_ids(repo, old), chunk_ids(repo, new)
    changed = [k for k in after if after[k] != before[k] and after[k][0] != 1]  # 1 = UNUSED
    assert 3 <= len(changed) <= 10, len(changed)
    done = restore_to(repo, new, target)
    assert done.delta and done.chunks_written == len(changed)
    assert done.bytes_written <= len(changed) * MiB
    block, used = dumpe2fs_used(fs)
    start = part["start"] * 512
    with open(fs, "rb") as a, open(target, "rb") as b:
        for n in sorted(used):
            a.seek(n * block)
            b.seek(start + n * block)
            assert a.read(block) == b.read(block), n
    again = restore_to(repo, new, target)
    assert again.chunks_written == 0 and again.bytes_written == 0


@needs("sfdisk", "mkfs.ext4", "debugfs", "dumpe2fs")
def test_a_delta_reads_every_chunk_it_restores_once_and_never_an_unused_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of neighbouring chunks (cut here at 3 MiB, so some end inside a run of used
    chunks and some at an unused one) are read chunk by chunk: each read is one chunk that is
    not UNUSED, in full, once; and the restored bytes are right."""
    disk, fs, part = ext_disk(tmp_path)
    repo = new_repo()
    old = image_of(repo, disk).snapshot_id
    target = tmp_path / "target.img"
    restore_to(repo, old, target)
    random_file(tmp_path / "new.bin", 5 * MiB, seed=32)
    run("debugfs", "-w", "-R", f"write {tmp_path / 'new.bin'} new.bin", str(fs))
    put(disk, part["start"] * 512, fs)
    new = image_of(repo, disk).snapshot_id
    _, description = load_disk(repo, new.hex())
    chunks = [(region.start + ref.offset, ref.length, ref.kind) for region in description.regions for ref in iter_chunks(repo, description, region)]
    expected = [(at, length) for at, length, kind in chunks if kind != UNUSED]
    assert len(expected) < len(chunks)  # the free part of the ext4 is not read
    reads: list[tuple[int, int]] = []
    original = Device.readinto

    def spy(self: Device, view: memoryview, offset: int) -> None:
        if self.path == str(target):
            reads.append((offset, len(view)))
        original(self, view, offset)

    monkeypatch.setattr(Device, "readinto", spy)
    monkeypatch.setattr(writer, "BATCH_BYTES", 3 * MiB)
    done = restore_to(repo, new, target)
    tables = [(offset, len(data)) for offset, data in description.tables]
    assert sorted(r for r in reads if r not in tables) == expected
    assert done.bytes_compared == sum(length for _, length in expected)
    assert 5 * MiB // description.chunk <= done.chunks_written <= 10 * MiB // description.chunk
    assert_used_blocks_equal(fs, target, part["start"] * 512)


@needs("sfdisk", "mkfs.ext4", "dumpe2fs")
def test_garbage_in_free_blocks_does_not_count_as_a_difference(tmp_path: Path) -> None:
    """Unused blocks inside a partly used chunk are masked before hashing, as when imaged."""
    disk, fs, part = ext_disk(tmp_path)
    repo = new_repo()
    snap = image_of(repo, disk).snapshot_id
    target = tmp_path / "target.img"
    restore_to(repo, snap, target)
    block, used = dumpe2fs_used(fs)
    free = sorted(set(range(96 * MiB // block)) - used)
    for n in free[:: max(1, len(free) // 200)]:
        put(target, part["start"] * 512 + n * block, b"\xa5" * block)
    done = restore_to(repo, snap, target)
    assert done.chunks_written == 0 and done.chunks_same > 0


@needs("sfdisk", "sgdisk", "mkfs.ext4", "e2fsck")
def test_restore_onto_a_larger_disk_moves_the_gpt_backup(tmp_path: Path) -> None:
    disk, fs, part = ext_disk(tmp_path)
    repo = new_repo()
    snap = image_of(repo, disk).snapshot_id
    bigger = tmp_path / "bigger.img"
    with open(bigger, "wb") as f:
        f.truncate(192 * MiB)
    done = restore_to(repo, snap, bigger, verify=True)
    assert done.gpt_moved and done.verified and done.target_size == 192 * MiB
    verdict = run("sgdisk", "-v", str(bigger))
    assert "No problems found" in verdict, verdict
    dump = run("sfdisk", "-d", str(bigger))
    assert f"last-lba: {192 * MiB // 512 - 34}" in dump
    assert [p["start"] for p in partitions_of(bigger)] == [part["start"]]
    volume = tmp_path / "volume.img"
    with open(bigger, "rb") as f:
        f.seek(part["start"] * 512)
        volume.write_bytes(f.read(part["size"] * 512))
    assert subprocess.run(["e2fsck", "-fn", str(volume)], capture_output=True).returncode == 0


def test_a_files_snapshot_is_not_an_image(tmp_path: Path) -> None:
    repo = new_repo()
    snap = repo.save_snapshot(Snapshot("files", b"\0" * 32, [b"/x"], "h", "u"))
    with pytest.raises(UsageError, match="not an image"):
        restore_to(repo, snap, tmp_path / "out.img")


@needs_root
@pytest.mark.root
@needs("sfdisk", "mkfs.ext4", "losetup", "mount")
def test_a_mounted_target_is_refused(tmp_path: Path) -> None:
    disk, fs, part = ext_disk(tmp_path, garbage=False)
    repo = new_repo()
    snap = image_of(repo, disk).snapshot_id
    target = tmp_path / "target.img"
    target.write_bytes(disk.read_bytes())
    before = file_sha(target)
    start, length = part["start"] * 512, part["size"] * 512
    with loop(target, offset=start, sizelimit=length) as partition:
        with mounted(partition, tmp_path / "mnt"):
            for victim in (target, partition):
                with pytest.raises(UsageError, match="in use"):
                    restore_to(repo, snap, victim)
    assert file_sha(target) == before
    with loop(target) as whole:
        restore_to(repo, snap, whole)  # unmounted now: allowed


@needs("sfdisk", "mkfs.ext4")
def test_verify_finds_a_changed_used_byte_and_progress_reaches_the_total(tmp_path: Path) -> None:
    from cairn.image.verify import compare
    from cairn.image.device import Device
    from cairn.ops.image import ImageOptions, image

    disk, fs, part = ext_disk(tmp_path)
    repo = new_repo()
    seen: list[tuple[str, int, int]] = []
    result = image(repo, ImageOptions(source=str(disk), verify=True), progress=lambda p: seen.append((p.phase, p.bytes_done, p.total_bytes)))
    imaging = [s for s in seen if s[0] == "imaging"]
    assert imaging[-1][1] == imaging[-1][2] == result.bytes_used
    assert [d for _, d, _ in imaging] == sorted(d for _, d, _ in imaging)
    assert seen[-1][0] == "verifying" and seen[-1][1] == seen[-1][2]
    out = tmp_path / "out.img"
    from cairn.ops.image_restore import ImageRestoreOptions, image_restore

    restoring: list[tuple[int, int]] = []
    image_restore(repo, ImageRestoreOptions(result.snapshot_id.hex(), str(out)), progress=lambda p: restoring.append((p.bytes_done, p.total_bytes)))
    assert restoring[-1][0] == restoring[-1][1] > 0  # zero chunks left as holes count too
    assert [d for d, _ in restoring] == sorted(d for d, _ in restoring)
    _, description = load_disk(repo, result.snapshot_id.hex())
    with Device(str(out)) as dev:
        assert compare(repo, description, dev, description.regions, 0, description.tables) == []
    put(out, part["start"] * 512 + 1024 + 100, b"\xff")  # inside the ext4 superblock
    put(out, 512 + 100, b"\xff")  # inside the GPT header
    with Device(str(out)) as dev:
        problems = compare(repo, description, dev, description.regions, 0, description.tables)
    assert len(problems) == 2 and "partition table" in problems[1]
