"""Locks: small sealed objects saying who works on the repository, and how.

Backups take *shared* locks and never wait for each other. Only operations that must see no
concurrent writer (for now: none in normal use; `repair index` and a forced prune later) take an
*exclusive* lock. A lock is stale when it was not refreshed for STALE_AFTER seconds, or when it
belongs to this host and its process is gone; stale locks are ignored and `unlock` removes them.

A storage credential that may not delete (an append-only setup, docs/RETENTION.md) cannot
release a lock by deleting it. Then the holder, done with its work, overwrites its lock with one
whose refresh time is 0 (`RELEASED`): stale to every client at once by the ordinary age rule, so
it blocks nobody, and `unlock` from a machine that may delete removes it. If even that write is
refused, the lock stays as it was and goes stale 30 minutes after its last refresh. Either way
the command that held it succeeds, with a warning.

Acquiring, for either kind: write our lock, then list the others; if one conflicts and is not
stale, delete ours and fail. Two exclusive lockers racing may both back off, never both win.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from cairn.errors import DamagedObject, ObjectMissing, RepositoryLocked, StorageAccessDenied, StorageError, StorageReadOnly
from cairn.repo import encoding, identity
from cairn.storage.base import Backend

LOCK_FORMAT = 1
REFRESH_EVERY = 5 * 60
STALE_AFTER = 30 * 60
RELEASED = 0
"""The refresh time of a lock released by overwriting it (its storage refused the delete)."""
REFUSED = (StorageReadOnly, StorageAccessDenied)
"""What a storage raises when the credential may not delete (S3 and SFTP: read-only; B2 may say denied)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockInfo:
    id: str
    exclusive: bool
    host: str
    pid: int
    user: str
    time_ns: int
    refreshed_ns: int
    command: str

    def is_stale(self, now_ns: int | None = None) -> bool:
        now_ns = time.time_ns() if now_ns is None else now_ns
        if now_ns - self.refreshed_ns > STALE_AFTER * 1_000_000_000:
            return True
        return self.process_gone()

    def process_gone(self) -> bool:
        """Certainly dead: its process was on this host and runs no more (it will write nothing)."""
        return self.host == identity.hostname() and not _process_alive(self.pid)

    @property
    def released(self) -> bool:
        """Its process finished but could not delete it (see the module docstring)."""
        return self.refreshed_ns == RELEASED

    def describe(self) -> str:
        age = max(0, (time.time_ns() - self.time_ns) // 1_000_000_000)
        kind = "exclusive" if self.exclusive else "shared"
        done = ", released by its process" if self.released else ""
        return f"{kind} lock by {self.user}@{self.host} pid {self.pid} ({self.command}), {age}s old{done}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_lock(lock_id: str, exclusive: bool, command: str) -> LockInfo:
    now = time.time_ns()
    return LockInfo(lock_id, exclusive, identity.hostname(), os.getpid(), identity.username(), now, now, command)


def encode(lock: LockInfo) -> bytes:
    return encoding.pack(
        {
            "v": LOCK_FORMAT, "exclusive": lock.exclusive, "host": lock.host, "pid": lock.pid,
            "user": lock.user, "time": lock.time_ns, "refreshed": lock.refreshed_ns, "command": lock.command,
        }
    )


def decode(plaintext: bytes, lock_id: str) -> LockInfo:
    what = f"lock {lock_id[:8]}"
    obj = encoding.unpack_map(plaintext, what)
    if encoding.field(obj, "v", int, what) != LOCK_FORMAT:
        raise DamagedObject(f"{what} has an unknown lock format")
    return LockInfo(
        id=lock_id,
        exclusive=encoding.field(obj, "exclusive", bool, what),
        host=encoding.field(obj, "host", str, what),
        pid=encoding.field(obj, "pid", int, what),
        user=encoding.field(obj, "user", str, what),
        time_ns=encoding.field(obj, "time", int, what),
        refreshed_ns=encoding.field(obj, "refreshed", int, what),
        command=encoding.field(obj, "command", str, what),
    )


def conflicts(mine: LockInfo, other: LockInfo) -> bool:
    return mine.id != other.id and (mine.exclusive or other.exclusive)


class LockManager:
    """Takes, refreshes and releases one lock object; used through `Repository.lock()`."""

    def __init__(
        self,
        store_sealed: Callable[[str, str, bytes], None],
        load_sealed: Callable[[str, str], bytes],
        backend: Backend,
    ) -> None:
        self._store = store_sealed
        self._load = load_sealed
        self._backend = backend

    def list_locks(self) -> list[LockInfo]:
        locks = []
        for info in self._backend.list("locks/"):
            lock_id = info.name.rsplit("/", 1)[-1]
            try:
                locks.append(decode(self._load("locks", lock_id), lock_id))
            except ObjectMissing:
                continue  # released while we listed
            except DamagedObject:
                continue  # an unreadable lock cannot block anyone; `check` reports it
        return locks

    def acquire(self, exclusive: bool, command: str) -> LockInfo:
        mine = new_lock(os.urandom(32).hex(), exclusive, command)
        self._store("locks", mine.id, encode(mine))
        for other in self.list_locks():
            if conflicts(mine, other) and not other.is_stale():
                self.release(mine)
                raise RepositoryLocked(
                    f"repository is locked: {other.describe()}; if that process is gone, run 'cairn unlock'"
                )
        return mine

    def refresh(self, lock: LockInfo) -> LockInfo:
        fresh = LockInfo(**{**lock.__dict__, "refreshed_ns": time.time_ns()})
        self._store("locks", lock.id, encode(fresh))
        return fresh

    def release(self, lock: LockInfo) -> None:
        """Delete our lock; when the storage refuses deletes, mark it released instead and warn.

        Never raises for a refused delete: the work under the lock is done (a backup's snapshot
        is saved), and a lock that cannot be deleted harms nobody once it is stale."""
        try:
            self._backend.delete(f"locks/{lock.id}")
            return
        except ObjectMissing:
            return
        except REFUSED as exc:
            refusal = exc
        try:
            self._store("locks", lock.id, encode(LockInfo(**{**lock.__dict__, "refreshed_ns": RELEASED})))
        except StorageError as exc:
            log.warning(
                "could not delete lock %s (%s) nor mark it released (%s); other hosts take it as held "
                "until %d minutes after its last refresh; 'cairn unlock' with a credential that may delete removes it",
                lock.id[:8], refusal.message, exc.message, STALE_AFTER // 60,
            )
            return
        log.warning(
            "could not delete lock %s (%s); it is marked released and blocks nobody; 'cairn unlock' "
            "with a credential that may delete removes it", lock.id[:8], refusal.message,
        )

    def remove_stale(self, remove_all: bool = False) -> tuple[list[LockInfo], list[tuple[LockInfo, StorageError]]]:
        """Remove stale locks, or every lock; `remove_all` also removes undecodable ones.

        Returns the locks removed and those the storage refused to delete, with its error (an
        append-only credential): `unlock` explains them rather than failing on the first."""
        removed: list[LockInfo] = []
        refused: list[tuple[LockInfo, StorageError]] = []
        for other in self.list_locks():
            if remove_all or other.is_stale():
                try:
                    self._backend.delete(f"locks/{other.id}")
                except ObjectMissing:
                    pass
                except REFUSED as exc:
                    refused.append((other, exc))
                    continue
                removed.append(other)
        if remove_all and not refused:
            for info in self._backend.list("locks/"):
                try:
                    self._backend.delete(info.name)
                except ObjectMissing:
                    pass
        return removed, refused
