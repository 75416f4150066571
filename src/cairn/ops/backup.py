"""`cairn backup`: store files and folders as a new `files` snapshot.

The snapshot is written last, after the data and the index (see Repository), so an interrupted
backup leaves a consistent repository whose uploaded blobs the next backup reuses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.errors import UsageError
from cairn.version import __version__
from cairn.files.archiver import ArchiveProgress, archive
from cairn.repo import identity
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot

# The snapshot lists at most this many skipped paths (the count is always exact), so a folder
# of a million unreadable files cannot make the snapshot object huge.
MAX_SKIPPED_RECORDED = 1000


@dataclass
class BackupOptions:
    paths: list[str]
    host: str | None = None
    tags: list[str] = field(default_factory=list)
    dry_run: bool = False


@dataclass
class BackupResult:
    snapshot_id: bytes | None
    """None for a dry run."""
    files: int
    dirs: int
    bytes_read: int
    bytes_added: int
    duration: float
    skipped: list[tuple[str, str]]
    """(path, reason) of what could not be read; non-empty means the CLI exits with code 3."""


def program() -> str:
    return f"cairn {__version__}"


def backup(
    repo: Repository, options: BackupOptions, progress: Callable[[ArchiveProgress], None] | None = None
) -> BackupResult:
    """Back up `options.paths`; every path must exist, checked before anything is written."""
    if not options.paths:
        raise UsageError("nothing to back up: give at least one file or folder")
    for path in options.paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or directory")
    started_ns = time.time_ns()
    start = time.monotonic()
    with repo.lock(command="backup"):
        result = archive(repo, options.paths, progress, dry_run=options.dry_run)
        snapshot_id = None
        duration = time.monotonic() - start
        if not options.dry_run:
            repo.flush()
            summary = {
                "files": result.files,
                "dirs": result.dirs,
                "bytes_read": result.bytes_read,
                "bytes_added": result.bytes_added,
                "blobs_new": result.blobs_new,
                "duration": duration,
                "skipped_count": len(result.skipped),
                # paths as bytes: a non-UTF-8 name cannot be a msgpack string
                "skipped": [[os.fsencode(p), why] for p, why in result.skipped[:MAX_SKIPPED_RECORDED]],
            }
            snapshot = Snapshot(
                kind="files",
                root=result.root,
                paths=[os.fsencode(os.path.abspath(p)) for p in options.paths],
                host=options.host or identity.hostname(),
                user=identity.username(),
                time_ns=started_ns,
                tz_offset=time.localtime(started_ns // 1_000_000_000).tm_gmtoff,
                tags=list(options.tags),
                summary=summary,
                program=program(),
            )
            snapshot_id = repo.save_snapshot(snapshot)
    return BackupResult(
        snapshot_id=snapshot_id,
        files=result.files,
        dirs=result.dirs,
        bytes_read=result.bytes_read,
        bytes_added=result.bytes_added,
        duration=duration,
        skipped=result.skipped,
    )
