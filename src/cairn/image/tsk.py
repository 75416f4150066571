"""Files read straight out of an image snapshot, through The Sleuth Kit (pytsk3).

cairn's own filesystem plugins know only where blocks are used; walking directories, inodes,
extents, FAT chains and MFT runs of ext2/3/4, FAT12/16/32 and NTFS is what The Sleuth Kit does,
read-only and without a kernel driver (these machines have no vfat/ntfs driver, and mounting a
disk image needs root). pytsk3 reads through a Python object: `RegionReader`, which loads the
image's chunks from the repository as TSK asks for them.

TSK reports a failed read as a bare RuntimeError; the reader's own error (a damaged blob, a
missing pack) is kept and raised instead, so it keeps its message and exit code. Listings hide
what is not a file a user made: TSK's virtual entries (``$OrphanFiles``, FAT's ``$FAT1``),
names of deleted files (their blocks are not in the image) and, unless asked, NTFS's metadata
files (MFT records 0-15: ``$MFT``, ``$Bitmap``, ...).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytsk3  # type: ignore[import-not-found]  # no type stubs

from cairn.errors import CairnError, NotFound, UsageError
from cairn.image.volume import RegionReader

PIECE = 1 << 20
NTFS_SYSTEM_RECORDS = 16
T = TypeVar("T")

KINDS = {
    pytsk3.TSK_FS_META_TYPE_REG: "file",
    pytsk3.TSK_FS_META_TYPE_DIR: "dir",
    pytsk3.TSK_FS_META_TYPE_LNK: "symlink",
}
VIRTUAL = (pytsk3.TSK_FS_META_TYPE_VIRT, pytsk3.TSK_FS_META_TYPE_VIRT_DIR)


@dataclass(frozen=True)
class Entry:
    """One directory entry as the filesystem stores it."""

    path: str
    name: str
    kind: str
    """``file``, ``dir``, ``symlink`` or ``other`` (FIFOs, devices, sockets)."""
    size: int
    mode: int
    """Permission bits as the filesystem records them (FAT and NTFS: what TSK derives)."""
    mtime_ns: int
    inode: int
    target: str = ""
    """A symlink's target."""


class _Image(pytsk3.Img_Info):  # type: ignore[misc]
    """What TSK reads: a region of the image, from the repository."""

    def __init__(self, reader: RegionReader) -> None:
        self._reader = reader  # before the base constructor, which calls get_size
        self.failure: CairnError | None = None
        super().__init__(url="", type=pytsk3.TSK_IMG_TYPE_EXTERNAL)

    def read(self, offset: int, size: int) -> bytes:
        try:
            return self._reader.read(offset, size)
        except CairnError as exc:
            self.failure = exc
            raise

    def get_size(self) -> int:
        return self._reader.size

    def close(self) -> None:
        pass


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def clean_path(path: str) -> str:
    """An absolute path inside the filesystem; ``..`` cannot leave its root."""
    return posixpath.normpath("/" + path.strip()).replace("//", "/")


class ImageFs:
    """The filesystem in one region of an image, opened read-only."""

    def __init__(self, reader: RegionReader, kind: str) -> None:
        self.reader, self.kind = reader, kind
        self._image = _Image(reader)
        try:
            self._fs = self._call(lambda: pytsk3.FS_Info(self._image))
        except OSError:
            raise UsageError(f"no filesystem The Sleuth Kit can read in this partition (cairn saw {kind})") from None

    def _call(self, fn: Callable[[], T]) -> T:
        """Run a TSK call; a failure of our own reader is raised as itself."""
        self._image.failure = None
        try:
            return fn()
        except (RuntimeError, OSError):
            if self._image.failure is not None:
                raise self._image.failure from None
            raise

    def _open(self, path: str) -> Any:
        try:
            return self._call(lambda: self._fs.open(path))
        except OSError:
            raise NotFound(f"{path}: no such file or folder in the image") from None

    def stat(self, path: str) -> Entry:
        path = clean_path(path)
        handle = self._open(path)
        return self._entry(posixpath.dirname(path), posixpath.basename(path) or "/", handle)

    def _entry(self, parent: str, name: str, handle: Any) -> Entry:
        meta = handle.info.meta
        kind = KINDS.get(meta.type, "other")
        target = _text(meta.link or b"") if kind == "symlink" else ""
        return Entry(
            path=posixpath.join(parent, name) if name != "/" else "/", name=name, kind=kind,
            size=int(meta.size), mode=int(meta.mode) & 0o7777,
            mtime_ns=int(meta.mtime) * 1_000_000_000 + int(meta.mtime_nano or 0), inode=int(meta.addr), target=target,
        )

    def _hidden(self, parent: str, handle: Any) -> bool:
        return self.kind == "ntfs" and parent == "/" and int(handle.info.meta.addr) < NTFS_SYSTEM_RECORDS

    def list(self, path: str, show_system: bool = False) -> list[Entry]:
        """The entries of a folder, sorted by name (a file lists as itself)."""
        path = clean_path(path)
        entry = self.stat(path)
        if entry.kind != "dir":
            return [entry]
        try:
            directory = self._call(lambda: self._fs.open_dir(path=path))
        except OSError as exc:
            raise UsageError(f"{path}: the folder cannot be read from the image ({exc})") from None
        entries = []
        for handle in self._call(lambda: list(directory)):
            name_info, meta = handle.info.name, handle.info.meta
            name = _text(name_info.name)
            if name in (".", "..") or meta is None or meta.type in VIRTUAL:
                continue
            if int(name_info.flags) & int(pytsk3.TSK_FS_NAME_FLAG_UNALLOC):
                continue  # a deleted file: its blocks were not imaged
            if not show_system and self._hidden(path, handle):
                continue
            entries.append(self._entry(path, name, handle))
        return sorted(entries, key=lambda e: e.name)

    def walk(self, path: str, show_system: bool = False) -> Iterator[Entry]:
        """Every entry under `path`, depth first, folders before their content."""
        stack = [clean_path(path)]
        while stack:
            folder = stack.pop()
            entries = self.list(folder, show_system)
            for entry in entries:
                yield entry
            stack.extend(e.path for e in reversed(entries) if e.kind == "dir")

    def read(self, path: str, sink: Callable[[bytes], object]) -> int:
        """Stream a regular file's bytes to `sink` in pieces; returns its size."""
        path = clean_path(path)
        handle = self._open(path)
        entry = self._entry(posixpath.dirname(path), posixpath.basename(path), handle)
        if entry.kind == "dir":
            raise UsageError(f"{path} is a folder: list it with image-ls")
        if entry.kind == "symlink":
            raise UsageError(f"{path} is a symbolic link to {entry.target}")
        if entry.kind != "file":
            raise UsageError(f"{path} is not a regular file")
        done = 0
        while done < entry.size:
            size = min(PIECE, entry.size - done)
            data = self._call(lambda: handle.read_random(done, size))
            if len(data) != size:
                raise UsageError(f"{path}: the filesystem gave {len(data)} bytes at {done}, expected {size}")
            sink(data)
            done += size
        return done
