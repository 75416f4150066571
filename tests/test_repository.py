"""The repository as a user of the format relies on it: keys, blobs, snapshots, locks, failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from cairn.errors import (
    DamagedObject,
    NotFound,
    RepositoryLocked,
    RepositoryNotFound,
    StorageError,
    StorageFull,
    UnsupportedVersion,
    UsageError,
    WrongPassword,
)
from cairn.files import pipeline_procs
from cairn.files.tree import Node, decode_tree, encode_tree
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.check import CheckOptions, check
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo import blob as blob_mod
from cairn.repo import crypto as crypto_mod
from cairn.repo import index as index_mod
from cairn.repo import lock as lock_mod
from cairn.repo import repository as repository_mod
from cairn.repo import snapshot as snapshot_mod
from cairn.repo.blob import ZSTD, BlobType, blob_aad, open_blob
from cairn.repo.crypto import OVERHEAD
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.base import Backend
from cairn.storage.local import LocalBackend
from cairn.testing.faulty import FaultyBackend, SimulatedCrash
from cairn.testing.memory import MemoryBackend
from conftest import PASSWORD, CliRun, one_line_error

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

FAST_KDF = KdfParams(iterations=1, memory_kib=8, lanes=1)
MiB = 1024 * 1024


def init(backend: Backend | None = None, password: bytes = b"pw", **config: object) -> Repository:
    return Repository.init(backend or MemoryBackend(), password, FAST_KDF, **config)


def save_files(repo: Repository, files: dict[bytes, bytes], time_ns: int | None = None) -> Snapshot:
    """A one-folder snapshot of `files` (name -> content), written in the format's order."""
    nodes = []
    for name, content in files.items():
        blob_id, _ = repo.save_blob(BlobType.DATA, content)
        nodes.append(Node(name, "file", size=len(content), content=[blob_id]))
    root, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    repo.flush()
    snap = Snapshot("files", root, [b"/data"], "host", "user", **({"time_ns": time_ns} if time_ns else {}))
    repo.save_snapshot(snap)
    return snap


def read_files(repo: Repository, snap: Snapshot) -> dict[bytes, bytes]:
    """What a restore of a one-folder snapshot gives back."""
    return {
        n.name: b"".join(repo.load_blob(b) for b in n.content)
        for n in decode_tree(repo.load_blob(snap.root), "tree")
    }


# -- keys -------------------------------------------------------------------------------------


def test_init_then_open_with_the_password() -> None:
    backend = MemoryBackend()
    repo = init(backend)
    opened = Repository.open(backend, b"pw")
    assert opened.config.id == repo.config.id
    assert opened.master == repo.master


def test_init_twice_is_refused() -> None:
    backend = MemoryBackend()
    init(backend)
    with pytest.raises(UsageError, match="a repository already exists"):
        init(backend)


def test_open_where_there_is_no_repository() -> None:
    with pytest.raises(RepositoryNotFound, match="run 'cairn init' first"):
        Repository.open(MemoryBackend(), b"pw")


def test_each_of_two_passwords_opens_it_and_a_removed_one_no_longer_does() -> None:
    backend = MemoryBackend()
    repo = init(backend, b"first")
    second = repo.add_key(b"second", FAST_KDF)
    assert len(repo.list_keys()) == 2
    assert Repository.open(backend, b"first").master == repo.master
    assert Repository.open(backend, b"second").master == repo.master
    repo.remove_key(second)
    assert [k.id for k in repo.list_keys()] == [repo.key_id]
    with pytest.raises(WrongPassword):
        Repository.open(backend, b"second")
    assert Repository.open(backend, b"first").master == repo.master


def test_the_key_in_use_cannot_be_removed() -> None:
    repo = init()
    with pytest.raises(UsageError, match="key in use"):
        repo.remove_key(repo.key_id)


def test_a_wrong_password_says_so() -> None:
    backend = MemoryBackend()
    init(backend)
    with pytest.raises(WrongPassword, match="wrong password"):
        Repository.open(backend, b"nope")


# -- blobs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MiB, 64 * MiB], ids=["empty", "1B", "1MiB", "64MiB"])
def test_random_blobs_round_trip_and_are_stored_raw(size: int) -> None:
    repo = init()
    data = os.urandom(size)
    blob_id, new = repo.save_blob(BlobType.DATA, data)
    assert new and blob_id == repo.blob_id(data)
    repo.flush()
    assert Repository.open(repo.backend, b"pw").load_blob(blob_id) == data
    entry = repo.lookup(blob_id)
    assert entry.raw_length == size
    assert entry.length == OVERHEAD + 1 + size  # flag byte 0 and the plaintext: not compressed


@pytest.mark.parametrize("size", [blob_mod.STREAM_FROM - 1, blob_mod.STREAM_FROM, 3 * MiB])
def test_blobs_a_backup_worker_seals_in_two_parts_open_as_any(size: int) -> None:
    """A worker seals a blob's flag and its bytes (or zstd frame) without joining them, from
    STREAM_FROM bytes on (crypto.Sealer.seal_parts_into): the envelope must be the one every
    reader opens, raw or compressed (at 3 MiB, half random: a frame longer than STREAM_FROM)."""
    repo = init()
    random_data = os.urandom(size)
    text = (b"a line of a log file, again and again\n" * (size // 38 + 1))[:size]
    if size > 2 * blob_mod.STREAM_FROM:
        text = random_data[: size // 2] + text[size // 2:]
    builder = repo.streamed_pack()
    ids = []
    for data in (random_data, text):
        blob_id = repo.blob_id(data)
        repo.seal_into(builder, BlobType.DATA, blob_id, memoryview(data))
        ids.append(blob_id)
    with repo.lock():
        repo.store_pack(builder)
        repo.add_pack(builder.pack_id, builder.entries)
        repo.flush()
    reopened = Repository.open(repo.backend, b"pw")
    assert [reopened.load_blob(i) for i in ids] == [random_data, text]
    assert repo.lookup(ids[0]).length == OVERHEAD + 1 + size and repo.lookup(ids[1]).length < size * 0.6


def test_index_objects_are_written_once_their_packs_hold_enough_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """An index object is built whole in memory: a backup of many small files names its packs
    in one once they hold INDEX_MAX_BLOBS blobs, not only every INDEX_EVERY_PACKS packs (the
    walk's peak of memory was the one index object of 100,000 blobs at its end)."""
    monkeypatch.setattr(repository_mod, "INDEX_MAX_BLOBS", 40)
    repo = init()
    written: list[bytes] = []
    with repo.lock():
        for pack in range(10):
            builder = repo.streamed_pack()
            for n in range(15):
                data = f"blob {n} of pack {pack}".encode()
                blob_id = repo.blob_id(data)
                repo.seal_into(builder, BlobType.DATA, blob_id, data)
                written.append(blob_id)
            repo.store_pack(builder)
            repo.add_pack(builder.pack_id, builder.entries)
        repo.flush()
    sizes = []
    for obj in repo.backend.list("index/"):
        index_id = obj.name.rsplit("/", 1)[-1]
        packs, _ = index_mod.decode_index(repo.load_object("index", index_id), index_id)
        sizes.append(sum(len(records) // index_mod.RECORD.size for _, records in packs))
    assert sorted(sizes) == [15, 45, 45, 45]  # three packs reach 40 blobs; the last at the flush
    reopened = Repository.open(repo.backend, b"pw")
    assert all(reopened.has_blob(blob_id) for blob_id in written)


def test_a_compressible_blob_round_trips_and_is_stored_smaller() -> None:
    repo = init()
    data = b"the same line of a log file, again and again\n" * 20000
    blob_id, _ = repo.save_blob(BlobType.DATA, data)
    repo.flush()
    assert Repository.open(repo.backend, b"pw").load_blob(blob_id) == data
    assert repo.lookup(blob_id).length < len(data) // 50


def test_a_big_blob_only_partly_compressible_is_still_compressed() -> None:
    """Big blobs are compressed only when a probe from across them compresses (blob.py): one
    whose halves are random and text is still stored compressed, and round-trips."""
    repo = init()
    data = os.urandom(256 * 1024) + b"a line of text that repeats, as logs do\n" * 6554
    blob_id, _ = repo.save_blob(BlobType.DATA, data)
    repo.flush()
    assert Repository.open(repo.backend, b"pw").load_blob(blob_id) == data
    assert repo.lookup(blob_id).length < 0.6 * len(data)


def test_a_blob_saved_twice_is_stored_once() -> None:
    repo = init()
    data = os.urandom(1000)
    first = repo.save_blob(BlobType.DATA, data)
    second = repo.save_blob(BlobType.DATA, data)
    assert first == (repo.blob_id(data), True) and second == (repo.blob_id(data), False)
    repo.flush()
    third = Repository.open(repo.backend, b"pw").save_blob(BlobType.DATA, data)
    assert third == (repo.blob_id(data), False)
    (pack,) = list(repo.backend.list("data/"))
    assert pack.size < 2 * len(data)


def test_an_interrupted_writer_leaves_a_repository_the_next_writer_uses() -> None:
    faulty = FaultyBackend(MemoryBackend())
    repo = init(faulty, pack_size=4096)
    kept = save_files(repo, {b"kept": b"old data"})
    faulty.crash("store", prefix="index/")  # dies after its packs, before their index
    with pytest.raises(SimulatedCrash):
        save_files(repo, {b"big": os.urandom(10000)})
    assert len(list(faulty.inner.list("data/"))) == 3  # the first backup's pack, two new ones

    after = Repository.open(faulty.inner, b"pw")
    assert [s.id for s in after.list_snapshots()] == [kept.id]
    assert read_files(after, kept) == {b"kept": b"old data"}
    again = save_files(after, {b"big": b"written again", b"kept": b"old data"})
    assert read_files(Repository.open(faulty.inner, b"pw"), again) == {b"big": b"written again", b"kept": b"old data"}
    result = check(after, CheckOptions(read_data=True))
    assert result.errors == [] and len(result.warnings) == 2  # the two orphaned packs, for prune


# -- snapshots -------------------------------------------------------------------------------


def test_a_snapshot_round_trips_every_field() -> None:
    repo = init()
    snap = Snapshot(
        kind="files", root=os.urandom(32), paths=[b"/home/u", b"/etc/\xff-not-utf8"], host="box", user="u",
        time_ns=1_700_000_000_123_456_789, tz_offset=3600, tags=["daily", "laptop"], parent=os.urandom(32),
        summary={"files": 3, "dirs": 1, "bytes_read": 10, "bytes_added": 5, "skipped": []}, program="cairn 0.1.0",
    )
    snapshot_id = repo.save_snapshot(snap)
    loaded = Repository.open(repo.backend, b"pw").load_snapshot(snapshot_id)
    assert loaded == snap and loaded.id == snapshot_id


@pytest.fixture
def three_snapshots() -> tuple[Repository, list[Snapshot]]:
    """Snapshots stored under chosen ids, so that two share a 4-digit prefix."""
    repo = init()
    snaps = []
    for n, object_id in enumerate(["abcd" + "0" * 60, "abcd" + "1" * 60, "1234" + "5" * 60]):
        snap = Snapshot("files", os.urandom(32), [b"/"], "h", "u", time_ns=1000 + n)
        repo.store_object("snapshots", object_id, snapshot_mod.encode(snap))
        snap.id = bytes.fromhex(object_id)
        snaps.append(snap)
    return repo, snaps


def test_find_snapshot_by_full_id_prefix_and_latest(three_snapshots: tuple[Repository, list[Snapshot]]) -> None:
    repo, snaps = three_snapshots
    assert repo.find_snapshot(snaps[0].id.hex()) == snaps[0]
    assert repo.find_snapshot("1234") == snaps[2]
    assert repo.find_snapshot("ABCD0") == snaps[0]
    assert repo.find_snapshot("latest") == snaps[2]


def test_find_snapshot_refuses_ambiguous_unknown_and_short_refs(
    three_snapshots: tuple[Repository, list[Snapshot]],
) -> None:
    repo, _ = three_snapshots
    with pytest.raises(NotFound, match="abcd is ambiguous: 2 snapshots"):
        repo.find_snapshot("abcd")
    with pytest.raises(NotFound, match="no snapshot ffff"):
        repo.find_snapshot("ffff")
    with pytest.raises(UsageError, match="at least 4 hex digits"):
        repo.find_snapshot("abc")
    with pytest.raises(NotFound, match="no snapshots yet"):
        init().find_snapshot("latest")


# -- verify before upload (docs/FORMAT.md §6) ------------------------------------------------

BAD_CONTENT = b"the file whose compression or encryption goes wrong\n" * 200  # compressible


def blobs_in_storage(repo: Repository) -> tuple[set[bytes], set[bytes]]:
    """(blob ids named by index objects, blob ids in the headers of the packs themselves)."""
    indexed: set[bytes] = set()
    for obj in repo.backend.list("index/"):
        index_id = obj.name.rsplit("/", 1)[-1]
        packs, _ = index_mod.decode_index(repo.load_object("index", index_id), index_id)
        indexed.update(entry.blob_id for _, records in packs for entry in index_mod.iter_records(records))
    packed: set[bytes] = set()
    for obj in repo.backend.list("data/"):
        pack_id = bytes.fromhex(obj.name.rsplit("/", 1)[-1])
        packed.update(entry.blob_id for entry in repo.read_pack_header(pack_id, obj.size))
    return indexed, packed


def break_compressor(monkeypatch: pytest.MonkeyPatch, bad: bytes) -> None:
    """zstd returns a valid frame of the wrong content for `bad` (as a library bug would)."""
    real = blob_mod._compressor

    class Wrong:
        def __init__(self, compressor: zstd.ZstdCompressor) -> None:
            self.compressor = compressor

        def compress(self, data: bytes | memoryview, mode: int) -> bytes:
            if bytes(data) == bad:
                data = b"X" + bytes(data)[1:]
            return self.compressor.compress(data, mode=mode)

    monkeypatch.setattr(blob_mod, "_compressor", lambda level: Wrong(real(level)))


def break_sealer(monkeypatch: pytest.MonkeyPatch, bad_aad: list[bytes]) -> None:
    """AES-GCM returns a ciphertext with one flipped bit when it seals the blob whose
    associated data is in `bad_aad` (filled in once the repository's id key is known)."""
    real = crypto_mod.AESGCM

    class Wrong:
        def __init__(self, key: bytes) -> None:
            self.aead = real(key)

        def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
            sealed = bytearray(self.aead.encrypt(nonce, plaintext, aad))
            if aad in bad_aad:
                sealed[len(sealed) // 2] ^= 0x10
            return bytes(sealed)

        def encrypt_into(self, nonce: bytes, plaintext: bytes, aad: bytes, out: memoryview) -> None:
            self.aead.encrypt_into(nonce, plaintext, aad, out)  # a backup worker seals into its pack
            if aad in bad_aad:
                out[len(out) // 2] ^= 0x10

        def decrypt(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
            return self.aead.decrypt(nonce, sealed, aad)

        def decrypt_into(self, nonce: bytes, sealed: bytes, aad: bytes, out: memoryview) -> None:
            self.aead.decrypt_into(nonce, sealed, aad, out)

    monkeypatch.setattr(crypto_mod, "AESGCM", Wrong)


@pytest.mark.parametrize("fault", ["compressor", "sealer", "sealer in a backup worker"])
def test_a_blob_that_does_not_verify_is_never_uploaded(
    fault: str, tmp_path: Path, repo_dir: Path, data: Path, cli: CliRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("-r", str(repo_dir), "backup", str(data)).exit_code == 0
    (data / "docs" / "broken.txt").write_bytes(BAD_CONTENT)
    (data / "after.bin").write_bytes(os.urandom(200_000))
    bad_id = Repository.open(LocalBackend(repo_dir), PASSWORD.encode()).blob_id(BAD_CONTENT)
    with monkeypatch.context() as patch:
        if fault == "compressor":
            break_compressor(patch, BAD_CONTENT)
        else:
            break_sealer(patch, [blob_aad(BlobType.DATA, bad_id)])
            if fault == "sealer in a backup worker":  # it seals into its pack (Sealer.seal_into)
                patch.setattr(pipeline_procs, "START_FILES", 0)
        failed = cli("-r", str(repo_dir), "backup", str(data))
    assert failed.exit_code == DamagedObject.exit_code
    line = one_line_error(failed)
    assert line.startswith(f"cairn: blob {bad_id.hex()[:12]} did not verify before upload (")
    assert line.endswith("its compression or encryption produced wrong bytes; nothing holding it was written")

    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    indexed, packed = blobs_in_storage(repo)
    assert bad_id not in indexed and bad_id not in packed
    assert len(repo.list_snapshots()) == 1  # the failed backup published no snapshot
    assert cli("-r", str(repo_dir), "check", "--read-data").exit_code == 0
    # With the library fixed, the same backup stores the file and it restores intact.
    assert cli("-r", str(repo_dir), "backup", str(data)).exit_code == 0
    target = tmp_path / "restored"
    assert cli("-r", str(repo_dir), "restore", "latest", "--target", str(target)).exit_code == 0
    assert (target / str(data).lstrip("/") / "docs" / "broken.txt").read_bytes() == BAD_CONTENT


# -- locks ------------------------------------------------------------------------------------


@pytest.fixture
def live_pid() -> Iterator[int]:
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            yield sleeper.pid
        finally:
            sleeper.kill()


def plant_lock(repo: Repository, *, exclusive: bool, pid: int, refreshed_ns: int | None = None) -> None:
    """A lock as another cairn process on this host would have written it."""
    now = time.time_ns()
    other = lock_mod.LockInfo(
        id=os.urandom(32).hex(), exclusive=exclusive, host=socket.gethostname(), pid=pid, user="someone",
        time_ns=now, refreshed_ns=now if refreshed_ns is None else refreshed_ns, command="repair index",
    )
    repo.store_object("locks", other.id, lock_mod.encode(other))


def test_an_exclusive_lock_of_a_live_process_blocks_a_shared_one(live_pid: int) -> None:
    repo = init()
    plant_lock(repo, exclusive=True, pid=live_pid)
    with pytest.raises(RepositoryLocked) as raised:
        with repo.lock(command="backup"):
            pass
    assert f"by someone@{socket.gethostname()} pid {live_pid} (repair index)" in str(raised.value)
    assert "cairn unlock" in str(raised.value)
    assert len(list(repo.backend.list("locks/"))) == 1  # ours was taken back


def test_a_lock_of_a_dead_process_or_not_refreshed_is_stale_and_ignored(live_pid: int) -> None:
    repo = init()
    dead = subprocess.Popen(["true"])
    dead.wait()
    plant_lock(repo, exclusive=True, pid=dead.pid)
    plant_lock(repo, exclusive=True, pid=live_pid, refreshed_ns=time.time_ns() - 31 * 60 * 10**9)
    with repo.lock(command="backup") as held:
        assert not held.exclusive


def test_two_shared_locks_coexist() -> None:
    repo = init()
    with repo.lock(command="backup"):
        with Repository.open(repo.backend, b"pw").lock(command="check"):
            assert len(list(repo.backend.list("locks/"))) == 2
    assert list(repo.backend.list("locks/")) == []


def test_an_exclusive_lock_is_refused_beside_a_shared_one() -> None:
    repo = init()
    with repo.lock(command="backup"):
        with pytest.raises(RepositoryLocked, match="shared lock"):
            with Repository.open(repo.backend, b"pw").lock(exclusive=True, command="prune"):
                pass


class HeldOpen:
    """A stream to back up (`--stdin`): some bytes, then nothing until `finish` is set, so the
    backup stays inside its lock for as long as the test needs (a long backup, or a machine
    that slept)."""

    def __init__(self, payload: bytes, held: bool = True) -> None:
        self.payload = payload
        self.finish = threading.Event()
        if not held:
            self.finish.set()

    def readinto(self, buffer: memoryview) -> int:
        if self.payload:
            n = min(len(buffer), len(self.payload))
            buffer[:n], self.payload = self.payload[:n], self.payload[n:]
            return n
        assert self.finish.wait(60), "the test never let the backup finish"
        return 0


def stream_backup(stream: HeldOpen) -> BackupOptions:
    return BackupOptions(paths=[], stdin_filename="long.bin", stdin=stream)


def test_a_long_backup_refreshes_its_lock_and_publishes_after_the_staleness_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Scaled down: refresh every 20 ms, stale after 4 s, so publishing is refused 2 s after
    # the last refresh (FORMAT.md §12, W2; a margin for a loaded machine). The backup runs for
    # longer than that.
    monkeypatch.setattr(lock_mod, "REFRESH_EVERY", 0.02)
    monkeypatch.setattr(lock_mod, "STALE_AFTER", 4)
    repo = init()
    stream = HeldOpen(os.urandom(100_000))
    seen: list[lock_mod.LockInfo] = []

    def watch() -> None:
        """What another process sees in locks/ while the backup runs."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for lock in repo.locks.list_locks():
                if not seen or lock.refreshed_ns != seen[-1].refreshed_ns:
                    seen.append(lock)
            if len(seen) >= 3 and time.time_ns() - seen[0].time_ns > 2.2e9:
                break
            time.sleep(0.01)
        stream.finish.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = backup(repo, stream_backup(stream))
    finally:
        stream.finish.set()
        watcher.join()
    assert result.snapshot_id is not None
    assert [s.id for s in repo.list_snapshots()] == [result.snapshot_id]
    assert len({lock.id for lock in seen}) == 1, "one lock object, refreshed in place"
    assert len(seen) >= 3
    refreshed = [lock.refreshed_ns for lock in seen]
    assert refreshed == sorted(refreshed) and refreshed[-1] > seen[0].time_ns
    assert {lock.time_ns for lock in seen} == {seen[0].time_ns}, "refreshing keeps when it was taken"
    assert list(repo.backend.list("locks/")) == []


def test_a_backup_whose_lock_went_stale_publishes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_mod, "REFRESH_EVERY", 0.02)
    monkeypatch.setattr(lock_mod, "STALE_AFTER", 0.2)  # publishing is refused 0.1 s after the last refresh
    faulty = FaultyBackend(MemoryBackend())
    repo = init(faulty)
    first = backup(repo, stream_backup(HeldOpen(b"first", held=False)))
    stream = HeldOpen(b"second" * 10_000)
    indexes_before = names(faulty, "index/")

    # From the second store on, the storage refuses every lock write: the backup takes its lock,
    # then every refresh fails while it waits for its input for longer than the limit.
    faulty.fail("store", StorageError, prefix="locks/", nth=2, times=None)

    def release_when_stale() -> None:
        """Let the backup go on once a few refreshes have failed and the limit has passed."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and lock_stores(faulty) < 4:
            time.sleep(0.01)
        time.sleep(0.15)  # past the limit even if the last refresh had worked
        stream.finish.set()

    releaser = threading.Thread(target=release_when_stale)
    releaser.start()
    try:
        with pytest.raises(RepositoryLocked) as raised:
            backup(repo, stream_backup(stream))
    finally:
        stream.finish.set()
        releaser.join()
    assert "could not refresh its lock for too long" in str(raised.value)
    assert "nothing more is saved: run it again" in str(raised.value)
    assert [s.id for s in repo.list_snapshots()] == [first.snapshot_id]
    assert names(faulty, "index/") == indexes_before, "no index object was published"
    assert list(faulty.list("locks/")) == []  # released: deleting still works

    faulty.clear()
    again = backup(repo, stream_backup(HeldOpen(b"second" * 10_000, held=False)))
    assert {s.id for s in repo.list_snapshots()} == {first.snapshot_id, again.snapshot_id}
    result = check(Repository.open(faulty, b"pw"), CheckOptions(read_data=True))
    assert result.errors == []


def names(backend: Backend, prefix: str) -> set[str]:
    return {info.name for info in backend.list(prefix)}


def lock_stores(faulty: FaultyBackend) -> int:
    """How many lock writes (the acquisition, then refreshes) were tried."""
    return sum(1 for method, name in list(faulty.log) if method == "store" and name.startswith("locks/"))


# -- format version and failing storage ----------------------------------------------------


def test_a_newer_format_version_is_refused_before_any_password_work() -> None:
    faulty = FaultyBackend(MemoryBackend())
    init(faulty)
    config = bytearray(faulty.load("config"))
    config[8:10] = (2).to_bytes(2, "big")
    faulty.store("config", bytes(config))
    faulty.log.clear()
    with pytest.raises(UnsupportedVersion, match="format version 2; this cairn reads up to version 1: upgrade"):
        Repository.open(faulty, b"not even the right password")
    assert faulty.log == [("load", "config")]  # no key was read, no Argon2 was run


def test_a_foreign_config_is_not_a_repository() -> None:
    backend = MemoryBackend()
    backend.store("config", b"[core]\nbare = false\n")
    with pytest.raises(RepositoryNotFound, match="not a cairn repository"):
        Repository.open(backend, b"pw")


def test_a_full_disk_during_a_pack_write_surfaces_and_harms_nothing_saved_before(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"saved before the disk filled")
    (source / "b.bin").write_bytes(os.urandom(5000))
    faulty = FaultyBackend(MemoryBackend())
    repo = init(faulty, pack_size=64 * 1024)
    before = backup(repo, BackupOptions(paths=[str(source)]))
    (source / "c.bin").write_bytes(os.urandom(300 * 1024))
    faulty.fail("store", StorageFull, prefix="data/", times=None)
    with pytest.raises(StorageFull):
        backup(repo, BackupOptions(paths=[str(source)]))
    faulty.clear()

    reopened = Repository.open(faulty, b"pw")
    assert [s.id for s in reopened.list_snapshots()] == [before.snapshot_id]
    assert list(faulty.list("locks/")) == []  # the failed backup released its lock
    target = tmp_path / "restored"
    restore(reopened, RestoreOptions(snapshot="latest", target=str(target)))
    restored = target / str(source).lstrip("/")
    assert sorted(p.name for p in restored.iterdir()) == ["a.txt", "b.bin"]
    assert (restored / "a.txt").read_bytes() == b"saved before the disk filled"
    assert (restored / "b.bin").read_bytes() == (source / "b.bin").read_bytes()
    result = check(reopened, CheckOptions(read_data=True))
    assert result.errors == [] and result.warnings == []


def test_a_damaged_key_object_does_not_lock_out_the_other_passwords() -> None:
    backend = MemoryBackend()
    repo = init(backend, b"first")
    second = repo.add_key(b"second", FAST_KDF)
    backend.store(f"keys/{second}", b"\x81\xa1v" + bytes(32))  # a map that ends too early, then a MAC
    assert Repository.open(backend, b"first").master == repo.master
    with pytest.raises(DamagedObject, match=f"key {second[:8]} does not decode"):
        Repository.open(backend, b"second")


# -- hostile objects: refused with DamagedObject, never a crash or a silent acceptance -----------


def test_a_key_object_asking_for_impossible_argon2_parameters_is_damaged_not_a_crash() -> None:
    backend = MemoryBackend()
    repo = init(backend)
    (name,) = [o.name for o in backend.list("keys/")]
    data = backend.load(name)
    key = msgpack.unpackb(data[:-32])
    key.update(lanes=64, memory_kib=8)  # Argon2id needs 8 KiB per lane: the library would raise ValueError
    backend.store(name, msgpack.packb(key) + data[-32:])
    with pytest.raises(DamagedObject, match=f"key {repo.key_id[:8]} asks for Argon2id parameters out of range"):
        Repository.open(backend, b"pw")


@pytest.mark.parametrize("extra", [b"trailing junk", zstd.compress(b"a second frame")], ids=["junk", "second-frame"])
def test_a_blob_with_bytes_after_its_zstd_frame_is_damaged(extra: bytes) -> None:
    # Only a holder of the key can build this, but FORMAT.md §6 says exactly one complete frame.
    repo = init()
    data = b"compressible " * 100
    blob_id = repo.blob_id(data)
    sealed = repo.sealer.seal(bytes([ZSTD]) + zstd.compress(data) + extra, blob_aad(BlobType.DATA, blob_id))
    with pytest.raises(DamagedObject, match=f"blob {blob_id.hex()[:12]} does not decompress: .*unused data"):
        open_blob(repo.sealer, repo.hasher, BlobType.DATA, blob_id, sealed)


def test_a_blob_whose_frame_declares_a_huge_size_is_refused_before_allocating() -> None:
    # A frame header may declare any content size; the decompressor would size its buffer from it.
    repo = init()
    blob_id = repo.blob_id(b"anything")
    header = bytes.fromhex("28b52ffd") + bytes([0xE0]) + (1 << 40).to_bytes(8, "little")  # single segment, 8-byte size
    sealed = repo.sealer.seal(bytes([ZSTD]) + header + bytes(64), blob_aad(BlobType.DATA, blob_id))
    with pytest.raises(DamagedObject, match=f"blob {blob_id.hex()[:12]} does not decompress: its frame declares 1099511627776 bytes"):
        open_blob(repo.sealer, repo.hasher, BlobType.DATA, blob_id, sealed)
