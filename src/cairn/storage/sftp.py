"""Objects as files on an SSH server, over SFTP (paramiko).

The layout is the local backend's: object ``a/b/c`` is the file ``<root>/a/b/c``. A write goes
to ``.tmp-<random>`` beside its target and is renamed over it with OpenSSH's atomic
``posix-rename@openssh.com`` once ``fsync@openssh.com`` made it durable, so a dropped
connection or a killed process leaves an invisible temporary, never a prefix. Servers without
the extensions get a plain rename (and `BackendProperties.atomic_replace` False).

Threads share one SSH connection through `cairn.storage.sftp_pool`, which reconnects after a
drop, so the retry wrapper above can simply call again. What a dropped or hung connection raises
is marked transient; SFTP status answers are not: "no such file" is `ObjectMissing`, "permission
denied" is `StorageReadOnly` on writes and `StorageAccessDenied` on reads, and a plain "failure"
on a write is `StorageFull` when the server's ``statvfs@openssh.com`` shows the space is gone
(SFTP has no status for a full disk).
"""

from __future__ import annotations

import builtins
import errno
import re
import secrets
import stat as statmod
import time
from collections.abc import Iterator

import paramiko
from paramiko.sftp import CMD_EXTENDED

from cairn.errors import ObjectMissing, StorageAccessDenied, StorageError, StorageFull, StorageReadOnly
from cairn.storage.base import NAME_RE, BackendProperties, ObjectInfo, check_name, check_range, check_size, describe
from cairn.storage.sftp_pool import OP_TIMEOUT, ChannelPool, connection_gone
from cairn.storage.ssh import Connector

TEMP_PREFIX = ".tmp-"
WRITE_SLICE = 1024 * 1024
RENAME_TRIES = 5
SIZE_CHECKS = 6
READ_AHEAD = 64  # requests in flight per read: 2 MiB
_SEGMENT_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class SftpBackend:
    """A `Backend` on a folder of an SFTP server. Constructing it does not connect."""

    def __init__(
        self, connector: Connector, root: str, location: str, endpoint: str, *, create: bool = False, connections: int = 4,
        timeout: float = OP_TIMEOUT,
    ) -> None:
        self._root = root  # as given, for messages
        self._base = root.rstrip("/")  # "" is the server's "/": every path is f"{base}/{name}"
        self._endpoint = endpoint
        self._create = create
        self._properties = BackendProperties(location=location, connections=connections)
        self._pool = ChannelPool(connector, endpoint, location, timeout)
        self._channel = self._pool.channel
        self._lost = self._pool.lost
        self._fsync = True
        self._posix_rename = True

    @property
    def properties(self) -> BackendProperties:
        return self._properties

    # -- translating failures ---------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"{self._base}/{check_name(name)}"

    def _error(self, sftp: paramiko.SFTPClient, exc: BaseException, name: str, action: str, size: int = 0) -> StorageError:
        """Translate a paramiko or socket failure once, here, into the matching `StorageError`."""
        if isinstance(exc, StorageError):
            return exc
        where = self._properties.location
        if not isinstance(exc, OSError) or connection_gone(sftp, exc):
            return self._lost(exc, f"{action} {name}")
        writing = action in ("write", "delete")
        if exc.errno == errno.ENOENT and action in ("read", "delete"):
            if not self._create and not self._exists(sftp, self._base or "/"):
                return StorageError(f"the folder {self._root} does not exist on {self._endpoint} ({where})")
            return ObjectMissing(f"object {name} does not exist in {where}")
        if exc.errno == errno.EACCES:
            if writing:
                return StorageReadOnly(f"{where} is read-only: permission denied to {action} {name}")
            return StorageAccessDenied(f"permission denied to {action} {name} in {where}")
        if action == "write" and self._out_of_space(sftp, size):
            return StorageFull(f"no space left on {where} while writing {name}: {StorageFull.AFTERMATH}")
        return StorageError(f"cannot {action} {name} in {where}: {describe(exc)}")

    def _exists(self, sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            sftp.stat(path)
            return True
        except OSError:
            return False

    def _out_of_space(self, sftp: paramiko.SFTPClient, needed: int) -> bool:
        """Ask the server's statvfs whether a failed write ran out of space (OpenSSH only)."""
        try:
            kind, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", self._base or "/")
            values = [msg.get_int64() for _ in range(11)]
        except Exception:  # noqa: BLE001 - an older server: we cannot tell, say what failed instead
            return False
        frsize, available = values[1], values[4]
        return frsize * available < max(needed, 1) + 64 * 1024

    # -- writing ----------------------------------------------------------------------------

    def store(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        with memoryview(data) as view:
            check_size(name, view.nbytes)  # before any connection: nothing to undo
            with self._channel() as sftp:
                self._store(sftp, name, path, view)

    def _store(self, sftp: paramiko.SFTPClient, name: str, path: str, view: memoryview) -> None:
        folder = path.rpartition("/")[0]
        temp = f"{folder}/{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            self._write(sftp, temp, folder, view)
            self._replace(sftp, temp, path)
        except BaseException as exc:
            self._remove_quietly(sftp, temp, exc)
            if isinstance(exc, Exception):
                raise self._error(sftp, exc, name, "write", view.nbytes) from exc
            raise

    def _write(self, sftp: paramiko.SFTPClient, temp: str, folder: str, view: memoryview) -> None:
        try:
            handle = sftp.open(temp, "wb")
        except FileNotFoundError:
            self._make_folders(sftp, folder)
            handle = sftp.open(temp, "wb")
        with handle:
            handle.set_pipelined(True)
            for start in range(0, view.nbytes, WRITE_SLICE):
                handle.write(view[start : start + WRITE_SLICE].tobytes())
            handle.flush()
            # paramiko lets a later request swallow the answers to pipelined writes, failures
            # included (a full disk went unnoticed that way): collect every answer here.
            while handle._reqs:
                sftp._read_response(handle._reqs.popleft())
            if self._fsync:
                try:
                    sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle.handle)
                except OSError as exc:
                    if connection_gone(sftp, exc):
                        raise
                    self._fsync = False  # the server lacks the extension: its close is all we get
        # paramiko also ignores a failed close; the size tells whether every byte landed. rclone's
        # server can answer from a folder listing taken while the file was still being written
        # (seen under load as a size of 0), so a short size is asked again before it counts.
        for attempt in range(SIZE_CHECKS):
            written = sftp.stat(temp).st_size
            if written == view.nbytes:
                return
            time.sleep(0.02 * (attempt + 1))
        raise OSError(f"the server kept {written} of {view.nbytes} bytes")

    def _replace(self, sftp: paramiko.SFTPClient, temp: str, path: str) -> None:
        if self._posix_rename and self._posix_replace(sftp, temp, path):
            return
        self._properties = BackendProperties(self._properties.location, self._properties.connections, False)
        try:
            sftp.remove(path)  # plain SFTP rename refuses to replace: not atomic, but never a prefix
        except FileNotFoundError:
            pass
        sftp.rename(temp, path)

    def _posix_replace(self, sftp: paramiko.SFTPClient, temp: str, path: str) -> bool:
        """Rename atomically over `path`; False if the server lacks posix-rename."""
        for attempt in range(RENAME_TRIES):
            try:
                sftp.posix_rename(temp, path)
                return True
            except OSError as exc:
                if connection_gone(sftp, exc):
                    raise
                if "unsupported" in str(exc).lower():
                    self._posix_rename = False
                    return False
                # rclone's server replaces a file by removing it, then renaming, and two writers
                # of one name can trip over each other there, in either step. Only a rename moves
                # a temporary with a random name: if ours is gone, the rename happened.
                if not self._exists(sftp, temp):
                    return True
                if attempt == RENAME_TRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        return False

    def _make_folders(self, sftp: paramiko.SFTPClient, folder: str) -> None:
        """Create `folder` and any missing parent (the repository's own folder on ``init``)."""
        missing: list[str] = []
        current = folder
        while current and not self._exists(sftp, current):
            missing.append(current)
            current = current.rpartition("/")[0]
        for path in reversed(missing):
            try:
                sftp.mkdir(path)
            except OSError:
                if not self._exists(sftp, path):  # another writer may have made it first
                    raise

    def _remove_quietly(self, sftp: paramiko.SFTPClient, temp: str, cause: BaseException) -> None:
        if isinstance(cause, OSError) and connection_gone(sftp, cause):
            return  # nothing reaches the server now; the temporary stays invisible to `list`
        try:
            sftp.remove(temp)
        except Exception:  # noqa: BLE001 - best effort: a leftover temporary is harmless
            pass

    def delete(self, name: str) -> None:
        path = self._path(name)
        with self._channel() as sftp:
            try:
                sftp.remove(path)
            except Exception as exc:
                raise self._error(sftp, exc, name, "delete") from exc

    # -- reading ----------------------------------------------------------------------------

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        with self._channel() as sftp:
            try:
                with sftp.open(path, "rb") as handle:
                    end = check_range(name, offset, length, handle.stat().st_size)
                    if end == offset:
                        return b""
                    # One read() of many MiB is quadratic in paramiko (it grows a bytes object
                    # chunk by chunk): ask for request-sized pieces, pipelined, and join once.
                    step = handle.MAX_REQUEST_SIZE
                    pieces = [(start, min(step, end - start)) for start in range(offset, end, step)]
                    data = b"".join(handle.readv(pieces, max_concurrent_prefetch_requests=READ_AHEAD))
            except Exception as exc:
                raise self._error(sftp, exc, name, "read") from exc
        if len(data) != end - offset:
            raise StorageError(f"short read of {name} in {self._properties.location}: got {len(data)} of {end - offset} bytes")
        return data

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        with self._channel() as sftp:
            try:
                attributes = sftp.stat(path)
            except Exception as exc:
                raise self._error(sftp, exc, name, "read") from exc
        if not statmod.S_ISREG(attributes.st_mode or 0):
            raise ObjectMissing(f"object {name} does not exist in {self._properties.location}")
        return ObjectInfo(name, attributes.st_size or 0)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk only the folder the prefix points into, like the local backend."""
        folder_part, _, first = prefix.rpartition("/")
        segments = folder_part.split("/") if folder_part else []
        if not all(_SEGMENT_RE.match(segment) for segment in segments):
            return
        with self._channel() as sftp:
            found = self._walk(sftp, "/".join([self._base, *segments]) or "/", folder_part, first, top=True)
        yield from found

    def _walk(self, sftp: paramiko.SFTPClient, folder: str, name_prefix: str, first: str, top: bool = False) -> builtins.list[ObjectInfo]:
        try:
            entries = sftp.listdir_attr(folder)
        except FileNotFoundError:
            if top and not self._create and not self._exists(sftp, self._base or "/"):
                raise StorageError(f"the folder {self._root} does not exist on {self._endpoint} ({self._properties.location})") from None
            return []
        except Exception as exc:
            raise self._error(sftp, exc, name_prefix or ".", "list") from exc
        found: list[ObjectInfo] = []
        for entry in entries:
            if not entry.filename.startswith(first) or not _SEGMENT_RE.match(entry.filename):
                continue
            name = f"{name_prefix}/{entry.filename}" if name_prefix else entry.filename
            mode = entry.st_mode or 0
            if statmod.S_ISDIR(mode):
                found.extend(self._walk(sftp, f"{folder}/{entry.filename}", name, ""))
            elif statmod.S_ISREG(mode) and NAME_RE.match(name):
                found.append(ObjectInfo(name, entry.st_size or 0))
        return found

    def close(self) -> None:
        self._pool.close()
