"""What `ls`, `find`, `diff` and `dump` share: picking ``SNAP[:PATH]`` and describing an entry.

An `Entry` is a path and its tree node. Its JSON form and its display path are defined here, once,
so the four commands print the same entry the same way:

- A path for people (`display`) is the name's UTF-8 text with anything that could mislead or
  break a terminal escaped: bytes that are not UTF-8 as ``\\xNN``, control characters (a newline
  in a name would fake a second entry) as ``\\n``, ``\\t``, ``\\xNN``, and the backslash itself as
  ``\\\\`` so the escaping can be undone without ambiguity.
- In JSON, ``path`` and ``name`` are the exact text when the bytes are UTF-8; when they are not,
  they hold the escaped text and ``path_hex``/``name_hex`` the exact bytes, since a JSON string
  cannot carry arbitrary bytes.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cairn.errors import UsageError
from cairn.files.tree import Node
from cairn.files.walk import TreeLoader, normalize, resolve, split_ref
from cairn.ops.cat import jsonable
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot

_TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
    "socket": stat.S_IFSOCK,
}
# Control characters (C0, DEL, C1) to their escapes; everything else printable stays as is.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_ESCAPES.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})
# Fields `Entry.to_json` writes itself (or leaves out: content ids are not metadata).
_OWN_FIELDS = {"name", "type", "mode", "uid", "gid", "user", "group", "size", "mtime", "atime", "ctime",
               "content", "subtree", "target", "rdev", "xattrs", "links"}


def display(raw: bytes) -> str:
    """`raw` (a name or path) as unambiguous, terminal-safe text; see the module docstring."""
    text = raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return text.translate(_ESCAPES)


def _text(raw: bytes) -> tuple[str, str | None]:
    """(text, hex): the exact text and no hex for UTF-8 bytes, else escaped text and hex."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return display(raw), raw.hex()


def mode_string(node: Node) -> str:
    """``-rw-r--r--``, ``drwxr-xr-x``, ``lrwxrwxrwx``, with setuid/setgid/sticky as ``ls`` shows."""
    bits = _TYPE_BITS.get(node.type)
    if bits is None:
        return "?" + stat.filemode(stat.S_IFREG | node.mode)[1:]
    return stat.filemode(bits | node.mode)


def iso_time(ns: int) -> str:
    """A time in ns as ISO 8601 in the local zone with all nine digits: nothing is rounded away."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, tz=timezone.utc).astimezone()
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}" + when.isoformat()[19:]


@dataclass(frozen=True)
class Entry:
    """One entry of a snapshot: its absolute path inside the snapshot and its tree node."""

    path: bytes
    node: Node

    @property
    def display_path(self) -> str:
        return display(self.path)

    def to_json(self) -> dict[str, Any]:
        """Every piece of metadata the node has, including fields added by later tree versions."""
        node = self.node
        out: dict[str, Any] = {}
        out["path"], path_hex = _text(self.path)
        if path_hex is not None:
            out["path_hex"] = path_hex
        out["name"], name_hex = _text(node.name)
        if name_hex is not None:
            out["name_hex"] = name_hex
        out.update(
            type=node.type, mode=node.mode, permissions=mode_string(node), uid=node.uid, gid=node.gid,
            user=node.user, group=node.group,
        )
        if node.type == "file":
            out["size"] = node.size
            out["blobs"] = len(node.content)
        for key in ("mtime", "atime", "ctime"):
            ns = getattr(node, key)
            out[key] = iso_time(ns)
            out[key + "_ns"] = ns
        if node.subtree is not None:
            out["subtree"] = node.subtree.hex()
        if node.target is not None:
            out["target"], target_hex = _text(node.target)
            if target_hex is not None:
                out["target_hex"] = target_hex
        if node.rdev is not None:
            out.update(rdev=node.rdev, major=os.major(node.rdev), minor=os.minor(node.rdev))
        if node.xattrs:
            out["xattrs"] = [_xattr_json(name, value) for name, value in node.xattrs]
        if node.links is not None:
            dev, ino, nlink = node.links
            out["links"] = {"dev": dev, "inode": ino, "nlink": nlink}
        for f in dataclasses.fields(node):  # fields a later tree version adds, generically
            if f.name not in _OWN_FIELDS:
                value = getattr(node, f.name)
                if value not in (None, b"", [], {}, ()):
                    out[f.name] = jsonable(value)
        return out


def _xattr_json(name: bytes, value: bytes) -> dict[str, str]:
    """``{"name": ..., "value": ...}`` with the value as text when it is printable UTF-8 (most
    ``user.*`` attributes), else ``"value_hex"`` (ACLs, capabilities, binary data)."""
    out = {"name": name.decode("utf-8", "backslashreplace")}
    text, value_hex = _text(value)
    if value_hex is None and text.isprintable():
        out["value"] = text
    else:
        out["value_hex"] = value.hex()
    return out


@dataclass(frozen=True)
class Selection:
    """What ``SNAP[:PATH]`` named: the snapshot, the normalized path and the entry there."""

    snapshot: Snapshot
    path: bytes
    node: Node


def files_snapshot(repo: Repository, ref: str) -> Snapshot:
    """The snapshot `ref` names (an id, a prefix or `latest`), which must be a files snapshot."""
    snap = repo.find_snapshot(ref)
    if snap.kind != "files":
        article = "an" if snap.kind[:1] in ("a", "e", "i", "o", "u") else "a"
        raise UsageError(f"snapshot {snap.short_id} is {article} {snap.kind} snapshot, not a files snapshot")
    return snap


def select(repo: Repository, loader: TreeLoader, text: str, path: str | None = None) -> Selection:
    """Resolve ``SNAP[:PATH]`` and, when given, a further `path` inside it."""
    return select_paths(repo, loader, text, [path] if path else [])[0]


def select_paths(repo: Repository, loader: TreeLoader, text: str, paths: list[str]) -> list[Selection]:
    """Resolve ``SNAP[:PATH]``, then each of `paths` inside it (none: the selection itself).

    The snapshot is looked up once, so ``latest`` means one snapshot for all the paths even
    if a backup finishes meanwhile.
    """
    ref, subpath = split_ref(text)
    snap = files_snapshot(repo, ref)
    result = []
    for path in paths or [""]:
        joined = subpath.rstrip("/") + "/" + path if subpath and path else subpath or path
        where = normalize(joined)
        node = resolve(loader, snap.root, where, f"snapshot {snap.short_id}")
        result.append(Selection(snap, where, node))
    return result
