"""`cairn restore`: write a snapshot, or a file or folder inside it, under a target folder.

`ID:subpath` follows restic: a folder's *content* lands directly in the target, a single file
lands as target/name. Without a subpath the snapshot's full paths are recreated under the
target (target/home/u/docs for a backup of /home/u/docs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.errors import NotFound, UsageError
from cairn.files import restorer
from cairn.files.restorer import RestoreProgress, load_tree
from cairn.files.tree import DIR, Node
from cairn.repo.repository import Repository


@dataclass
class RestoreOptions:
    snapshot: str
    """`ID`, `ID:subpath`, `latest` or `latest:subpath`."""
    target: str


@dataclass
class RestoreResult:
    files: int
    dirs: int
    bytes_written: int
    duration: float
    skipped: list[tuple[str, str]] = field(default_factory=list)


def find_node(repo: Repository, root: bytes, subpath: str, ref: str) -> Node:
    """The entry at `subpath` (absolute or not) below the tree `root`."""
    parts = [p for p in os.fsencode(subpath).split(b"/") if p not in (b"", b".")]
    if not parts:
        return Node(name=b".", type=DIR, subtree=root)
    tree, walked = root, b""
    for i, part in enumerate(parts):
        walked += b"/" + part
        found = next((n for n in load_tree(repo, tree) if n.name == part), None)
        if found is None:
            raise NotFound(f"snapshot {ref} has no {os.fsdecode(walked)}")
        if i == len(parts) - 1:
            return found
        if found.type != DIR or found.subtree is None:
            raise NotFound(f"snapshot {ref}: {os.fsdecode(walked)} is not a folder")
        tree = found.subtree
    raise AssertionError("unreachable")


def restore(
    repo: Repository, options: RestoreOptions, progress: Callable[[RestoreProgress], None] | None = None
) -> RestoreResult:
    ref, _, subpath = options.snapshot.partition(":")
    if not options.target:
        raise UsageError("give a target folder to restore into")
    start = time.monotonic()
    with repo.lock(command="restore"):
        snap = repo.find_snapshot(ref)
        if snap.kind != "files":
            raise UsageError(f"snapshot {snap.short_id} is a {snap.kind} snapshot, not a files snapshot")
        node = find_node(repo, snap.root, subpath, snap.short_id)
        if node.type == DIR:
            assert node.subtree is not None
            result = restorer.restore(repo, node.subtree, options.target, progress)
        else:
            result = restorer.restore_nodes(repo, [node], options.target, progress)
    return RestoreResult(
        files=result.files,
        dirs=result.dirs,
        bytes_written=result.bytes_written,
        duration=time.monotonic() - start,
        skipped=result.skipped,
    )
