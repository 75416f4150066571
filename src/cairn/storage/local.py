"""Objects as plain files in a local folder (internal disk, external drive, NFS mount).

Object ``a/b/c`` is the file ``<root>/a/b/c``. Only what every filesystem cairn meets can do is
used — ext4, XFS, NFS, FAT32 and exFAT: regular files and folders, ``os.replace`` within one
folder, ``fsync``. No symlinks, no hard links, no permissions or ownership, no file over
`MAX_OBJECT_SIZE` (the FAT32 limit). Tested on ext4, tmpfs, XFS, and FAT32 and exFAT through
their FUSE drivers (tests/test_storage.py). One FAT32 limit remains: a folder holds at most
65,536 entries and a 64-hex-digit name takes 6 of them, so about 10,900 objects fit in the flat
``snapshots/`` and ``index/`` folders (``data/`` is spread over 256 subfolders).

A write goes to a temporary file ``.tmp-<random>`` beside its target and is renamed over it once
it is durable. Valid object names never start with a dot, so temporaries (and foreign files such
as ``.DS_Store``) can never be mistaken for objects, and one left by a killed process is invisible
to `list` and removed by `LocalBackend.remove_stale_temporaries` (which prune runs).
"""

from __future__ import annotations

import errno
import os
import re
import stat as statmod
import time
from collections.abc import Iterator

from cairn.errors import ObjectMissing, StorageError, StorageFull, StorageReadOnly
from cairn.storage.base import (
    NAME_RE,
    BackendProperties,
    ObjectInfo,
    check_name,
    check_range,
    check_size,
    describe,
)

TEMP_PREFIX = ".tmp-"
_SEGMENT_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
# A folder that is not there, or a file where a folder was expected: either way no object.
_ABSENT = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
# Some filesystems (FAT via certain drivers, some NFS clients) cannot fsync a folder; the rename
# is then as durable as that filesystem can make it, which is not a reason to fail the write.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EPERM}


class LocalBackend:
    """A `Backend` on a folder. Constructing it touches nothing, so it never fails.

    The folder (and any subfolder) is created by the first `store`; other operations on a
    missing folder report `ObjectMissing` (or `StorageError` for `list`, so that an unmounted
    drive never looks like an empty repository).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.location = os.fspath(path)
        self._root = os.path.abspath(self.location)
        self._properties = BackendProperties(location=self.location, connections=4, shared_with_forks=True)

    @property
    def properties(self) -> BackendProperties:
        return self._properties

    def _path(self, name: str) -> str:
        return os.path.join(self._root, *check_name(name).split("/"))

    def _error(self, exc: OSError, name: str, action: str) -> StorageError:
        """Translate an OSError once, here, into the matching `StorageError`."""
        code = exc.errno
        writing = action in ("write", "delete")
        if code in _FULL and action == "write":
            return StorageFull(f"no space left on {self.location} while writing {name}: {StorageFull.AFTERMATH}")
        if code in _READ_ONLY and writing:
            return StorageReadOnly(f"{self.location} is read-only: cannot {action} {name}")
        if code in _ABSENT and action in ("read", "delete"):
            return ObjectMissing(f"object {name} does not exist in {self.location}")
        return StorageError(f"cannot {action} {name} in {self.location}: {describe(exc)}")

    # -- writing ---------------------------------------------------------------------------

    def store(self, name: str, data: bytes | memoryview) -> None:
        """Write to a temporary file, make it durable, then rename it over the name.

        The rename is the commit point: before it the old content (or nothing) is visible,
        after it the whole new content is, and both the file and its folder are fsynced so a
        power loss cannot bring back the old version or a hole.
        """
        with memoryview(data) as view:  # released on return: a view kept alive pins the buffer
            with self.writer(name) as writer:  # it checks the size before creating anything
                writer.write(view)
                writer.commit()

    def writer(self, name: str) -> ObjectWriter:
        """`store` in parts: for a writer that would otherwise hold a whole object in memory."""
        return ObjectWriter(self, name)

    def _commit(self, temp: str, path: str) -> None:
        """The one step that makes a new object visible (a seam tests use to simulate a crash)."""
        os.replace(temp, path)

    def _make_folders(self, folder: str) -> None:
        """Create missing folders one level at a time, fsyncing each parent so they persist."""
        missing: list[str] = []
        current = folder
        while not os.path.isdir(current):
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue  # another thread or process made it first
            _fsync_folder(os.path.dirname(path))

    def delete(self, name: str) -> None:
        """Remove the file; the empty folders stay, as later stores will reuse them."""
        path = self._path(name)
        try:
            os.unlink(path)
        except OSError as exc:
            raise self._error(exc, name, "delete") from exc

    # -- reading ---------------------------------------------------------------------------

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                end = check_range(name, offset, length, size)
                handle.seek(offset)
                data = handle.read(end - offset)
        except OSError as exc:
            raise self._error(exc, name, "read") from exc
        if len(data) != end - offset:
            # The file shrank under us (another process replaced it): never return a prefix.
            raise StorageError(
                f"short read of {name} in {self.location}: got {len(data)} of {end - offset} bytes"
            )
        return data

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            info = os.stat(path)
        except OSError as exc:
            raise self._error(exc, name, "read") from exc
        if not statmod.S_ISREG(info.st_mode):
            raise ObjectMissing(f"object {name} does not exist in {self.location}")
        return ObjectInfo(name, info.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk only the folder the prefix points into, so ``data/`` never scans ``keys/``."""
        folder_part, _, first = prefix.rpartition("/")
        segments = folder_part.split("/") if folder_part else []
        if not all(_SEGMENT_RE.match(segment) for segment in segments):
            return  # no valid name can start with this prefix
        start = os.path.join(self._root, *segments)
        if not os.path.isdir(start):
            if not os.path.isdir(self._root):
                raise StorageError(f"{self.location} does not exist or is not a folder")
            return
        yield from self._walk(start, folder_part, first)

    def _walk(self, folder: str, name_prefix: str, first: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(folder) as entries:
                found = [entry for entry in entries if entry.name.startswith(first)]
        except FileNotFoundError:
            return  # removed while we walked: it holds nothing any more
        except OSError as exc:
            raise self._error(exc, name_prefix or ".", "list") from exc
        for entry in found:
            name = f"{name_prefix}/{entry.name}" if name_prefix else entry.name
            if not _SEGMENT_RE.match(entry.name):
                continue  # temporaries, hidden or foreign files (.DS_Store, lost+found)
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(entry.path, name, "")
                elif entry.is_file(follow_symlinks=False) and NAME_RE.match(name):
                    yield ObjectInfo(name, entry.stat(follow_symlinks=False).st_size)
            except FileNotFoundError:
                continue  # deleted between listing and stat
            except OSError as exc:
                raise self._error(exc, name, "list") from exc

    # -- housekeeping ----------------------------------------------------------------------

    def remove_stale_temporaries(self, older_than_seconds: float = 86400) -> int:
        """Delete temporaries left by killed writers; return how many were removed.

        Only old ones: a younger temporary may belong to a store still running in another
        process, and a large object on a slow drive can take a long time to write.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        for folder, dirs, files in os.walk(self._root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for filename in files:
                if not filename.startswith(TEMP_PREFIX):
                    continue
                path = os.path.join(folder, filename)
                try:
                    if os.stat(path).st_mtime <= cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue  # its writer finished or someone else cleaned it
                except OSError as exc:
                    raise self._error(exc, filename, "delete") from exc
        return removed

    def close(self) -> None:
        """Nothing to release: no handle is held between calls."""


class ObjectWriter:
    """One object written in parts, then made visible whole by `commit`: the temporary file,
    fsyncs and rename of `LocalBackend.store`, which writes through it. A backup worker streams
    its pack this way instead of holding 16 MiB until the pack is full. Leaving the `with`
    block without `commit` (an error, a worker told to stop) removes the temporary file.
    """

    def __init__(self, backend: LocalBackend, name: str) -> None:
        self._backend, self._name = backend, name
        self._path = backend._path(name)
        self._fd = -1
        self._temp = ""
        self.size = 0

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def write(self, data: bytes | memoryview) -> None:
        with memoryview(data) as view:
            check_size(self._name, self.size + view.nbytes)
            try:
                if self._fd < 0:
                    self._open()
                done = 0
                while done < view.nbytes:
                    done += os.write(self._fd, view[done:])
            except OSError as exc:
                self.discard()
                raise self._backend._error(exc, self._name, "write") from exc
            self.size += view.nbytes

    def _open(self) -> None:
        folder = os.path.dirname(self._path)
        temp = _temporary_beside(self._path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self._fd = os.open(temp, flags, 0o666)
        except FileNotFoundError:
            self._backend._make_folders(folder)
            self._fd = os.open(temp, flags, 0o666)
        self._temp = temp

    def commit(self) -> None:
        """Make the object durable and visible (an empty one if nothing was written)."""
        try:
            if self._fd < 0:
                self._open()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._backend._commit(self._temp, self._path)
            self._temp = ""
            _fsync_folder(os.path.dirname(self._path))
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError):
                raise self._backend._error(exc, self._name, "write") from exc
            raise

    def discard(self) -> None:
        """Forget what was written, unless committed: close and remove the temporary file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temp:
            _remove_quietly(self._temp)
            self._temp = ""


def replace_file(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> None:
    """Replace the file `path` by `data` atomically, for cairn's own small local files (cache
    entries, checkpoints): written to a ``.tmp-`` file beside it and renamed over it, so a
    reader sees the old or the new content, never a part. `durable`: the file is fsynced before
    the rename and its folder after, so a power loss cannot leave it empty or missing either.
    Raises OSError (the temporary file removed); the folder must exist.
    """
    path = os.fspath(path)
    temp = _temporary_beside(path)
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        _remove_quietly(temp)
        raise
    if durable:
        _fsync_folder(os.path.dirname(path))


def _temporary_beside(path: str) -> str:
    """A new temporary file's name in `path`'s folder."""
    return os.path.join(os.path.dirname(path), TEMP_PREFIX + os.urandom(8).hex())  # not secrets: it loads libcrypto (~4 MiB RSS)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
