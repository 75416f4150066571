"""Reading a snapshot's trees: resolving a path, and walking everything below a folder.

`ls`, `find`, `diff` and `dump` all need the same two things, so they live here once:

- `resolve` turns ``/home/u/docs`` into the entry at that path, loading one tree per component.
- `walk` yields ``(path, node)`` depth-first in name order from a tree id. It keeps one decoded
  tree per level (a stack of iterators, never recursion, so a 2000-level deep path neither hits
  Python's recursion limit nor holds more than the folders on the way down), and loads each
  folder's tree exactly once.

Trees are loaded through a `TreeLoader`, a small LRU of decoded trees: the same folder often
appears several times in one run (two snapshots compared by `diff`, identical copies of a folder,
a path resolved and then listed), and decrypting and decoding it again would be wasted work. The
LRU is bounded by entries, not trees, so a folder of a million files does not pin its memory.

Paths are bytes, absolute within the snapshot (``b"/home/u/docs/letter.txt"``); the snapshot
root itself is ``b"/"``. Names were checked by `decode_tree`, so joining them with ``/`` is safe.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator

from cairn.errors import NotFound
from cairn.files.tree import DIR, Node, decode_tree
from cairn.repo.repository import Repository

ROOT = b"/"
# About 200 bytes per cached Node: a budget of 100,000 entries is some 20 MB at most.
CACHE_ENTRIES = 100_000


class TreeLoader:
    """Load and decode tree blobs, keeping recently used ones (bounded by their entry count)."""

    def __init__(self, repo: Repository, max_entries: int = CACHE_ENTRIES) -> None:
        self.repo = repo
        self.max_entries = max_entries
        self._cache: OrderedDict[bytes, list[Node]] = OrderedDict()
        self._entries = 0
        self.loads = 0
        """How many tree blobs were read from the repository (tests check skipping with it)."""

    def load(self, tree_id: bytes) -> list[Node]:
        """The entries of tree `tree_id`, in name order. Callers must not modify the list."""
        nodes = self._cache.get(tree_id)
        if nodes is not None:
            self._cache.move_to_end(tree_id)
            return nodes
        nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
        self.loads += 1
        if len(nodes) <= self.max_entries // 4:  # a huge folder would evict everything else
            self._cache[tree_id] = nodes
            self._entries += len(nodes) + 1
            while self._entries > self.max_entries:
                _, old = self._cache.popitem(last=False)
                self._entries -= len(old) + 1
        return nodes


def split_ref(text: str) -> tuple[str, str]:
    """``ID:path`` -> (``ID``, ``path``); ids never hold a colon, paths may."""
    ref, _, subpath = text.partition(":")
    return ref, subpath


def normalize(path: str | bytes) -> bytes:
    """A snapshot path as absolute bytes without empty or ``.`` components: ``b"/a/b"``, ``b"/"``.

    ``..`` is refused rather than resolved: a snapshot path is a name, not a walk, and a
    silently climbing path would show something other than what the user named.
    """
    raw = os.fsencode(path)
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise NotFound(f"{os.fsdecode(raw)}: '..' is not allowed in a snapshot path")
    return b"/" + b"/".join(parts)


def join(folder: bytes, name: bytes) -> bytes:
    """`folder` + `name`, where `folder` is a path from `normalize` (``/`` for the root)."""
    return folder + name if folder == ROOT else folder + b"/" + name


def root_node(tree_id: bytes) -> Node:
    """A stand-in entry for a snapshot's root folder, which has no entry of its own."""
    return Node(name=b"/", type=DIR, subtree=tree_id)


def resolve(loader: TreeLoader, root: bytes, path: bytes, what: str) -> Node:
    """The entry at `path` (normalized) below the tree `root`; the root itself for ``/``.

    `what` names the snapshot in the NotFound message: ``snapshot 1a2b3c4d has no /etc/x``.
    """
    parts = [p for p in path.split(b"/") if p]
    node = root_node(root)
    walked = b""
    for part in parts:
        walked += b"/" + part
        if node.type != DIR or node.subtree is None:
            raise NotFound(f"{what}: {os.fsdecode(walked.rsplit(b'/', 1)[0])} is not a folder")
        found = _lookup(loader.load(node.subtree), part)
        if found is None:
            raise NotFound(f"{what} has no {os.fsdecode(walked)}")
        node = found
    return node


def _lookup(nodes: list[Node], name: bytes) -> Node | None:
    """Binary search: entries are sorted by name (decode_tree checks it)."""
    lo, hi = 0, len(nodes)
    while lo < hi:
        mid = (lo + hi) // 2
        if nodes[mid].name < name:
            lo = mid + 1
        else:
            hi = mid
    return nodes[lo] if lo < len(nodes) and nodes[lo].name == name else None


def walk(
    loader: TreeLoader, tree_id: bytes, prefix: bytes = ROOT, recursive: bool = True
) -> Iterator[tuple[bytes, Node]]:
    """Every entry below the tree `tree_id` as ``(path, node)``, parents before children.

    `prefix` is the path of the folder the tree belongs to. With `recursive=False` only the
    folder's own entries are yielded.
    """
    stack: list[tuple[bytes, Iterator[Node]]] = [(prefix, iter(loader.load(tree_id)))]
    while stack:
        folder, todo = stack[-1]
        node = next(todo, None)
        if node is None:
            stack.pop()
            continue
        path = join(folder, node.name)
        yield path, node
        if recursive and node.type == DIR and node.subtree is not None:
            stack.append((path, iter(loader.load(node.subtree))))


def walk_node(loader: TreeLoader, path: bytes, node: Node, recursive: bool = True) -> Iterator[tuple[bytes, Node]]:
    """The entry `node` at `path` itself (unless it is the root), then what is below it.

    Non-recursive, a folder gives itself and its own entries, as ``ls -d DIR; ls DIR`` would.
    """
    if path != ROOT:
        yield path, node
    if node.type == DIR and node.subtree is not None:
        yield from walk(loader, node.subtree, path, recursive=recursive)
