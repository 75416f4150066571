"""A backup running while prune runs loses nothing (docs/FORMAT.md §12).

In-process interleavings put a writer's steps at each of prune's steps deterministically; the
last test runs real `cairn backup` and `cairn prune` processes side by side. After every
scenario: `check --read-data` passes with the writer's snapshot in place (before any further
prune), every blob reads back, and a later prune removes only what nothing needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import cairn.ops.prune as prune_mod
from conftest import FAST_KDF, PASSWORD, SRC
from cairn.files.tree import Node, encode_tree
from cairn.ops.check import CheckOptions, check
from cairn.ops.prune import PruneOptions, prune
from cairn.policy.repack import Limit
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend
from cairn.testing.memory import MemoryBackend

STRICT = PruneOptions(max_unused=Limit(percent=0))


class Scene:
    """One repository, opened separately by a writer and by prune (as two processes would)."""

    def __init__(self) -> None:
        self.backend = MemoryBackend()
        Repository.init(self.backend, b"pw", FAST_KDF, pack_size=8000)
        self.contents: dict[bytes, list[bytes]] = {}  # snapshot id -> its file's blobs
        self.rng = random.Random(7)

    def open(self) -> Repository:
        return Repository.open(self.backend, b"pw")

    def blobs(self, n: int) -> list[bytes]:
        return [self.rng.randbytes(3000) for _ in range(n)]

    def snapshot(self, repo: Repository, blobs: list[bytes]) -> bytes:
        """Save `blobs` as one file's content (deduplicating) and a snapshot; lock held by caller."""
        ids = [repo.save_blob(BlobType.DATA, b)[0] for b in blobs]
        root, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"f", "file", size=3000 * len(ids), content=ids)]))
        repo.flush()
        snap_id = repo.save_snapshot(Snapshot("files", root, [b"/f"], "h", "u"))
        self.contents[snap_id] = blobs
        return snap_id

    def backup(self, blobs: list[bytes]) -> bytes:
        repo = self.open()
        with repo.lock(command="backup"):
            return self.snapshot(repo, blobs)

    def forget(self, snap_id: bytes) -> None:
        self.backend.delete(f"snapshots/{snap_id.hex()}")
        del self.contents[snap_id]

    def verify(self) -> None:
        """check --read-data is clean and every snapshot's file reads back as saved."""
        repo = self.open()
        result = check(repo, CheckOptions(read_data=True))
        assert result.errors == [], result.errors
        for snap_id, blobs in self.contents.items():
            from cairn.files.tree import decode_tree

            snap = repo.load_snapshot(snap_id)
            node = decode_tree(repo.load_blob(snap.root), "root")[0]
            assert [repo.load_blob(b) for b in node.content] == blobs

    def packs(self) -> int:
        return sum(1 for _ in self.backend.list("data/"))


def at_step(monkeypatch: pytest.MonkeyPatch, step: str, action: Callable[[], None]) -> None:
    """Run `action` when prune reaches `step` (the points the kill test uses too)."""
    original = prune_mod._checkpoint

    def hook(name: str) -> None:
        original(name)
        if name == step:
            action()

    monkeypatch.setattr(prune_mod, "_checkpoint", hook)


def test_a_backup_holding_its_lock_through_a_prune_keeps_what_it_deduplicated() -> None:
    scene = Scene()
    old = scene.blobs(6)
    first = scene.backup(old)
    scene.backup(scene.blobs(4))
    scene.forget(first)
    writer = scene.open()
    with writer.lock(command="backup"):
        writer.load_index()  # read before prune commits: names the packs of `old`
        result = prune(scene.open(), STRICT)
        assert result.packs_dropped >= 1 and result.pending == 1 and result.deleted_packs == 0
        # The writer now saves a snapshot made of the very blobs prune left out of the index.
        second = scene.snapshot(writer, old + scene.blobs(2))
    scene.verify()  # before any further prune: the writer indexed those packs again itself
    assert second in scene.contents
    result = prune(scene.open(), STRICT)
    assert result.pending == 0 and result.deleted_packs >= 1  # only the trees of `first` go
    scene.verify()


def test_a_backup_finishing_between_the_walk_and_the_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    scene = Scene()
    old = scene.blobs(6)
    first = scene.backup(old)
    scene.forget(first)
    writer = scene.open()

    def backup_meanwhile() -> None:  # after prune's walk, before its new index lands
        with writer.lock(command="backup"):
            scene.snapshot(writer, old)

    at_step(monkeypatch, "walked", backup_meanwhile)
    result = prune(scene.open(), STRICT)
    # Its re-check after the new index landed found the new snapshot using the packs it had
    # just left out, and indexed them again at once: nothing deleted, nothing left pending.
    assert result.deleted_packs == 0 and result.reindexed_packs >= 1 and result.pending == 0
    scene.verify()
    monkeypatch.undo()
    result = prune(scene.open(), STRICT)
    assert result.deleted_packs == 0 and result.pending == 0 and result.written_bytes == 0
    scene.verify()


def test_a_backup_starting_after_the_new_index_uploads_its_own_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    scene = Scene()
    old = scene.blobs(6)
    first = scene.backup(old)
    scene.forget(first)
    at_step(monkeypatch, "indexed", lambda: scene.backup(old))
    result = prune(scene.open(), STRICT)
    assert result.pending == 0 and result.deleted_packs >= 1
    scene.verify()


def test_the_packs_of_a_running_backup_are_not_taken_for_leftovers(monkeypatch: pytest.MonkeyPatch) -> None:
    scene = Scene()
    scene.backup(scene.blobs(3))
    writer = scene.open()
    fresh = scene.blobs(5)
    with writer.lock(command="backup"):
        for blob in fresh:
            writer.save_blob(BlobType.DATA, blob)  # packs land, no index object yet
        result = prune(scene.open(), STRICT)
        assert result.leftover_packs >= 1 and result.pending == 1 and result.deleted_packs == 0
        scene.snapshot(writer, fresh)
    scene.verify()
    result = prune(scene.open(), STRICT)
    assert result.pending == 0 and result.deleted_packs == 0
    scene.verify()


def test_a_backup_indexing_its_packs_between_the_walk_and_the_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    scene = Scene()
    writer = scene.open()
    fresh = scene.blobs(5)
    lock = writer.lock(command="backup")
    lock.__enter__()
    for blob in fresh:
        writer.save_blob(BlobType.DATA, blob)

    def finish() -> None:
        scene.snapshot(writer, fresh)
        lock.__exit__(None, None, None)

    at_step(monkeypatch, "walked", finish)
    result = prune(scene.open(), STRICT)
    assert result.leftover_packs >= 1 and result.pending == 0 and result.deleted_packs == 0
    scene.verify()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(600)
def test_real_backup_and_prune_processes_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = tmp_path / "repo"
    Repository.init(LocalBackend(repo_dir), PASSWORD.encode(), FAST_KDF, pack_size=1 << 20)
    env = {**os.environ, "CAIRN_PASSWORD": PASSWORD, "PYTHONPATH": str(SRC)}

    def cairn(*args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cairn", "-r", str(repo_dir), "--json", *args],
            env={**env, **(extra or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def done(proc: subprocess.Popen[str]) -> dict:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        try:
            return json.loads(out)
        except json.JSONDecodeError:  # backup prints progress lines before its summary
            return json.loads(out.strip().splitlines()[-1])

    rng = random.Random(3)
    first_src, second_src = tmp_path / "one", tmp_path / "two"
    first_src.mkdir()
    second_src.mkdir()
    old = rng.randbytes(3_000_000)
    (first_src / "old.bin").write_bytes(old)
    first = done(cairn("backup", str(first_src)))["snapshot_id"]
    done(cairn("forget", first))
    # The second backup reads 60 MB first, then a copy of old.bin, which it deduplicates
    # against the index it read at its start. It is stopped (SIGSTOP: alive, lock fresh) once
    # its first pack is written, while prune removes the packs of old.bin, then resumed.
    (second_src / "aaa.bin").write_bytes(rng.randbytes(60_000_000))
    (second_src / "zzz-old.bin").write_bytes(old)
    def packs() -> set[Path]:
        return {p for p in (repo_dir / "data").rglob("*") if p.is_file() and not p.name.startswith(".")}

    packs_before = packs()
    backup = cairn("backup", str(second_src))
    deadline = time.monotonic() + 60
    while packs() == packs_before and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(backup.pid, signal.SIGSTOP)
    try:
        pruned = done(cairn("prune", "--max-unused", "0%"))
    finally:
        os.kill(backup.pid, signal.SIGCONT)
    assert pruned["packs_dropped"] >= 1 and pruned["leftover_packs"] >= 1
    assert pruned["pending"] == 1 and "backup" in pruned["waiting_for"][0], pruned
    second = done(backup)["snapshot_id"]
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    assert check(repo, CheckOptions(read_data=True)).errors == []
    target = tmp_path / "restored"
    restore = cairn("restore", second, "--target", str(target))
    restore.communicate(timeout=300)
    assert restore.returncode == 0
    inner = target / second_src.relative_to("/")
    assert _digest(inner / "zzz-old.bin") == _digest(second_src / "zzz-old.bin")
    assert _digest(inner / "aaa.bin") == _digest(second_src / "aaa.bin")
    final = done(cairn("prune", "--max-unused", "0%"))
    assert final["pending"] == 0
    assert check(Repository.open(LocalBackend(repo_dir), PASSWORD.encode()), CheckOptions(read_data=True)).errors == []
