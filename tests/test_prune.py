"""`cairn prune`: space comes back, every kept snapshot restores bit-exact, `check --read-data`
passes, repacking happens only when it pays, and only index objects naming a removed pack are
rewritten. Concurrency and kill -9 are in test_prune_concurrent.py and test_prune_kill.py."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, CliRun
from cairn.errors import DamagedObject
from cairn.ops.check import AWAITING_DELETION, CheckOptions, check
from cairn.ops.prune import PruneOptions, prune
from cairn.policy.repack import Limit
from cairn.repo import encoding
from cairn.repo import lock as lock_mod
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend
from cairn.testing.memory import MemoryBackend


def open_repo(path: Path) -> Repository:
    return Repository.open(LocalBackend(path), PASSWORD.encode())


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def storage_bytes(repo_dir: Path, prefix: str = "data") -> int:
    return sum(p.stat().st_size for p in (repo_dir / prefix).rglob("*") if p.is_file())


class History:
    """A source folder changed between backups; remembers what each snapshot must restore to."""

    def __init__(self, cli: CliRun, repo_dir: Path, tmp_path: Path, seed: int = 1) -> None:
        self.cli, self.repo_dir, self.tmp = cli, repo_dir, tmp_path
        self.src = tmp_path / "src"
        self.src.mkdir()
        self.rng = random.Random(seed)
        self.expected: dict[str, dict[str, str]] = {}

    def write(self, name: str, size: int) -> None:
        path = self.src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.rng.randbytes(size))

    def backup(self) -> str:
        result = self.cli("-r", str(self.repo_dir), "--json", "backup", str(self.src))
        assert result.exit_code == 0, result.stderr
        snapshot_id = json.loads(result.stdout.strip().splitlines()[-1])["snapshot_id"]
        self.expected[snapshot_id] = tree_digest(self.src)
        return snapshot_id

    def forget(self, *ids: str) -> None:
        result = self.cli("-r", str(self.repo_dir), "forget", *ids)
        assert result.exit_code == 0, result.stderr
        for i in ids:
            self.expected.pop(i)

    def verify(self) -> None:
        """check --read-data passes, and every remaining snapshot restores bit-exact."""
        listed = json.loads(self.cli("-r", str(self.repo_dir), "--json", "snapshots").stdout)
        assert {s["id"] for s in listed} == set(self.expected)
        result = check(open_repo(self.repo_dir), CheckOptions(read_data=True))
        assert result.errors == [], result.errors
        for snapshot_id, digest in self.expected.items():
            target = self.tmp / f"restore-{snapshot_id[:8]}"
            result = self.cli("-r", str(self.repo_dir), "restore", snapshot_id[:12], "--target", str(target))
            assert result.exit_code == 0, result.stderr
            restored = target / self.src.relative_to("/")
            assert tree_digest(restored) == digest
            shutil.rmtree(target)


@pytest.fixture
def history(cli: CliRun, repo_dir: Path, tmp_path: Path) -> History:
    return History(cli, repo_dir, tmp_path)


def prune_cli(cli: CliRun, repo_dir: Path, *args: str) -> dict:
    result = cli("-r", str(repo_dir), "--json", "prune", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_forgotten_data_comes_back_and_the_rest_restores(history: History, cli: CliRun, repo_dir: Path) -> None:
    history.write("keep/a.bin", 3_000_000)
    history.write("gone/b.bin", 5_000_000)
    first = history.backup()
    os.remove(history.src / "gone/b.bin")
    history.write("keep/c.bin", 2_000_000)
    second = history.backup()
    before = storage_bytes(repo_dir)
    dry = prune_cli(cli, repo_dir, "--dry-run")
    assert dry["dry_run"] and dry["unused_bytes"] == 0 and dry["deleted_packs"] == 0
    history.forget(first)
    dry = prune_cli(cli, repo_dir, "--dry-run")
    assert dry["unused_bytes"] >= 5_000_000 and storage_bytes(repo_dir) == before
    done = prune_cli(cli, repo_dir)
    assert done["pending"] == 0 and done["deleted_bytes"] > 0
    after = storage_bytes(repo_dir)
    # b.bin's 5 MB of random bytes shared a pack with a.bin: half that pack was waste (over
    # the 5% allowed), so it was repacked and all 5 MB came back.
    assert before - after >= 4_900_000 and done["packs_repacked"] == 1
    assert not (repo_dir / "pending").exists() or not any((repo_dir / "pending").iterdir())
    history.verify()
    assert second in history.expected
    again = prune_cli(cli, repo_dir)
    assert again["deleted_packs"] == 0 and again["written_bytes"] == 0


def test_partly_used_packs_are_repacked_only_when_worth_it(cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small packs (64 KiB) so that files share packs; many small files, half forgotten."""
    repo_dir = tmp_path / "repo"
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    Repository.init(LocalBackend(repo_dir), PASSWORD.encode(), FAST_KDF, pack_size=64 * 1024)
    history = History(cli, repo_dir, tmp_path, seed=2)
    for i in range(40):
        history.write(f"f{i:02d}", 5000)
    first = history.backup()
    for i in range(0, 40, 2):
        os.remove(history.src / f"f{i:02d}")
    history.backup()
    history.forget(first)
    packs_before = sum(1 for p in (repo_dir / "data").rglob("*") if p.is_file())
    tolerant = prune_cli(cli, repo_dir, "--max-unused", "unlimited")
    assert tolerant["packs_repacked"] == 0 and tolerant["repacked_bytes"] == 0
    assert tolerant["unused_left"] > 80_000
    strict = prune_cli(cli, repo_dir, "--max-unused", "0%", "--dry-run")
    assert strict["packs_repacked"] > 0 and strict["unused_left"] == 0
    bounded = prune_cli(cli, repo_dir, "--max-unused", "0%", "--max-repack-size", "40K")
    assert 0 < bounded["repacked_bytes"] <= 40 * 1024 and bounded["unused_left"] > 0
    history.verify()
    strict = prune_cli(cli, repo_dir, "--max-unused", "0%")
    assert strict["packs_repacked"] > 0 and strict["unused_left"] == 0 and strict["pending"] == 0
    assert prune_cli(cli, repo_dir, "--dry-run")["unused_bytes"] == 0
    assert sum(1 for p in (repo_dir / "data").rglob("*") if p.is_file()) <= packs_before
    history.verify()


def test_only_index_objects_naming_removed_packs_are_rewritten(history: History, cli: CliRun, repo_dir: Path) -> None:
    ids = []
    for i in range(6):
        history.write(f"v{i}.bin", 400_000)
        ids.append(history.backup())
    index_before = {p.name for p in (repo_dir / "index").iterdir()}
    os.remove(history.src / "v2.bin")
    history.backup()
    history.forget(*ids)  # v2.bin's pack (with the trees of its backup) is now wholly unused
    index_mid = {p.name for p in (repo_dir / "index").iterdir()}
    done = prune_cli(cli, repo_dir)
    index_after = {p.name for p in (repo_dir / "index").iterdir()}
    assert done["packs_dropped"] >= 1 and done["deleted_indexes"] == 1
    assert len(index_mid - index_after) == 1 and len(index_after - index_mid) == 1
    assert index_before <= index_mid
    history.verify()


def test_leftover_packs_of_an_interrupted_backup_are_removed(history: History, cli: CliRun, repo_dir: Path) -> None:
    history.write("a.bin", 100_000)
    history.backup()
    repo = open_repo(repo_dir)
    with repo.lock():
        repo.save_blob(BlobType.DATA, os.urandom(300_000))
        repo._upload(repo._builder)  # the pack lands, its index never does: killed here
    done = prune_cli(cli, repo_dir)
    assert done["leftover_packs"] == 1 and done["deleted_packs"] == 1
    result = check(open_repo(repo_dir), CheckOptions())
    assert result.errors == [] and not any("unindexed" in w for w in result.warnings)
    history.verify()


def test_temporary_files_of_killed_writes_are_removed_once_a_day_old(history: History, cli: CliRun, repo_dir: Path) -> None:
    """A backup killed while its pack was being written leaves a temporary file (a pack in
    progress is no object): prune removes those over a day old, never a younger one, which
    may be a backup writing now."""
    history.write("a.bin", 100_000)
    history.backup()
    old, young = repo_dir / "data" / "00" / ".tmp-0123456789abcdef", repo_dir / "data" / "00" / ".tmp-fedcba9876543210"
    old.parent.mkdir(exist_ok=True)
    for path in (old, young):
        path.write_bytes(os.urandom(100_000))
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    assert prune_cli(cli, repo_dir, "--dry-run")["temporaries_removed"] == 0 and old.exists()
    result = cli("-r", str(repo_dir), "prune")
    assert result.exit_code == 0, result.stderr
    assert "removed 1 temporary files that interrupted writes left over a day ago" in result.stdout
    assert not old.exists() and young.exists()
    history.verify()


def test_deletion_waits_for_locks_that_existed_and_the_next_prune_finishes(history: History, cli: CliRun, repo_dir: Path) -> None:
    history.write("old.bin", 1_000_000)
    first = history.backup()
    history.write("new.bin", 1_000_000)
    os.remove(history.src / "old.bin")
    history.backup()
    history.forget(first)
    other = open_repo(repo_dir)
    held = other.locks.acquire(False, "backup")  # a backup running on this host (our own pid: alive)
    before = storage_bytes(repo_dir)
    done = prune_cli(cli, repo_dir)
    assert done["pending"] == 1 and done["deleted_packs"] == 0 and storage_bytes(repo_dir) == before
    assert any("backup" in w for w in done["waiting_for"])
    assert len(list((repo_dir / "pending").iterdir())) == 1
    history.verify()  # the old packs are out of the index, the repository checks clean
    warnings = check(open_repo(repo_dir), CheckOptions()).warnings
    assert warnings and all(AWAITING_DELETION in w for w in warnings), warnings
    still = prune_cli(cli, repo_dir)
    assert still["pending"] == 1 and still["deleted_packs"] == 0
    other.locks.release(held)
    done = prune_cli(cli, repo_dir)
    assert done["pending"] == 0 and done["deleted_packs"] >= 1 and storage_bytes(repo_dir) < before - 900_000
    assert not any((repo_dir / "pending").iterdir())
    history.verify()


def test_a_stale_lock_does_not_hold_deletion_back(history: History, cli: CliRun, repo_dir: Path) -> None:
    history.write("x.bin", 500_000)
    first = history.backup()
    history.write("x.bin", 500_000)
    history.backup()
    history.forget(first)
    repo = open_repo(repo_dir)
    old = lock_mod.LockInfo("ab" * 32, False, "elsewhere", 1, "u", 1, 1, "backup")
    repo.store_object("locks", old.id, lock_mod.encode(old))  # refreshed in 1970: stale
    done = prune_cli(cli, repo_dir)
    assert done["pending"] == 0 and done["deleted_packs"] >= 1
    history.verify()


def test_two_prunes_never_run_at_once(history: History, repo_dir: Path) -> None:
    from cairn.errors import RepositoryLocked
    from cairn.repo.maintenance import maintenance_lock

    history.write("a", 10)
    history.backup()
    repo = open_repo(repo_dir)
    with maintenance_lock(repo, "prune"):
        with pytest.raises(RepositoryLocked, match="maintenance"):
            prune(open_repo(repo_dir), PruneOptions())


def test_image_snapshots_keep_their_descriptions_pages_and_data(tmp_path: Path) -> None:
    """An image's blobs are reached through its description and pages (image.pages)."""
    from cairn.image import format as disk_format
    from cairn.image.pages import DATA, ZERO, PageBuilder

    repo = Repository.init(MemoryBackend(), b"pw", FAST_KDF, pack_size=300_000)
    chunk = 256 * 1024

    def image(seed: int) -> bytes:
        with repo.lock():
            data = [random.Random(seed * 10 + i).randbytes(chunk) for i in range(3)]
            page = PageBuilder(0)
            for blob in data:
                page.add(DATA, repo.save_blob(BlobType.DATA, blob)[0])
            page.add(ZERO)
            page_id, _ = repo.save_blob(BlobType.DISK, page.encode())
            region = disk_format.Region("partition", 0, 4 * chunk, pages=[page_id], number=1)
            disk = disk_format.Disk("partition", 4 * chunk, 512, "none", chunk, 4, regions=[region])
            root, _ = repo.save_blob(BlobType.DISK, disk_format.encode(disk))
            repo.flush()
            return repo.save_snapshot(Snapshot("image", root, [b"/dev/x"], "h", "u"))

    first, second = image(1), image(2)
    repo.backend.delete(f"snapshots/{first.hex()}")
    result = prune(repo, PruneOptions(max_unused=Limit(percent=0)))
    assert result.snapshots == 1 and result.used_blobs == 5 and result.blobs == 10
    checked = check(repo, CheckOptions(read_data=True))
    assert checked.errors == []
    assert prune(repo, PruneOptions(dry_run=True)).unused_bytes == 0
    assert second


def test_a_tree_damaged_past_its_first_entries_stops_prune_before_it_deletes() -> None:
    """Prune's walk reads a tree entry by entry (files/tree.iter_tree): an entry found damaged
    after others were already marked still fails the whole prune, and nothing is deleted, not
    even a pack no snapshot could have needed."""
    repo = Repository.init(MemoryBackend(), b"pw", FAST_KDF, pack_size=1000)
    with repo.lock():
        repo.save_blob(BlobType.DATA, random.Random(1).randbytes(2000))  # in no snapshot
        used, _ = repo.save_blob(BlobType.DATA, random.Random(2).randbytes(2000))
        entry = {"name": b"a", "type": "file", "mode": 0o644, "uid": 0, "gid": 0, "user": "", "group": "",
                 "mtime": 0, "atime": 0, "ctime": 0, "size": 2000, "content": [used]}
        damaged = {**entry, "name": b"b", "mode": "0644"}
        root, _ = repo.save_blob(BlobType.TREE, encoding.pack({"v": 1, "entries": [entry, damaged]}))
        repo.flush()
        repo.save_snapshot(Snapshot("files", root, [b"/"], "h", "u"))
    before = sorted(info.name for info in repo.backend.list("data"))
    assert len(before) == 3  # a pack each: the unused blob, the used one, the tree
    with pytest.raises(DamagedObject, match=f"tree {root.hex()[:12]}, entry b'b' is damaged"):
        prune(Repository.open(repo.backend, b"pw"), PruneOptions(max_unused=Limit(percent=0)))
    assert sorted(info.name for info in repo.backend.list("data")) == before
