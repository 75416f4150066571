"""Remove locks left behind by processes that died, so others may work again.

Only stale locks go by default (not refreshed for 30 minutes, or held by a process of this host
that no longer exists); `remove_all` removes live ones too, for when the user knows better —
for instance a lock from a machine that was switched off within the last half hour.

A storage credential that may not delete (an append-only setup) cannot remove any lock: those
come back in `refused` with the storage's answer, so the command can say what to do instead of
stopping at the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cairn.errors import StorageError
from cairn.repo.lock import LockInfo
from cairn.repo.repository import Repository


@dataclass(frozen=True)
class UnlockOptions:
    remove_all: bool = False


@dataclass(frozen=True)
class UnlockResult:
    removed: list[LockInfo] = field(default_factory=list)
    kept: list[LockInfo] = field(default_factory=list)
    """Live locks left in place, so the user learns who holds them."""
    refused: list[tuple[LockInfo, StorageError]] = field(default_factory=list)
    """Locks that were to go but the storage refused to delete, with its error."""


def unlock(repo: Repository, options: UnlockOptions | None = None) -> UnlockResult:
    options = options or UnlockOptions()
    removed, refused = repo.locks.remove_stale(remove_all=options.remove_all)
    gone = {lock.id for lock in removed} | {lock.id for lock, _ in refused}
    kept = [lock for lock in repo.locks.list_locks() if lock.id not in gone]
    return UnlockResult(removed, kept, refused)
