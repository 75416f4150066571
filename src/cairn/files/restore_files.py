"""Regular files of a restore: decided and created by the walking thread, filled by a pool.

The walker calls `start` for each file: it looks at what the target has (restore_entries.decide),
creates the new file (O_EXCL, O_NOFOLLOW: never an existing one, never through a symlink) or
opens the existing one to compare, and hands the descriptor to a writer thread. Creating in the
walker keeps every change of a folder's entries in one thread, before the folder's own metadata
is set. The writer compares, writes (sparse), verifies and applies the file's metadata through
the descriptor, so it never needs the file's name again, except to replace an existing file
found different (in its parent, whose metadata waits for the writer).

At most IN_FLIGHT files are open at once: `start` blocks when the writers are behind, so
memory stays near WORKERS * (PREFETCH + 1) * max chunk size.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from cairn.errors import CairnError
from cairn.files import metadata
from cairn.files import restore_content as content
from cairn.files.restore_entries import NEW_FILE_FLAGS, Action, decide, lstat_at, remove
from cairn.files.restore_state import RestoreSettings, Tally
from cairn.files.tree import Node
from cairn.repo.repository import Repository

WORKERS = max(2, min(8, os.cpu_count() or 2))
IN_FLIGHT = 2 * WORKERS
_CHECK_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FileWriter:
    def __init__(self, repo: Repository, settings: RestoreSettings, tally: Tally, owner: bool) -> None:
        self.repo, self.settings, self.tally, self.owner = repo, settings, tally, owner
        self.zeros = content.ZeroBlobs()
        self.writers = ThreadPoolExecutor(WORKERS, thread_name_prefix="cairn-restore")
        self.loaders = ThreadPoolExecutor(WORKERS, thread_name_prefix="cairn-load")
        self.slots = threading.BoundedSemaphore(IN_FLIGHT)
        self.crash: BaseException | None = None
        """An exception a writer did not expect (a bug, an interrupt): the walker re-raises it."""

    def check(self) -> None:
        """Raise in the walking thread what went wrong unexpectedly in a writer thread."""
        if self.crash is not None:
            raise self.crash

    def close(self) -> None:
        """Wait for the files being written (an interrupted run cancels the queued ones)."""
        self.writers.shutdown(wait=True, cancel_futures=True)
        self.loaders.shutdown(wait=True, cancel_futures=True)

    def start(self, parent: int, node: Node, rel: bytes) -> tuple[bool, Future[None] | None]:
        """Begin restoring the file `node` in the folder `parent` (walker thread only).

        Returns whether the file is, or will be, in the target, and the writer's job if one was
        started; the folder's metadata must wait for that job.
        """
        check = False
        try:  # the usual case, a name not taken yet, costs one system call
            fd = os.open(node.name, NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            opened = self.existing(parent, node, rel)
            if isinstance(opened, bool):
                return opened, None
            fd, check = opened
        except OSError as exc:
            self.tally.note("skipped", rel, f"file not restored: {exc.strerror or exc}")
            return False, None
        self.slots.acquire()
        try:
            job = self.writers.submit(self.job, parent, fd, node, rel, check)
        except BaseException:
            self.slots.release()
            os.close(fd)
            raise
        return True, job

    def existing(self, parent: int, node: Node, rel: bytes) -> tuple[int, bool] | bool:
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
                    return os.open(node.name, _CHECK_FLAGS, dir_fd=parent), True
                except PermissionError:  # not readable by us: replaced below
                    pass
            st = lstat_at(parent, node.name)
            if st is not None:
                remove(parent, node.name, st)
            return os.open(node.name, NEW_FILE_FLAGS, 0o600, dir_fd=parent), False
        except OSError as exc:
            self.tally.note("skipped", rel, f"file not restored: {exc.strerror or exc}")
            return False

    def replace(self, parent: int, fd: int, node: Node) -> int:
        """Close the existing file `fd` and put a new, empty one in its place."""
        os.close(fd)
        os.unlink(node.name, dir_fd=parent)
        return os.open(node.name, NEW_FILE_FLAGS, 0o600, dir_fd=parent)

    def job(self, parent: int, fd: int, node: Node, rel: bytes, check: bool) -> None:
        """In a writer thread: keep an equal existing file, or write the content; then metadata."""
        try:
            if check:
                if content.is_single_file(fd):
                    lengths = content.blob_lengths(self.repo, node, self.zeros)
                    if content.first_difference(self.repo, fd, node, lengths, self.zeros) is None:
                        self.finish(parent, fd, node, rel)
                        self.tally.file_done(node.size, None)
                        return
                fd, old = -1, fd
                fd = self.replace(parent, old, node)
            written, lengths = content.write_content(
                self.repo, fd, node, self.zeros, self.loaders, self.settings.sparse)
            if self.settings.verify:
                at = content.first_difference(self.repo, fd, node, lengths, self.zeros)
                if at is not None:
                    raise content.ContentMismatch(f"--verify: the file differs from the snapshot at byte {at}")
                self.tally.count("verified")
            self.finish(parent, fd, node, rel)
            self.tally.file_done(node.size, written)
            self.tally.report(rel)
        except content.ContentMismatch as exc:
            self.tally.note("errors", rel, str(exc))
        except CairnError as exc:
            self.tally.damaged(rel, exc)
        except OSError as exc:
            self.tally.note("errors", rel, f"not written: {exc.strerror or exc}")
        except BaseException as exc:
            self.crash = self.crash or exc
            raise
        finally:
            if fd >= 0:
                os.close(fd)
            self.slots.release()

    def finish(self, parent: int, fd: int, node: Node, rel: bytes) -> None:
        for warning in metadata.apply(parent, node.name, node, owner=self.owner, fd=fd):
            self.tally.note("warnings", rel, warning)
