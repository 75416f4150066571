"""`check` finds each kind of damage, names the object, and keeps going to report all of it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from dataclasses import dataclass

import pytest

import cairn.ops.check as check_mod
from cairn.errors import RepositoryLocked, UsageError
from cairn.files.tree import Node, encode_tree
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.check import UNINDEXED, CheckOptions, CheckResult, check
from cairn.repo import index as index_mod
from cairn.repo import lock as lock_mod
from cairn.repo.blob import BlobType
from cairn.repo.keys import KdfParams
from cairn.repo.pack import object_name
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.testing.faulty import FaultyBackend
from cairn.storage.local import LocalBackend
from cairn.storage.base import ObjectInfo
from cairn.testing.memory import MemoryBackend

FAST_KDF = KdfParams(iterations=1, memory_kib=8, lanes=1)


@dataclass
class Built:
    """A small repository holding one snapshot: what a test needs to find and damage its parts."""

    repo: Repository
    backend: FaultyBackend
    snapshot: Snapshot
    data_ids: list[bytes]
    root: bytes
    subtree: bytes


def build(pack_size: int = 2048, blobs: int = 6) -> Built:
    """Six 3000-byte random blobs, one per pack so damage is easy to aim, and both trees in a 7th."""
    backend = FaultyBackend(MemoryBackend())
    repo = Repository.init(backend, b"pw", FAST_KDF, pack_size=pack_size)
    data_ids = [repo.save_blob(BlobType.DATA, os.urandom(3000))[0] for _ in range(blobs)]
    half = blobs // 2
    subtree, _ = repo.save_blob(
        BlobType.TREE, encode_tree([Node(b"inner.bin", "file", size=3000 * half, content=data_ids[:half])])
    )
    root, _ = repo.save_blob(
        BlobType.TREE,
        encode_tree(
            [
                Node(b"outer.bin", "file", size=3000 * (blobs - half), content=data_ids[half:]),
                Node(b"sub", "dir", subtree=subtree),
            ]
        ),
    )
    repo.flush()
    snap = Snapshot("files", root, [b"/src"], "host", "user")
    repo.save_snapshot(snap)
    return Built(repo, backend, snap, data_ids, root, subtree)


def pack_of(repo: Repository, blob_id: bytes) -> bytes:
    return repo.lookup(blob_id).pack_id


def only_error(result: CheckResult) -> str:
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


@pytest.fixture
def built() -> Built:
    return build()


def test_a_clean_repository_checks_clean_and_counts_what_it_holds(built: Built) -> None:
    result = check(built.repo, CheckOptions())
    assert result.ok and result.errors == [] and result.warnings == []
    assert result.snapshots == 1
    assert result.blobs == 8  # six data blobs and two trees
    assert result.packs == len(list(built.backend.list("data/")))
    assert result.bytes_read > 0


def test_read_data_reads_every_pack_whole(built: Built) -> None:
    total = sum(o.size for o in built.backend.list("data/"))
    result = check(built.repo, CheckOptions(read_data=True))
    assert result.ok, result.errors
    whole = [n for m, n in built.backend.log if m == "load" and n.startswith("data/")]
    assert set(whole) == {o.name for o in built.backend.list("data/")}
    assert result.bytes_read >= total


def test_check_takes_a_shared_lock_and_releases_it(built: Built) -> None:
    check(built.repo, CheckOptions())
    assert any(m == "store" and n.startswith("locks/") for m, n in built.backend.log)
    assert list(built.backend.list("locks/")) == []


def test_an_exclusive_lock_of_a_live_process_stops_check(built: Built) -> None:
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        try:
            now = time.time_ns()
            held = lock_mod.LockInfo(
                id="ab" * 32, exclusive=True, host=socket.gethostname(), pid=sleeper.pid,
                user="other", time_ns=now, refreshed_ns=now, command="repair index",
            )
            built.repo.store_object("locks", held.id, lock_mod.encode(held))
            with pytest.raises(RepositoryLocked, match=f"pid {sleeper.pid}"):
                check(built.repo, CheckOptions())
        finally:
            sleeper.kill()


def test_a_pack_no_index_names_is_a_warning_not_an_error(built: Built) -> None:
    # An interrupted backup: its packs were uploaded, its index never written.
    before = {o.name for o in built.backend.list("data/")}
    built.repo.save_blob(BlobType.DATA, os.urandom(5000))  # fills and uploads a pack
    (left,) = {o.name for o in built.backend.list("data/")} - before
    assert len(list(built.backend.list("index/"))) == 1  # still only the first backup's index
    result = check(built.repo, CheckOptions())
    assert result.errors == []
    assert result.warnings == [f"pack {left.split('/')[2][:12]}: {UNINDEXED}"]


def test_a_missing_pack_is_reported_with_the_index_naming_it(built: Built) -> None:
    pack = pack_of(built.repo, built.data_ids[0])
    built.backend.delete(object_name(pack))
    error = only_error(check(built.repo, CheckOptions()))
    assert error.startswith(f"pack {pack.hex()[:12]} is missing: index ")
    assert "(1 blobs)" in error


def test_a_pack_of_the_wrong_size_is_reported(built: Built) -> None:
    name = object_name(pack_of(built.repo, built.data_ids[1]))
    data = built.backend.load(name)
    built.backend.store(name, data + b"\0")
    error = only_error(check(built.repo, CheckOptions()))
    assert f"has {len(data) + 1} bytes, but its index records imply {len(data)}" in error


def test_an_index_that_disagrees_with_the_pack_header_is_reported(built: Built) -> None:
    (index_name,) = [o.name for o in built.backend.list("index/")]
    index_id = index_name.split("/")[1]
    packs, _ = index_mod.decode_index(built.repo.load_object("index", index_id), "index")
    target = pack_of(built.repo, built.data_ids[2])
    forged = []
    for pack_id, records in packs:
        entries = list(index_mod.iter_records(records))
        if pack_id == target:  # claim a different plaintext length: sizes still add up
            e = entries[0]
            entries[0] = type(e)(e.blob_type, e.blob_id, e.offset, e.length, e.raw_length + 1)
        forged.append((pack_id, index_mod.pack_records(entries)))
    built.backend.delete(index_name)
    built.repo.store_object("index", "cd" * 32, index_mod.encode_index(forged))
    error = only_error(check(built.repo, CheckOptions()))
    assert error == f"pack {target.hex()[:12]}: its header and the index disagree about 2 records"


def test_a_damaged_blob_is_found_only_by_read_data_and_named_with_its_pack(built: Built) -> None:
    blob = built.data_ids[3]
    entry = built.repo.lookup(blob)
    built.backend.corrupt(object_name(entry.pack_id), flip_bit=(entry.offset + 100) * 8)
    assert check(built.repo, CheckOptions()).ok  # the structure check reads no data blob
    error = only_error(check(built.repo, CheckOptions(read_data=True)))
    assert error == (
        f"pack {entry.pack_id.hex()[:12]}: blob {blob.hex()[:12]} is damaged or was changed: authentication failed"
    )


def test_every_damaged_pack_is_reported_in_one_run(built: Built) -> None:
    for blob in built.data_ids[:3]:
        entry = built.repo.lookup(blob)
        built.backend.corrupt(object_name(entry.pack_id), flip_bit=(entry.offset + 50) * 8)
    result = check(built.repo, CheckOptions(read_data=True))
    assert len(result.errors) == 3
    for blob in built.data_ids[:3]:
        assert any(f"blob {blob.hex()[:12]} is damaged" in e for e in result.errors)


def test_a_subset_reads_that_share_of_the_packs_and_at_least_one(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[bytes] = []
    real = check_mod._Checker.read_pack

    def counting(self: check_mod._Checker, pack_id: bytes) -> tuple[list[str], int]:
        read.append(pack_id)
        return real(self, pack_id)

    monkeypatch.setattr(check_mod._Checker, "read_pack", counting)
    assert len(list(built.backend.list("data/"))) == 7
    assert check(built.repo, CheckOptions(subset_percent=50)).ok
    assert len(read) == len(set(read)) == 4
    read.clear()
    assert check(built.repo, CheckOptions(subset_percent=0.01)).ok
    assert len(read) == 1


@pytest.mark.parametrize("percent", [0, -5, 101])
def test_a_subset_outside_0_to_100_percent_is_refused(built: Built, percent: float) -> None:
    with pytest.raises(UsageError, match="between 0 and 100"):
        check(built.repo, CheckOptions(subset_percent=percent))


def test_a_blob_a_file_needs_but_no_index_names_is_reported_with_the_file_path(built: Built) -> None:
    ghost = os.urandom(32)
    root, _ = built.repo.save_blob(BlobType.TREE, encode_tree([Node(b"lost.txt", "file", size=1, content=[ghost])]))
    built.repo.flush()
    snap = Snapshot("files", root, [b"/src"], "host", "user")
    built.repo.save_snapshot(snap)
    error = only_error(check(built.repo, CheckOptions()))
    assert error == (
        f"snapshot {snap.short_id}: /lost.txt: 1 of its 1 data blobs are not in the index "
        f"(first: blob {ghost.hex()[:12]})"
    )


def test_a_missing_tree_is_reported_with_its_path(built: Built) -> None:
    ghost = os.urandom(32)
    root, _ = built.repo.save_blob(BlobType.TREE, encode_tree([Node(b"gone", "dir", subtree=ghost)]))
    built.repo.flush()
    snap = Snapshot("files", root, [b"/src"], "host", "user")
    built.repo.save_snapshot(snap)
    error = only_error(check(built.repo, CheckOptions()))
    assert error == f"snapshot {snap.short_id}: tree {ghost.hex()[:12]} at /gone is not in the index"


def test_an_image_snapshot_needs_its_root_blob_indexed(built: Built) -> None:
    snap = Snapshot("image", os.urandom(32), [b"/dev/sda"], "host", "user")
    built.repo.save_snapshot(snap)
    error = only_error(check(built.repo, CheckOptions()))
    assert error == f"snapshot {snap.short_id}: disk description {snap.root.hex()[:12]}: blob {snap.root.hex()[:12]} is not in the index"


def test_each_tree_is_opened_once_however_many_snapshots_share_it(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        built.repo.save_snapshot(Snapshot("files", built.root, [b"/src"], "host", "user"))
    decoded: list[str] = []
    real = check_mod.decode_tree

    def counting(data: bytes, what: str) -> list[Node]:
        decoded.append(what)
        return real(data, what)

    monkeypatch.setattr(check_mod, "decode_tree", counting)
    result = check(built.repo, CheckOptions())
    assert result.ok and result.snapshots == 4
    assert sorted(decoded) == sorted([f"tree {built.root.hex()[:12]}", f"tree {built.subtree.hex()[:12]}"])


def test_a_damaged_index_is_reported_and_the_check_goes_on(built: Built) -> None:
    (index_name,) = [o.name for o in built.backend.list("index/")]
    built.backend.corrupt(index_name, flip_bit=200)
    result = check(built.repo, CheckOptions())
    index_short = index_name.split("/")[1][:8]
    assert f"index {index_short} is damaged or was changed: authentication failed" in result.errors
    # With its only index gone, the snapshot's root tree is unreachable: reported too.
    assert any(e.startswith(f"snapshot {built.snapshot.short_id}: tree ") for e in result.errors)
    assert all(UNINDEXED in w for w in result.warnings) and len(result.warnings) == 7


def test_an_unreadable_lock_or_a_foreign_object_is_a_warning(built: Built) -> None:
    built.backend.store("locks/" + "ef" * 32, b"garbage that does not open")
    built.backend.store("snapshots/readme.txt", b"not ours")
    result = check(built.repo, CheckOptions())
    assert result.errors == []
    assert any(w.startswith("lock efefefef") for w in result.warnings)
    assert "snapshots/readme.txt: unexpected object, not part of the repository" in result.warnings


def test_progress_reports_each_phase(built: Built) -> None:
    seen: list[tuple[str, int, int]] = []
    check(built.repo, CheckOptions(read_data=True), progress=lambda *a: seen.append(a))
    phases = {p for p, _, _ in seen}
    assert {"index", "trees", "data"} <= phases
    assert ("data", 7, 7) in seen


def test_options_default_to_a_structure_check(built: Built) -> None:
    assert check(built.repo).ok


class _BackupWhileListing(MemoryBackend):
    """Runs `during` once, just before the first listing of `prefix` returns (a concurrent writer)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.during: Callable[[], None] | None = None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if prefix == self.prefix and self.during is not None:
            during, self.during = self.during, None
            during()
        return super().list(prefix)


@pytest.mark.parametrize("prefix", ["snapshots/", "index/", "data/"])
def test_a_backup_finishing_during_check_is_no_damage(prefix: str) -> None:
    backend = _BackupWhileListing(prefix)
    repo = Repository.init(backend, b"pw", FAST_KDF, pack_size=2048)
    repo.save_snapshot(Snapshot("files", repo.save_blob(BlobType.TREE, encode_tree([]))[0], [b"/"], "h", "u"))
    repo.flush()

    def other_host_backs_up() -> None:  # a second writer with its own Repository, start to end
        other = Repository.open(backend, b"pw")
        blob, _ = other.save_blob(BlobType.DATA, os.urandom(3000))
        tree, _ = other.save_blob(BlobType.TREE, encode_tree([Node(b"new", "file", size=3000, content=[blob])]))
        other.flush()
        other.save_snapshot(Snapshot("files", tree, [b"/"], "other", "u"))

    backend.during = other_host_backs_up
    result = check(repo, CheckOptions(read_data=True))
    assert result.errors == []
    assert backend.during is None  # it did run


def test_a_real_backup_of_a_folder_checks_clean(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "a.txt").write_bytes(b"hello\n" * 1000)
    (source / "deep" / "b.bin").write_bytes(os.urandom(300_000))
    (source / "deep" / "er" / "empty").write_bytes(b"")
    repo = Repository.init(MemoryBackend(), b"pw", FAST_KDF)
    first = backup(repo, BackupOptions(paths=[str(source)]))
    (source / "a.txt").write_bytes(b"changed\n")
    backup(repo, BackupOptions(paths=[str(source)]))
    result = check(repo, CheckOptions(read_data=True))
    assert (result.errors, result.warnings) == ([], [])
    assert result.snapshots == 2
    assert result.blobs >= 4 and result.bytes_read >= 300_000
    assert first.snapshot_id is not None


def _local_repo_with_packs(tmp_path: Path) -> tuple[Repository, list[Path]]:
    """A local repository (its packs are read by forked processes) of several small packs."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(12):
        (source / f"f{i}.bin").write_bytes(os.urandom(40_000))
    repo = Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF, pack_size=64 * 1024)
    backup(repo, BackupOptions(paths=[str(source)], cache_dir=tmp_path / "cache"))
    packs = sorted((tmp_path / "repo" / "data").rglob("*"))
    return repo, [p for p in packs if p.is_file()]


@pytest.fixture
def reader_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the reader processes check forks (a spy on the real fork)."""
    pids: list[int] = []
    real = check_mod.fork_children

    def spy(count: int, serve: Callable[[socket.socket], None]) -> list[tuple[int, socket.socket]]:
        children = real(count, serve)
        pids.extend(pid for pid, _ in children)
        return children

    monkeypatch.setattr(check_mod, "fork_children", spy)
    return pids


def assert_reaped(pids: list[int]) -> None:
    assert pids
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # neither running nor a zombie: gone and reaped


def test_read_data_in_reader_processes_finds_every_damaged_pack(tmp_path: Path, reader_pids: list[int]) -> None:
    repo, packs = _local_repo_with_packs(tmp_path)
    assert repo.backend.properties.shared_with_forks and len(packs) >= 4
    # every pack read whole (plus the trees the structure check reads)
    assert check(repo, CheckOptions(read_data=True)).bytes_read >= sum(p.stat().st_size for p in packs)
    damaged = [p for p in packs if p.stat().st_size > 30_000][:3]  # data packs (trees' are small)
    assert len(damaged) == 3
    for pack in damaged:
        data = bytearray(pack.read_bytes())
        data[100] ^= 1  # inside the first blob
        pack.write_bytes(bytes(data))
    result = check(repo, CheckOptions(read_data=True))
    assert sorted(e.split(":")[0] for e in result.errors) == sorted(f"pack {p.name[:12]}" for p in damaged)
    assert result.bytes_read >= sum(p.stat().st_size for p in packs)
    assert_reaped(reader_pids)


def test_a_killed_reader_process_fails_the_check_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader_pids: list[int]
) -> None:
    repo, _ = _local_repo_with_packs(tmp_path)
    parent, real = os.getpid(), check_mod._Checker.read_pack

    def dying(self: check_mod._Checker, pack_id: bytes) -> tuple[list[str], int]:
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, pack_id)

    monkeypatch.setattr(check_mod._Checker, "read_pack", dying)
    result = check(repo, CheckOptions(read_data=True))
    assert not result.ok
    assert all(e.startswith("a process reading packs ended early (killed by signal 9): ") for e in result.errors)
    assert len(result.errors) == 2
    assert_reaped(reader_pids)


def test_an_interrupted_check_leaves_no_reader_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader_pids: list[int]
) -> None:
    repo, _ = _local_repo_with_packs(tmp_path)

    def interrupted(self: check_mod._Checker, snapshots: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(check_mod._Checker, "check_trees", interrupted)
    with pytest.raises(KeyboardInterrupt):
        check(repo, CheckOptions(read_data=True))
    assert_reaped(reader_pids)
    assert not list((tmp_path / "repo" / "locks").iterdir())  # the lock went with the parent
