"""`cairn restore`: write a snapshot, or a file or folder inside it, under a target folder.

`ID:subpath` follows restic: a folder's *content* lands directly in the target (and the target
gets the folder's own metadata), a single file lands as target/name. Without a subpath the
snapshot's full paths are recreated under the target (target/home/u/docs for a backup of
/home/u/docs). Include/exclude patterns match paths inside the snapshot (/home/u/docs/a.txt)
whatever the subpath.

The files are restored even when some fail; the failures are then raised as one error at the
end, carrying the full result (`exc.result`) so the CLI can name each file: damaged data keeps
its own class and exit code (DamagedObject, ObjectMissing), a file the target refused (or
that --verify found different) is a PartialSuccess.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.errors import CairnError, NotFound, PartialSuccess, UsageError
from cairn.files import restorer
from cairn.files.restore_entries import ALWAYS, OVERWRITE_MODES
from cairn.files.restore_procs import writer_processes
from cairn.files.restore_select import Selection
from cairn.files.restorer import RestoreProgress, RestoreSettings, load_tree
from cairn.files.tree import DIR, Node
from cairn.repo.repository import Repository
from cairn.storage.stack import is_remote


@dataclass
class RestoreOptions:
    snapshot: str
    """`ID`, `ID:subpath`, `latest` or `latest:subpath`."""
    target: str
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    overwrite: str = ALWAYS
    """always | if-changed | if-newer | never (see files/restore_entries.decide)."""
    delete: bool = False
    """Remove what the target has and the restored part of the snapshot does not."""
    verify: bool = False
    """Read each written file back and compare it with the snapshot's blob ids."""
    sparse: bool = True


@dataclass
class RestoreResult:
    files: int
    dirs: int
    bytes_written: int
    duration: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    specials: int = 0
    links: int = 0
    deleted: int = 0
    verified: int = 0
    bytes_on_disk: int = 0
    warnings: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    """Exact numbers of skipped entries, warnings and errors (the lists stop at 1000)."""


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


def settings_for(options: RestoreOptions) -> RestoreSettings:
    """Check the options before anything is read or written."""
    if options.overwrite not in OVERWRITE_MODES:
        raise UsageError(f"--overwrite must be one of {', '.join(OVERWRITE_MODES)}, not {options.overwrite!r}")
    try:
        selection = Selection.from_patterns(options.include, options.exclude)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return RestoreSettings(overwrite=options.overwrite, delete=options.delete, verify=options.verify,
                           sparse=options.sparse, selection=selection)


def restore(
    repo: Repository, options: RestoreOptions, progress: Callable[[RestoreProgress], None] | None = None
) -> RestoreResult:
    """Restore; raises at the end when some files failed (see the module docstring)."""
    ref, _, subpath = options.snapshot.partition(":")
    if not options.target:
        raise UsageError("give a target folder to restore into")
    settings = settings_for(options)
    start = time.monotonic()
    with repo.lock(command="restore"):
        snap = repo.find_snapshot(ref)
        if snap.kind != "files":
            raise UsageError(f"snapshot {snap.short_id} is a {snap.kind} snapshot, not a files snapshot")
        node = find_node(repo, snap.root, subpath, snap.short_id)
        if node.type == DIR and not is_remote(repo.backend.properties.location) and hasattr(os, "fork"):
            settings.processes = writer_processes()  # see files/restore_procs
        where = b"/" + b"/".join(p for p in os.fsencode(subpath).split(b"/") if p not in (b"", b"."))
        where = where.rstrip(b"/")
        if node.type == DIR:
            assert node.subtree is not None
            top = None if node.name == b"." else node
            done = restorer.restore(repo, node.subtree, options.target, progress, settings, top, where)
        else:
            folder = where.rsplit(b"/", 1)[0]
            done = restorer.restore_nodes(repo, [node], options.target, progress, settings, folder)
    result = RestoreResult(
        files=done.files, dirs=done.dirs, bytes_written=done.bytes_written, duration=time.monotonic() - start,
        skipped=done.skipped, unchanged=done.unchanged, specials=done.specials, links=done.links,
        deleted=done.deleted, verified=done.verified, bytes_on_disk=done.bytes_on_disk,
        warnings=done.warnings, errors=done.errors, notes=done.notes, counts=dict(done.counts),
    )
    if done.errors:
        path, reason = done.errors[0]
        count = done.counts["errors"]
        text = f"{path}: {reason}" + (f" (and {count - 1} more file(s) not restored correctly)" if count > 1 else "")
        exc: CairnError = (type(done.damage) if done.damage else PartialSuccess)(text)
        exc.result = result  # type: ignore[attr-defined]
        raise exc
    return result
