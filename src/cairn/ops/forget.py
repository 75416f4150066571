"""`cairn forget`: remove snapshots by a retention policy (or by id); their data stays until
`prune`.

The policy (`cairn.policy.retention`, rules in docs/RETENTION.md) is applied to each group of
snapshots separately: by default one group per host and set of paths, so the laptop's daily
snapshots never push out the server's. Only snapshot objects are deleted, each a small object;
a prune running meanwhile copes with them vanishing (docs/FORMAT.md §12).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import NotFound, ObjectMissing, UsageError
from cairn.ops.snapshots import GroupKey, SnapshotFilter, SnapshotInfo, group
from cairn.policy.retention import Point, Policy, apply
from cairn.repo import maintenance as mnt
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot


@dataclass(frozen=True)
class ForgetOptions:
    policy: Policy = Policy()
    filter: SnapshotFilter = SnapshotFilter()
    group_by: tuple[str, ...] = ("host", "paths")
    snapshots: tuple[str, ...] = ()
    """Explicit snapshot ids (or unique prefixes) to forget, instead of a policy."""
    dry_run: bool = False


@dataclass
class Kept:
    snapshot: SnapshotInfo
    reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        return {**self.snapshot.to_json(), "reasons": self.reasons}


@dataclass
class ForgetGroup:
    key: GroupKey
    keep: list[Kept] = field(default_factory=list)
    remove: list[SnapshotInfo] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.key.to_json(),
            "keep": [k.to_json() for k in self.keep],
            "remove": [s.to_json() for s in self.remove],
        }


@dataclass
class ForgetResult:
    groups: list[ForgetGroup]
    removed: list[str]
    """Ids of the snapshots deleted (none in a dry run)."""
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "groups": [g.to_json() for g in self.groups], "removed": self.removed}


def decide(snaps: list[Snapshot], options: ForgetOptions) -> list[ForgetGroup]:
    """The policy's verdict for every group, without touching the repository."""
    now_ns = time.time_ns()  # durations ignore snapshots from the future (a clock gone wrong)
    chosen = {s.id: s for s in snaps if options.filter.matches(s)}
    infos = [SnapshotInfo.from_snapshot(s) for s in chosen.values()]
    groups = []
    for key, members in group(infos, options.group_by):
        by_id = {bytes.fromhex(s.id): s for s in members}
        points = [
            Point(snap.id, snap.time_ns, snap.tz_offset, frozenset(snap.tags))
            for snap in (chosen[i] for i in by_id)
        ]
        verdict = ForgetGroup(key)
        for decision in apply(points, options.policy, now_ns):
            info = by_id[decision.point.id]
            if decision.keep:
                verdict.keep.append(Kept(info, list(decision.reasons)))
            else:
                verdict.remove.append(info)
        groups.append(verdict)
    return groups


def _by_ids(snaps: list[SnapshotInfo], refs: tuple[str, ...]) -> list[ForgetGroup]:
    chosen: list[SnapshotInfo] = []
    for ref in refs:
        ref = ref.lower()
        if len(ref) < 4:
            raise UsageError(f"{ref!r} is not a snapshot id: give at least 4 hex digits")
        matches = [s for s in snaps if s.id.startswith(ref)]
        if not matches:
            raise NotFound(f"no snapshot {ref}")
        if len(matches) > 1:
            raise NotFound(f"snapshot id {ref} is ambiguous: {len(matches)} snapshots start with it")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return [ForgetGroup(GroupKey(), remove=chosen)]


def forget(repo: Repository, options: ForgetOptions) -> ForgetResult:
    if options.snapshots and not options.policy.empty:
        raise UsageError("give either snapshot ids or --keep-* rules, not both")
    if not options.snapshots and options.policy.empty:
        raise UsageError("no policy given: add --keep-* rules (or snapshot ids); forget removes nothing without one")
    if not options.dry_run:
        mnt.refuse_if_append_only(repo, "forget")
    with repo.lock(command="forget"):
        snaps = repo.list_snapshots()
        if options.snapshots:
            groups = _by_ids([SnapshotInfo.from_snapshot(s) for s in snaps], options.snapshots)
        else:
            groups = decide(snaps, options)
        removed: list[str] = []
        if not options.dry_run:
            for verdict in groups:
                for info in verdict.remove:
                    try:
                        repo.backend.delete(f"snapshots/{info.id}")
                    except ObjectMissing:
                        continue  # forgotten by someone else meanwhile
                    removed.append(info.id)
    return ForgetResult(groups, removed, options.dry_run)


def replace_snapshot(repo: Repository, old: Snapshot, new: Snapshot) -> bytes:
    """Write `new` in place of `old` (tag, repair): the new object first, linked to the first
    of the line through `original`, then the old one deleted."""
    new.original = old.original or old.id
    new_id = repo.save_snapshot(new)
    try:
        repo.backend.delete(f"snapshots/{old.id.hex()}")
    except ObjectMissing:
        pass
    return new_id
