"""`cairn tag`: add, remove or set the tags of existing snapshots, without touching data.

Objects are never modified in place (docs/FORMAT.md §12), so a retagged snapshot is a new
snapshot object with the same root, time and summary, whose optional `original` key names the
first snapshot of its line; the old object is deleted after the new one is written, so an
interruption leaves both (never neither), and `original` tells tools they are one snapshot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import UsageError
from cairn.ops.forget import replace_snapshot
from cairn.ops.snapshots import SnapshotFilter
from cairn.repo import maintenance as mnt
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot


@dataclass(frozen=True)
class TagOptions:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    set: tuple[str, ...] | None = None
    """Replace all tags by these (may be empty: removes every tag)."""
    snapshots: tuple[str, ...] = ()
    """Ids or prefixes (or `latest`); none means every snapshot the filter passes."""
    filter: SnapshotFilter = SnapshotFilter()


@dataclass
class TagChange:
    old_id: str
    new_id: str
    tags: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TagResult:
    changed: list[TagChange] = field(default_factory=list)
    unchanged: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"changed": [c.to_json() for c in self.changed], "unchanged": self.unchanged}


def new_tags(tags: list[str], options: TagOptions) -> list[str]:
    """The tags after the change, in first-seen order, each once."""
    base = list(options.set) if options.set is not None else list(tags)
    base += [t for t in options.add if t not in base]
    result: list[str] = []
    for t in base:
        if t not in options.remove and t not in result:
            result.append(t)
    return result


def _check(options: TagOptions) -> None:
    if options.set is None and not options.add and not options.remove:
        raise UsageError("nothing to do: give --add, --remove or --set")
    if options.set is not None and (options.add or options.remove):
        raise UsageError("--set replaces all tags: it cannot be combined with --add or --remove")
    for t in (*options.add, *options.remove, *(options.set or ())):
        if not t or "," in t:
            raise UsageError(f"{t!r} is not a tag: tags are non-empty and hold no comma")


def tag(repo: Repository, options: TagOptions) -> TagResult:
    _check(options)
    mnt.refuse_if_append_only(repo, "tag (it replaces snapshot objects)")
    result = TagResult()
    with repo.lock(command="tag"):
        if options.snapshots:
            snaps: list[Snapshot] = []
            for ref in options.snapshots:
                snap = repo.find_snapshot(ref)
                if all(s.id != snap.id for s in snaps):
                    snaps.append(snap)
        else:
            snaps = repo.list_snapshots()
        for snap in snaps:
            if not options.filter.matches(snap):
                continue
            tags = new_tags(snap.tags, options)
            if tags == snap.tags:
                result.unchanged += 1
                continue
            new = dataclasses.replace(snap, tags=tags, id=b"")
            new_id = replace_snapshot(repo, snap, new)
            result.changed.append(TagChange(snap.id.hex(), new_id.hex(), tags))
    return result
