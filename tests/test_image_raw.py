"""Whole disks of data no plugin understands: every byte comes back, zero runs cost nothing,
and the description is as strict as any other untrusted input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_image_support import (
    MiB, allocated, file_sha, image_of, loop, needs, needs_root, new_repo, put, random_file,
    restore_to, sfdisk,
)

from cairn.errors import DamagedObject, UsageError
from cairn.image import format as disk_format
from cairn.image.pages import PageBuilder, load_page
from cairn.ops.image_restore import load_disk
from cairn.repo.blob import BlobType

GPT_SCRIPT = "label: gpt\nsize=8M, type=uefi\nsize=20M, type=linux\nsize=4M, type=swap\n"


def raw_disk(tmp_path: Path) -> Path:
    """A GPT disk whose partitions hold random data (no filesystem), with boot code in the gap
    before the first partition and stray bytes in the free space after the last one."""
    disk = tmp_path / "disk.img"
    parts = sfdisk(disk, 48 * MiB, GPT_SCRIPT)
    for i, p in enumerate(parts):
        blob = tmp_path / f"p{i}"
        random_file(blob, p["size"] * 512 // 2, seed=10 + i)  # half full, half zeros
        put(disk, p["start"] * 512, blob)
    put(disk, 40 * 512, b"GRUB core image" * 100)
    put(disk, 45 * MiB, b"left behind" * 10)
    return disk


@needs("sfdisk")
def test_a_raw_gpt_disk_restores_bit_exact_into_a_sparse_file(tmp_path: Path) -> None:
    disk = raw_disk(tmp_path)
    repo = new_repo()
    result = image_of(repo, disk)
    assert result.table == "gpt" and [p.fs for p in result.partitions] == ["raw", "raw", "raw"]
    assert result.chunks["zero"] > 0 and result.warnings == []
    nonzero = 16 * MiB + 2000  # the random halves, the boot code, the stray bytes
    assert result.bytes_new < nonzero + 4 * MiB  # zero chunks are not stored
    out = tmp_path / "restored.img"
    done = restore_to(repo, result.snapshot_id, out)
    assert not done.delta and done.gpt_moved is False
    assert file_sha(out) == file_sha(disk)
    assert allocated(out) < nonzero + 8 * MiB  # zero chunks became holes


@needs("sfdisk")
def test_an_mbr_disk_with_logical_partitions_restores_bit_exact(tmp_path: Path) -> None:
    disk = tmp_path / "mbr.img"
    parts = sfdisk(disk, 64 * MiB, "label: dos\n1 : start=2048, size=16384, type=83\n"
                   "2 : start=18432, size=81920, type=5\n5 : start=20480, size=20480, type=83\n"
                   "6 : start=43008, size=20480, type=7\n")
    for i, p in enumerate(parts):
        if p["type"] != "5":
            random_file(tmp_path / "x", 3 * MiB, seed=i)
            put(disk, p["start"] * 512 + MiB, tmp_path / "x")
    repo = new_repo()
    result = image_of(repo, disk)
    assert sorted(p.number for p in result.partitions) == [1, 5, 6]
    out = tmp_path / "out.img"
    restore_to(repo, result.snapshot_id, out)
    assert file_sha(out) == file_sha(disk)


@needs("sfdisk")
def test_one_partition_images_and_restores_alone(tmp_path: Path) -> None:
    disk = raw_disk(tmp_path)
    repo = new_repo()
    whole = image_of(repo, disk)
    part = image_of(repo, disk, partition=2)
    assert part.disk_size == 20 * MiB and part.table == "none"
    p2 = next(p for p in whole.partitions if p.number == 2)
    out = tmp_path / "p2.img"
    restore_to(repo, part.snapshot_id, out)
    assert file_sha(out) == file_sha(disk, p2.start, p2.length)
    out_from_whole = tmp_path / "p2-from-disk.img"
    restore_to(repo, whole.snapshot_id, out_from_whole, partition=2)
    assert file_sha(out_from_whole) == file_sha(out)
    with pytest.raises(UsageError, match="no partition 7"):
        image_of(repo, disk, partition=7)


@needs("sfdisk")
def test_a_second_image_of_an_unchanged_disk_stores_nothing_new(tmp_path: Path) -> None:
    disk = raw_disk(tmp_path)
    repo = new_repo()
    image_of(repo, disk)
    again = image_of(repo, disk)
    assert again.blobs_new == 0 and again.bytes_new == 0


@needs("sfdisk")
def test_a_file_target_too_small_grows_and_an_existing_one_needs_confirmation(tmp_path: Path) -> None:
    disk = raw_disk(tmp_path)
    repo = new_repo()
    snap = image_of(repo, disk).snapshot_id
    out = tmp_path / "out.img"
    out.write_bytes(b"x" * 1000)
    with pytest.raises(UsageError, match="not confirmed"):
        restore_to(repo, snap, out, yes=False)
    assert out.read_bytes() == b"x" * 1000
    done = restore_to(repo, snap, out, yes=True)
    assert done.delta and file_sha(out) == file_sha(disk)


@needs_root
@pytest.mark.root
@needs("sfdisk", "losetup")
def test_loop_devices_as_source_and_target(tmp_path: Path) -> None:
    disk = raw_disk(tmp_path)
    target_file = tmp_path / "target.img"
    with open(target_file, "wb") as f:
        f.truncate(48 * MiB)
    random_file(tmp_path / "junk", 8 * MiB, seed=99)
    put(target_file, 30 * MiB, tmp_path / "junk")  # old content where the image has zeros
    repo = new_repo()
    with loop(disk, read_only=True) as source:
        result = image_of(repo, source)
    assert result.table == "gpt"
    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(40 * MiB)
    with loop(small) as too_small:
        with pytest.raises(UsageError, match="needs"):
            restore_to(repo, result.snapshot_id, too_small)
    with loop(target_file) as target:
        asked: list[str] = []

        def refuse(question: str) -> bool:
            asked.append(question)
            return False

        with pytest.raises(UsageError, match="not confirmed"):
            restore_to(repo, result.snapshot_id, target, yes=False, confirm=refuse)
        assert asked and "device" in asked[0]
        done = restore_to(repo, result.snapshot_id, target, delta=False, verify=True)
        assert done.verified
    assert file_sha(target_file) == file_sha(disk)


# -- hostile descriptions ---------------------------------------------------------------------


def _disk(**changes: object) -> disk_format.Disk:
    base = dict(kind="disk", size=8 * MiB, sector=512, table="none", chunk=MiB, page_chunks=4)
    base.update(changes)
    return disk_format.Disk(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "disk",
    [
        _disk(regions=[disk_format.Region("partition", 7 * MiB, 2 * MiB, pages=[b"\0" * 32])]),
        _disk(regions=[disk_format.Region("partition", 0, MiB, pages=[b"\0" * 32]),
                       disk_format.Region("gap", MiB // 2, MiB, pages=[b"\0" * 32])]),
        _disk(regions=[disk_format.Region("partition", 0, 8 * MiB, pages=[b"\0" * 32])]),  # needs 2 pages
        _disk(tables=[(8 * MiB - 10, b"x" * 20)]),
        _disk(chunk=3 * MiB),
        _disk(regions=[disk_format.Region("partition", 0, MiB, block=MiB, pages=[b"\0" * 32])]),
        _disk(size=-1),
    ],
    ids=["past-end", "overlap", "page-count", "table-past-end", "chunk", "block", "size"],
)
def test_a_description_that_breaks_a_rule_is_rejected(disk: disk_format.Disk) -> None:
    with pytest.raises(DamagedObject):
        disk_format.validate(disk, "test")


def test_pages_that_do_not_cover_their_chunks_are_rejected() -> None:
    from cairn.image.pages import DATA, ZERO, decode_page

    builder = PageBuilder(mask_size=32)
    builder.add(ZERO)
    builder.add(DATA, b"\1" * 32)
    page = builder.encode()
    assert [k for k, _, _ in decode_page(page, 2, 32, "p")] == [ZERO, DATA]
    for chunks in (1, 3):
        with pytest.raises(DamagedObject):
            decode_page(page, chunks, 32, "p")
    with pytest.raises(DamagedObject):
        decode_page(page[:-5], 2, 32, "p")


@needs("sfdisk")
def test_a_blob_of_the_wrong_length_is_never_written(tmp_path: Path) -> None:
    """A description naming a short data blob for a chunk: the restore stops, nothing is
    written past the target's size, and the error names the blob."""
    repo = new_repo()
    short, _ = repo.save_blob(BlobType.DATA, b"\x07" * 1000)
    builder = PageBuilder(mask_size=MiB // 512 // 8)
    builder.add(3 - 1, short)  # DATA
    page, _ = repo.save_blob(BlobType.DISK, builder.encode())
    disk = _disk(size=MiB, regions=[disk_format.Region("partition", 0, MiB, pages=[page])])
    root, _ = repo.save_blob(BlobType.DISK, disk_format.encode(disk))
    repo.flush()
    from cairn.repo.snapshot import Snapshot

    snap = repo.save_snapshot(Snapshot("image", root, [b"/x"], "h", "u"))
    assert load_disk(repo, snap.hex())[1].size == MiB
    out = tmp_path / "out.img"
    with pytest.raises(DamagedObject, match="not as long"):
        restore_to(repo, snap, out)
    assert os.path.getsize(out) == MiB
    with pytest.raises(DamagedObject, match="not a disk blob"):
        load_page(repo, short, "x")


@needs("sfdisk")
def test_the_checker_names_a_missing_page_and_missing_data(tmp_path: Path) -> None:
    from cairn.image.checker import image_problems

    disk = raw_disk(tmp_path)
    repo = new_repo()
    snap = repo.find_snapshot(image_of(repo, disk).snapshot_id.hex())

    def indexed(blob_id: bytes, blob_type: int) -> bool:
        entry = repo.index.lookup(blob_id)
        return entry is not None and entry.blob_type == blob_type

    assert list(image_problems(repo, snap.root, indexed)) == []
    lost = list(image_problems(repo, snap.root, lambda b, t: False))
    assert lost and all("not in the index" in p for p in lost)
    _, description = load_disk(repo, snap.id.hex())
    page = description.regions[1].pages[0]
    real_load = repo.load_blob
    repo.load_blob = lambda blob_id: b"\x81\xa1v\x07" if blob_id == page else real_load(blob_id)  # type: ignore[method-assign]
    damaged = list(image_problems(repo, snap.root, indexed))
    assert len(damaged) == 1 and page.hex()[:12] in damaged[0]


@needs("sfdisk")
def test_cairn_check_covers_image_snapshots(tmp_path: Path) -> None:
    from cairn.ops.check import CheckOptions, check
    from cairn.repo.pack import object_name

    disk = raw_disk(tmp_path)
    repo = new_repo()
    snap = repo.find_snapshot(image_of(repo, disk).snapshot_id.hex())
    assert check(repo, CheckOptions(read_data=True)).errors == []
    _, description = load_disk(repo, snap.id.hex())
    page = description.regions[1].pages[0]
    repo.backend.delete(object_name(repo.lookup(page).pack_id))  # the pack holding an extent page
    errors = check(repo, CheckOptions()).errors
    assert any(f"snapshot {snap.short_id}" in e and page.hex()[:12] in e for e in errors), errors
