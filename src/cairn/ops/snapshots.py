"""List snapshots, optionally narrowed by host, tag, path or kind, grouped, the latest N.

Filters follow restic's simple rules so scripts port over: a snapshot passes when it matches
any of the given hosts, any of the given tag sets (a set written ``a,b`` needs both tags),
holds every given path, and is of one of the given kinds. Grouping (``host``, ``paths``,
``tags`` in any combination) is the one `forget` applies its policy by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from cairn.ops.access import read_lock
from cairn.ops.cat import jsonable
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot


@dataclass(frozen=True)
class SnapshotFilter:
    """Empty lists mean "no restriction"."""

    hosts: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    """``files``, ``image``."""

    def matches(self, snap: Snapshot) -> bool:
        if self.hosts and snap.host not in self.hosts:
            return False
        if self.kinds and snap.kind not in self.kinds:
            return False
        if self.tags and not any(_tag_set(t) <= set(snap.tags) for t in self.tags):
            return False
        held = {_normal_path(p) for p in snap.display_paths}
        return all(_normal_path(p) in held for p in self.paths)


def _tag_set(text: str) -> set[str]:
    return {t for t in text.split(",") if t}


def _normal_path(path: str) -> str:
    return path.rstrip("/") or "/"


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as listings show it: ids in hex, paths as text, time with its own offset."""

    id: str
    time: datetime
    host: str
    user: str
    tags: list[str]
    paths: list[str]
    kind: str
    parent: str | None
    summary: dict[str, Any]
    original: str | None = None
    """The first snapshot of this one's line, when `tag`, `copy` or `repair` wrote it."""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> SnapshotInfo:
        zone = timezone(timedelta(seconds=snap.tz_offset))
        when = datetime.fromtimestamp(snap.time_ns / 1e9, tz=zone)
        return cls(
            id=snap.id.hex(),
            time=when,
            host=snap.host,
            user=snap.user,
            tags=list(snap.tags),
            paths=snap.display_paths,
            kind=snap.kind,
            parent=snap.parent.hex() if snap.parent else None,
            summary=dict(snap.summary),
            original=snap.original.hex() if snap.original else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "short_id": self.short_id,
            "time": self.time.isoformat(),
            "host": self.host,
            "user": self.user,
            "tags": self.tags,
            "paths": self.paths,
            "kind": self.kind,
            "parent": self.parent,
            "summary": jsonable(self.summary),
            "original": self.original,
        }


def list_snapshots(repo: Repository, options: SnapshotFilter | None = None) -> list[SnapshotInfo]:
    """Every matching snapshot, oldest first."""
    options = options or SnapshotFilter()
    with read_lock(repo, "snapshots"):
        snaps = repo.list_snapshots()
    return [SnapshotInfo.from_snapshot(s) for s in snaps if options.matches(s)]


@dataclass(frozen=True)
class GroupKey:
    """What the snapshots of one group share; fields not grouped by are None."""

    host: str | None = None
    paths: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    def describe(self) -> str:
        parts = []
        if self.host is not None:
            parts.append(f"host {self.host}")
        if self.paths is not None:
            parts.append(f"paths {', '.join(self.paths) or '-'}")
        if self.tags is not None:
            parts.append(f"tags {', '.join(self.tags) or '-'}")
        return "; ".join(parts) or "all snapshots"

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "paths": list(self.paths) if self.paths is not None else None,
                "tags": list(self.tags) if self.tags is not None else None}


def group_key(snap: Snapshot | SnapshotInfo, group_by: tuple[str, ...]) -> GroupKey:
    paths = snap.display_paths if isinstance(snap, Snapshot) else snap.paths
    return GroupKey(
        host=snap.host if "host" in group_by else None,
        paths=tuple(sorted(_normal_path(p) for p in paths)) if "paths" in group_by else None,
        tags=tuple(sorted(set(snap.tags))) if "tags" in group_by else None,
    )


def group(snaps: list[SnapshotInfo], group_by: tuple[str, ...], latest: int | None = None) -> list[tuple[GroupKey, list[SnapshotInfo]]]:
    """Snapshots by group (groups in order of their oldest snapshot), each oldest first, and
    with `latest` only the newest N of each group."""
    groups: dict[GroupKey, list[SnapshotInfo]] = {}
    for snap in sorted(snaps, key=lambda s: s.time):
        groups.setdefault(group_key(snap, group_by), []).append(snap)
    if latest is not None:
        groups = {k: v[-latest:] if latest > 0 else [] for k, v in groups.items()}
    return list(groups.items())

