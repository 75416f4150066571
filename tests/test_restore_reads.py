"""Coalesced pack reads in a restore (files/restore_reads): many small files come back with far
fewer reads than blobs, byte for byte, and damage in one blob of a shared read spoils only the
file that blob belongs to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.files.restore_reads import PackReads
from cairn.files.restorer import restore
from cairn.ops.backup import BackupOptions, backup
from cairn.repo.pack import object_name
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from conftest import FAST_KDF

FILES = 300


class CountingBackend(LocalBackend):
    """The real local backend, counting the ranged reads of packs."""

    pack_reads = 0

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("data/"):
            self.pack_reads += 1
        return super().load(name, offset, length)


def small_files(root: Path) -> dict[str, bytes]:
    """FILES files of 1-3 KiB of random bytes (one blob each, none alike), in two folders."""
    contents = {}
    for i in range(FILES):
        rel = f"{'ab'[i % 2]}/f{i:04d}"
        contents[rel] = os.urandom(1024 + i * 7)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(contents[rel])
    return contents


def backed_up(tmp_path: Path) -> tuple[Repository, CountingBackend, bytes, dict[str, bytes], Path]:
    src = tmp_path / "src"
    contents = small_files(src)
    backend = CountingBackend(tmp_path / "repo")
    repo = Repository.init(backend, b"pw", FAST_KDF)
    result = backup(repo, BackupOptions([str(src)]))
    assert result.snapshot_id is not None
    return repo, backend, repo.load_snapshot(result.snapshot_id).root, contents, src


def restored(target: Path, src: Path) -> Path:
    """Where the source folder lands inside the target (the snapshot keeps absolute paths)."""
    return target / str(src).lstrip("/")


def test_small_files_come_back_whole_with_few_pack_reads(tmp_path: Path) -> None:
    repo, backend, root, contents, src = backed_up(tmp_path)
    backend.pack_reads = 0
    result = restore(repo, root, str(tmp_path / "out"))
    assert result.errors == [] and result.files == FILES
    out = restored(tmp_path / "out", src)
    assert {rel: (out / rel).read_bytes() for rel in contents} == contents
    # One read per file's blob before; now runs of neighbours share a read (trees are apart).
    assert backend.pack_reads < FILES / 4


def test_damage_in_a_shared_read_spoils_only_its_own_file(tmp_path: Path) -> None:
    repo, backend, root, contents, src = backed_up(tmp_path)
    repo.load_index()
    victim = "a/f0100"
    entry = repo.lookup(repo.blob_id(contents[victim]))
    path = tmp_path / "repo" / object_name(entry.pack_id)
    with open(path, "r+b") as handle:  # flip one byte in the middle of the victim's blob
        handle.seek(entry.offset + entry.length // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = restore(repo, root, str(tmp_path / "out"))
    assert [os.path.basename(p) for p, _ in result.errors] == ["f0100"]
    assert "damaged" in result.errors[0][1]
    out = restored(tmp_path / "out", src)
    assert {rel: (out / rel).read_bytes() for rel in contents if rel != victim} == {
        rel: data for rel, data in contents.items() if rel != victim}


def test_unplanned_and_forgotten_blobs_still_load(tmp_path: Path) -> None:
    """A blob loaded without a plan, or planned and then pushed out by newer plans, is read on
    its own: coalescing changes how many reads there are, never what comes back."""
    repo, backend, _, contents, _ = backed_up(tmp_path)
    repo.load_index()
    reads = PackReads(repo)
    ids = [repo.blob_id(data) for data in contents.values()]
    assert reads.load(ids[0]) == contents["a/f0000"]  # never planned
    reads.plan(ids)
    reads.plan(ids[::-1])  # duplicates are planned once
    for blob_id, data in zip(ids, contents.values()):
        assert reads.load(blob_id) == data
    assert reads.load(ids[5]) == contents["b/f0005"]  # a second load of one blob: read alone
    assert 0 < reads.reads < FILES / 4


def test_bounds_forget_and_drop_runs_without_changing_what_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for only 16 planned blobs and 8 KiB of held reads, planning 300 blobs forgets
    most runs and reading drops held ones; every load still returns the right bytes."""
    from cairn.files import restore_reads

    monkeypatch.setattr(restore_reads, "MAX_PLANNED", 16)
    monkeypatch.setattr(restore_reads, "CACHE_BYTES", 8 * 1024)
    repo, _, _, contents, _ = backed_up(tmp_path)
    repo.load_index()
    reads = PackReads(repo)
    ids = [repo.blob_id(data) for data in contents.values()]
    reads.plan(ids)
    assert len(reads._where) <= 16
    for blob_id, data in zip(ids, contents.values()):
        assert reads.load(blob_id) == data
    assert reads._held_bytes == 0 and not reads._where
