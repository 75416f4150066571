"""Coalesced reads for a restore: the blobs of the next files that sit close together in one
pack are read with one ranged read, then split and opened (authenticated, decompressed, id
checked) one by one in memory.

Why: a backup writes the blobs of consecutive files one after the other into a pack, and a
restore walks the files in nearly the same order. Reading each blob on its own costs an open,
a seek and a read of the pack per blob (about 20% of a restore of many small files); reading a
run of them costs that once per run, and on a remote backend one request instead of dozens.

How: the walker `plan`s the content of the files it is about to hand to the writers. The blobs of
one plan are sorted by pack and offset, and neighbours with gaps of at most GAP between them
become a run of at most MAX_RUN bytes. The first `load` of one of a run's blobs reads the whole run; the others are
cut from it. A run's bytes are dropped as soon as its last planned blob is loaded.

Bounded whatever happens: blobs planned but never loaded (a file found already restored, zeros,
an error) cannot pin memory, since at most MAX_PLANNED blobs stay planned (the oldest runs are
forgotten first) and at most CACHE_BYTES of run bytes stay held (the oldest runs are dropped
first). A blob whose run was forgotten or dropped, or that was not planned, is read on its own
(Repository.load_blob): coalescing only ever changes how many reads there are, never what a
restore returns, and every blob is still checked against its id.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from cairn.errors import CairnError
from cairn.repo.index import IndexEntry
from cairn.repo.repository import Repository

GAP = 8192
MAX_RUN = 1024 * 1024
MAX_PLANNED = 4096  # blobs planned and not yet loaded
CACHE_BYTES = 8 * 1024 * 1024  # run bytes held at once


class _Run:
    """Blobs of one pack read with one read: [start, end) of the pack."""

    __slots__ = ("pack_id", "start", "end", "entries", "left", "lock", "data", "state")

    def __init__(self, entry: IndexEntry) -> None:
        self.pack_id = entry.pack_id
        self.start, self.end = entry.offset, entry.offset + entry.length
        self.entries: dict[bytes, IndexEntry] = {entry.blob_id: entry}
        self.left = 1  # planned blobs not loaded yet
        self.lock = threading.Lock()  # held while reading
        self.data: bytes | None = None
        self.state = "planned"  # -> "read" -> "dropped"; or "failed"; or "forgotten" before any read

    def can_take(self, entry: IndexEntry) -> bool:
        return (
            self.state == "planned" and entry.pack_id == self.pack_id and self.end <= entry.offset <= self.end + GAP
            and entry.offset + entry.length - self.start <= MAX_RUN
        )

    def take(self, entry: IndexEntry) -> None:
        self.entries[entry.blob_id] = entry
        self.end = entry.offset + entry.length
        self.left += 1


class PackReads:
    """Loads blobs for a restore, coalescing the reads of planned ones (thread-safe: the walker
    plans, writer and loader threads load)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._where: dict[bytes, _Run] = {}  # planned blob id -> its run
        self._runs: OrderedDict[_Run, None] = OrderedDict()  # runs with planned blobs, oldest first
        self._held: OrderedDict[_Run, None] = OrderedDict()  # runs holding bytes, oldest first
        self._held_bytes = 0
        self.reads = 0  # ranged reads of runs (for tests and benchmarks)

    def plan(self, blob_ids: Iterable[bytes]) -> None:
        """Note blobs about to be loaded (the content of the next few files). They are grouped
        by pack and sorted by offset before being cut into runs: the backup's pipeline does not
        store consecutive files' blobs strictly in walk order, so runs in the order of the plan
        would re-read the same stretch of a pack."""
        with self._lock:
            wanted = [b for b in dict.fromkeys(blob_ids) if b not in self._where]
        # Outside our lock: it takes the repository's. A blob not in the index is left out: its
        # load fails alone, in the file's own job. A duplicate: the first copy's run serves it.
        entries = [e for e in self.repo.lookup_many(wanted) if e is not None]
        entries.sort(key=lambda e: (e.pack_id, e.offset))
        with self._lock:
            run: _Run | None = None
            for entry in entries:
                if entry.blob_id in self._where:
                    continue
                if run is not None and run.can_take(entry):
                    run.take(entry)
                else:
                    run = _Run(entry)
                    self._runs[run] = None
                self._where[entry.blob_id] = run
            while len(self._where) > MAX_PLANNED:
                self._forget(next(iter(self._runs)))

    def load(self, blob_id: bytes) -> bytes:
        """The blob's plaintext, checked against its id, from its run when it was planned."""
        with self._lock:
            run = self._where.pop(blob_id, None)
        if run is None:
            return self.repo.load_blob(blob_id)
        entry = run.entries[blob_id]
        try:
            data = self._data(run)
            if data is None:  # the run was dropped or failed: read this blob alone
                return self.repo.load_blob(blob_id)
            at = entry.offset - run.start
            return self.repo.open_sealed(entry, memoryview(data)[at:at + entry.length])
        finally:
            with self._lock:
                run.left -= 1
                if run.left == 0:
                    self._runs.pop(run, None)
                    self._drop(run)

    def _data(self, run: _Run) -> bytes | None:
        with run.lock:
            if run.state == "planned":
                with self._lock:
                    run.state = "reading"
                try:
                    data = self.repo.load_pack_range(run.pack_id, run.start, run.end - run.start)
                except CairnError:
                    run.state = "failed"  # each blob then reads alone and reports its own error
                    return None
                with self._lock:
                    self.reads += 1
                    if run.state == "reading":
                        run.state, run.data = "read", data
                        self._held[run] = None
                        self._held_bytes += len(data)
                        while self._held_bytes > CACHE_BYTES and len(self._held) > 1:
                            self._drop(next(iter(self._held)))
                return data
            return run.data

    def _forget(self, run: _Run) -> None:
        """Under the lock: un-plan the blobs of `run` not loaded yet (their loads read alone)."""
        self._runs.pop(run, None)
        for blob_id in run.entries:
            if self._where.get(blob_id) is run:
                del self._where[blob_id]
        if run.state == "planned":
            run.state = "forgotten"
        self._drop(run)

    def _drop(self, run: _Run) -> None:
        """Under the lock: release the run's bytes."""
        if run in self._held:
            del self._held[run]
            self._held_bytes -= len(run.data or b"")
        run.data = None
        if run.state in ("read", "reading"):
            run.state = "dropped"
