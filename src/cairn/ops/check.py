"""`cairn check`: find every kind of damage in one run, and name the object that holds it.

A user runs check to learn whether their backups can be restored, and if not, which objects are
hurt, so errors are collected rather than raised: one damaged pack must not hide a lost snapshot.

The structure check reads only small objects and pack headers (cheap on object storage):
config and key objects parse; every index object opens; every pack an index names exists with the
size its records imply and a header that matches them; every snapshot opens; every tree reachable
from a snapshot opens and every blob it names (file content, subtrees) is in the index. With
`read_data`, every pack (or a random `subset_percent` of them) is read whole and every blob in it
authenticated, decompressed and compared with its id.

Packs no index names are the normal leftovers of an interrupted backup (docs/FORMAT.md §12): they
are warnings, not errors. Image snapshots are walked by the image layer's checker: the disk
description, every extent page, and every data blob they name.
"""

from __future__ import annotations

import math
import os
import random
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cairn.errors import CairnError, DamagedObject, ObjectMissing, UsageError
from cairn.files.procs import fork_children, how_it_ended, kill, receive, send
from cairn.files.tree import decode_tree
from cairn.image.checker import image_problems
from cairn.repo import config as config_mod
from cairn.repo import index as index_mod
from cairn.repo import keys as keys_mod
from cairn.repo import lock as lock_mod
from cairn.repo.blob import BlobType, open_blob
from cairn.repo.crypto import OVERHEAD
from cairn.repo.index import BlobIndex, IndexEntry
from cairn.repo.maintenance import Pending, load_pendings
from cairn.repo.pack import HEADER_START, RECORD, TRAILER, PackEntry, header_tail_size, object_name, parse_header
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.cache import remote_reads
from cairn.storage.stack import is_remote

Progress = Callable[[str, int, int], None]
"""Called as ``progress(phase, done, total)`` from the calling thread; phases: index, packs, trees, data."""

_ID = re.compile(r"^[0-9a-f]{64}$")
_PACK_NAME = re.compile(r"^data/([0-9a-f]{2})/([0-9a-f]{64})$")
_BLOB_TYPES = frozenset(int(t) for t in BlobType)
UNINDEXED = "unindexed pack (left by an interrupted backup; prune or repair index)"
AWAITING_DELETION = "awaiting deletion by prune (no index names it; the next prune deletes it)"


def check_workers(connections: int, remote: bool) -> int:
    """Threads reading whole packs for --read-data. Over a network, one per connection (up to
    4): they mostly wait. On a local disk, one per core: each holds a 16 MiB pack and its open
    blobs, and more threads than cores only hand the GIL around (`real` on 2 cores, 4 threads
    against 2: 1.45x the peak memory, 1.08x the wall time)."""
    return max(2, min(4, connections)) if remote else max(2, min(4, connections, os.cpu_count() or 2))


@dataclass
class CheckOptions:
    read_data: bool = False
    """Read every pack whole and verify every blob (slow: downloads the repository)."""
    subset_percent: float | None = None
    """Read only this percentage of the packs, chosen at random (at least one); implies reading."""


@dataclass
class CheckResult:
    errors: list[str]
    """Damage: the repository cannot restore everything it claims to hold (exit code 20)."""
    packs: int
    blobs: int
    snapshots: int
    bytes_read: int
    warnings: list[str] = field(default_factory=list)
    """Harmless oddities (unindexed packs, unreadable locks, foreign objects)."""

    @property
    def ok(self) -> bool:
        return not self.errors


def check(repo: Repository, options: CheckOptions | None = None, progress: Progress | None = None) -> CheckResult:
    """Check `repo` under a shared lock, so backups may run meanwhile but prune's phase 2 waits.

    Reads what the remote holds, never the local cache's copies (which it refreshes).
    """
    remote_reads(repo.backend)
    options = options or CheckOptions()
    if options.subset_percent is not None and not 0 < options.subset_percent <= 100:
        raise UsageError(f"a read-data subset must be between 0 and 100 percent, not {options.subset_percent}")
    with repo.lock(command="check"):
        return _Checker(repo, progress or (lambda phase, done, total: None)).run(options)


def _short(object_id: bytes, digits: int = 12) -> str:
    return object_id.hex()[:digits]


def _named(what: str, exc: CairnError) -> str:
    """The error's message, prefixed with the object it concerns unless it already names it."""
    return exc.message if what in exc.message else f"{what}: {exc.message}"


def _pack_entries(records: bytes) -> set[PackEntry]:
    return set(index_mod.iter_records(records))


def _header_size(records: bytes) -> int:
    """Bytes of a pack's sealed header and trailing length, for a pack holding these records."""
    n = len(records) // index_mod.RECORD.size
    return OVERHEAD + HEADER_START.size + n * RECORD.size + TRAILER.size


class _Checker:
    """One run's state: what the index says, what storage holds, and what went wrong."""

    def __init__(self, repo: Repository, progress: Progress) -> None:
        self.repo = repo
        self.backend = repo.backend
        self.progress = progress
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.bytes_read = 0
        self.index = BlobIndex()
        self.indexed: dict[bytes, tuple[str, bytes]] = {}  # pack id -> (index short id, records)
        self.stored: dict[bytes, int] = {}  # pack id -> size in storage
        self.workers = check_workers(self.backend.properties.connections, is_remote(self.backend.properties.location))

    def run(self, options: CheckOptions) -> CheckResult:
        # Snapshots are listed before the index is read: writers store a snapshot only after
        # its index objects, so a backup finishing meanwhile cannot look like missing data.
        snapshot_ids = list(self._ids("snapshots/"))
        self.check_config_and_keys()
        self.check_locks()
        self.load_indexes()
        to_read = self.choose_packs(options)
        self.check_packs(skip_headers=to_read)
        snapshots = self.load_snapshots(snapshot_ids)
        readers = self.start_readers(to_read)
        try:
            self.check_trees(snapshots)
            if readers:
                self.collect(readers, len(to_read))
            elif to_read:
                self.read_packs(to_read)
        finally:
            for pid, sock, _ in readers:
                kill(pid)  # after collect() they are gone already; else (an interrupt) end them now
                sock.close()
                os.waitpid(pid, 0)
        return CheckResult(
            errors=self.errors, packs=len(self.indexed), blobs=len(self.index),
            snapshots=len(snapshots), bytes_read=self.bytes_read, warnings=self.warnings,
        )

    def _load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.backend.load(name, offset, length)
        self.bytes_read += len(data)
        return data

    def _ids(self, prefix: str) -> Iterator[str]:
        """The ids under `prefix`; a foreign name is a warning (it cannot be a valid object)."""
        for info in self.backend.list(prefix):
            object_id = info.name[len(prefix):]
            if _ID.match(object_id):
                yield object_id
            else:
                self.warnings.append(f"{info.name}: unexpected object, not part of the repository")

    # -- small objects -------------------------------------------------------------------

    def check_config_and_keys(self) -> None:
        try:
            config_mod.decode(self._load("config"), self.repo.sealer)
        except CairnError as exc:
            self.errors.append(_named("the config object", exc))
        key_ids = list(self._ids("keys/"))
        if not key_ids:
            self.errors.append("keys: the repository has no key objects; no password can open it")
        for key_id in key_ids:
            try:
                data = self._load(f"keys/{key_id}")
                keys_mod.parse(data, key_id)
                keys_mod.verify(data, key_id, self.repo.master)
            except CairnError as exc:
                self.errors.append(_named(f"key {key_id[:8]}", exc))

    def check_locks(self) -> None:
        for lock_id in self._ids("locks/"):
            try:
                lock_mod.decode(self.repo.load_object("locks", lock_id), lock_id)
            except DamagedObject as exc:
                self.warnings.append(f"{exc}; it blocks nobody; delete locks/{lock_id} to remove it")
            except CairnError:
                continue  # released while we looked

    def load_indexes(self) -> None:
        contents: dict[str, list[tuple[bytes, bytes]]] = {}
        superseded: set[str] = set()
        index_ids = list(self._ids("index/"))
        for done, index_id in enumerate(index_ids, 1):
            try:
                packs, supersedes = index_mod.decode_index(
                    self.repo.load_object("index", index_id), f"index {index_id[:8]}"
                )
            except ObjectMissing:
                continue  # a prune replaced it after we listed: its successor was listed too
            except CairnError as exc:
                self.errors.append(_named(f"index {index_id[:8]}", exc))
                continue
            finally:
                self.progress("index", done, len(index_ids))
            contents[index_id] = packs
            superseded.update(s.hex() for s in supersedes)
        for index_id, packs in contents.items():
            if index_id in superseded:
                continue
            for pack_id, records in packs:
                self.add_pack_records(index_id, pack_id, records)
        self.index.compact()

    def add_pack_records(self, index_id: str, pack_id: bytes, records: bytes) -> None:
        known = self.indexed.get(pack_id)
        if known is not None:
            if _pack_entries(known[1]) != _pack_entries(records):
                self.errors.append(
                    f"pack {_short(pack_id)}: index {known[0]} and index {index_id[:8]} describe it differently"
                )
            return
        entries = sorted(index_mod.iter_records(records), key=lambda e: e.offset)
        offset = 0
        for e in entries:
            if e.offset != offset or e.blob_type not in _BLOB_TYPES:
                self.errors.append(f"index {index_id[:8]}: its records for pack {_short(pack_id)} are malformed")
                return
            offset += e.length
        self.indexed[pack_id] = (index_id[:8], records)
        self.index.add_records(pack_id, records)

    # -- packs -----------------------------------------------------------------------------

    def choose_packs(self, options: CheckOptions) -> list[bytes]:
        for info in self.backend.list("data/"):
            match = _PACK_NAME.match(info.name)
            if match is None or match[1] != match[2][:2]:
                self.warnings.append(f"{info.name}: unexpected object, not part of the repository")
                continue
            self.stored[bytes.fromhex(match[2])] = info.size
        readable = sorted(p for p in self.indexed if p in self.stored)
        if options.subset_percent is not None:
            count = max(1, math.ceil(len(readable) * options.subset_percent / 100))
            return random.sample(readable, min(count, len(readable)))
        return readable if options.read_data else []

    def expected_size(self, records: bytes) -> int:
        return sum(e.length for e in index_mod.iter_records(records)) + _header_size(records)

    def check_packs(self, skip_headers: Iterable[bytes]) -> None:
        awaiting = {p for pending in load_pendings(self.repo) if isinstance(pending, Pending) for p in pending.packs}
        for pack_id in sorted(self.stored.keys() - self.indexed.keys()):
            reason = AWAITING_DELETION if pack_id in awaiting else UNINDEXED
            self.warnings.append(f"pack {_short(pack_id)}: {reason}")
        skip = set(skip_headers)
        headers: list[bytes] = []
        for pack_id, (index_id, records) in self.indexed.items():
            size, expected = self.stored.get(pack_id), self.expected_size(records)
            if size is None:
                n = len(records) // index_mod.RECORD.size
                self.errors.append(f"pack {_short(pack_id)} is missing: index {index_id} names it ({n} blobs)")
            elif size != expected:
                self.errors.append(f"pack {_short(pack_id)} has {size} bytes, but its index records imply {expected}")
            elif pack_id not in skip:
                headers.append(pack_id)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="cairn-check") as pool:
            for done, (pack_id, error) in enumerate(pool.map(self.check_header, headers), 1):
                self.bytes_read += self.header_bytes(pack_id)
                if error:
                    self.errors.append(error)
                self.progress("packs", done, len(headers))

    def header_bytes(self, pack_id: bytes) -> int:
        """What `read_pack_header` read: the tail, and once more the header if it was longer."""
        tail, header = header_tail_size(self.stored[pack_id]), _header_size(self.indexed[pack_id][1])
        return tail + (header if header > tail else 0)

    def check_header(self, pack_id: bytes) -> tuple[bytes, str | None]:
        """Read one pack's header (worker thread) and compare it with the index."""
        try:
            entries = self.repo.read_pack_header(pack_id, self.stored[pack_id])
        except CairnError as exc:
            return pack_id, str(exc)
        return pack_id, self.compare_header(pack_id, entries)

    def compare_header(self, pack_id: bytes, entries: list[PackEntry]) -> str | None:
        differ = _pack_entries(self.indexed[pack_id][1]) ^ set(entries)
        if differ:
            return f"pack {_short(pack_id)}: its header and the index disagree about {len(differ)} records"
        return None

    def start_readers(self, pack_ids: list[bytes]) -> list[tuple[int, socket.socket, int]]:
        """Fork the processes that read the packs while this one walks the trees: verifying a
        blob is Python work under the GIL (per blob: decrypt, decompress, hash), so threads ran
        one core at a time, and the walk waited before them (100,000 small files: trees 1.3 s,
        then packs 2.5 s). A forked process cannot share a network connection: local
        repositories only. Each gets every n-th pack (packs are of similar size): (pid, socket,
        how many packs it reads)."""
        if not pack_ids or not self.backend.properties.shared_with_forks or not hasattr(os, "fork"):
            return []
        count = min(self.workers, len(pack_ids))
        readers = []
        for at, (pid, sock) in enumerate(fork_children(count, self.serve_reads)):
            share = pack_ids[at::count]
            send(sock, share)
            readers.append((pid, sock, len(share)))
        return readers

    def serve_reads(self, sock: socket.socket) -> None:
        """A reader process: read its share of packs, one result message per pack."""
        message = receive(sock)
        if message is not None:
            for pack_id in message[0]:
                send(sock, self.read_pack(pack_id))

    def collect(self, readers: list[tuple[int, socket.socket, int]], total: int) -> None:
        done = 0
        for pid, sock, share in readers:
            for got in range(share):
                message = receive(sock)
                if message is None:
                    self.errors.append(f"a process reading packs ended early ({how_it_ended(pid)}): "
                                       f"{share - got} of its {share} packs were not checked")
                    break
                errors, size = message[0]
                self.errors.extend(errors)
                self.bytes_read += size
                done += 1
                self.progress("data", done, total)

    def read_packs(self, pack_ids: list[bytes]) -> None:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="cairn-check") as pool:
            for done, (errors, size) in enumerate(pool.map(self.read_pack, pack_ids), 1):
                self.errors.extend(errors)
                self.bytes_read += size
                self.progress("data", done, len(pack_ids))

    def read_pack(self, pack_id: bytes) -> tuple[list[str], int]:
        """Read a whole pack and open every blob in it (worker thread): its errors and size."""
        what = f"pack {_short(pack_id)}"
        try:
            data = self.backend.load(object_name(pack_id))
        except CairnError as exc:
            return [f"{what}: cannot be read: {exc}"], 0
        errors: list[str] = []
        entries: list[PackEntry] = sorted(_pack_entries(self.indexed[pack_id][1]), key=lambda e: e.offset)
        try:
            header = parse_header(pack_id, data, len(data), self.repo.sealer)
            assert not isinstance(header, int)  # the whole pack holds the whole header
        except DamagedObject as exc:
            errors.append(str(exc))  # still check the blobs where the index says they are
        else:
            mismatch = self.compare_header(pack_id, header)
            if mismatch:
                errors.append(mismatch)
            entries = header
        view = memoryview(data)
        for e in entries:
            try:
                open_blob(self.repo.sealer, self.repo.hasher, e.blob_type, e.blob_id, view[e.offset : e.offset + e.length])
            except DamagedObject as exc:
                errors.append(f"{what}: {exc}")
        return errors, len(data)

    # -- snapshots and trees -------------------------------------------------------------

    def load_snapshots(self, snapshot_ids: list[str]) -> list[Snapshot]:
        snapshots = []
        for snapshot_id in snapshot_ids:
            try:
                snapshots.append(self.repo.load_snapshot(bytes.fromhex(snapshot_id)))
            except CairnError as exc:
                self.errors.append(_named(f"snapshot {snapshot_id[:8]}", exc))
        return snapshots

    def indexed_as(self, blob_id: bytes, blob_type: int) -> IndexEntry | None:
        entry = self.index.lookup(blob_id)
        return entry if entry is not None and entry.blob_type == blob_type else None

    def check_trees(self, snapshots: list[Snapshot]) -> None:
        """Walk every snapshot's trees, each tree once however many snapshots share it."""
        visited: set[bytes] = set()
        for done, snap in enumerate(sorted(snapshots, key=lambda s: s.time_ns), 1):
            where = f"snapshot {snap.short_id}"
            if snap.kind == "image":
                is_indexed = lambda blob_id, blob_type: self.indexed_as(blob_id, blob_type) is not None  # noqa: E731
                self.errors.extend(image_problems(self.repo, snap.root, is_indexed, where))
            else:
                stack = [(snap.root, "/")]
                while stack:
                    tree_id, path = stack.pop()
                    if tree_id not in visited:
                        visited.add(tree_id)
                        stack.extend(self.check_tree(where, tree_id, path))
            self.progress("trees", done, len(snapshots))

    def check_tree(self, where: str, tree_id: bytes, path: str) -> list[tuple[bytes, str]]:
        """Open one tree, check what it names is indexed; return its subtrees to walk."""
        entry = self.indexed_as(tree_id, BlobType.TREE)
        if entry is None:
            self.errors.append(f"{where}: tree {_short(tree_id)} at {path} is not in the index")
            return []
        try:
            sealed = self._load(object_name(entry.pack_id), entry.offset, entry.length)
            plaintext = open_blob(self.repo.sealer, self.repo.hasher, BlobType.TREE, tree_id, sealed)
            nodes = decode_tree(plaintext, f"tree {_short(tree_id)}")
        except CairnError as exc:
            self.errors.append(f"{where}: {path}: pack {_short(entry.pack_id)}: {exc}")
            return []
        subtrees = []
        # one vectorised index search for the whole folder (one per blob was most of the walk)
        found = self.index.lookup_many([b for node in nodes for b in node.content])
        at = 0
        for node in nodes:
            looked, at = found[at:at + len(node.content)], at + len(node.content)
            if node.type == "dir" and node.subtree is not None:
                subtrees.append((node.subtree, os.path.join(path, os.fsdecode(node.name))))
            missing = [b for b, e in zip(node.content, looked) if e is None or e.blob_type != BlobType.DATA]
            if missing:
                self.errors.append(
                    f"{where}: {os.path.join(path, os.fsdecode(node.name))}: {len(missing)} of its "
                    f"{len(node.content)} data blobs are not in the index (first: blob {_short(missing[0])})"
                )
        return subtrees
