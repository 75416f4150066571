"""Regular files of a restore written by forked writer processes, each with its own GIL.

Why: with writer threads, a restore of many small files is bound by the GIL changing hands, not
by the disk. Every system call of a file (create, write, utimes, close) releases the GIL and
takes it back, and with the walker, four writers and the loaders all wanting it, `strace -c`
counted 2.0 million futex calls for the 50,630 files of the `real` data set (40 per file;
restic: 88,000 in all), and the kernel time was 1.8x restic's. Writer processes make the
same system calls without waiting for each other: 27,000 futex calls in all.

Shape: the walker (restorer) stays in the parent and does everything that changes a folder.
The files it `start`s gather in a batch (at most BATCH_FILES files or BATCH_BYTES of
content, from one folder or several); a full batch, one a job is waited for, or any batch when
the walk leaves a folder while a writer has nothing to do, goes to the writer process with the
fewest files outstanding, together with a copy of each of its folders' descriptors
(SCM_RIGHTS), so a writer reaches each file exactly as a writer thread does: relative to the
folder the walker opened, never by a path. The writer restores the batch's files one by one
with the same code as the threads (restore_files.FileWriter.job, whose loaders still fetch
a large file's next blobs ahead) and sends back, per file, whether it is in the target and what
it told its tally; a reader thread in the parent replays that into the restore's tally (and so
into the progress bar) and ends the file's job, so the walk waits for files exactly as before.

When: only for storage a forked copy can read on its own, a local folder (an SSH or HTTP
connection cannot be shared by two processes), and only where the walk forks before any thread
but the lock refresher runs (Restorer.__init__), so no lock a writer needs can be held by a
thread it does not have. A writer never returns into the parent's code: it leaves by os._exit,
so nothing of the parent's (the repository lock!) is released twice.

Failures: what a file's job reports (damaged data, a refused write) comes back as for a thread.
An exception a job did not expect (a bug, Ctrl-C) ends that writer and is raised in the walk.
A writer that dies (killed, out of memory) fails the restore with one line naming it instead
of leaving its files waiting. When the parent dies, each writer reads the end of its socket
once it has finished its batch, and exits.
"""

from __future__ import annotations

import functools
import os
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import CairnError
from cairn.files import metadata
from cairn.files.procs import fork_children, how_it_ended, kill, portable, receive, send
from cairn.files.restore_files import FileJob, FileWriter
from cairn.files.restore_state import RestoreSettings, Tally
from cairn.files.tree import Node
from cairn.repo.repository import Repository

BATCH_FILES = 32
BATCH_BYTES = 8 * 1024 * 1024
BATCHES_PER_WRITER = 2  # one being written, one waiting: a writer never idles for the walker
PLAN_BLOBS = 1024  # blobs of one batch whose reads are coalesced (restore_reads); the rest read alone

def writer_processes() -> int:
    """One writer process per core and one more, to write while another waits on the disk.
    Restoring `real` onto a new ext4 with 2 cores, 2, 3 and 4 writers were within the noise
    of each other (medians of 3 rounds: 7.3, 7.2 and 6.1 s; restic 8.6 s)."""
    return max(2, min(8, (os.cpu_count() or 2) + 1))


class RecordedTally(Tally):
    """A writer process's tally: it keeps each call for the parent to replay (`take`)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def note(self, kind: str, rel: bytes, text: str) -> None:
        self.calls.append(("note", (kind, rel, text)))

    def damaged(self, rel: bytes, exc: CairnError) -> None:
        self.calls.append(("damaged", (rel, exc)))

    def count(self, name: str, n: int = 1) -> None:
        self.calls.append(("count", (name, n)))

    def file_done(self, size: int, written: int | None) -> None:
        self.calls.append(("file_done", (size, written)))

    def report(self, rel: bytes) -> None:
        self.calls.append(("report", (rel,)))

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        calls, self.calls = self.calls, []
        return calls


def _serve(sock: socket.socket, writer: FileWriter, tally: RecordedTally) -> None:
    """A writer process: restore each batch the parent sends until it closes the socket."""
    while (message := receive(sock, max_fds=BATCH_FILES)) is not None:
        batch: list[tuple[int, Node, bytes, metadata.Created | None]] = message[0]
        folders = message[1]
        results: list[tuple[bool, BaseException | None, list[tuple[str, tuple[Any, ...]]]]] = []
        crash: BaseException | None = None
        try:
            writer.plan([b for _, node, _, _ in batch for b in node.content][:PLAN_BLOBS])
            for at, node, rel, created in batch:
                try:
                    ok = writer.job(folders[at], node, rel, created)
                except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
                    crash = portable(exc)
                    results.append((False, crash, tally.take()))
                    break
                results.append((ok, None, tally.take()))
        finally:
            for folder in folders:
                os.close(folder)
        send(sock, results)
        if crash is not None:
            return


def _run_writer(repo: Repository, settings: RestoreSettings, owner: bool, sock: socket.socket) -> None:
    tally = RecordedTally()
    _serve(sock, FileWriter(repo, settings, tally, owner), tally)


class _BatchedJob(FileJob):
    """A file's job whose batch may not have been sent yet: waiting for it sends it first."""

    __slots__ = ("flush",)

    def __init__(self, flush: Callable[[], None]) -> None:
        super().__init__(())
        self.flush = flush

    def result(self) -> bool:
        if self.ok is None:
            self.flush()  # the walker's thread, the only one that sends
        return super().result()


@dataclass
class _Writer:
    pid: int
    sock: socket.socket
    sent: deque[list[FileJob]] = field(default_factory=deque)  # batches without results, oldest first
    files: int = 0  # files sent and not finished
    alive: bool = True  # until its reader sees it end
    ended: str = ""  # why, when the parent ended it
    reader: threading.Thread | None = None


class ProcessFileWriter:
    """FileWriter's interface (start, flush, check, close) over writer processes."""

    plans_ahead = False
    """Each writer plans the reads of the batch it is sent: the walk need not look ahead."""

    def __init__(self, repo: Repository, settings: RestoreSettings, tally: Tally, owner: bool,
                 processes: int) -> None:
        self.tally = tally
        self.crash: BaseException | None = None
        self.closing = False
        self.lock = threading.Lock()
        self.slots: queue.SimpleQueue[None] = queue.SimpleQueue()  # one token per batch that may be sent
        self.batch: list[tuple[int, Node, bytes, metadata.Created | None]] = []
        self.batch_jobs: list[FileJob] = []
        self.batch_bytes = 0
        self.folders: dict[int, int] = {}  # the batch's folders: descriptor -> its place in the message
        serve = functools.partial(_run_writer, repo, settings, owner)
        self.writers = [_Writer(pid, sock) for pid, sock in fork_children(processes, serve)]
        for writer in self.writers:
            writer.reader = threading.Thread(target=self._read, args=(writer,), daemon=True,
                                             name=f"cairn-restore-proc-{writer.pid}")
            writer.reader.start()
            for _ in range(BATCHES_PER_WRITER):
                self.slots.put(None)

    # -- the walker's side -------------------------------------------------------------------
    def start(self, parent: int, node: Node, rel: bytes, created: metadata.Created | None = None) -> FileJob:
        """Add the file to the batch (see the module docstring); `parent` must stay open until
        the job ends, as with FileWriter."""
        job = _BatchedJob(self.flush)
        self.batch.append((self.folders.setdefault(parent, len(self.folders)), node, rel, created))
        self.batch_jobs.append(job)
        self.batch_bytes += node.size
        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self.flush()
        return job

    def left_folder(self) -> None:
        """The walk left a folder: send the batch on now if a writer has nothing to do, as the
        walk may not start another file for a while; else the next folders' files join it.
        A batch per folder made 6,999 batches of 11 files on average for `linux`, each one
        costing both sides (messages, descriptors, a read plan); across folders 2,877, and its
        restore took 5.79 s against 6.32 (means of 8 alternating rounds, faster in 6)."""
        with self.lock:
            idle = any(w.alive and not w.sent for w in self.writers)
        if idle:
            self.flush()

    def flush(self) -> None:
        """Send the batch being gathered to the writer with the fewest files outstanding."""
        if not self.batch:
            return
        batch, jobs, folders = self.batch, self.batch_jobs, list(self.folders)
        self.batch, self.batch_jobs, self.batch_bytes, self.folders = [], [], 0, {}
        self.slots.get()  # blocks while every writer has BATCHES_PER_WRITER batches
        with self.lock:
            alive = [w for w in self.writers if w.alive]
            if alive:
                writer = min(alive, key=lambda w: w.files)
                writer.sent.append(jobs)
                writer.files += len(jobs)
        if not alive:  # each one's reader has set self.crash, which the walk raises
            assert self.crash is not None
            self.slots.put(None)
            for job in jobs:
                job.end(False, self.crash)
            return
        try:
            send(writer.sock, batch, folders)
        except OSError:  # the writer is gone: its reader ends these jobs with the others
            pass

    def check(self) -> None:
        if self.crash is not None:
            raise self.crash

    def close(self) -> None:
        """Wait for the writers to finish what they were sent and end; after an interrupt (jobs
        still outstanding), end them at once."""
        self.closing = True
        abandon = any(w.sent for w in self.writers) or bool(self.batch)
        for writer in self.writers:
            if abandon:
                kill(writer.pid)
            try:
                writer.sock.shutdown(socket.SHUT_WR)  # the writer's end of stream: it exits
            except OSError:
                pass
        for writer in self.writers:
            if writer.reader is not None:
                writer.reader.join()
            os.waitpid(writer.pid, 0)
            writer.sock.close()
        for job in self.batch_jobs:
            job.end(False)
        self.batch, self.batch_jobs, self.folders = [], [], {}

    # -- a reader thread per writer ----------------------------------------------------------
    def _read(self, writer: _Writer) -> None:
        """Replay each batch's results, in the order sent; when the writer ends, reap it and
        end whatever it was still sent."""
        try:
            while (message := receive(writer.sock)) is not None:
                results = message[0]
                with self.lock:
                    jobs = writer.sent.popleft()
                    writer.files -= len(jobs)
                for job, (ok, crash, calls) in zip(jobs, results):
                    self._replay(calls)
                    if crash is not None:
                        self.crash = self.crash or crash
                    job.end(ok, crash)
                for job in jobs[len(results):]:
                    job.end(False)
                self.slots.put(None)
        except Exception as exc:  # noqa: BLE001 - a garbled reply: treated as the writer's end
            kill(writer.pid)
            writer.ended = f"its reply could not be read: {exc}"
        if not self.closing and self.crash is None:  # a writer ends early only when killed
            how = writer.ended or how_it_ended(writer.pid)  # `close` reaps it
            self.crash = CairnError(f"restore writer process {writer.pid} ended unexpectedly ({how}); "
                                    "run the restore again to finish it")
        with self.lock:  # after self.crash is set: `flush` ends jobs with it once none is alive
            writer.alive = False
            left, writer.sent = list(writer.sent), deque()
        for jobs in left:
            for job in jobs:
                job.end(False, self.crash)
            self.slots.put(None)

    def _replay(self, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
        for name, args in calls:
            try:
                getattr(self.tally, name)(*args)
            except BaseException as exc:  # noqa: BLE001 - the progress callback's own (Ctrl-C): the walk raises it
                self.crash = self.crash or exc
