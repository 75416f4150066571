"""Tree blobs: one folder's entries, the unit a file snapshot is built from.

Format (tree format 1; the plaintext of a blob of type TREE)::

    tree    = msgpack map {"v": 1, "entries": [entry, ...]}
              entries sorted by name, bytewise ascending, names unique
    entry   = msgpack map with these keys (strings):
      "name"    bin   raw file name bytes, never assumed UTF-8; not empty, not "." or "..",
                      no "/" and no NUL byte
      "type"    str   "file" | "dir"  (reserved for later: "symlink", "fifo", "chardev",
                      "blockdev"; readers keep entries of a type they do not know and
                      skip them on restore)
      "mode"    int   st_mode & 0o7777 (permission, setuid/setgid/sticky bits)
      "uid"     int   >= 0          "gid"   int  >= 0
      "user"    str   owner name, "" if unknown      "group"  str  group name, "" if unknown
      "mtime"   int   ns since the epoch; "atime", "ctime" likewise (may be negative)
      "size"    int   >= 0, files only: the number of content bytes
      "content" array of bin(32), files only: data blob ids, in file order
      "subtree" bin(32), dirs only: id of the folder's own tree blob
    Keys are written in the order above, so equal folders give equal bytes and dedup.
    Readers MUST ignore keys they do not know (later versions add link targets, xattrs,
    hardlink identity, device numbers as new keys) and MUST reject a known key of the
    wrong type, a bad name, or unsorted/duplicate names as a damaged object.

The tree is parsed from a repository that may be malicious, so every field is checked here,
once, and the layers above (restore above all) can trust a Node's name to be one path
component that cannot climb out of the folder it is restored into.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cairn.errors import DamagedObject
from cairn.repo import encoding

TREE_FORMAT = 1
FILE = "file"
DIR = "dir"
ID_SIZE = 32
_MAX_MODE = 0o7777


@dataclass
class Node:
    """One entry of a folder: its name, type, metadata and where its content is."""

    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime: int = 0
    atime: int = 0
    ctime: int = 0
    size: int = 0
    content: list[bytes] = field(default_factory=list)
    subtree: bytes | None = None


def name_error(name: object) -> str | None:
    """Why `name` cannot be one path component, or None when it can."""
    if not isinstance(name, bytes):
        return "name is not bytes"
    if name in (b"", b".", b".."):
        return f"name {name!r} is not allowed"
    if b"/" in name or b"\0" in name:
        return f"name {name!r} contains '/' or NUL"
    return None


def _entry(node: Node) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": node.name,
        "type": node.type,
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "user": node.user,
        "group": node.group,
        "mtime": node.mtime,
        "atime": node.atime,
        "ctime": node.ctime,
    }
    if node.type == FILE:
        entry["size"] = node.size
        entry["content"] = list(node.content)
    elif node.type == DIR:
        if node.subtree is None:
            raise ValueError(f"folder {node.name!r} has no subtree id")
        entry["subtree"] = node.subtree
    return entry


def encode_tree(nodes: list[Node]) -> bytes:
    """The tree blob for `nodes` (sorted here); refuses names a reader would reject."""
    ordered = sorted(nodes, key=lambda n: n.name)
    for i, node in enumerate(ordered):
        problem = name_error(node.name)
        if problem:
            raise ValueError(problem)
        if i and ordered[i - 1].name == node.name:
            raise ValueError(f"duplicate name {node.name!r}")
    return encoding.pack({"v": TREE_FORMAT, "entries": [_entry(n) for n in ordered]})


def _uint(entry: dict[str, Any], key: str, what: str, upper: int | None = None) -> int:
    value: int = encoding.field(entry, key, int, what)
    if value < 0 or (upper is not None and value > upper):
        raise DamagedObject(f"{what} is damaged: field {key!r} out of range")
    return value


def _blob_id(value: object, key: str, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != ID_SIZE:
        raise DamagedObject(f"{what} is damaged: {key!r} is not a blob id")
    return value


def _decode_entry(entry: object, what: str) -> Node:
    if not isinstance(entry, dict):
        raise DamagedObject(f"{what} is damaged: an entry is not a map")
    name = entry.get("name")
    problem = name_error(name)
    if problem:
        raise DamagedObject(f"{what} is damaged: {problem}")
    assert isinstance(name, bytes)
    where = f"{what}, entry {name!r}"
    node = Node(
        name=name,
        type=encoding.field(entry, "type", str, where),
        mode=_uint(entry, "mode", where, _MAX_MODE),
        uid=_uint(entry, "uid", where),
        gid=_uint(entry, "gid", where),
        user=encoding.field(entry, "user", str, where),
        group=encoding.field(entry, "group", str, where),
        mtime=encoding.field(entry, "mtime", int, where),
        atime=encoding.field(entry, "atime", int, where),
        ctime=encoding.field(entry, "ctime", int, where),
    )
    if not node.type:
        raise DamagedObject(f"{where} is damaged: empty type")
    if node.type == FILE:
        node.size = _uint(entry, "size", where)
        content = encoding.field(entry, "content", list, where)
        node.content = [_blob_id(c, "content", where) for c in content]
    elif node.type == DIR:
        node.subtree = _blob_id(entry.get("subtree"), "subtree", where)
    return node


def decode_tree(data: bytes, what: str) -> list[Node]:
    """Parse and check a tree blob; anything malformed raises DamagedObject naming `what`."""
    obj = encoding.unpack_map(data, what)
    if encoding.field(obj, "v", int, what) != TREE_FORMAT:
        raise DamagedObject(f"{what} has an unknown tree format {obj['v']}")
    entries = encoding.field(obj, "entries", list, what)
    nodes = [_decode_entry(e, what) for e in entries]
    for before, after in zip(nodes, nodes[1:]):
        if not before.name < after.name:
            raise DamagedObject(f"{what} is damaged: entries unsorted or duplicated at {after.name!r}")
    return nodes
