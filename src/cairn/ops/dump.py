"""`cairn dump`: a file's bytes, or a folder as a tar stream, written to a binary stream.

Everything is streamed: a file's blobs are loaded a few ahead in worker threads (decrypting and
decompressing release the GIL) and written one at a time, so memory stays near `PREFETCH` chunks
whatever the file or folder size, and the output can be a pipe (``cairn dump ... | tar -x``).

The tar stream is POSIX.1-2001 (PAX), which is what carries everything a snapshot holds:

- names as bytes: a name that is not UTF-8 goes into a PAX ``path`` record with
  ``hdrcharset=BINARY``, byte-exact (tarfile does this for surrogate-escaped names);
- mtime and atime to the nanosecond as PAX records, uid/gid with user and group names, the
  mode including setuid/setgid/sticky;
- symlinks with their target, FIFOs, character and block devices with their numbers;
- hard links: the first name of a file (within what is dumped) carries the content, the others
  are link entries pointing to it, as ``tar -c`` writes them;
- extended attributes as ``SCHILY.xattr.NAME`` records, which GNU tar (``--xattrs``) and
  bsdtar read.

Entry names follow restic: the full path inside the snapshot without its leading ``/``
(``home/u/docs/letter.txt``), so ``tar -x`` recreates the layout under its folder.
"""

from __future__ import annotations

import itertools
import os
import tarfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from cairn.errors import DamagedObject, UsageError
from cairn.files.tree import DIR, FILE, Node
from cairn.files.walk import TreeLoader, walk_node
from cairn.ops.access import read_lock
from cairn.ops.browse import display, select
from cairn.ops.snapshots import SnapshotInfo
from cairn.repo.repository import Repository

WORKERS = 4
PREFETCH = 4  # blobs loaded ahead of the writer: memory ~ 2 * PREFETCH chunks (sealed + open)
# tarfile copies file content in reads of this size and writes in blocks of it (defaults: 16 KiB
# and 10 KiB): fewer, larger writes to the pipe.
COPY_SIZE = 1 << 20
RAW, TAR = "raw", "tar"
ARCHIVES = (TAR,)

_TAR_TYPES = {
    FILE: tarfile.REGTYPE,
    DIR: tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
}


@dataclass(frozen=True)
class DumpOptions:
    snapshot: str
    """``ID``, ``ID:PATH``, ``latest`` or ``latest:PATH``."""
    path: str | None = None
    """A path inside the snapshot (or inside ``ID:PATH``)."""
    archive: str | None = None
    """None: a file as its bytes, a folder as tar. ``tar``: a tar stream even for one file."""


@dataclass(frozen=True)
class DumpResult:
    snapshot: SnapshotInfo
    path: bytes
    format: str
    """``raw`` (a file's bytes) or ``tar``."""
    entries: int
    bytes: int
    """Content bytes written (tar headers and padding not counted)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason): entries of a type tar cannot hold (a type this version does not know)."""


class _Content:
    """A file's content as a stream of blobs, loaded a few ahead in a thread pool."""

    def __init__(self, repo: Repository, pool: ThreadPoolExecutor) -> None:
        self.repo = repo
        self.pool = pool

    def blobs(self, ids: list[bytes]) -> Iterator[bytes]:
        if len(ids) == 1:  # most files: a hand-off to a thread would only add latency
            yield self.repo.load_blob(ids[0])
            return
        pending: deque[Future[bytes]] = deque()
        todo = iter(ids)
        for blob_id in itertools.islice(todo, PREFETCH):
            pending.append(self.pool.submit(self.repo.load_blob, blob_id))
        try:
            while pending:
                data = pending.popleft().result()
                following = next(todo, None)
                if following is not None:
                    pending.append(self.pool.submit(self.repo.load_blob, following))
                yield data
        finally:
            for future in pending:
                future.cancel()

    def checked(self, path: bytes, node: Node) -> Iterator[bytes]:
        """The blobs of `node`, failing if they add up to other than the size the tree records."""
        total = 0
        for data in self.blobs(node.content):
            total += len(data)
            if total > node.size:
                break
            yield data
        if total != node.size:
            raise DamagedObject(f"{display(path)}: the snapshot says {node.size} bytes, its content has {total}")


class _Reader:
    """A file object over a blob iterator for `tarfile.addfile`, whose copy loop needs every
    ``read(n)`` before the end to return exactly `n` bytes (blob boundaries must not show)."""

    def __init__(self, blobs: Iterator[bytes]) -> None:
        self._blobs = blobs
        self._view = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        parts = []
        while size != 0:
            if not self._view:
                data = next(self._blobs, None)
                if data is None:
                    break
                self._view = memoryview(data)
            part = self._view if size < 0 else self._view[:size]
            parts.append(part)
            self._view = self._view[len(part):]
            size -= len(part) if size > 0 else 0
        return b"".join(parts)

    def drain(self) -> None:
        """Run the blob iterator to its end, so its size check runs."""
        for _ in self._blobs:
            pass


def _pax_time(ns: int) -> str:
    """Nanoseconds as the decimal seconds a PAX ``mtime`` record holds, exactly."""
    sign = "-" if ns < 0 else ""
    seconds, fraction = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{seconds}.{fraction:09d}"


def _text(raw: bytes) -> str:
    """Bytes as tarfile wants them: str, with undecodable bytes kept by surrogateescape."""
    return raw.decode("utf-8", "surrogateescape")


def tar_info(path: bytes, node: Node) -> tarfile.TarInfo | None:
    """The tar header for one entry, or None for a type tar cannot hold."""
    kind = _TAR_TYPES.get(node.type)
    if kind is None:
        return None
    info = tarfile.TarInfo(_text(path.lstrip(b"/")))
    info.type = kind
    info.mode = node.mode
    info.uid, info.gid = node.uid, node.gid
    info.uname, info.gname = node.user, node.group
    info.mtime = node.mtime // 1_000_000_000
    pax = {"mtime": _pax_time(node.mtime), "atime": _pax_time(node.atime)}
    if node.type == FILE:
        info.size = node.size
    if node.target is not None:
        info.linkname = _text(node.target)
    if node.rdev is not None:
        info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
    for name, value in node.xattrs:
        pax["SCHILY.xattr." + _text(name)] = _text(value)
    info.pax_headers = pax
    return info


class _Dumper:
    def __init__(self, loader: TreeLoader, content: _Content) -> None:
        self.loader = loader
        self.content = content
        self.entries = 0
        self.bytes = 0
        self.skipped: list[tuple[str, str]] = []
        self.linked: dict[tuple[int, ...], bytes] = {}

    def first_link(self, path: bytes, node: Node) -> bytes | None:
        """The path this hard-linked entry was first archived under, None if it is the first.

        Only entries with a link count above one are remembered, so the memory is one path per
        hard-linked file, not per entry."""
        if node.links is None or node.type == DIR:
            return None
        key = node.links[:2]  # (device, inode)
        first = self.linked.get(key)
        if first is None:
            self.linked[key] = path
        return first

    def raw(self, path: bytes, node: Node, out: BinaryIO) -> None:
        for data in self.content.checked(path, node):
            out.write(data)
            self.bytes += len(data)
        self.entries = 1

    def tar(self, path: bytes, node: Node, out: BinaryIO) -> None:
        # encoding + surrogateescape: names that are not UTF-8 are written back byte-exact
        with tarfile.open(fileobj=out, mode="w|", bufsize=COPY_SIZE, format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as tar:
            setattr(tar, "copybufsize", COPY_SIZE)  # a TarFile attribute typeshed does not list
            for entry_path, entry in walk_node(self.loader, path, node):
                info = tar_info(entry_path, entry)
                if info is None:
                    self.skipped.append((display(entry_path), f"entry type {entry.type!r} cannot go into a tar archive"))
                    continue
                first = self.first_link(entry_path, entry)
                if first is not None:  # a later name of a file already in the archive
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, _text(first.lstrip(b"/")), 0
                    tar.addfile(info)
                elif entry.type == FILE:
                    reader = _Reader(self.content.checked(entry_path, entry))
                    tar.addfile(info, reader)
                    reader.drain()
                    self.bytes += entry.size
                else:
                    tar.addfile(info)
                self.entries += 1


def dump(repo: Repository, options: DumpOptions, open_output: Callable[[str], BinaryIO]) -> DumpResult:
    """Write the selected file or folder to the stream `open_output(format)` returns.

    `open_output` is called once the format is known (``raw`` or ``tar``) and before anything
    is written, so a caller can refuse a tar stream to a terminal but let a text file through.
    """
    if options.archive not in (None, *ARCHIVES):
        raise UsageError(f"unknown archive format {options.archive!r}: use {', '.join(ARCHIVES)}")
    loader = TreeLoader(repo)
    with read_lock(repo, "dump"), ThreadPoolExecutor(WORKERS, thread_name_prefix="cairn-dump") as pool:
        sel = select(repo, loader, options.snapshot, options.path)
        repo.load_index()  # once, before the prefetch threads race to load it
        dumper = _Dumper(loader, _Content(repo, pool))
        if sel.node.type == FILE and options.archive is None:
            fmt = RAW
        elif sel.node.type == DIR or options.archive == TAR:
            fmt = TAR
        else:
            raise UsageError(f"{display(sel.path)} is a {sel.node.type}, which has no content: use --archive tar")
        out = open_output(fmt)
        if fmt == RAW:
            dumper.raw(sel.path, sel.node, out)
        else:
            dumper.tar(sel.path, sel.node, out)
        out.flush()
    return DumpResult(SnapshotInfo.from_snapshot(sel.snapshot), sel.path, fmt, dumper.entries, dumper.bytes,
                      dumper.skipped)
