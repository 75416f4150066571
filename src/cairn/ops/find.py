"""`cairn find`: which snapshots hold a file, and where, by name pattern.

Patterns are globs: ``*`` and ``?`` within one path component, ``[abc]``/``[!abc]`` classes, and
``**`` across components. A pattern without ``/`` matches an entry's name (``*.jpg``); one with
``/`` matches its whole path, anchored at the root when it starts with ``/`` (``/home/*/notes``),
else at any folder boundary (``docs/*.txt`` finds ``/home/u/docs/a.txt``). Entries of every type
match, folders too.

Searching 50 daily snapshots must not cost 50 full walks: most of their folders are the same
tree blobs. So the matches found below each folder are remembered by tree id (and by path as well
when a pattern looks at paths), and a folder met again is answered from memory without loading
anything. The memory is an LRU bounded by the matches it holds; a folder that matches a great
deal is simply walked again.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cairn.errors import UsageError
from cairn.files.tree import DIR, Node
from cairn.files.walk import ROOT, TreeLoader, join
from cairn.ops.access import read_lock
from cairn.ops.browse import Entry, files_snapshot
from cairn.ops.snapshots import SnapshotFilter, SnapshotInfo
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot

# Remembered matches (plus one per folder) across all folders; some 200 bytes each.
CACHE_BUDGET = 200_000


@dataclass(frozen=True)
class FindOptions:
    patterns: list[str]
    snapshots: list[str] = field(default_factory=list)
    """Ids, prefixes or `latest`; empty means every snapshot that `filter` lets through."""
    filter: SnapshotFilter = field(default_factory=SnapshotFilter)
    ignore_case: bool = False
    newer_ns: int | None = None
    """Only entries modified at or after this time (ns since the epoch)."""
    older_ns: int | None = None
    """Only entries modified before this time."""


@dataclass(frozen=True)
class FindGroup:
    """The matches in one snapshot, in walk order (parents before children, by name)."""

    snapshot: SnapshotInfo
    matches: list[Entry]


@dataclass(frozen=True)
class FindResult:
    snapshots: int
    """How many snapshots were searched."""
    hits: int
    trees_loaded: int
    """Tree blobs read: far fewer than the folders of all snapshots when they share folders."""


def _glob_regex(pattern: str) -> str:
    """The regular expression (no anchors) for one glob; see the module docstring."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):  # a literal caret, as in fnmatch
                body = "\\" + body
            out.append("[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Matcher:
    """The compiled patterns and time window; `by_path` when some pattern looks at paths."""

    names: re.Pattern[str] | None
    paths: re.Pattern[str] | None
    newer_ns: int | None = None
    older_ns: int | None = None

    @classmethod
    def compile(cls, options: FindOptions) -> Matcher:
        if not options.patterns:
            raise UsageError("give at least one pattern to find")
        flags = re.DOTALL | (re.IGNORECASE if options.ignore_case else 0)
        names, paths = [], []
        for pattern in options.patterns:
            if "/" in pattern.rstrip("/") or pattern.startswith("/"):
                body = _glob_regex(pattern.rstrip("/") if pattern != "/" else pattern)
                paths.append(body if pattern.startswith("/") else "(?:.*/)?" + body)
            else:
                names.append(_glob_regex(pattern.rstrip("/")))
        return cls(
            names=re.compile("|".join(f"(?:{n})" for n in names), flags) if names else None,
            paths=re.compile("/(?:" + "|".join(f"(?:{p.lstrip('/')})" for p in paths) + ")", flags)
            if paths else None,
            newer_ns=options.newer_ns,
            older_ns=options.older_ns,
        )

    @property
    def by_path(self) -> bool:
        return self.paths is not None

    def __call__(self, path: bytes, node: Node) -> bool:
        if self.newer_ns is not None and node.mtime < self.newer_ns:
            return False
        if self.older_ns is not None and node.mtime >= self.older_ns:
            return False
        # surrogateescape: a non-UTF-8 byte matches `?` or `*` instead of breaking the search
        if self.names is not None and self.names.fullmatch(node.name.decode("utf-8", "surrogateescape")):
            return True
        return self.paths is not None and self.paths.fullmatch(path.decode("utf-8", "surrogateescape")) is not None


_Key = bytes | tuple[bytes, bytes]
_Found = tuple[tuple[bytes, Node], ...]  # (path relative to the folder, starting with "/", node)


class _Searcher:
    """Walks trees for one `Matcher`, remembering each folder's matches across snapshots."""

    def __init__(self, loader: TreeLoader, match: Matcher, budget: int = CACHE_BUDGET) -> None:
        self.loader = loader
        self.match = match
        self.budget = budget
        self.cache: OrderedDict[_Key, _Found] = OrderedDict()
        self.cached = 0

    def key(self, tree_id: bytes, folder: bytes) -> _Key:
        return (tree_id, folder) if self.match.by_path else tree_id

    def remember(self, key: _Key, found: list[tuple[bytes, Node]], folder: bytes) -> None:
        cost = len(found) + 1
        if cost > self.budget // 4:
            return
        cut = 0 if folder == ROOT else len(folder)
        self.cache[key] = tuple((path[cut:], node) for path, node in found)
        self.cached += cost
        while self.cached > self.budget:
            _, old = self.cache.popitem(last=False)
            self.cached -= len(old) + 1

    def recall(self, key: _Key, folder: bytes) -> Iterator[tuple[bytes, Node]] | None:
        found = self.cache.get(key)
        if found is None:
            return None
        self.cache.move_to_end(key)
        base = b"" if folder == ROOT else folder
        return ((base + rel, node) for rel, node in found)

    def search(self, tree_id: bytes) -> list[tuple[bytes, Node]]:
        """The matches below the root tree `tree_id`, parents before children."""
        key = self.key(tree_id, ROOT)
        known = self.recall(key, ROOT)
        if known is not None:
            return list(known)
        found: list[tuple[bytes, Node]] = []
        # (folder path, its entries, its cache key, index in `found` where its matches start)
        stack = [(ROOT, iter(self.loader.load(tree_id)), key, 0)]
        while stack:
            folder, todo, key, start = stack[-1]
            node = next(todo, None)
            if node is None:
                stack.pop()
                self.remember(key, found[start:], folder)
                continue
            path = join(folder, node.name)
            if self.match(path, node):
                found.append((path, node))
            if node.type == DIR and node.subtree is not None:
                sub_key = self.key(node.subtree, path)
                known = self.recall(sub_key, path)
                if known is not None:
                    found.extend(known)
                else:
                    stack.append((path, iter(self.loader.load(node.subtree)), sub_key, len(found)))
        return found


def _snapshots(repo: Repository, options: FindOptions) -> list[Snapshot]:
    """The snapshots to search, oldest first, each once."""
    if options.snapshots:
        chosen = {s.id: s for s in (files_snapshot(repo, ref) for ref in options.snapshots)}
        snaps = sorted(chosen.values(), key=lambda s: s.time_ns)
    else:
        snaps = [s for s in repo.list_snapshots() if s.kind == "files"]
    return [s for s in snaps if options.filter.matches(s)]


def find(repo: Repository, options: FindOptions, on_group: Callable[[FindGroup], None]) -> FindResult:
    """Call `on_group` for each snapshot (oldest first) that holds a match."""
    match = Matcher.compile(options)
    loader = TreeLoader(repo)
    searcher = _Searcher(loader, match)
    hits = 0
    with read_lock(repo, "find"):
        snaps = _snapshots(repo, options)
        for snap in snaps:
            found = searcher.search(snap.root)
            if found:
                hits += len(found)
                on_group(FindGroup(SnapshotInfo.from_snapshot(snap), [Entry(p, n) for p, n in found]))
    return FindResult(snapshots=len(snaps), hits=hits, trees_loaded=loader.loads)
