"""Write a snapshot's files and folders back under a target folder.

Safety against a malicious snapshot or a hostile target: every name was checked by
`decode_tree` to be one path component, and every file and folder is created relative to an
open descriptor of its parent, never by a path string, with O_NOFOLLOW. A symlink already in the
target is never followed: it is replaced like any other file in the way, or refused where a
folder must be entered. Existing files are unlinked and created anew rather than truncated, so a
hard link planted in the target cannot carry the write to a file elsewhere.

Folders' metadata is applied after their content (post-order), because creating an entry changes
the parent's mtime, and a read-only folder could not be filled.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cairn.errors import DamagedObject
from cairn.files.tree import DIR, FILE, Node, decode_tree
from cairn.repo.repository import Repository

WORKERS = 4
PREFETCH = 8  # blobs loaded ahead of the writer; memory ~ PREFETCH * max chunk size
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class RestoreProgress:
    path: str
    files: int
    dirs: int
    bytes_written: int


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason): entries of a type this version cannot restore, or a folder in the way."""


def load_tree(repo: Repository, tree_id: bytes) -> list[Node]:
    return decode_tree(repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")


@dataclass
class _Frame:
    fd: int
    todo: Iterator[Node]
    node: Node | None  # the folder's own entry, None for the target itself
    path: bytes  # relative to the target, for messages


class _Restorer:
    def __init__(self, repo: Repository, progress: Callable[[RestoreProgress], None] | None) -> None:
        self.repo = repo
        self.progress = progress
        self.result = RestoreResult()
        self.as_root = os.geteuid() == 0
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="cairn-restore")

    def report(self, path: bytes) -> None:
        if self.progress is not None:
            r = self.result
            self.progress(RestoreProgress(os.fsdecode(path), r.files, r.dirs, r.bytes_written))

    def run(self, nodes: list[Node], target: str) -> RestoreResult:
        os.makedirs(target, exist_ok=True)
        stack = [_Frame(os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), iter(nodes), None, b"")]
        try:
            while stack:
                frame = stack[-1]
                node = next(frame.todo, None)
                if node is None:
                    stack.pop()
                    try:
                        if frame.node is not None:
                            self.apply_metadata(frame.fd, frame.node)
                    finally:
                        os.close(frame.fd)
                    continue
                path = frame.path + b"/" + node.name if frame.path else node.name
                self.report(path)
                if node.type == DIR:
                    child = self.enter_folder(frame.fd, node, path)
                    if child is not None:
                        stack.append(child)
                elif node.type == FILE:
                    self.write_file(frame.fd, node, path)
                else:
                    self.skip(path, f"entry type {node.type!r} is not restored by this version")
        finally:
            for frame in stack:
                os.close(frame.fd)
            self.pool.shutdown(wait=True, cancel_futures=True)
        return self.result

    def skip(self, path: bytes, reason: str) -> None:
        self.result.skipped.append((os.fsdecode(path), reason))

    def enter_folder(self, parent: int, node: Node, path: bytes) -> _Frame | None:
        assert node.subtree is not None
        try:
            os.mkdir(node.name, 0o700, dir_fd=parent)
        except FileExistsError:
            st = os.stat(node.name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # a file or symlink in the way: replace it, not follow
                os.unlink(node.name, dir_fd=parent)
                os.mkdir(node.name, 0o700, dir_fd=parent)
        nodes = load_tree(self.repo, node.subtree)
        # O_NOFOLLOW: if a symlink was swapped in since mkdir, this fails instead of escaping.
        fd = os.open(node.name, _DIR_FLAGS, dir_fd=parent)
        self.result.dirs += 1
        return _Frame(fd, iter(nodes), node, path)

    def create_file(self, parent: int, node: Node, path: bytes) -> int | None:
        try:
            return os.open(node.name, _FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            st = os.stat(node.name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                self.skip(path, "a folder in the target is in the way")
                return None
            os.unlink(node.name, dir_fd=parent)
            return os.open(node.name, _FILE_FLAGS, 0o600, dir_fd=parent)

    def write_file(self, parent: int, node: Node, path: bytes) -> None:
        fd = self.create_file(parent, node, path)
        if fd is None:
            return
        written = 0
        try:
            for data in self.blobs(node.content):
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                written += len(data)
                self.result.bytes_written += len(data)
                if written > len(data):
                    self.report(path)
            if written != node.size:
                raise DamagedObject(
                    f"{os.fsdecode(path)}: the snapshot says {node.size} bytes, its content has {written}"
                )
            self.apply_metadata(fd, node)
        finally:
            os.close(fd)
        self.result.files += 1

    def blobs(self, ids: list[bytes]) -> Iterator[bytes]:
        """The blobs in order, loading (decrypting, decompressing) a few ahead in the pool."""
        if len(ids) == 1:  # most files: a hand-off to a thread would only add latency
            yield self.repo.load_blob(ids[0])
            return
        pending: deque[Future[bytes]] = deque()
        todo = iter(ids)
        for blob_id in itertools.islice(todo, PREFETCH):
            pending.append(self.pool.submit(self.repo.load_blob, blob_id))
        while pending:
            data = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(self.pool.submit(self.repo.load_blob, following))
            yield data

    def apply_metadata(self, fd: int, node: Node) -> None:
        """Owner (as root only), then mode (chown clears setuid bits), then times."""
        if self.as_root:
            os.fchown(fd, node.uid, node.gid)
        os.fchmod(fd, node.mode)
        os.utime(fd, ns=(node.atime, node.mtime))


def restore_nodes(
    repo: Repository, nodes: list[Node], target: str,
    progress: Callable[[RestoreProgress], None] | None = None,
) -> RestoreResult:
    """Restore the given entries (and everything below them) into `target`."""
    repo.load_index()  # once, before the prefetch threads race to load it
    return _Restorer(repo, progress).run(nodes, target)


def restore(
    repo: Repository, tree_id: bytes, target: str,
    progress: Callable[[RestoreProgress], None] | None = None,
) -> RestoreResult:
    """Restore the entries of the tree `tree_id` into `target` (created when missing)."""
    return restore_nodes(repo, load_tree(repo, tree_id), target, progress)
