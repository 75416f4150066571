"""`cairn backup`: store files and folders (or a stream) as a new `files` snapshot.

The snapshot is written last, after the data and the index (see Repository), so an interrupted
backup leaves a consistent repository whose uploaded blobs the next backup reuses. The parent
(the snapshot compared against, so unchanged files are not read) is `options.parent`, else the
latest snapshot of the same host and the same paths taken no later than this one's time; a
checkpoint left by an interrupted run of the same backup comes before it (files/checkpoint.py),
and the packs that run stored after its last index object are adopted (repo/adopt.py), so
neither the files it saved are read again nor the data it uploaded is uploaded again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cairn.errors import UsageError
from cairn.files.archiver import ArchiveOptions, ArchiveResult, BackupStatus, archive
from cairn.files.checkpoint import Checkpoint, CheckpointStore, cache_root
from cairn.files.chunker import RawReader
from cairn.files.excludes import ExcludeOptions, Excluder
from cairn.files.filescache import ParentTrees
from cairn.files.foldercache import FolderCache, FolderRecord, fingerprint
from cairn.files.pipeline_procs import worker_processes
from cairn.files.scanner import start_prescan
from cairn.files.stream import archive_stream, stream_path
from cairn.files.verified import VerifiedSnapshots
from cairn.repo import identity
from cairn.repo.adopt import Adopted, adopt
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.version import __version__

KILL_AFTER_PACKS_ENV = "CAIRN_TEST_BACKUP_KILL_AFTER_PACKS"
"""Test hook: kill this process with SIGKILL once that many packs are stored and not yet
named by an index object (a crash between two index writes)."""

# The snapshot lists at most this many skipped paths (the count is always exact), so a folder
# of a million unreadable files cannot make the snapshot object huge.
MAX_SKIPPED_RECORDED = 1000


@dataclass
class BackupOptions:
    paths: list[str]
    host: str | None = None
    tags: list[str] = field(default_factory=list)
    dry_run: bool = False
    parent: str | None = None
    """Snapshot to compare against (id, prefix or `latest`); None picks one automatically."""
    force: bool = False
    """Read every file, using no parent."""
    time: datetime | None = None
    """The snapshot's time (imports, tests); a naive datetime is local time. Default: now."""
    excludes: ExcludeOptions = field(default_factory=ExcludeOptions)
    one_file_system: bool = False
    stdin_filename: str | None = None
    """Back up `stdin` (or the output of `stdin_command`) as this file instead of `paths`."""
    stdin: RawReader | None = None
    stdin_command: list[str] | None = None
    checkpoint_interval: float = 300.0
    cache_dir: Path | str | None = None
    """Where checkpoint pointers and verified-snapshot records live (default: the user's cache
    folder, $XDG_CACHE_HOME/cairn)."""
    scan_totals: bool = False
    """Count files and bytes first, in parallel, so progress can show an ETA."""
    stop: threading.Event | None = None
    """Set it to save a checkpoint and stop (KeyboardInterrupt is raised)."""


@dataclass
class BackupResult:
    snapshot_id: bytes | None
    """None for a dry run."""
    parent_id: bytes | None
    files: int
    dirs: int
    bytes_read: int
    bytes_added: int
    duration: float
    skipped: list[tuple[str, str]]
    """(path, reason) of what could not be read; non-empty means the CLI exits with code 3."""
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unchanged: int = 0
    bytes_total: int = 0
    warnings: list[tuple[str, str]] = field(default_factory=list)
    resumed: bool = False
    """A checkpoint of an interrupted run was used."""
    adopted_packs: int = 0
    adopted_bytes: int = 0
    """Packs (and their stored bytes) an interrupted run uploaded, reused instead of uploaded again."""


def program() -> str:
    return f"cairn {__version__}"


def snapshot_time(when: datetime | None) -> tuple[int, int]:
    """(ns since the epoch, seconds east of UTC) of `when` (local time if naive) or now."""
    if when is None:
        now = time.time_ns()
        return now, time.localtime(now // 1_000_000_000).tm_gmtoff
    aware = when if when.tzinfo is not None else when.astimezone()
    offset = aware.utcoffset()
    seconds = int(aware.timestamp())
    return seconds * 1_000_000_000 + aware.microsecond * 1000, int(offset.total_seconds()) if offset else 0


def parse_time(text: str) -> datetime:
    """ISO 8601 (``2024-05-01T12:00:00+02:00``, ``...Z``) or ``YYYY-MM-DD HH:MM:SS[.fff]``."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{text!r} is not a time: use ISO 8601 or 'YYYY-MM-DD HH:MM:SS'") from None


def find_parent(repo: Repository, host: str, paths: list[bytes], not_after: int) -> Snapshot | None:
    """The latest files snapshot of `host` with exactly `paths`, taken no later than `not_after`."""
    wanted = sorted(paths)
    found = None
    for snap in repo.list_snapshots():
        if snap.kind == "files" and snap.host == host and sorted(snap.paths) == wanted and snap.time_ns <= not_after:
            found = snap
    return found


def _check_paths(options: BackupOptions) -> list[bytes]:
    if options.stdin_filename is not None:
        if options.paths:
            raise UsageError("give either paths or --stdin/--stdin-from-command, not both")
        return [b"/" + b"/".join(stream_path(options.stdin_filename))]
    if not options.paths:
        raise UsageError("nothing to back up: give at least one file or folder")
    for path in options.paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or directory")
    return [os.fsencode(os.path.abspath(p)) for p in options.paths]


def backup(
    repo: Repository, options: BackupOptions, progress: Callable[[BackupStatus], None] | None = None
) -> BackupResult:
    """Back up `options.paths`; every path must exist, checked before anything is written."""
    paths = _check_paths(options)
    excluder = Excluder(options.excludes)
    host = options.host or identity.hostname()
    time_ns, tz_offset = snapshot_time(options.time)
    start = time.monotonic()
    with repo.lock(command="backup"):
        parent = None
        if options.parent is not None:
            parent = repo.find_snapshot(options.parent)
            if parent.kind != "files":
                raise UsageError(f"snapshot {parent.short_id} is a {parent.kind} snapshot, not a files snapshot")
        elif not options.force and options.stdin_filename is None:
            parent = find_parent(repo, host, paths, time_ns)
        cache = Path(options.cache_dir) if options.cache_dir is not None else cache_root()
        store = CheckpointStore(repo.config.id, host, paths, cache)
        verified = VerifiedSnapshots(repo, cache)
        folders = FolderCache(repo, cache)
        settings = fingerprint(program(), paths, (options.excludes, options.one_file_system))
        resumed = None if options.force or options.stdin_filename is not None else store.load()
        with _pack_journal(repo, store, options.dry_run) as adopted:
            if options.stdin_filename is not None:
                source: RawReader | list[str] | None = options.stdin_command or options.stdin
                if source is None:
                    raise UsageError("--stdin needs a stream to read")
                result = archive_stream(repo, source, options.stdin_filename, time_ns, options.dry_run)
            else:
                relied = verified.still_indexed(parent.id) if parent is not None and resumed is None else None
                for pack_id in relied or ():
                    repo.relied.rely(pack_id)  # what the skipped index lookups would have declared
                # Whole folders are kept without reading the parent's trees only where the
                # per-file index check would be skipped too (foldercache.py).
                records = folders.load(parent.id, settings) \
                    if relied is not None and parent is not None and parent.program == program() else None
                result = _archive_files(repo, options, paths, excluder, parent, resumed, relied is not None, records,
                                        store, progress)
            duration = time.monotonic() - start
            snapshot_id = None
            if not options.dry_run:
                repo.flush()
                snapshot = Snapshot(
                    kind="files", root=result.root, paths=paths, host=host, user=identity.username(),
                    time_ns=time_ns, tz_offset=tz_offset, tags=list(options.tags),
                    parent=parent.id if parent is not None else None,
                    summary=_summary(result, duration, resumed is not None), program=program(),
                )
                snapshot_id = repo.save_snapshot(snapshot)
                store.clear()
                verified.record(snapshot_id, repo.relied.relied, previous=parent.id if parent is not None else None)
                if options.stdin_filename is None:
                    folders.save(snapshot_id, settings, result.folders, result.owners,
                                 previous=parent.id if parent is not None else None)
    return BackupResult(
        snapshot_id=snapshot_id, parent_id=parent.id if parent is not None else None,
        files=result.files, dirs=result.dirs, bytes_read=result.bytes_read, bytes_added=result.bytes_added,
        duration=duration, skipped=result.skipped, files_new=result.files_new, files_changed=result.files_changed,
        files_unchanged=result.files_unchanged, dirs_new=result.dirs_new, dirs_changed=result.dirs_changed,
        dirs_unchanged=result.dirs_unchanged, bytes_total=result.bytes_total,
        warnings=adopted.warnings() + result.warnings,
        resumed=resumed is not None, adopted_packs=adopted.packs, adopted_bytes=adopted.bytes,
    )


@contextmanager
def _pack_journal(repo: Repository, store: CheckpointStore, dry_run: bool) -> Iterator[Adopted]:
    """Adopt the packs an interrupted run left unindexed, then journal ours until the snapshot
    is saved (files/checkpoint.py, repo/adopt.py). A dry run writes nothing, so adopts nothing."""
    if dry_run:
        yield Adopted()
        return
    journal = store.journal()
    adopted = adopt(repo, journal.load())
    journal.save([])  # what it named is indexed now, or is uploaded again
    kill_after = int(os.environ.get(KILL_AFTER_PACKS_ENV) or 0)

    def note(unindexed: list[bytes]) -> None:
        journal.save(unindexed)
        if kill_after and len(unindexed) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    repo.pack_listener = note
    ok = False
    try:
        yield adopted
        ok = True
    finally:
        repo.pack_listener = None
        if ok:
            journal.clear()


def _archive_files(
    repo: Repository, options: BackupOptions, paths: list[bytes], excluder: Excluder, parent: Snapshot | None,
    resumed: Checkpoint | None, indexed: bool, records: dict[bytes, FolderRecord] | None, store: CheckpointStore,
    progress: Callable[[BackupStatus], None] | None,
) -> ArchiveResult:
    roots, programs = [], []
    if resumed is not None:
        roots.append(resumed.tree)
        programs.append(resumed.program)
    if parent is not None:
        roots.append(parent.root)
        programs.append(parent.program)
    parents = ParentTrees(repo, roots, shortcut=all(p == program() for p in programs), indexed=indexed)

    def on_checkpoint(tree: bytes) -> None:
        store.save(Checkpoint(tree, program(), time.time_ns()))

    status = BackupStatus()
    stop_scan = None
    if options.scan_totals:
        status.totals, stop_scan = start_prescan(paths, excluder, options.one_file_system)
    archive_options = ArchiveOptions(
        excluder=excluder, one_file_system=options.one_file_system, dry_run=options.dry_run,
        checkpoint_interval=options.checkpoint_interval, on_checkpoint=on_checkpoint, stop=options.stop,
        processes=worker_processes() if repo.backend.properties.shared_with_forks and hasattr(os, "fork") else 0,
        folder_cache=records,
    )
    try:
        result = archive(repo, [os.fsdecode(p) for p in paths], progress, archive_options, parents, status)
    finally:
        if stop_scan is not None:
            stop_scan.set()
    result.warnings[:0] = [("", problem) for problem in parents.problems]
    return result


def _summary(result: ArchiveResult, duration: float, resumed: bool) -> dict[str, Any]:
    return {
        "files": result.files,
        "files_new": result.files_new,
        "files_changed": result.files_changed,
        "files_unchanged": result.files_unchanged,
        "dirs": result.dirs,
        "dirs_new": result.dirs_new,
        "dirs_changed": result.dirs_changed,
        "dirs_unchanged": result.dirs_unchanged,
        "others": result.others,
        "excluded": result.excluded,
        "bytes_total": result.bytes_total,
        "bytes_read": result.bytes_read,
        "bytes_added": result.bytes_added,
        "blobs_new": result.blobs_new,
        "duration": duration,
        "resumed_from_checkpoint": resumed,
        "skipped_count": len(result.skipped),
        # paths as bytes: a non-UTF-8 name cannot be a msgpack string
        "skipped": [[os.fsencode(p), why] for p, why in result.skipped[:MAX_SKIPPED_RECORDED]],
    }
