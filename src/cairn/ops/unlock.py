"""Remove locks left behind by processes that died, so others may work again.

Only stale locks go by default (not refreshed for 30 minutes, or held by a process of this host
that no longer exists); `remove_all` removes live ones too, for when the user knows better —
for instance a lock from a machine that was switched off within the last half hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def unlock(repo: Repository, options: UnlockOptions | None = None) -> UnlockResult:
    options = options or UnlockOptions()
    removed = repo.locks.remove_stale(remove_all=options.remove_all)
    gone = {lock.id for lock in removed}
    kept = [lock for lock in repo.locks.list_locks() if lock.id not in gone]
    return UnlockResult(removed, kept)
