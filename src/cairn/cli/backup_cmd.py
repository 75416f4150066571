"""`cairn backup PATH...`: save files and folders (or a stream) as a new snapshot.

Flags follow restic's names where restic has the feature, so scripts and habits carry over.
Progress (a live line on a terminal, JSON lines with --json) is drawn from the archiver's
counters by a timer thread, never by the walk itself: per-entry printing would cost more than
backing up a small file.
"""

from __future__ import annotations

import ctypes
import gc
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.notices import created_default_notice
from cairn.cli.output import Output, human_duration, human_size, is_terminal
from cairn.errors import PartialSuccess, UsageError
from cairn.ops import access

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*")
# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_malloc() -> None:
    """Keep RSS near what the backup holds; called before any thread starts (the key
    derivation's included). Measured on 1.3 GB of /usr (48,600 files): peak RSS 190-210 MB
    with glibc's defaults, 145-155 MB with these, at the same CPU time.

    - M_MMAP_THRESHOLD 1 MiB: glibc raises its mmap threshold each time a big block is freed
      (up to 32 MiB), after which 1-16 MiB chunk and pack buffers come from the heap, and the
      heap keeps their memory when they are freed out of order (mallinfo2: 71 MiB free of 105
      MiB at the peak). Fixed, big buffers are mapped and unmapped on their own.
    - M_TRIM_THRESHOLD 32 MiB: fixing the first turns the trim threshold back to 128 KiB, which
      returns and refaults the top of the heap constantly (+2 s of system time).
    - M_ARENA_MAX 2: one arena per concurrently allocating thread multiplies the free memory.
      MALLOC_ARENA_MAX in the environment would come too late (glibc reads it at startup);
      mallopt applies to the arenas created after the call.

    Harmless where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 32 << 20)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


@contextmanager
def fewer_collections() -> Iterator[None]:
    """The garbage collector during a backup: the objects from imports frozen out of its scans,
    and a run every 20,000 allocations rather than 700 (a backup allocates millions of
    short-lived objects and builds no cycles worth collecting often: about 5 % of CPU time).
    Restored afterwards, so it does not outlive the command in a process that goes on."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def parse_duration(text: str) -> float:
    """``300``, ``30s``, ``5m``, ``1.5h`` -> seconds; ``0`` turns checkpoints off."""
    match = _DURATION.fullmatch(text.lower())
    if not match:
        raise UsageError(f"{text!r} is not a duration: use e.g. 30s, 5m or 1h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


def _split_tags(values: tuple[str, ...]) -> list[str]:
    return [t for value in values for t in value.split(",") if t]


class _Progress:
    """Keeps the archiver's live status and turns it into a line or a JSON status message."""

    def __init__(self) -> None:
        self.status: Any = None

    def __call__(self, status: Any) -> None:
        self.status = status

    def _eta(self) -> tuple[float, float | None, float | None]:
        s = self.status
        elapsed = max(time.monotonic() - s.started, 1e-6)
        totals = s.totals
        if totals is None or not totals.done or not totals.bytes:
            return elapsed, None, None
        fraction = min(s.bytes_done / totals.bytes, 1.0)
        rate = s.bytes_done / elapsed
        remaining = (totals.bytes - s.bytes_done) / rate if rate > 0 else None
        return elapsed, fraction, remaining

    def line(self) -> str | None:
        s = self.status
        if s is None:
            return None
        elapsed, fraction, remaining = self._eta()
        parts = [f"[{human_duration(elapsed)}]"]
        if fraction is not None:
            parts.append(f"{fraction * 100:.1f}%")
        total = f" of {s.totals.files:,}" if fraction is not None else ""
        parts.append(f"{s.files:,}{total} files, {human_size(s.bytes_done)}, {human_size(s.bytes_done / elapsed)}/s")
        if remaining is not None:
            parts.append(f"ETA {human_duration(remaining)}")
        if s.skipped:
            parts.append(f"{s.skipped} skipped")
        return " ".join(parts) + "  " + s.path

    def json(self) -> dict[str, Any] | None:
        s = self.status
        if s is None:
            return None
        elapsed, fraction, remaining = self._eta()
        data: dict[str, Any] = {"message_type": "status", "seconds_elapsed": int(elapsed)}
        if remaining is not None:
            data["seconds_remaining"] = int(remaining)
        data["percent_done"] = fraction if fraction is not None else 0
        if s.totals is not None:
            data.update(total_files=s.totals.files, total_bytes=s.totals.bytes)
        data.update(files_done=s.files, bytes_done=s.bytes_done, error_count=s.skipped, current_files=[s.path])
        return data


@contextmanager
def _stop_on_signals(out: Output) -> Iterator[threading.Event]:
    """The first Ctrl-C (or SIGTERM) asks for a checkpoint and a clean stop; a second one
    stops at once. Both leave the repository consistent."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        out.notice("cairn: stopping after a checkpoint; press Ctrl-C again to stop at once")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@click.command("backup")
@global_options
@click.argument("paths", nargs=-1, type=click.Path(), metavar="PATH...")
@click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]", help="Tag the snapshot (repeatable).")
@click.option("--host", metavar="HOST", help="Record HOST instead of this machine's name (also picks the parent).")
@click.option("--time", "when", metavar="TIME", help="Record TIME as the snapshot's time (ISO 8601 or 'YYYY-MM-DD HH:MM:SS').")
@click.option("--parent", metavar="SNAPSHOT", help="Compare against SNAPSHOT (default: latest of this host and paths).")
@click.option("--force", is_flag=True, help="Read every file again, ignoring the parent snapshot.")
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="PATTERN", help="Leave out what matches PATTERN (repeatable): a glob on the absolute path with * ? [...] "
                   "and ** across folders; a leading / anchors it at the root, else it matches at any depth.")
@click.option("--iexclude", "iexcludes", multiple=True, metavar="PATTERN", help="Like --exclude, ignoring case.")
@click.option("--exclude-file", "exclude_files", multiple=True, metavar="FILE", help="Read --exclude patterns from FILE.")
@click.option("--iexclude-file", "iexclude_files", multiple=True, metavar="FILE", help="Read --iexclude patterns from FILE.")
@click.option("--exclude-if-present", "if_present", multiple=True, metavar="NAME[:HEADER]",
              help="Leave out folders holding NAME (starting with HEADER, if given).")
@click.option("--exclude-caches", is_flag=True, help="Leave out folders holding a valid CACHEDIR.TAG.")
@click.option("--exclude-larger-than", "larger_than", metavar="SIZE", help="Leave out files bigger than SIZE (e.g. 500k, 2G).")
@click.option("-x", "--one-file-system", is_flag=True, help="Stay on the filesystems of the given paths; mount points are kept empty.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Back up standard input as one file.")
@click.option("--stdin-filename", default="stdin", show_default=True, metavar="NAME", help="File name for --stdin data.")
@click.option("--stdin-from-command", is_flag=True,
              help="Run the command given as arguments (after --) and back up its output; a failing command saves nothing.")
@click.option("--checkpoint-interval", default="5m", show_default=True, metavar="DURATION",
              help="Save progress this often so an interrupted backup resumes (0: never).")
@click.option("-n", "--dry-run", is_flag=True, help="Read everything and report what would be added; save nothing.")
@pass_state
def command(state: State, paths: tuple[str, ...], tags: tuple[str, ...], host: str | None, when: str | None,
            parent: str | None, force: bool, excludes: tuple[str, ...], iexcludes: tuple[str, ...],
            exclude_files: tuple[str, ...], iexclude_files: tuple[str, ...], if_present: tuple[str, ...],
            exclude_caches: bool, larger_than: str | None, one_file_system: bool, use_stdin: bool,
            stdin_filename: str, stdin_from_command: bool, checkpoint_interval: str, dry_run: bool) -> None:
    """Back up files and folders.

    Each run saves PATHs as a new snapshot, reading only the files that changed since the
    previous snapshot of the same paths on this host. Without -r or $CAIRN_REPOSITORY the
    default repository is used, and created on first use. Exits with 3 if some files could not
    be read (the snapshot is saved without them).
    """
    tune_malloc()
    from cairn.files.excludes import ExcludeOptions, parse_size, read_pattern_file  # the files layer is heavy
    from cairn.files.chunker import RawReader
    from cairn.ops.backup import BackupOptions, backup, parse_time

    out = state.output
    stream = use_stdin or stdin_from_command
    if stream and use_stdin and stdin_from_command:
        raise UsageError("give --stdin or --stdin-from-command, not both")
    if use_stdin and paths:
        raise UsageError("give either paths or --stdin, not both")
    if use_stdin and is_terminal(sys.stdin):
        raise UsageError("--stdin reads standard input, which is a terminal: pipe the data in")
    if not paths and not use_stdin:
        raise UsageError("nothing to back up: give at least one file or folder" if not stream
                         else "--stdin-from-command needs a command to run after --")
    exclude_options = ExcludeOptions(
        patterns=[*excludes, *(p for f in exclude_files for p in read_pattern_file(f))],
        ipatterns=[*iexcludes, *(p for f in iexclude_files for p in read_pattern_file(f))],
        if_present=list(if_present), caches=exclude_caches,
        larger_than=parse_size(larger_than) if larger_than is not None else None,
    )
    options = BackupOptions(
        paths=[] if stream else list(paths), host=host, tags=_split_tags(tags), dry_run=dry_run, parent=parent,
        force=force, time=parse_time(when) if when is not None else None, excludes=exclude_options,
        one_file_system=one_file_system, stdin_filename=stdin_filename if stream else None,
        stdin=cast(RawReader, sys.stdin.buffer) if use_stdin else None, stdin_command=list(paths) if stdin_from_command else None,
        checkpoint_interval=parse_duration(checkpoint_interval),
        scan_totals=out.json_mode or (not out.quiet and is_terminal(sys.stderr)),
    )
    repo, created = access.ensure_repository(state.selection(), create_default=not dry_run)
    location = repo.backend.properties.location
    if created:
        out.notice(created_default_notice(location))
    progress = _Progress()
    with fewer_collections(), _stop_on_signals(out) as stop:
        options.stop = stop
        with out.status(progress.line, progress.json):
            result = backup(repo, options, progress=progress)
    _report(out, result, location, created, dry_run)


def _report(out: Output, result: Any, location: str, created: bool, dry_run: bool) -> None:
    for path, message in result.warnings:
        if out.json_mode:
            out.json_line({"message_type": "warning", "item": path, "message": message}, err=True)
        else:
            out.warn(f"{path}: {message}" if path else message)
    for path, reason in result.skipped:
        if out.json_mode:
            out.json_line({"message_type": "error", "error": {"message": reason}, "during": "archival", "item": path},
                          err=True)
        else:
            out.warn(f"skipped {path}: {reason}")
    snapshot = result.snapshot_id.hex() if result.snapshot_id else None
    if out.json_mode:
        out.json_line({
            "message_type": "summary", "snapshot_id": snapshot, "dry_run": dry_run, "repository": location,
            "repository_created": created, "parent": result.parent_id.hex() if result.parent_id else None,
            "files": result.files, "files_new": result.files_new, "files_changed": result.files_changed,
            "files_unmodified": result.files_unchanged, "dirs": result.dirs, "dirs_new": result.dirs_new,
            "dirs_changed": result.dirs_changed, "dirs_unmodified": result.dirs_unchanged,
            "bytes_read": result.bytes_read, "bytes_added": result.bytes_added, "data_added": result.bytes_added,
            "total_files_processed": result.files, "total_bytes_processed": result.bytes_total,
            "duration": result.duration, "total_duration": result.duration, "resumed": result.resumed,
            "adopted_packs": result.adopted_packs, "adopted_bytes": result.adopted_bytes,
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
        })
    else:
        head = f"snapshot {snapshot[:8]} saved" if snapshot else "dry run: nothing saved"
        out.result(
            f"{head}: {result.files:,} files, {result.dirs:,} folders, {human_size(result.bytes_read)} read, "
            f"{human_size(result.bytes_added)} added in {human_duration(result.duration)}"
        )
        out.result(f"  files:   {result.files_new:,} new, {result.files_changed:,} changed, "
                   f"{result.files_unchanged:,} unchanged ({human_size(result.bytes_total)})")
        out.result(f"  folders: {result.dirs_new:,} new, {result.dirs_changed:,} changed, "
                   f"{result.dirs_unchanged:,} unchanged")
        notes = [
            f"compared with snapshot {result.parent_id.hex()[:8]}" if result.parent_id else "",
            "resumed from a checkpoint" if result.resumed else "",
            (f"reused {result.adopted_packs:,} pack(s), {human_size(result.adopted_bytes)}, that an interrupted "
             "backup had uploaded") if result.adopted_packs else "",
        ]
        if any(notes):
            out.result("  " + "; ".join(note for note in notes if note))
    if result.skipped:
        raise PartialSuccess(
            f"{len(result.skipped)} item(s) could not be read and were left out of the snapshot"
        )
