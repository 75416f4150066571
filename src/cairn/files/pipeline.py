"""The threads between the walk and the repository: read files, cut chunks, store blobs.

A backup into a local folder hands the files to worker processes instead, once it has more
than a few (pipeline_procs.py); they run this module's per-file code (`FileReader`). Remote
repositories, dry runs and streams use the threads below.

Shape::

    walker (caller's thread)  --batches of small files-->  small-file readers (2)
                              --one big file at a time-->  big-file reader (1)
    readers: open the file in its folder, capture its metadata (files.metadata.capture)
    small-file readers: read, check the file did not change, store its one chunk themselves
    big-file reader: read, cut into chunks and hand each one to              savers (see below)
    savers:  hash, dedup, compress, encrypt, verify, pack   (Repository.save_blob; a full pack
             is written by the saver that filled it while the others go on sealing)

Every stage but the walk spends most of its time in code that releases the GIL (read, zstd;
BLAKE3 for large inputs; not AES-GCM, the `cryptography` package holds it), so two cores stay
busy. Small files go in batches of up to 64 files / 4 MiB, one
task each: a thread-pool hand-off costs about as much Python time as reading a 4 KiB file, and
most files are small (48,000 of the 48,600 files of /usr are under 256 KiB).

Two batches of tiny files (under LIGHT_BATCH_BYTES together) are never read at the same time:
their work is nearly all Python, which the GIL runs one thread at a time anyway, and two
readers handing the GIL back and forth (with the walker) at every system call cost more than
they gained. Measured on 100,000 files of a few bytes with a core free: 0.69x the wall and
0.68x the CPU of two readers at once, mostly GIL hand-offs (system time 1.9 -> 0.9 s). A
batch with more bytes runs beside another, since reading, hashing, compressing and encrypting
release the GIL.

The readers, not the walker, open each file (relative to its folder's descriptor, which the
walker keeps open until the folder's reads are done) and capture its metadata through the open
file: the walk is one thread, and on a tree of small files it was the bottleneck while the
readers waited for it; the open and the extended-attribute calls release the GIL, so in the
readers they run beside the walk.

Memory is bounded whatever the file sizes: at most IN_FLIGHT_BATCHES batches (each at most
BATCH_BYTES) and IN_FLIGHT_BIG big files are queued, and at most one chunk more than there are
savers (each at most the chunker's maximum size, 4 MiB by default) wait for or sit in a saver,
besides the pack each saver may be uploading (`saver_count`). Big files
have one reader of their own because the chunker allocates a buffer of twice the maximum chunk
size (8 MiB) per reader; one reader already cuts chunks far faster than the savers store them.
Their slots are separate from the small files' so that a queue of big files never leaves the
small-file readers idle, and the big-file reader does not wait for a file's chunks to be stored
before reading the next file (the walk collects the chunk ids when it finishes the folder):
measured with py-spy, waiting there left the savers idle 60 % of a first backup of /usr.

A file that changes while it is read (its size, mtime or ctime differ between the fstat before
and the one after reading) is read once more from the start; if it changes again it is skipped
and listed, because an inconsistent copy that looks complete is worse than a missing file the
user is told about. A file whose read fails (EIO) is skipped and listed the same way.
"""

from __future__ import annotations

import dataclasses
import io
import operator
import os
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pyfastcdc import FastCDC

from cairn.files.chunker import Chunker, RawReader, Replay, fastcdc
from cairn.files.metadata import capture
from cairn.files.scanner import FILE_FLAGS, open_at, reason
from cairn.files.tree import FILE, Node, entry_map, pack_entry
from cairn.repo.blob import BlobType
from cairn.repo.config import ChunkerParams
from cairn.repo.repository import Repository
from cairn.storage.stack import is_remote

READERS = 2
SAVERS = max(2, min(4, os.cpu_count() or 2))
"""Saver threads at least: about one per core, since sealing is CPU work."""
MAX_SAVERS = 16
IN_FLIGHT_BATCHES = 3 * READERS
IN_FLIGHT_BIG = 32  # a queued big file holds only its descriptor until its reader gets to it
BATCH_FILES = 64
BATCH_BYTES = 4 << 20
LIGHT_BATCH_BYTES = 256 << 10
"""A batch of less is almost all Python work (under the GIL): one runs at a time."""
_READ_STEP = 1 << 16


def saver_count(connections: int, remote: bool) -> int:
    """Saver threads for a backend that serves `connections` requests at once.

    A saver that filled a pack uploads it itself, so at most as many packs go up at once as
    there are savers. On a 2-core machine SAVERS is 2, which would leave an S3 backend (8
    connections by default) or a user's ``--connections 16`` mostly idle over a slow link; so a
    remote backend gets as many savers as connections, and the connection limit keeps the uploads
    within what the user allowed. A saver waiting for the network takes no CPU, and costs at most
    a chunk and a pack of memory. A local folder keeps one saver per core, where waiting is short.
    Measured with bench/savers.py on 2 cores: 2.4x faster through a link of 8 MB/s per
    connection, 1.3x slower to an S3 server on the same machine (it competes for the cores).
    """
    return max(SAVERS, min(connections, MAX_SAVERS)) if remote else SAVERS


class Aborted(Exception):
    """Raised in the threads once the backup is being abandoned."""


@dataclass(slots=True)
class ReadResult:
    content: list[bytes] = field(default_factory=list)
    size: int = 0
    mtime: int = 0
    ctime: int = 0
    """Times from the fstat before the read that was kept: they describe the content."""
    error: str | None = None
    """Why the file is not in the snapshot (it is then listed as skipped)."""
    warning: str | None = None
    stored: list[Future[bytes]] = field(default_factory=list)
    """For a file cut into chunks: the savers' futures, in order, until `Pipeline.result`
    turns them into `content`."""
    node: Node | None = None
    """The file's metadata, captured by the reader (files opened by `read_at` only)."""
    packed: bytes | None = None
    """Instead of `node`, from a worker process: the file's tree entry, packed (`pack_node`)."""

    def finished_node(self) -> Node:
        """The captured node completed by the read (`complete`)."""
        assert self.node is not None
        return self.complete(self.node)

    def complete(self, node: Node) -> Node:
        """`node` given what the read found: the content, and the size and times it matches
        (the captured node, or a hard link's sharing this read)."""
        node.content, node.size, node.mtime, node.ctime = self.content, self.size, self.mtime, self.ctime
        return node

    def pack_node(self) -> None:
        """Replace the node by its packed tree entry (a worker process, before sending the
        result: the walk's process, the busiest one, then unpickles one bytes object and packs
        nothing for this file)."""
        self.packed = pack_entry(entry_map(self.finished_node()))
        self.node = None

    def __reduce__(self) -> tuple[type[ReadResult], tuple[Any, ...]]:
        """Pickled as its fields in order, as Node is (a backup worker's result per file)."""
        return ReadResult, _result_fields(self)


_result_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(ReadResult)))


class Pending:
    """A file whose content is being read; `result()` waits for it."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    def done(self) -> bool:
        future = self.batch.future
        return future is not None and future.done()


# A file to read: (the folder's descriptor, its name there, its lstat).
_File = tuple[int, bytes, os.stat_result]


class _Batch:
    __slots__ = ("files", "size", "future", "results")

    def __init__(self) -> None:
        self.files: list[_File] = []
        self.size = 0
        self.future: Future[list[ReadResult]] | None = None
        self.results: list[ReadResult] | None = None  # the future's, once fetched


class _ReadError(Exception):
    """An OSError from reading the source file (not from storing: that one aborts)."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(reason(exc))
        self.reason = reason(exc)


class FileReader:
    """Reads one file at a time: change detection, chunking, the skip-and-list rules. Where the
    chunks go is the subclass's: saver threads here (`Pipeline`), or a backup worker process's
    own packs (pipeline_procs)."""

    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
        self.small = params.min_size
        self.whole = 2 * params.max_size  # what the streaming chunker buffers anyway
        self._local = threading.local()
        self._lock = threading.Lock()
        self.aborted = False
        self.bytes_read = 0

    def store(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        """Store one blob (a small file's only chunk), returning its id."""
        raise NotImplementedError

    def _hand(self, chunk: bytes | memoryview) -> Future[bytes]:
        """Store one chunk of a larger file, perhaps later; the future gives its id."""
        raise NotImplementedError

    def read_files(self, files: list[_File]) -> list[ReadResult]:
        """Open, capture and read each file (a reader's batch); errors of a file are its result."""
        results = []
        for dir_fd, name, st in files:
            if self.aborted:
                raise Aborted()
            results.append(self.read_file_at(dir_fd, name, st))
        return results

    def read_file_at(self, dir_fd: int, name: bytes, st: os.stat_result | None, owner: int | None = None) -> ReadResult:
        """Open, capture and read one file. Without the walk's lstat `st` (a worker process: the
        fstat costs it less than pickling the lstat cost the walk), the open file's fstat stands
        for it, and `owner` (the lstat's uid) decides O_NOATIME."""
        fd = -1
        try:
            try:
                fd = open_at(dir_fd, name, FILE_FLAGS, st.st_uid if st is not None else owner)
                if st is None:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        return ReadResult(error="changed into something other than a file during the backup")
                # Through the open file: the attributes of the very inode read.
                node = capture(dir_fd, name, st, fd, FILE)
            except OSError as exc:
                return ReadResult(error=reason(exc))
            result = self._read_file(fd, st)
        finally:
            if fd >= 0:
                os.close(fd)
        result.node = node
        return result

    def _read_file(self, fd: int, st: os.stat_result) -> ReadResult:
        """Read one file, twice at most (see the module docstring).

        The first read compares against the walker's lstat instead of an fstat of its own (one
        system call less per file): the file opened must then also be the same inode, so one
        swapped in between (even a FIFO) is caught by the fstat after and read again properly.
        """
        warning = None
        before = st
        for attempt in (1, 2):
            # Only errors of the source file become a skipped entry; anything the storage
            # raises while a chunk is stored propagates and ends the backup.
            try:
                if attempt == 2:
                    before = _fstat(fd)
                    if not stat.S_ISREG(before.st_mode):
                        return ReadResult(error="changed into something other than a file during the backup")
                content, stored, size = self._content(fd, before.st_size)
                after = _fstat(fd)
            except _ReadError as exc:
                return ReadResult(error=exc.reason)
            if (before.st_ino, before.st_dev, before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
                after.st_ino, after.st_dev, after.st_size, after.st_mtime_ns, after.st_ctime_ns
            ) and stat.S_ISREG(after.st_mode):
                return ReadResult(content, size, before.st_mtime_ns, before.st_ctime_ns, warning=warning, stored=stored)
            if attempt == 1:
                warning = "changed while it was read; read again"
                try:
                    _rewind(fd)
                except _ReadError as exc:
                    return ReadResult(error=exc.reason)
        return ReadResult(error="changed while it was read, twice: not backed up")

    def _content(self, fd: int, size_hint: int) -> tuple[list[bytes], list[Future[bytes]], int]:
        """(ids of a small file, stored here; or the savers' futures of a chunked one; size)."""
        if self.small < size_hint <= self.whole:
            whole = self._read_whole(fd, size_hint)
            if whole is not None:
                return [], self._cut(whole), len(whole)
            _rewind(fd)  # it grew past the limit: stream it from the start
        head = self._read_head(fd, size_hint)
        if len(head) <= self.small:
            return ([self.store(BlobType.DATA, head)] if head else []), [], len(head)
        with io.FileIO(fd, "rb", closefd=False) as rest:
            stored, size = self._chunked(rest, head)
            return [], stored, size

    def _read_whole(self, fd: int, size: int) -> bytes | None:
        """A medium file in one buffer of its own size, or None if it is bigger than `whole`.

        The streaming chunker allocates and zero-fills an 8 MiB buffer per file and copies
        every chunk out of it; a file read whole is cut in place instead (the chunks are views
        of this one buffer), which saves a memset, a copy and heap churn per medium file.
        """
        try:
            data = os.read(fd, size + 1)
            while len(data) <= self.whole:
                more = os.read(fd, self.whole + 1 - len(data))
                if not more:
                    break
                data += more
        except OSError as exc:
            raise _ReadError(exc) from None
        self._count(len(data))
        if len(data) > self.whole:
            self._count(-len(data))
            return None
        return data

    def _cut(self, data: bytes) -> list[Future[bytes]]:
        return [self._hand(chunk.data) for chunk in self._cutter().cut_buf(data)]

    def _cutter(self) -> FastCDC:
        """This thread's cutter of buffers (one per thread: FastCDC objects are not shared)."""
        cutter = getattr(self._local, "cutter", None)
        if cutter is None:
            cutter = self._local.cutter = fastcdc(self.params)
        return cutter

    def _read_head(self, fd: int, size_hint: int) -> bytes:
        """Up to `small` + 1 bytes: a small file in one read of its size plus one byte.

        A short read of a regular file at or past its size is its end (POSIX), so no second
        read is needed to see EOF; a file with no size (/proc, /sys) is read until EOF, since
        those return a page at a time.
        """
        limit = self.small + 1
        want = min(size_hint + 1, limit)
        parts = []
        total = 0
        while total < limit:
            try:
                block = os.read(fd, want)
            except OSError as exc:
                raise _ReadError(exc) from None
            if not block:
                break
            parts.append(block)
            total += len(block)
            if len(block) < want and size_hint and total >= size_hint:
                break
            want = min(limit - total, _READ_STEP)
        self._count(total)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _chunked(self, rest: RawReader, head: bytes) -> tuple[list[Future[bytes]], int]:
        """Cut a stream into chunks handed to the savers; returns their futures (not waited
        for: see the module docstring) and the size."""
        chunker = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self._local.chunker = Chunker(self.params)
        futures: list[Future[bytes]] = []
        size = 0
        chunks = chunker.chunks(Replay(head, rest))
        try:
            while True:
                try:
                    chunk = next(chunks, None)
                except OSError as exc:
                    raise _ReadError(exc) from None
                if chunk is None:
                    break
                if self.aborted:
                    raise Aborted()
                if size >= len(head):
                    self._count(len(chunk))
                elif size + len(chunk) > len(head):
                    self._count(size + len(chunk) - len(head))
                size += len(chunk)
                futures.append(self._hand(chunk))
        finally:
            close = getattr(chunks, "close", None)  # a generator: release its buffer now
            if close is not None:
                close()
        return futures, size

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n


class Pipeline(FileReader):
    """Reads files in reader threads and stores their chunks in saver threads."""

    big_readers = 1
    """Big files read and cut at once (see the module docstring)."""

    def __init__(self, repo: Repository, dry_run: bool) -> None:
        super().__init__(repo.config.chunker)
        self.repo = repo
        self.dry_run = dry_run
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="cairn-read")
        self._big = ThreadPoolExecutor(self.big_readers, thread_name_prefix="cairn-read-big")
        properties = repo.backend.properties
        self.savers = saver_count(properties.connections, is_remote(properties.location))
        self._savers = ThreadPoolExecutor(self.savers, thread_name_prefix="cairn-save")
        self._batches = threading.BoundedSemaphore(IN_FLIGHT_BATCHES)
        self._light = threading.Lock()
        self._bigs = threading.BoundedSemaphore(IN_FLIGHT_BIG)
        self._chunks = threading.BoundedSemaphore(self.savers + 1)  # each saver busy, one waiting
        self._seen: set[bytes] = set()
        self._batch = _Batch()
        self.batched_up_to = self.small
        """Files up to this size share batches; a larger one is a batch of its own."""
        self.bytes_added = 0
        self.blobs_new = 0

    # -- the walker's side -----------------------------------------------------------------

    def read_at(self, dir_fd: int, name: bytes, st: os.stat_result) -> Pending:
        """Open the file `name` of the folder `dir_fd`, capture its metadata into the result's
        `node`, and read it; `st` is its lstat. The caller keeps `dir_fd` open until `result`
        has returned (the open happens in a reader, later)."""
        file = (dir_fd, name, st)
        size = st.st_size
        if size <= self.batched_up_to:
            batch = self._batch
            files = batch.files
            files.append(file)
            batch.size += size
            pending = Pending(batch, len(files) - 1)
            if len(files) >= BATCH_FILES or batch.size >= BATCH_BYTES:
                self.submit()
            return pending
        single = _Batch()
        single.files.append(file)
        single.size = size
        self._submit(single, big=True)
        return Pending(single, 0)

    def submit(self) -> None:
        """Hand the batch of small files collected so far to a reader."""
        if self._batch.files:
            batch, self._batch = self._batch, _Batch()
            self._submit(batch, big=False)

    def _submit(self, batch: _Batch, big: bool) -> None:
        """Start reading `batch`, setting its `future` (a big file's batch has that file only)."""
        pool, slots = (self._big, self._bigs) if big else (self._readers, self._batches)
        slots.acquire()
        try:
            batch.future = pool.submit(self._run, batch, slots)
        except BaseException:
            slots.release()
            raise

    def result(self, pending: Pending) -> ReadResult:
        """The read file's result, its chunks stored (waits for the reader and the savers)."""
        batch = pending.batch
        if batch.results is None:
            if batch.future is None:
                self.submit()
            assert batch.future is not None
            batch.results = batch.future.result()
        result = batch.results[pending.index]
        if result.stored:
            result.content = [f.result() for f in result.stored]
            result.stored = []
        return result

    def store(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        """Store one blob (or, in a dry run, only find out whether it is new); thread-safe."""
        if self.dry_run:
            blob_id = self.repo.blob_id(data)
            with self._lock:
                new = blob_id not in self._seen
                self._seen.add(blob_id)
            new = new and not self.repo.has_blob(blob_id)
        else:
            blob_id, new = self.repo.save_blob(blob_type, data)
        if new:
            with self._lock:
                self.bytes_added += len(data)
                self.blobs_new += 1
        return blob_id

    def flush(self) -> None:
        """Make every blob stored so far part of a pack named by an index object (before a
        checkpoint's snapshot refers to them)."""
        self.repo.flush()

    def close(self, abort: bool = False) -> None:
        if abort:
            self.aborted = True
            self._batch = _Batch()
        self._readers.shutdown(wait=True, cancel_futures=abort)
        self._big.shutdown(wait=True, cancel_futures=abort)
        self._savers.shutdown(wait=True, cancel_futures=abort)

    # -- reader threads -------------------------------------------------------------------

    def _run(self, batch: _Batch, slots: threading.BoundedSemaphore) -> list[ReadResult]:
        if batch.size < LIGHT_BATCH_BYTES and len(batch.files) > 1:
            with self._light:
                return self._run_batch(batch, slots)
        return self._run_batch(batch, slots)

    def _run_batch(self, batch: _Batch, slots: threading.BoundedSemaphore) -> list[ReadResult]:
        try:
            return self.read_files(batch.files)
        finally:
            slots.release()

    def read_stream(self, stream: RawReader) -> tuple[list[bytes], int]:
        """Chunk and store a whole stream (standard input, a command's output) from the calling
        thread, the savers storing in parallel; returns (content ids, size). A read error raises
        OSError: a stream cannot be skipped like a file."""
        try:
            stored, size = self._chunked(stream, b"")
        except _ReadError as exc:
            raise OSError(exc.reason) from None
        return [f.result() for f in stored], size

    def _hand(self, chunk: bytes | memoryview) -> Future[bytes]:
        self._chunks.acquire()
        try:
            return self._savers.submit(self._save_chunk, chunk)
        except BaseException:
            self._chunks.release()
            raise

    def _save_chunk(self, chunk: bytes | memoryview) -> bytes:
        try:
            return self.store(BlobType.DATA, chunk)
        finally:
            self._chunks.release()


def _fstat(fd: int) -> os.stat_result:
    try:
        return os.fstat(fd)
    except OSError as exc:
        raise _ReadError(exc) from None


def _rewind(fd: int) -> None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as exc:
        raise _ReadError(exc) from None
