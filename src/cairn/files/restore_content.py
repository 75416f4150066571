"""A restored file's content: write it sparse, check it against the snapshot, compare it with a
file already in the target.

Sparse writing: a run of zero bytes is skipped with an offset (pwrite) instead of written, and
the file is cut to its size at the end (ftruncate), so the holes of a sparse source are holes
again, and a file of a few MiB of data in 4 GiB costs a few MiB of disk. Zero runs are found
per 64 KiB block at 64 KiB-aligned file offsets (a filesystem block is 4 KiB, so a skipped block
is always whole blocks of hole), with `bytes.startswith` at C speed. A blob found to be all
zeros is remembered by id: the next hundred identical zero chunks of the same sparse file are
not even loaded and decrypted.

Comparing with the snapshot (`--verify`, and the "is this file already restored?" check of a
second run) cuts the file where the snapshot's blobs end and computes each piece's blob id with
the repository's keyed hash: equal ids mean equal bytes. A range that is a hole (SEEK_DATA) is
zeros without being read.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future

from cairn.errors import DamagedObject
from cairn.files.tree import Node
from cairn.repo.repository import Repository

BLOCK = 64 * 1024
PREFETCH = 2  # blobs loaded ahead per file: memory ~ writers * (PREFETCH + 1) * max chunk size
_ZERO_BLOCK = bytes(BLOCK)
_READ = 4 * 1024 * 1024


class ZeroBlobs:
    """Ids of blobs known to be all zeros, with their length (shared by all writer threads)."""

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def get(self, blob_id: bytes) -> int | None:
        return self._ids.get(blob_id)

    def add(self, blob_id: bytes, length: int) -> None:
        with self._lock:
            self._ids[blob_id] = length


def is_zero(data: bytes | bytearray, start: int = 0, end: int | None = None) -> bool:
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        n = min(BLOCK, end - pos)
        if not data.startswith(_ZERO_BLOCK if n == BLOCK else _ZERO_BLOCK[:n], pos):
            return False
        pos += n
    return True


def write_sparse(fd: int, data: bytes, offset: int) -> tuple[int, int]:
    """Write `data` at `offset`, skipping 64 KiB-aligned blocks of zeros; returns (bytes written,
    the file offset just after the last byte written, or `offset` when none was)."""
    written, end_written = 0, offset
    end = len(data)
    pos = 0
    run_start: int | None = None
    while pos <= end:
        block_end = min(end, (offset + pos) // BLOCK * BLOCK + BLOCK - offset)
        zero = pos == end or is_zero(data, pos, block_end)
        if zero and run_start is not None:
            written += _pwrite_all(fd, memoryview(data)[run_start:pos], offset + run_start)
            end_written = offset + pos
            run_start = None
        elif not zero and run_start is None:
            run_start = pos
        if pos == end:
            break
        pos = block_end
    return written, end_written


def _pwrite_all(fd: int, view: memoryview, offset: int) -> int:
    total = len(view)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return total


def blobs(load: Callable[[bytes], bytes], ids: list[bytes], zeros: ZeroBlobs, loader: Executor) -> Iterator[tuple[bytes, bytes | int]]:
    """(id, data) in file order, or (id, length) for a blob known to be zeros (not loaded).

    `load` reads, decrypts, decompresses and checks one blob (PackReads.load). Up to PREFETCH
    blobs are loaded ahead in `loader` while the caller writes; a single-blob file is loaded in
    the calling thread, saving a hand-off.
    """
    if len(ids) == 1:
        known = zeros.get(ids[0])
        yield ids[0], known if known is not None else load(ids[0])
        return
    pending: deque[tuple[bytes, Future[bytes] | int]] = deque()
    todo = iter(ids)

    def queue() -> None:
        blob_id = next(todo, None)
        if blob_id is not None:
            known = zeros.get(blob_id)
            pending.append((blob_id, known if known is not None else loader.submit(load, blob_id)))

    try:
        for _ in range(PREFETCH + 1):
            queue()
        while pending:
            blob_id, item = pending.popleft()
            queue()
            yield blob_id, item if isinstance(item, int) else item.result()
    finally:
        for _, item in pending:
            if not isinstance(item, int):
                item.cancel()


def write_content(
    load: Callable[[bytes], bytes], fd: int, node: Node, zeros: ZeroBlobs, loader: Executor, sparse: bool = True
) -> tuple[int, list[int]]:
    """Write the file's blobs into the empty file `fd`; returns (bytes written to disk, the
    length of each blob), the lengths for a verification that follows."""
    offset = written = written_to = 0
    lengths = []
    for blob_id, data in blobs(load, node.content, zeros, loader):
        if isinstance(data, int):
            length = data
        else:
            length = len(data)
            if not sparse:
                written += _pwrite_all(fd, memoryview(data), offset)
                written_to = offset + length
            elif is_zero(data):
                zeros.add(blob_id, length)
            else:
                count, written_to = write_sparse(fd, data, offset)
                written += count
        lengths.append(length)
        offset += length
    if offset != node.size:
        raise DamagedObject(f"the snapshot says {node.size} bytes, its content has {offset}")
    if written_to < offset:  # the file ends in a hole: give it its size
        os.ftruncate(fd, offset)
    return written, lengths


def is_single_file(fd: int) -> bool:
    """Whether `fd` (opened by name in the target) is a regular file with no other name: the
    only kind of existing file a restore may keep and set metadata on."""
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


class ContentMismatch(Exception):
    """What was written is not what the snapshot says (--verify): the target is at fault."""


def _next_data(fd: int, pos: int, end: int) -> int:
    """The first offset >= pos holding data (not a hole), or `end`."""
    try:
        return min(os.lseek(fd, pos, os.SEEK_DATA), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole up to the end of the file
            return end
        raise


def _matches(repo: Repository, fd: int, offset: int, length: int, blob_id: bytes, zeros: ZeroBlobs) -> bool:
    """Whether the file's bytes [offset, offset+length) are the blob `blob_id`.

    A range that is all hole (SEEK_DATA) is zeros without being read: it matches when the blob
    is known to be zeros, or when its id is the id of that many zero bytes (hashed once per
    length, then remembered), so a second run over a 4 GiB sparse file hashes almost nothing."""
    known_zero = zeros.get(blob_id) == length
    if _next_data(fd, offset, offset + length) >= offset + length:
        if known_zero:
            return True
        if repo.blob_id(_zeros(length)) == blob_id:
            zeros.add(blob_id, length)
            return True
        return False
    data = os.pread(fd, length, offset)
    if len(data) != length:
        return False
    return is_zero(data) if known_zero else repo.blob_id(data) == blob_id


def _zeros(length: int) -> bytes:
    return _ZERO_BLOCK[:length] if length <= BLOCK else bytes(length)


def first_difference(repo: Repository, fd: int, node: Node, lengths: list[int], zeros: ZeroBlobs) -> int | None:
    """The offset of the first blob whose bytes in `fd` differ from the snapshot, or None when
    the whole file equals it (size included)."""
    if os.fstat(fd).st_size != node.size or sum(lengths) != node.size:
        return 0
    offset = 0
    for blob_id, length in zip(node.content, lengths):
        if not _matches(repo, fd, offset, length, blob_id, zeros):
            return offset
        offset += length
    return None


def blob_lengths(repo: Repository, node: Node, zeros: ZeroBlobs) -> list[int]:
    """Each content blob's length, from the index (no blob is loaded)."""
    out = []
    for blob_id in node.content:
        known = zeros.get(blob_id)
        out.append(known if known is not None else repo.lookup(blob_id).raw_length)
    return out
