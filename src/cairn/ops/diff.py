"""`cairn diff`: what changed between two snapshots (or two folders in them).

The two trees are walked side by side, merging each folder's entries by name (both are sorted).
A folder whose tree id is the same on both sides holds the same bytes all the way down, so it is
skipped without being loaded: that is what makes comparing two daily snapshots of a large, mostly
unchanged tree fast.

Each change has a kind, as restic prints them:

- ``+`` added, ``-`` removed (everything below an added or removed folder is listed too);
- ``M`` content changed: a file's data, a symlink's target, a device's numbers;
- ``U`` metadata only: mode, owner, modification time, extended attributes and ACLs, hard link
  count... with the same content. Kept apart from ``M`` so "what did I edit" is not drowned in ``chmod -R``. The access
  and change times are not compared: reading a file changes the first, any metadata change the
  second, and neither is something a user did to the file;
- ``T`` type changed (a file became a folder...), followed by the removals and additions below.

The comparison is generic over the node's fields, so fields later tree versions add (xattrs,
hard link identity, ...) are compared without changes here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cairn.files.tree import DIR, FILE, Node
from cairn.files.walk import ROOT, TreeLoader, join, walk
from cairn.ops.access import read_lock
from cairn.ops.browse import select
from cairn.ops.snapshots import SnapshotInfo
from cairn.repo.repository import Repository

ADDED, REMOVED, MODIFIED, METADATA, TYPE = "+", "-", "M", "U", "T"

# What an entry holds (a change here is "M"), and what is not compared at all.
_CONTENT_FIELDS = ("size", "content", "target", "rdev")
_IGNORED_FIELDS = {"name", "type", "subtree", "atime", "ctime", *_CONTENT_FIELDS}


@dataclass(frozen=True)
class DiffOptions:
    before: str
    """``ID[:PATH]`` or ``latest[:PATH]``: the older side."""
    after: str


@dataclass(frozen=True)
class Change:
    kind: str
    """One of ``+ - M U T``."""
    path: bytes
    before: Node | None
    after: Node | None
    fields: tuple[str, ...] = ()
    """For ``M`` and ``U``: the metadata fields that differ (``mode``, ``mtime``, ...)."""

    @property
    def node(self) -> Node:
        """The entry as it is now, or as it was for a removal."""
        node = self.after or self.before
        assert node is not None
        return node


@dataclass
class DiffStats:
    files_added: int = 0
    files_removed: int = 0
    dirs_added: int = 0
    dirs_removed: int = 0
    others_added: int = 0
    """Symlinks, devices, FIFOs... added."""
    others_removed: int = 0
    modified: int = 0
    metadata_changed: int = 0
    type_changed: int = 0
    bytes_added: int = 0
    """Sizes of the files added, plus the new size of each modified file."""
    bytes_removed: int = 0
    """Sizes of the files removed, plus the old size of each modified file."""
    trees_loaded: int = 0
    trees_skipped: int = 0
    """Folders with equal tree ids on both sides, not loaded."""


@dataclass(frozen=True)
class DiffResult:
    before: SnapshotInfo
    after: SnapshotInfo
    stats: DiffStats = field(default_factory=DiffStats)


def _compared(node: Node, name: str) -> object:
    """A field's value as diff compares it: of the hard-link identity only the link count, since
    device and inode numbers change when nothing did (a backup from an LVM snapshot, a restore)."""
    value = getattr(node, name, None)
    if name == "links":
        return value[2] if value else 1
    return value


def metadata_fields(a: Node, b: Node) -> tuple[str, ...]:
    """Names of the compared metadata fields that differ between `a` and `b`."""
    return tuple(
        f.name for f in dataclasses.fields(Node)
        if f.name not in _IGNORED_FIELDS and _compared(a, f.name) != _compared(b, f.name)
    )


def content_differs(a: Node, b: Node) -> bool:
    return any(getattr(a, name, None) != getattr(b, name, None) for name in _CONTENT_FIELDS)


def _pairs(before: list[Node], after: list[Node]) -> Iterator[tuple[Node | None, Node | None]]:
    """Merge two name-sorted entry lists into (before, after) pairs, None where one is missing."""
    i = j = 0
    while i < len(before) or j < len(after):
        a = before[i] if i < len(before) else None
        b = after[j] if j < len(after) else None
        if b is None or (a is not None and a.name < b.name):
            yield a, None
            i += 1
        elif a is None or b.name < a.name:
            yield None, b
            j += 1
        else:
            yield a, b
            i += 1
            j += 1


class _Differ:
    def __init__(self, loader: TreeLoader, emit: Callable[[Change], None]) -> None:
        self.loader = loader
        self.emit = emit
        self.stats = DiffStats()

    def count(self, node: Node, added: bool) -> None:
        s = self.stats
        if node.type == FILE:
            if added:
                s.files_added += 1
                s.bytes_added += node.size
            else:
                s.files_removed += 1
                s.bytes_removed += node.size
        elif node.type == DIR:
            if added:
                s.dirs_added += 1
            else:
                s.dirs_removed += 1
        elif added:
            s.others_added += 1
        else:
            s.others_removed += 1

    def one_side(self, path: bytes, node: Node, added: bool, itself: bool = True) -> None:
        """An entry only one side has (unless not `itself`), and everything below a folder."""
        if itself:
            self.single(path, node, added)
        if node.type == DIR and node.subtree is not None:
            for below, child in walk(self.loader, node.subtree, path):
                self.single(below, child, added)

    def single(self, path: bytes, node: Node, added: bool) -> None:
        self.count(node, added)
        self.emit(Change(ADDED, path, None, node) if added else Change(REMOVED, path, node, None))

    def both(self, path: bytes, a: Node, b: Node) -> bool:
        """Report the change of an entry both sides have; True when its folders must be compared."""
        if a.type != b.type:
            self.stats.type_changed += 1
            self.stats.bytes_removed += a.size if a.type == FILE else 0
            self.stats.bytes_added += b.size if b.type == FILE else 0
            self.emit(Change(TYPE, path, a, b, metadata_fields(a, b)))
            self.one_side(path, a, added=False, itself=False)
            self.one_side(path, b, added=True, itself=False)
            return False
        fields = metadata_fields(a, b)
        if a.type != DIR and content_differs(a, b):
            self.stats.modified += 1
            if a.type == FILE:
                self.stats.bytes_removed += a.size
                self.stats.bytes_added += b.size
            self.emit(Change(MODIFIED, path, a, b, fields))
        elif fields:
            self.stats.metadata_changed += 1
            self.emit(Change(METADATA, path, a, b, fields))
        if a.type != DIR:
            return False
        if a.subtree == b.subtree:
            self.stats.trees_skipped += 1
            return False
        return True

    def run(self, path: bytes, before: bytes, after: bytes) -> None:
        """Compare the folders (tree ids) `before` and `after`, found at `path`."""
        if before == after:
            self.stats.trees_skipped += 1
            return
        stack = [(path, _pairs(self.loader.load(before), self.loader.load(after)))]
        while stack:
            folder, todo = stack[-1]
            pair = next(todo, None)
            if pair is None:
                stack.pop()
                continue
            a, b = pair
            if b is None:
                assert a is not None
                self.one_side(join(folder, a.name), a, added=False)
            elif a is None:
                self.one_side(join(folder, b.name), b, added=True)
            elif self.both(child := join(folder, a.name), a, b):
                assert a.subtree is not None and b.subtree is not None
                stack.append((child, _pairs(self.loader.load(a.subtree), self.loader.load(b.subtree))))


def diff(repo: Repository, options: DiffOptions, on_change: Callable[[Change], None]) -> DiffResult:
    """Call `on_change` for each change, parents before children, in name order.

    Paths are absolute in the snapshots. When the two sides name different folders
    (``A:/home/old`` against ``B:/home/new``) they are relative to those folders instead.
    """
    loader = TreeLoader(repo)
    with read_lock(repo, "diff"):
        old = select(repo, loader, options.before)
        new = select(repo, loader, options.after)
        differ = _Differ(loader, on_change)
        if old.node.type == DIR and new.node.type == DIR:
            assert old.node.subtree is not None and new.node.subtree is not None
            differ.run(old.path if old.path == new.path else ROOT, old.node.subtree, new.node.subtree)
        else:
            path = old.path if old.path == new.path else new.path
            differ.both(path, old.node, new.node)
    differ.stats.trees_loaded = loader.loads
    return DiffResult(SnapshotInfo.from_snapshot(old.snapshot), SnapshotInfo.from_snapshot(new.snapshot), differ.stats)
