"""Walk files and folders, store their content as data blobs and their folders as tree blobs.

Shape of the pipeline: the calling thread walks and reads (one file at a time, in name order, so
the trees come out deterministic) and cuts chunks; a small thread pool hashes, compresses,
encrypts and packs them (`Repository.save_blob`; the libraries release the GIL). A semaphore
bounds the chunks in flight, so memory stays near (in-flight + 2) * max chunk size whatever the
file sizes. Trees are built bottom-up: a folder's tree is stored once all its entries are, which
is when the ids of its files' chunks are collected from the workers.

The snapshot root mirrors restic: it holds the components of each given absolute path, so
backing up /home/u/docs gives root -> home -> u -> docs and a restore recreates that under its
target. The path components above a given path get the metadata of the real folders.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

from cairn.files.chunker import Chunker
from cairn.files.tree import DIR, FILE, Node, encode_tree
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository

WORKERS = max(2, min(4, os.cpu_count() or 2))
IN_FLIGHT = 2 * WORKERS
_NOATIME = getattr(os, "O_NOATIME", 0)

# A plan of what to walk: name -> deeper plan, or None for "this path and all below it".
_Plan = dict[bytes, "_Plan | None"]


@dataclass
class ArchiveProgress:
    """Where the walk is; reported before each entry and after each chunk read."""

    path: str
    files: int
    dirs: int
    bytes_read: int
    bytes_added: int
    skipped: int


@dataclass
class ArchiveResult:
    root: bytes
    files: int = 0
    dirs: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    """Plaintext bytes of the blobs (data and tree) the repository did not have yet."""
    blobs_new: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of each file or folder that could not be read and is not in the snapshot."""


class _Sink:
    """Stores blobs in worker threads, at most IN_FLIGHT chunks queued or being stored."""

    def __init__(self, repo: Repository, dry_run: bool) -> None:
        self._repo = repo
        self._dry_run = dry_run
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="cairn-archive")
        self._slots = threading.BoundedSemaphore(IN_FLIGHT)
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()
        self.bytes_added = 0
        self.blobs_new = 0

    def store(self, blob_type: BlobType, data: bytes) -> bytes:
        if self._dry_run:
            blob_id = self._repo.blob_id(data)
            with self._lock:
                new = blob_id not in self._seen and not self._repo.has_blob(blob_id)
                self._seen.add(blob_id)
        else:
            blob_id, new = self._repo.save_blob(blob_type, data)
        if new:
            with self._lock:
                self.bytes_added += len(data)
                self.blobs_new += 1
        return blob_id

    def submit(self, data: bytes) -> Future[bytes]:
        self._slots.acquire()
        try:
            return self._pool.submit(self._task, data)
        except BaseException:
            self._slots.release()
            raise

    def _task(self, data: bytes) -> bytes:
        try:
            return self.store(BlobType.DATA, data)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Frame:
    """A folder being archived: the entries still to visit and the nodes done so far."""

    path: bytes
    node: Node | None  # its entry in the parent folder; None for the snapshot root
    todo: Iterator[tuple[bytes, _Plan | None]]
    done: list[tuple[Node, list[Future[bytes]]]] = field(default_factory=list)


@lru_cache(maxsize=256)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=256)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _node(name: bytes, kind: str, st: os.stat_result) -> Node:
    return Node(
        name=name, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        user=_user(st.st_uid), group=_group(st.st_gid),
        mtime=st.st_mtime_ns, atime=st.st_atime_ns, ctime=st.st_ctime_ns,
    )


def _open(path: bytes, flags: int) -> int:
    """Open without following a symlink, without touching atime where the kernel allows."""
    flags |= os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(path, flags | _NOATIME)
    except PermissionError:
        if not _NOATIME:
            raise
        return os.open(path, flags)  # O_NOATIME needs ownership: retry without it


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "vanished during the backup"
    return exc.strerror or str(exc)


def _plan(paths: list[bytes]) -> _Plan | None:
    """Merge absolute paths into one plan; a path inside another given path adds nothing."""
    plan: _Plan = {}
    for path in paths:
        parts = [p for p in path.split(b"/") if p not in (b"", b".")]
        if not parts:
            return None  # "/" covers everything
        level: _Plan | None = plan
        for part in parts[:-1]:
            assert level is not None
            if part in level and level[part] is None:
                level = None
                break
            level = level.setdefault(part, {})
        if level is not None:
            level[parts[-1]] = None
    return plan


def _join(folder: bytes, name: bytes) -> bytes:
    return folder.rstrip(b"/") + b"/" + name


class _Archiver:
    def __init__(self, repo: Repository, progress: Callable[[ArchiveProgress], None] | None, dry_run: bool) -> None:
        self.repo = repo
        self.progress = progress
        self.sink = _Sink(repo, dry_run)
        self.chunker = Chunker(repo.config.chunker)
        self.result = ArchiveResult(root=b"")

    def report(self, path: bytes) -> None:
        if self.progress is not None:
            r = self.result
            self.progress(ArchiveProgress(
                os.fsdecode(path), r.files, r.dirs, r.bytes_read, self.sink.bytes_added, len(r.skipped)
            ))

    def skip(self, path: bytes, reason: str) -> None:
        self.result.skipped.append((os.fsdecode(path), reason))

    def run(self, paths: list[bytes]) -> ArchiveResult:
        plan = _plan(paths)
        if plan is None:  # backing up "/": the root tree is the root folder itself
            root = self.open_folder(b"", b"/") or _Frame(b"/", None, iter(()))
            root.node = None
        else:
            root = _Frame(b"/", None, iter(sorted(plan.items())))
        stack = [root]
        try:
            while stack:
                frame = stack[-1]
                item = next(frame.todo, None)
                if item is None:
                    stack.pop()
                    tree_id = self.finish_folder(frame)
                    if frame.node is None:
                        self.result.root = tree_id
                    else:
                        frame.node.subtree = tree_id
                        stack[-1].done.append((frame.node, []))
                    continue
                name, sub = item
                path = _join(frame.path, name)
                self.report(path)
                pushed = self.visit(frame, name, path, sub)
                if pushed is not None:
                    stack.append(pushed)
        finally:
            self.sink.close()
        self.result.bytes_added = self.sink.bytes_added
        self.result.blobs_new = self.sink.blobs_new
        return self.result

    def visit(self, frame: _Frame, name: bytes, path: bytes, sub: _Plan | None) -> _Frame | None:
        """Archive a file now, or return the frame of a folder to walk next."""
        try:
            st = os.stat(path) if sub is not None else os.lstat(path)
        except OSError as exc:
            self.skip(path, _reason(exc))
            return None
        if sub is not None:  # a component above a given path
            if not stat.S_ISDIR(st.st_mode):
                self.skip(path, "not a folder any more")
                return None
            return _Frame(path, _node(name, DIR, st), iter(sorted(sub.items())))
        if stat.S_ISDIR(st.st_mode):
            return self.open_folder(name, path)
        if stat.S_ISREG(st.st_mode):
            self.archive_file(frame, name, path)
            return None
        self.skip(path, "not a regular file or folder: not backed up by this version")
        return None

    def open_folder(self, name: bytes, path: bytes) -> _Frame | None:
        try:
            fd = _open(path, os.O_DIRECTORY)
            try:
                st = os.fstat(fd)
                names = sorted(os.fsencode(n) for n in os.listdir(fd))
            finally:
                os.close(fd)
        except OSError as exc:
            self.skip(path, _reason(exc))
            return None
        self.result.dirs += 1
        return _Frame(path, _node(name, DIR, st), iter([(n, None) for n in names]))

    def archive_file(self, frame: _Frame, name: bytes, path: bytes) -> None:
        futures: list[Future[bytes]] = []
        size = 0
        try:
            fd = _open(path, 0)
            with open(fd, "rb", buffering=0, closefd=True) as stream:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    self.skip(path, "changed into something other than a file during the backup")
                    return
                for chunk in self.chunker.chunks(stream):
                    futures.append(self.sink.submit(chunk))
                    size += len(chunk)
                    self.result.bytes_read += len(chunk)
                    if size > len(chunk):  # big files: report progress inside the file too
                        self.report(path)
        except OSError as exc:
            self.skip(path, _reason(exc))
            return
        node = _node(name, FILE, st)
        node.size = size
        self.result.files += 1
        frame.done.append((node, futures))

    def finish_folder(self, frame: _Frame) -> bytes:
        nodes = []
        for node, futures in frame.done:
            if node.type == FILE:
                node.content = [f.result() for f in futures]
            nodes.append(node)
        return self.sink.store(BlobType.TREE, encode_tree(nodes))


def archive(
    repo: Repository,
    paths: list[str],
    progress: Callable[[ArchiveProgress], None] | None = None,
    dry_run: bool = False,
) -> ArchiveResult:
    """Store `paths` (files or folders, made absolute) and return the root tree's id.

    Unreadable or vanished entries are skipped and listed in the result; storage errors abort.
    With `dry_run` nothing is written: chunks are hashed and looked up to count what is new.
    The caller flushes the repository and saves the snapshot.
    """
    repo.load_index()  # once, before the workers race to load it
    absolute = [os.fsencode(os.path.abspath(p)) for p in paths]
    return _Archiver(repo, progress, dry_run).run(absolute)
