"""The writing side of maintenance: index objects that supersede others, packs copied blob by
blob, pending-deletion objects and the lock barrier of the two-phase delete.

The protocol these pieces implement is written in docs/FORMAT.md §12 ("Prune beside running
backups"); `cairn.ops.prune` runs it. In short: nothing is deleted in the run that decides to
delete it unless no other lock existed when the decision became visible; otherwise the objects
are named in a sealed ``pending/<id>`` object with the ids of the locks that existed then (the
*barrier*), and a later prune deletes them once every barrier lock is gone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cairn.errors import DamagedObject, ObjectMissing, RepositoryLocked, UsageError
from cairn.repo import encoding, identity
from cairn.repo import lock as lock_mod
from cairn.repo.blob import open_blob
from cairn.repo.index import RECORD, encode_index, pack_records
from cairn.repo.pack import PackBuilder, object_name
from cairn.repo.repository import Repository

PENDING_FORMAT = 1
# Records per index object written by maintenance: about 12 MB each, so a rewrite of a
# repository with millions of blobs is many bounded objects, never one giant one.
RECORDS_PER_INDEX = 1 << 18
MAINTENANCE_COMMANDS = frozenset({"prune", "repair index", "repair snapshots"})


def refuse_if_append_only(repo: Repository, what: str) -> None:
    """Append-only repositories (docs/FORMAT.md §5) let no client delete or replace objects."""
    if repo.config.append_only:
        raise UsageError(f"the repository is append-only: {what} would delete objects, which it forbids")


def delete_quietly(repo: Repository, name: str) -> bool:
    """Delete an object; False when it was already gone (a previous, interrupted run)."""
    try:
        repo.backend.delete(name)
    except ObjectMissing:
        return False
    return True


# -- index objects ---------------------------------------------------------------------------


def write_index(repo: Repository, packs: Iterable[tuple[bytes, bytes]], supersedes: Iterable[bytes] = ()) -> list[bytes]:
    """Write index objects naming `packs`; the last one written carries `supersedes`.

    Until that last object lands the old index objects stay live beside the new ones (the
    same packs described twice, identically), so an interruption at any point leaves a
    complete index; the last store switches readers to the new objects at once.
    """
    written: list[bytes] = []
    batch: list[tuple[bytes, bytes]] = []
    count = 0

    def store(chunk: list[tuple[bytes, bytes]], replaced: Iterable[bytes]) -> None:
        index_id = os.urandom(32)
        repo.store_object("index", index_id.hex(), encode_index(chunk, replaced))
        written.append(index_id)

    for pack_id, records in packs:
        batch.append((pack_id, records))
        count += len(records) // RECORD.size
        if count >= RECORDS_PER_INDEX:
            store(batch, ())
            batch, count = [], 0
    replaced = list(supersedes)
    if batch or replaced:
        store(batch, replaced)
    return written


# -- copying blobs into new packs ------------------------------------------------------------


class PackWriter:
    """Fills new packs with blobs that are already sealed (a blob's seal does not depend on
    its pack), verifying each before it is written, as every writer must (FORMAT §6)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._builder = PackBuilder()
        self.packs: list[tuple[bytes, bytes]] = []
        """(pack id, index records) of every pack written so far."""
        self.bytes_written = 0

    def add(self, blob_type: int, blob_id: bytes, sealed: bytes | memoryview, raw_length: int) -> None:
        plain = open_blob(self.repo.sealer, self.repo.hasher, blob_type, blob_id, sealed)
        if len(plain) != raw_length:
            raise DamagedObject(f"blob {blob_id.hex()[:12]} has {len(plain)} bytes, its index says {raw_length}")
        self._builder.add(blob_type, blob_id, bytes(sealed), raw_length)
        if self._builder.size >= self.repo.config.pack_size:
            self.flush()

    def flush(self) -> None:
        builder, self._builder = self._builder, PackBuilder()
        if not len(builder):
            return
        data = builder.finish(self.repo.sealer)
        self.repo.backend.store(object_name(builder.pack_id), data)
        self.bytes_written += len(data)
        self.packs.append((builder.pack_id, pack_records(builder.entries)))


# -- pending deletions -----------------------------------------------------------------------


@dataclass
class Pending:
    """A sealed ``pending/<id>`` object: what a prune decided to delete, and when it may."""

    time_ns: int
    packs: list[bytes]
    indexes: list[bytes]
    locks: list[bytes]
    """The barrier: ids of the locks (other than the prune's own) that existed once the
    objects above were no longer named by any live index object."""
    host: str = field(default_factory=identity.hostname)
    id: bytes = b""


def encode_pending(p: Pending) -> bytes:
    return encoding.pack(
        {"v": PENDING_FORMAT, "time": p.time_ns, "host": p.host, "packs": p.packs, "indexes": p.indexes, "locks": p.locks}
    )


def decode_pending(plaintext: bytes, pending_id: bytes) -> Pending:
    what = f"pending {pending_id.hex()[:8]}"
    obj = encoding.unpack_map(plaintext, what)
    if encoding.field(obj, "v", int, what) != PENDING_FORMAT:
        raise DamagedObject(f"{what} has an unknown format")
    lists = [encoding.field(obj, key, list, what) for key in ("packs", "indexes", "locks")]
    if not all(isinstance(i, bytes) and len(i) == 32 for lst in lists for i in lst):
        raise DamagedObject(f"{what} is damaged: malformed ids")
    return Pending(
        time_ns=encoding.field(obj, "time", int, what), packs=lists[0], indexes=lists[1], locks=lists[2],
        host=encoding.field(obj, "host", str, what), id=pending_id,
    )


def save_pending(repo: Repository, pending: Pending) -> bytes:
    pending.id = os.urandom(32)
    repo.store_object("pending", pending.id.hex(), encode_pending(pending))
    return pending.id


def load_pendings(repo: Repository) -> Iterator[Pending | bytes]:
    """Every pending object; the id alone for one that does not open (it is then ignored:
    what it listed is unreferenced anyway and is found again as garbage)."""
    for info in repo.backend.list("pending/"):
        name = info.name.rsplit("/", 1)[-1]
        try:
            pending_id = bytes.fromhex(name)
        except ValueError:
            continue
        if len(pending_id) != 32:
            continue
        try:
            yield decode_pending(repo.load_object("pending", name), pending_id)
        except ObjectMissing:
            continue
        except DamagedObject:
            yield pending_id


# -- the lock barrier -------------------------------------------------------------------------


def other_locks(repo: Repository, mine: str) -> list[bytes]:
    """Ids of every lock object but ours, decodable or not: the barrier to record."""
    ids = []
    for info in repo.backend.list("locks/"):
        name = info.name.rsplit("/", 1)[-1]
        if name != mine and len(name) == 64:
            try:
                ids.append(bytes.fromhex(name))
            except ValueError:
                continue
    return ids


def blocking_locks(repo: Repository, barrier: Iterable[bytes], now_ns: int | None = None) -> list[lock_mod.LockInfo]:
    """The barrier locks that still hold: present, readable and not stale (FORMAT §11)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    holding = []
    for lock_id in barrier:
        name = lock_id.hex()
        try:
            info = lock_mod.decode(repo.load_object("locks", name), name)
        except (ObjectMissing, DamagedObject):
            continue  # released, or unreadable (which blocks nobody)
        if not info.is_stale(now_ns):
            holding.append(info)
    return holding


@contextmanager
def maintenance_lock(repo: Repository, command: str) -> Iterator[lock_mod.LockInfo]:
    """A shared lock (backups and restores go on) that no other maintenance run may share.

    Written, then the others listed, as every lock is taken (FORMAT §11): two racing
    maintenance runs may both back off, never both proceed.
    """
    with repo.lock(exclusive=False, command=command) as held:
        for other in repo.locks.list_locks():
            if other.id != held.id and other.command in MAINTENANCE_COMMANDS and not other.is_stale():
                raise RepositoryLocked(
                    f"another maintenance run holds the repository: {other.describe()}; "
                    "if that process is gone, run 'cairn unlock'"
                )
        yield held
