"""Snapshot objects: small, sealed records of one backup or image, written last."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import DamagedObject
from cairn.repo import encoding

SNAPSHOT_FORMAT = 1
KINDS = ("files", "image")


@dataclass
class Snapshot:
    """One point in time of a tree of files (`files`) or of a disk (`image`)."""

    kind: str
    root: bytes
    paths: list[bytes]
    host: str
    user: str
    time_ns: int = field(default_factory=time.time_ns)
    tz_offset: int = 0
    """Seconds east of UTC where the snapshot was taken (retention buckets use local time)."""
    tags: list[str] = field(default_factory=list)
    parent: bytes | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    program: str = ""
    original: bytes | None = None
    """Optional: the snapshot this one replaces or copies (`tag`, `copy`, `repair snapshots`
    write new objects), followed back to the first; None for one a backup wrote."""
    id: bytes = b""
    """The object id; set when saved or loaded, not stored inside the object."""

    @property
    def short_id(self) -> str:
        return self.id.hex()[:8]

    @property
    def display_paths(self) -> list[str]:
        return [os.fsdecode(p) for p in self.paths]


def encode(snap: Snapshot) -> bytes:
    body: dict[str, Any] = {
        "v": SNAPSHOT_FORMAT,
        "kind": snap.kind,
        "root": snap.root,
        "paths": snap.paths,
        "host": snap.host,
        "user": snap.user,
        "time": snap.time_ns,
        "tz": snap.tz_offset,
        "tags": snap.tags,
        "parent": snap.parent,
        "summary": snap.summary,
        "program": snap.program,
    }
    if snap.original is not None:
        body["original"] = snap.original  # optional key: absent, the object is as before
    return encoding.pack(body)


def decode(plaintext: bytes, snapshot_id: bytes) -> Snapshot:
    what = f"snapshot {snapshot_id.hex()[:8]}"
    obj = encoding.unpack_map(plaintext, what)
    if encoding.field(obj, "v", int, what) != SNAPSHOT_FORMAT:
        raise DamagedObject(f"{what} has an unknown snapshot format")
    kind = encoding.field(obj, "kind", str, what)
    root = encoding.field(obj, "root", bytes, what)
    paths = encoding.field(obj, "paths", list, what)
    tags = encoding.field(obj, "tags", list, what)
    parent = obj.get("parent")
    original = obj.get("original")
    if (
        kind not in KINDS or len(root) != 32
        or not all(isinstance(p, bytes) for p in paths)
        or not all(isinstance(t, str) for t in tags)
        or not (parent is None or (isinstance(parent, bytes) and len(parent) == 32))
        or not (original is None or (isinstance(original, bytes) and len(original) == 32))
    ):
        raise DamagedObject(f"{what} is damaged: malformed fields")
    return Snapshot(
        kind=kind,
        root=root,
        paths=paths,
        host=encoding.field(obj, "host", str, what),
        user=encoding.field(obj, "user", str, what),
        time_ns=encoding.field(obj, "time", int, what),
        tz_offset=encoding.field(obj, "tz", int, what),
        tags=tags,
        parent=parent,
        summary=encoding.field(obj, "summary", dict, what),
        program=encoding.field(obj, "program", str, what),
        original=original,
        id=snapshot_id,
    )
