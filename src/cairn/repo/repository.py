"""The repository: blobs in, blobs out, snapshots, keys and locks over one storage backend.

Write order (docs/FORMAT.md, "Order of writes"): packs, then the index objects naming them,
then the snapshot. An interruption at any point leaves only unreferenced objects behind: packs
no index names, which the next backup adopts (`cairn.repo.adopt`, told which by the
`pack_listener` journal) or prune removes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cairn.errors import DamagedObject, NotFound, ObjectMissing, RepositoryLocked, RepositoryNotFound, UsageError, WrongPassword
from cairn.repo import config as config_mod
from cairn.repo import index as index_mod
from cairn.repo import keys as keys_mod
from cairn.repo import lock as lock_mod
from cairn.repo import snapshot as snapshot_mod
from cairn.repo.blob import blob_parts, open_blob, seal_blob, seal_blob_into
from cairn.repo.crypto import OVERHEAD, BlobHasher, MasterKey, Sealer
from cairn.repo.index import BlobIndex, IndexEntry
from cairn.repo.relied import ReliedPacks
from cairn.repo.pack import PackBuilder, PackEntry, object_name, parse_header, header_tail_size
from cairn.repo.snapshot import Snapshot
from cairn.storage import cache as cache_mod
from cairn.storage.base import Backend
from cairn.storage.local import LocalBackend

# Write an index object at least every this many packs. Packs stored since the last one are
# adopted by the next run after a kill (repo/adopt.py), so this bounds the work of adopting them
# (one header read each), not data uploaded twice; few index objects keep opening a repository
# cheap on object storage (each is one more request for every reader).
INDEX_EVERY_PACKS = 64
INDEX_MAX_BLOBS = 32768
"""Packs are named in an index object once INDEX_EVERY_PACKS of them wait, or sooner once they
hold this many blobs: an index object is encoded, compressed and sealed in memory (three copies
of 45 bytes a blob), and a first backup of 100,000 small files (`small`) named all its blobs in
one at its end, the walk's peak of memory (102 MiB; 90-94 with this cap, in 3 objects; a cap of
16,384 was no lower). restic caps its index files at 50,000 blobs."""

# The objects a local cache may keep: written once, never modified (docs/FORMAT.md §12), small,
# and read whole by most commands. Config and keys are read before the id is known, locks are
# replaced, pending objects are read by prune alone, and packs are large and read by range.
CACHED_PREFIXES = ("index/", "snapshots/")


def _split_name(name: str) -> str:
    return name.rsplit("/", 1)[-1]


class Repository:
    """An open repository. Create with `Repository.init` or `Repository.open`."""

    def __init__(self, backend: Backend, master: MasterKey, key_id: str, config: config_mod.RepoConfig) -> None:
        self.backend = backend
        self.master = master
        self.key_id = key_id
        self.sealer = Sealer(master.data_key)
        self.hasher = BlobHasher(master.id_key)
        self.config = config
        self.index = BlobIndex()
        self._index_loaded = False
        self._index_lock = threading.Lock()
        self._mutex = threading.Lock()
        self._builder = PackBuilder()
        self._in_flight: set[bytes] = set()
        # Packs indexed here that no index object names yet, with their records as the index
        # object will hold them: 45 bytes a blob (the entries were 330 as objects, 32 MiB of
        # the walk's 128 in a first backup of 100,000 small files).
        self._unsaved: list[tuple[bytes, bytes]] = []
        self.locks = lock_mod.LockManager(self.store_object, self.load_object, backend)
        self.relied = ReliedPacks()
        """Packs this writer uses, kept indexed before its snapshot (docs/FORMAT.md §12)."""
        self._lock_fresh_ns: int | None = None
        """When the lock this process holds was last written, or None without a lock."""
        self.pack_listener: Callable[[list[bytes]], None] | None = None
        """Told the packs stored but not yet named by an index object of ours, each time that
        list changes, so a local journal can let the next run adopt them after a kill -9
        (`cairn.repo.adopt`). Called from saver threads, one call at a time."""
        self._listener_lock = threading.Lock()
        # Only now is the repository id known, which names the cache's folder (storage/cache.py).
        cache_mod.attach(backend, config.id.hex(), CACHED_PREFIXES)

    # -- creating and opening ------------------------------------------------------------

    @classmethod
    def init(
        cls, backend: Backend, password: bytes, kdf: keys_mod.KdfParams | None = None, **config: object
    ) -> Repository:
        try:
            backend.stat("config")
        except ObjectMissing:
            pass
        else:
            raise UsageError(f"a repository already exists at {backend.properties.location}")
        master = MasterKey.generate()
        repo = cls(backend, master, "", config_mod.RepoConfig.new(**config))
        repo.key_id = repo.add_key(password, kdf or keys_mod.KdfParams())
        backend.store("config", config_mod.encode(repo.config, repo.sealer))
        return repo

    @classmethod
    def open(cls, backend: Backend, password: bytes) -> Repository:
        try:
            raw_config = backend.load("config")
        except ObjectMissing:
            raise RepositoryNotFound(
                f"no repository at {backend.properties.location}: run 'cairn init' first"
            ) from None
        config_mod.read_version(raw_config)
        key_ids = [_split_name(o.name) for o in backend.list("keys/")]
        damaged: DamagedObject | None = None
        for key_id in key_ids:
            try:
                master = keys_mod.unwrap(backend.load(f"keys/{key_id}"), key_id, password)
            except DamagedObject as exc:
                # One damaged key object must not lock out the passwords of the others.
                damaged = damaged or exc
                continue
            if master is not None:
                config = config_mod.decode(raw_config, Sealer(master.data_key))
                return cls(backend, master, key_id, config)
        if not key_ids:
            raise RepositoryNotFound(f"the repository at {backend.properties.location} has no keys")
        if damaged is not None:
            raise DamagedObject(f"{damaged.message}; no other key opens with this password")
        raise WrongPassword("wrong password: no key of this repository opens with it")

    # -- keys ------------------------------------------------------------------------------

    def add_key(self, password: bytes, kdf: keys_mod.KdfParams | None = None) -> str:
        key_id = os.urandom(32).hex()
        self.backend.store(f"keys/{key_id}", keys_mod.wrap(self.master, password, key_id, kdf or keys_mod.KdfParams()))
        return key_id

    def list_keys(self) -> list[keys_mod.KeyInfo]:
        infos = []
        for obj in self.backend.list("keys/"):
            key_id = _split_name(obj.name)
            infos.append(keys_mod.parse(self.backend.load(obj.name), key_id)[0])
        return sorted(infos, key=lambda k: k.created_ns)

    def change_password(self, password: bytes, kdf: keys_mod.KdfParams | None = None) -> tuple[str, str]:
        """Replace the key in use by a new one: the new key is written before the old one goes.

        Returns (new key id, removed key id).
        """
        self._refuse_if_append_only("changing the password (it removes the old key)")
        old = self.key_id
        self.key_id = self.add_key(password, kdf)
        self.backend.delete(f"keys/{old}")
        return self.key_id, old

    @staticmethod
    def probe(backend: Backend) -> bool:
        """Whether a repository exists there; raises if it is foreign or too new to read.

        Needs no password, so commands check this before asking for one.
        """
        try:
            raw = backend.load("config")
        except ObjectMissing:
            return False
        config_mod.read_version(raw)
        return True

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse_if_append_only(self, what: str) -> None:
        if self.config.append_only:
            raise UsageError(f"the repository is append-only: {what} is not allowed")

    def remove_key(self, key_id: str) -> None:
        self._refuse_if_append_only("removing a key")
        if key_id == self.key_id:
            raise UsageError("refusing to remove the key in use; open the repository with another password first")
        self.backend.delete(f"keys/{key_id}")

    # -- sealed objects ---------------------------------------------------------------------

    def store_object(self, kind: str, object_id: str, plaintext: bytes) -> None:
        self.backend.store(f"{kind}/{object_id}", self.sealer.seal(plaintext, f"{kind}/{object_id}".encode()))

    def load_object(self, kind: str, object_id: str) -> bytes:
        name = f"{kind}/{object_id}"
        what = f"{kind[:-1] if kind.endswith('s') else kind} {object_id[:8]}"
        try:
            return self.sealer.open(self.backend.load(name), name.encode(), what)
        except DamagedObject:
            # A local cached copy that does not open is the cache's damage, not the repository's.
            if not cache_mod.drop_cached(self.backend, name):
                raise
            return self.sealer.open(self.backend.load(name), name.encode(), what)

    # -- blobs -------------------------------------------------------------------------------

    def load_index(self) -> None:
        """Read every index object once; superseded ones are skipped. Thread-safe."""
        with self._index_lock:
            if not self._index_loaded:
                self._load_index()

    def _load_index(self) -> None:
        contents = {}
        superseded: set[bytes] = set()
        for obj in self.backend.list("index/"):
            index_id = _split_name(obj.name)
            try:
                plaintext = self.load_object("index", index_id)
            except ObjectMissing:
                # Deleted since we listed: only prune deletes index objects, only superseded
                # ones, and only after every lock older than the superseding one is gone, so
                # that one is in our listing (docs/FORMAT.md §12).
                continue
            packs, supersedes = index_mod.decode_index(plaintext, f"index {index_id[:8]}")
            contents[bytes.fromhex(index_id)] = packs
            superseded.update(supersedes)
            self.relied.note_index(bytes.fromhex(index_id), (p for p, _ in packs), supersedes)
        for object_id, packs in contents.items():
            if object_id not in superseded:
                for pack_id, records in packs:
                    self.index.add_records(pack_id, records)
        self.index.compact()
        self._index_loaded = True

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return self.hasher(data)

    def has_blob(self, blob_id: bytes) -> bool:
        self.load_index()
        with self._mutex:
            if blob_id in self._in_flight:
                return True
            entry = self.index.lookup(blob_id)
            if entry is None:
                return False
            self.relied.rely(entry.pack_id)
            return True

    def save_blob(self, blob_type: int, data: bytes | memoryview, blob_id: bytes | None = None) -> tuple[bytes, bool]:
        """Store a blob unless the repository has it; returns (id, whether it was new).

        Thread-safe: callers may compress and encrypt in several threads at once.
        """
        self.load_index()
        blob_id = blob_id or self.hasher(data)
        if self.has_blob(blob_id):
            return blob_id, False
        sealed = self.seal(blob_type, blob_id, data)
        full = None
        with self._mutex:
            if blob_id in self._in_flight or blob_id in self.index:
                return blob_id, False
            self._in_flight.add(blob_id)
            self._builder.add(blob_type, blob_id, sealed, len(data))
            if self._builder.size >= self.config.pack_size:
                full, self._builder = self._builder, PackBuilder()
        if full is not None:
            self._upload(full)
        return blob_id, True

    def _upload(self, builder: PackBuilder) -> None:
        self.relied.rely(builder.pack_id)
        self.store_pack(builder)
        self.add_pack(builder.pack_id, builder.entries)

    # A backup's worker processes (files/pipeline_procs.py) each fill and store packs of their
    # own; this process stays the one that decides which blobs are new and writes the index.

    def claim_blobs(self, blobs: list[tuple[bytes, int]]) -> list[bool]:
        """For each (id, size): whether the caller is to store that blob. Known blobs count as
        relied on (as in `has_blob`); a new one is reserved, so that no other claim or
        `save_blob` stores it too, until `add_pack` names the pack that holds it."""
        self.load_index()
        with self._mutex:
            found = self.index.lookup_many([blob_id for blob_id, _ in blobs])
            claims = []
            for (blob_id, _), entry in zip(blobs, found):
                if entry is not None:
                    self.relied.rely(entry.pack_id)
                    claims.append(False)
                elif blob_id in self._in_flight:
                    claims.append(False)
                else:
                    self._in_flight.add(blob_id)
                    claims.append(True)
        return claims

    def seal(self, blob_type: int, blob_id: bytes, data: bytes | memoryview) -> bytes:
        """A blob compressed, sealed and verified (`blob.seal_blob`), to add to a pack."""
        return seal_blob(self.sealer, blob_type, blob_id, data, self.config.compression_level)

    def seal_into(self, builder: PackBuilder, blob_type: int, blob_id: bytes, data: bytes | memoryview) -> None:
        """`seal` straight into `builder`'s buffer (a backup worker's own pack): no sealed copy."""
        parts = blob_parts(data, self.config.compression_level)
        builder.add_filled(blob_type, blob_id, OVERHEAD + len(parts[0]) + len(parts[1]), len(data),
                           lambda out: seal_blob_into(self.sealer, blob_type, blob_id, data, parts, out))

    def store_pack(self, builder: PackBuilder) -> None:
        """Write a filled pack to storage (the rest of it, for a streamed one); nothing names
        it until `add_pack`."""
        rest = builder.finish(self.sealer)
        if builder.sink is None:
            self.backend.store(object_name(builder.pack_id), rest)
        else:
            builder.sink.write(rest)
            builder.sink.commit()

    def streamed_pack(self, reuse: PackBuilder | None = None) -> PackBuilder:
        """A new pack written to storage as it fills where the backend can take an object in
        parts (a local folder): a backup worker then holds a megabyte of it, not 16 MiB. Its
        owner discards the sink if the pack is abandoned."""
        builder = PackBuilder(reuse)
        if isinstance(self.backend, LocalBackend):
            builder.sink = self.backend.writer(object_name(builder.pack_id))
        return builder

    def add_pack(self, pack_id: bytes, entries: list[PackEntry]) -> None:
        """Index a stored pack: its blobs are no longer in flight, and an index object names it
        once INDEX_EVERY_PACKS packs or INDEX_MAX_BLOBS blobs wait (or at `flush`)."""
        self.relied.rely(pack_id)
        records = index_mod.pack_records(entries)
        with self._mutex:
            for entry in entries:
                self.index.add(pack_id, entry)
                self._in_flight.discard(entry.blob_id)
            self._unsaved.append((pack_id, records))
            write_index = (len(self._unsaved) >= INDEX_EVERY_PACKS
                           or sum(len(r) for _, r in self._unsaved) >= INDEX_MAX_BLOBS * index_mod.RECORD.size)
        self._tell_listener()
        if write_index:
            self._write_index()

    def _write_index(self) -> None:
        with self._mutex:
            unsaved, self._unsaved = self._unsaved, []
        if unsaved:
            self._store_index(unsaved)
            self._tell_listener()

    def _tell_listener(self) -> None:
        if self.pack_listener is None:
            return
        with self._listener_lock:  # the last call made always carries the latest list
            with self._mutex:
                unindexed = [pack_id for pack_id, _ in self._unsaved]
            self.pack_listener(unindexed)

    def knows_pack(self, pack_id: bytes) -> bool:
        """Whether the index (loaded, or grown by this process) names `pack_id`."""
        self.load_index()
        with self._mutex:
            return self.index.has_pack(pack_id)

    def adopt_packs(self, packs: list[tuple[bytes, list[PackEntry]]]) -> None:
        """Name packs no index names (their headers read from storage) in a new index object,
        then deduplicate against them. Only `cairn.repo.adopt` calls this, after the checks
        that make it safe beside a prune (docs/FORMAT.md §12, W4): the index object is written
        before anything relies on the packs."""
        if not packs:
            return
        self._store_index_of(packs)
        with self._mutex:
            for pack_id, entries in packs:
                for entry in entries:
                    self.index.add(pack_id, entry)
                self.relied.rely(pack_id)

    def _store_index(self, packs: list[tuple[bytes, bytes]]) -> None:
        """An index object naming `packs`: (pack id, `index.pack_records`) pairs."""
        self._check_lock_fresh()
        index_id = index_mod.new_index_id()
        self.store_object("index", index_id.hex(), index_mod.encode_index(packs))
        self.relied.note_index(index_id, (p for p, _ in packs))

    def _store_index_of(self, packs: list[tuple[bytes, list[PackEntry]]]) -> None:
        self._store_index([(pack_id, index_mod.pack_records(entries)) for pack_id, entries in packs])

    def flush(self) -> None:
        """Upload the partial pack and write the index: call before saving a snapshot."""
        with self._mutex:
            builder, self._builder = self._builder, PackBuilder()
        if len(builder):
            self._upload(builder)
        self._write_index()

    def lookup(self, blob_id: bytes) -> IndexEntry:
        self.load_index()
        with self._mutex:  # savers add to the index (and merge its segments) meanwhile
            entry = self.index.lookup(blob_id)
        if entry is None:
            raise NotFound(f"blob {blob_id.hex()[:12]} is not in the index")
        return entry

    def lookup_many(self, blob_ids: list[bytes]) -> list[IndexEntry | None]:
        """lookup() of many ids at once (None for an id not in the index): one vectorised
        search instead of one per id."""
        self.load_index()
        with self._mutex:
            return self.index.lookup_many(blob_ids)

    def load_blob(self, blob_id: bytes) -> bytes:
        entry = self.lookup(blob_id)
        return self.open_sealed(entry, self.load_pack_range(entry.pack_id, entry.offset, entry.length))

    def load_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a pack, unverified: a reader that wants several
        blobs of one pack reads their span once and opens each with `open_sealed`."""
        return self.backend.load(object_name(pack_id), offset, length)

    def open_sealed(self, entry: IndexEntry, sealed: bytes | memoryview) -> bytes:
        """The blob `entry` from its sealed bytes as stored: authenticated, decompressed and its
        id checked (DamagedObject naming the pack otherwise)."""
        self.relied.rely(entry.pack_id)  # a parent's tree, whose id a new snapshot may reuse
        try:
            return open_blob(self.sealer, self.hasher, entry.blob_type, entry.blob_id, sealed)
        except DamagedObject as exc:
            # Name the pack too: it is the object a user (or `check`) can look at.
            raise DamagedObject(f"pack {entry.pack_id.hex()[:12]}: {exc.message}") from None

    def read_pack_header(self, pack_id: bytes, pack_size: int) -> list[PackEntry]:
        name = object_name(pack_id)
        tail_len = header_tail_size(pack_size)
        tail = self.backend.load(name, pack_size - tail_len, tail_len)
        result = parse_header(pack_id, tail, pack_size, self.sealer)
        if isinstance(result, int):
            tail = self.backend.load(name, pack_size - result, result)
            result = parse_header(pack_id, tail, pack_size, self.sealer)
        assert not isinstance(result, int)
        return result

    # -- snapshots ---------------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> bytes:
        self._check_lock_fresh()
        self._keep_relied_indexed()
        snap.id = os.urandom(32)
        self.store_object("snapshots", snap.id.hex(), snapshot_mod.encode(snap))
        # Once more after: a prune committing between the check and the store does not see
        # this snapshot in its own re-check only if it committed after it, which this sees.
        self._keep_relied_indexed()
        return snap.id

    def _keep_relied_indexed(self) -> None:
        if self._index_loaded:
            self.relied.keep_indexed(self.backend, self.load_object, self.read_pack_header, self._store_index_of)

    def load_snapshot(self, snapshot_id: bytes) -> Snapshot:
        return snapshot_mod.decode(self.load_object("snapshots", snapshot_id.hex()), snapshot_id)

    def snapshot_ids(self) -> list[bytes]:
        return [bytes.fromhex(_split_name(o.name)) for o in self.backend.list("snapshots/")]

    def list_snapshots(self) -> list[Snapshot]:
        snaps = []
        for snapshot_id in self.snapshot_ids():
            try:
                snaps.append(self.load_snapshot(snapshot_id))
            except ObjectMissing:
                continue  # forgotten (or replaced by `tag`) since we listed
        return sorted(snaps, key=lambda s: s.time_ns)

    def find_snapshot(self, ref: str) -> Snapshot:
        """A snapshot by full id, unique prefix of at least 4 hex digits, or `latest`."""
        if ref == "latest":
            snaps = self.list_snapshots()
            if not snaps:
                raise NotFound("the repository has no snapshots yet")
            return snaps[-1]
        ref = ref.lower()
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise UsageError(f"{ref!r} is not a snapshot id: give at least 4 hex digits or 'latest'")
        matches = [i for i in self.snapshot_ids() if i.hex().startswith(ref)]
        if not matches:
            raise NotFound(f"no snapshot {ref}")
        if len(matches) > 1:
            raise NotFound(f"snapshot id {ref} is ambiguous: {len(matches)} snapshots start with it")
        return self.load_snapshot(matches[0])

    # -- locks -------------------------------------------------------------------------------

    @contextmanager
    def lock(self, exclusive: bool = False, command: str = "") -> Iterator[lock_mod.LockInfo]:
        """Hold a lock for the block, refreshing it in the background so it never looks stale."""
        held = self.locks.acquire(exclusive, command)
        self._lock_fresh_ns = held.refreshed_ns
        self._forget_index_from_before()
        stop = threading.Event()

        def refresher() -> None:
            nonlocal held
            while not stop.wait(lock_mod.REFRESH_EVERY):
                try:
                    held = self.locks.refresh(held)
                except Exception:  # storage hiccup: try again next time; see _check_lock_fresh
                    continue
                self._lock_fresh_ns = held.refreshed_ns

        thread = threading.Thread(target=refresher, name="cairn-lock-refresh", daemon=True)
        thread.start()
        try:
            yield held
        finally:
            stop.set()
            thread.join()
            self._lock_fresh_ns = None
            self.locks.release(held)

    def _forget_index_from_before(self) -> None:
        """Drop an index read before this lock was taken, unless blobs of ours are in flight.

        A writer must read the index it deduplicates against *after* its lock exists: prune
        counts on it (docs/FORMAT.md §12) to know which writers may still hold a blob it removes.
        """
        with self._index_lock, self._mutex:
            if self._index_loaded and not len(self._builder) and not self._unsaved and not self._in_flight:
                self.index = index_mod.BlobIndex()
                self._index_loaded = False
                self.relied = ReliedPacks()

    def _check_lock_fresh(self) -> None:
        """Refuse to publish index objects or snapshots once our lock may look stale to others.

        A lock not refreshed for lock.STALE_AFTER is ignored by prune, which may then delete
        what this process still relies on; half that age leaves room for slow writes and clocks
        that disagree by minutes.
        """
        fresh = self._lock_fresh_ns
        if fresh is not None and time.time_ns() - fresh > lock_mod.STALE_AFTER * 1_000_000_000 // 2:
            raise RepositoryLocked(
                "this process could not refresh its lock for too long (was the machine asleep?); "
                "a prune may have removed data it relies on, so nothing more is saved: run it again"
            )
