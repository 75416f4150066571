"""What a restore is told (settings), what it reports while it runs (progress) and what it
returns (result), and the thread-safe tally the walker and the writer threads share.

Messages are kept per kind up to MAX_LISTED each while the counts stay exact, so restoring a
million files without permission to set their xattrs cannot fill memory with warnings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.errors import CairnError
from cairn.files.restore_entries import ALWAYS
from cairn.files.restore_select import Selection

MAX_LISTED = 1000


@dataclass
class RestoreSettings:
    overwrite: str = ALWAYS
    """always | if-changed | if-newer | never: see restore_entries.decide."""
    delete: bool = False
    verify: bool = False
    sparse: bool = True
    selection: Selection = field(default_factory=Selection)
    owner: bool | None = None
    """Restore owners; None: when running as root (only root can give files away)."""
    processes: int = 0
    """Writer processes for the files (restore_procs); 0: writer threads. Only for storage a
    forked process can read on its own (a local folder): the caller decides."""


@dataclass
class RestoreProgress:
    path: str
    files: int
    dirs: int
    bytes_written: int
    bytes_done: int
    """Bytes of files written or found complete; reaches total_bytes at the end."""
    total_bytes: int
    """0 until a side thread has added up the sizes (the bar is indeterminate until then)."""


@dataclass
class RestoreResult:
    files: int = 0
    """Regular files written."""
    unchanged: int = 0
    """Entries found already as in the snapshot (or left alone by --overwrite)."""
    dirs: int = 0
    specials: int = 0
    """Symlinks, FIFOs and device nodes created."""
    links: int = 0
    """Hard links made to a file restored earlier in the run."""
    deleted: int = 0
    verified: int = 0
    bytes_written: int = 0
    """Content bytes of the files written (a sparse file's holes count, as its size does)."""
    bytes_on_disk: int = 0
    """What was really written: holes are skipped."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of entries not restored: a folder in the way, an unknown type, EPERM."""
    warnings: list[tuple[str, str]] = field(default_factory=list)
    """(path, what): restored, but some metadata could not be set."""
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of files restored wrongly or not at all: damaged data, failed --verify."""
    damage: CairnError | None = None
    """The first error that came from the repository (not the target); its class sets the exit
    code."""
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"skipped": 0, "warnings": 0, "errors": 0})


class Tally:
    """The result under a lock, and the progress callback fed from it (any thread)."""

    def __init__(self, progress: Callable[[RestoreProgress], None] | None) -> None:
        self.result = RestoreResult()
        self.progress = progress
        self.lock = threading.Lock()
        self.bytes_done = 0
        self.total_bytes = 0

    def note(self, kind: str, rel: bytes, text: str) -> None:
        """Record a message of `kind` (skipped, warnings, errors) about the target path `rel`."""
        with self.lock:
            self.result.counts[kind] += 1
            listed: list[tuple[str, str]] = getattr(self.result, kind)
            if len(listed) < MAX_LISTED:
                listed.append((os.fsdecode(rel) or ".", text))

    def damaged(self, rel: bytes, exc: CairnError) -> None:
        self.note("errors", rel, exc.message)
        with self.lock:
            self.result.damage = self.result.damage or exc

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self.result, name, getattr(self.result, name) + n)

    def file_done(self, size: int, written: int | None) -> None:
        """A file finished: written (`written` bytes on disk) or found complete (None)."""
        with self.lock:
            if written is None:
                self.result.unchanged += 1
            else:
                self.result.files += 1
                self.result.bytes_written += size
                self.result.bytes_on_disk += written
            self.bytes_done += size

    def report(self, rel: bytes) -> None:
        if self.progress is not None:
            r = self.result
            self.progress(RestoreProgress(os.fsdecode(rel), r.files + r.unchanged, r.dirs, r.bytes_written,
                                          self.bytes_done, self.total_bytes))
