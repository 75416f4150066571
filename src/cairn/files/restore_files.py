"""Regular files of a restore, each restored whole by one thread of a writer pool.

The walker hands each file to `start`; a writer thread then creates it in its (open) parent
folder with O_EXCL|O_NOFOLLOW, or, when the name is taken, decides what to do with what is
there (restore_entries.decide): compare it with the snapshot, replace it, or leave it. It
writes the content (sparse), verifies it, and applies the file's metadata through the
descriptor. Creating in the writers, not in the walker, overlaps the filesystem's latency for
many small files (a create costs tens of microseconds, far more on a busy disk); the folder's
own metadata waits for all its files' jobs (restorer), so their creation still precedes it.

At most IN_FLIGHT files are queued or being written: `start` blocks when the writers are
behind, so memory stays near WORKERS * (PREFETCH + 1) * max chunk size whatever the sizes.

The writer pool is a queue and threads of its own, not a ThreadPoolExecutor: a Future per file
costs a Condition, an RLock and their notifications under the GIL, and the in-flight bound a
Python semaphore; here a job is a small object with one C lock, and the bound is a C queue of
tokens (both block without holding the GIL). On a restore of 50,000 small files that thread
machinery was about a sixth of the time the GIL was held.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from cairn.errors import CairnError
from cairn.files import metadata
from cairn.files import restore_content as content
from cairn.files.restore_entries import NEW_FILE_FLAGS, Action, decide, lstat_at, remove
from cairn.files.restore_reads import PackReads
from cairn.files.restore_state import RestoreSettings, Tally
from cairn.files.tree import Node
from cairn.repo.repository import Repository

# Writing is partly waiting on the filesystem, so twice as many writers as cores; more only
# adds kernel time spent contending for the same folders' locks.
WORKERS = max(4, min(16, 2 * (os.cpu_count() or 2)))
LOADERS = max(2, min(8, os.cpu_count() or 2))  # decrypting and decompressing: one per core
IN_FLIGHT = 2 * WORKERS
_CHECK_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FileJob:
    """A file handed to the writers, with a Future's `done` and `result` (which re-raises what
    a writer did not expect)."""

    __slots__ = ("args", "ok", "error", "_finished")

    def __init__(self, args: tuple[object, ...]) -> None:
        self.args = args
        self.ok: bool | None = None
        self.error: BaseException | None = None
        self._finished = threading.Lock()
        self._finished.acquire()  # released when the job ends

    def done(self) -> bool:
        return self.ok is not None

    def result(self) -> bool:
        if self.ok is None:
            with self._finished:  # waits for the release in `end`
                pass
        if self.error is not None:
            raise self.error
        assert self.ok is not None
        return self.ok

    def end(self, ok: bool, error: BaseException | None = None) -> None:
        self.error = error
        self.ok = ok
        self._finished.release()


class FileWriter:
    plans_ahead = True
    """The walk `plan`s the next files' blobs, since they are read by threads sharing one cache."""

    def __init__(self, repo: Repository, settings: RestoreSettings, tally: Tally, owner: bool) -> None:
        self.repo, self.settings, self.tally, self.owner = repo, settings, tally, owner
        self.umask = metadata.process_umask()
        self.zeros = content.ZeroBlobs()
        self.reads = PackReads(repo)
        self.queue: queue.SimpleQueue[FileJob | None] = queue.SimpleQueue()
        self.slots: queue.SimpleQueue[None] = queue.SimpleQueue()  # one token per file that may be in flight
        for _ in range(IN_FLIGHT):
            self.slots.put(None)
        self.closing = False
        self.writers: list[threading.Thread] = []  # started by the first `start`, ended by `close`
        self.loaders = ThreadPoolExecutor(LOADERS, thread_name_prefix="cairn-load")
        self.crash: BaseException | None = None
        """An exception a writer did not expect (a bug, an interrupt): the walker re-raises it."""

    def check(self) -> None:
        """Raise in the walking thread what went wrong unexpectedly in a writer thread."""
        if self.crash is not None:
            raise self.crash

    def close(self) -> None:
        """Wait for the files being written (an interrupted run drops the queued ones)."""
        self.closing = True
        for _ in self.writers:
            self.queue.put(None)
        for thread in self.writers:
            thread.join()
        self.loaders.shutdown(wait=True, cancel_futures=True)

    def work(self) -> None:
        """A writer thread: run queued jobs until `close`."""
        while True:
            job = self.queue.get()
            if job is None:
                return
            if self.closing:  # dropped: the walk is over (interrupted, or a crash)
                self.slots.put(None)
                job.end(False)
                continue
            try:
                ok = self.job(*job.args)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - kept in self.crash by `job`, re-raised by result()
                job.end(False, exc)
            else:
                job.end(ok)
            finally:
                self.slots.put(None)

    def plan(self, blob_ids: list[bytes]) -> None:
        """Note the content of the files the walker is about to `start`, in order, so that
        their blobs that lie together in a pack are read together (restore_reads)."""
        self.reads.plan(b for b in blob_ids if self.zeros.get(b) is None)

    def left_folder(self) -> None:
        """Nothing to do here: each file reaches the writer threads when it is started
        (ProcessFileWriter gathers files in batches)."""

    def start(self, parent: int, node: Node, rel: bytes, created: metadata.Created | None = None) -> FileJob:
        """Queue the file `node` of the folder `parent` (walker thread only); the job's result
        says whether the file is in the target when it ends. `parent` must stay open until then.
        `created`: what a new entry of that folder gets by itself (metadata.probe_folder)."""
        if not self.writers:
            self.writers = [threading.Thread(target=self.work, name=f"cairn-restore-{i}") for i in range(WORKERS)]
            for thread in self.writers:
                thread.start()
        self.slots.get()  # given back by `work` once the job ended
        job = FileJob((parent, node, rel, created))
        self.queue.put(job)
        return job

    def create(
        self, parent: int, node: Node, rel: bytes, created: metadata.Created | None
    ) -> tuple[int, bool, metadata.Created | None] | bool:
        """(descriptor, whether it is an existing file to compare first, what a new file already
        has) of the file to write; True when what is there stays as it is, False when the file
        cannot be restored. A new file is created with its final mode when that saves a chmod."""
        mode = metadata.creation_mode(node, created, self.umask, self.owner)
        try:  # the usual case, a name not taken yet, costs one system call
            fd = os.open(node.name, NEW_FILE_FLAGS, 0o600 if mode is None else mode, dir_fd=parent)
        except FileExistsError:
            return self.existing(parent, node, rel)
        except OSError as exc:
            self.tally.note("skipped", rel, f"file not restored: {exc.strerror or exc}")
            return False
        if created is not None:
            created = metadata.Created(created.owner, created.bare, mode)
        return fd, False, created

    def existing(self, parent: int, node: Node, rel: bytes) -> tuple[int, bool, None] | bool:
        """The name is taken: (descriptor, whether to compare before writing) for a file to
        write, True when what is there stays (--overwrite), False when it cannot be restored."""
        st = lstat_at(parent, node.name)
        action = decide(parent, node.name, st, node, self.settings.overwrite, self.settings.delete)
        if action == Action.BLOCKED:
            self.tally.note("skipped", rel, "a folder in the target is in the way (add --delete to replace it)")
            return False
        if action == Action.LEAVE:
            self.tally.file_done(node.size, None)
            return True
        try:
            if action == Action.CHECK:
                try:
                    return os.open(node.name, _CHECK_FLAGS, dir_fd=parent), True, None
                except PermissionError:  # not readable by us: replaced below
                    pass
            st = lstat_at(parent, node.name)
            if st is not None:
                remove(parent, node.name, st)
            return os.open(node.name, NEW_FILE_FLAGS, 0o600, dir_fd=parent), False, None
        except OSError as exc:
            self.tally.note("skipped", rel, f"file not restored: {exc.strerror or exc}")
            return False

    def replace(self, parent: int, fd: int, node: Node) -> int:
        """Close the existing file `fd` and put a new, empty one in its place."""
        os.close(fd)
        os.unlink(node.name, dir_fd=parent)
        return os.open(node.name, NEW_FILE_FLAGS, 0o600, dir_fd=parent)

    def job(self, parent: int, node: Node, rel: bytes, created: metadata.Created | None = None) -> bool:
        """In a writer thread: create, or keep an equal existing file, or replace it; write the
        content; set the metadata. True when the file ends up in the target (even if damaged)."""
        fd = -1
        try:
            opened = self.create(parent, node, rel, created)
            if isinstance(opened, bool):
                return opened
            fd, check, created = opened
            if check:
                if content.is_single_file(fd):
                    lengths = content.blob_lengths(self.repo, node, self.zeros)
                    if content.first_difference(self.repo, fd, node, lengths, self.zeros) is None:
                        self.finish(parent, fd, node, rel)
                        self.tally.file_done(node.size, None)
                        return True
                fd, old = -1, fd
                fd = self.replace(parent, old, node)
            written, lengths = content.write_content(
                self.reads.load, fd, node, self.zeros, self.loaders, self.settings.sparse)
            if self.settings.verify:
                at = content.first_difference(self.repo, fd, node, lengths, self.zeros)
                if at is not None:
                    raise content.ContentMismatch(f"--verify: the file differs from the snapshot at byte {at}")
                self.tally.count("verified")
            self.finish(parent, fd, node, rel, created)
            self.tally.file_done(node.size, written)
            self.tally.report(rel)
        except content.ContentMismatch as exc:
            self.tally.note("errors", rel, str(exc))
        except CairnError as exc:
            self.tally.damaged(rel, exc)
        except OSError as exc:
            self.tally.note("errors", rel, f"not written: {exc.strerror or exc}")
            return fd >= 0
        except BaseException as exc:
            self.crash = self.crash or exc
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        return True

    def finish(self, parent: int, fd: int, node: Node, rel: bytes, created: metadata.Created | None = None) -> None:
        for warning in metadata.apply(parent, node.name, node, owner=self.owner, fd=fd, created=created):
            self.tally.note("warnings", rel, warning)
