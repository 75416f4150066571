"""`cairn ls`: the entries of a snapshot, or of a folder in it, as restic lists them.

Recursive by default, as restic's ``ls`` is: a snapshot is mostly searched with ``ls | grep``.
Non-recursive, a folder gives itself and its own entries (restic's ``ls SNAP DIR`` without
``--recursive``). Paths are absolute inside the snapshot (``/home/u/docs/letter.txt``), parents
before children, in name order. Entries stream to a callback as the trees are read, so listing a
snapshot of millions of files holds only the folders on the current path in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.files.walk import TreeLoader, walk_node
from cairn.ops.access import read_lock
from cairn.ops.browse import Entry, select_paths
from cairn.ops.snapshots import SnapshotInfo
from cairn.repo.repository import Repository


@dataclass(frozen=True)
class LsOptions:
    snapshot: str
    """``ID``, ``ID:PATH``, ``latest`` or ``latest:PATH``."""
    paths: list[str] = field(default_factory=list)
    """Paths inside the snapshot (or inside ``ID:PATH``) to list; none means the whole selection."""
    recursive: bool = True


@dataclass(frozen=True)
class LsResult:
    snapshot: SnapshotInfo
    entries: int


def ls(
    repo: Repository,
    options: LsOptions,
    on_entry: Callable[[Entry], None],
    on_snapshot: Callable[[SnapshotInfo], None] | None = None,
) -> LsResult:
    """Call `on_entry` for each listed entry; `on_snapshot` first, once the snapshot is known.

    Every path is resolved before the first entry is reported, so a typo in the second path
    fails the command before half a listing was printed.
    """
    loader = TreeLoader(repo)
    count = 0
    with read_lock(repo, "ls"):
        selections = select_paths(repo, loader, options.snapshot, options.paths)
        info = SnapshotInfo.from_snapshot(selections[0].snapshot)
        if on_snapshot is not None:
            on_snapshot(info)
        for sel in selections:
            for path, node in walk_node(loader, sel.path, sel.node, options.recursive):
                on_entry(Entry(path, node))
                count += 1
    return LsResult(info, count)
