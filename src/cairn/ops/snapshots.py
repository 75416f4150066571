"""List snapshots, optionally narrowed by host, tag or path.

Filters follow restic's simple rules so scripts port over: a snapshot passes when it matches
any of the given hosts, any of the given tag sets (a set written ``a,b`` needs both tags),
and holds every given path.
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

    def matches(self, snap: Snapshot) -> bool:
        if self.hosts and snap.host not in self.hosts:
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
        }


def list_snapshots(repo: Repository, options: SnapshotFilter | None = None) -> list[SnapshotInfo]:
    """Every matching snapshot, oldest first."""
    options = options or SnapshotFilter()
    with read_lock(repo, "snapshots"):
        snaps = repo.list_snapshots()
    return [SnapshotInfo.from_snapshot(s) for s in snaps if options.matches(s)]

