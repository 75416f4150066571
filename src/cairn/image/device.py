"""Block devices and disk-image files, read and written by absolute offset.

Both kinds look the same from here: a file descriptor, a size and a logical sector size.
Reads are exact (a short read raises), so a truncated device never turns into silently
zero-filled chunks. I/O failures are `DeviceError` (exit code 22) naming the device and byte.
"""

from __future__ import annotations

import ctypes
import errno
import ctypes.util
import fcntl
import functools
import os
import stat
import struct
from collections.abc import Callable

from cairn.errors import DeviceError, UsageError

BLKSSZGET = 0x1268
BLKZEROOUT = 0x127F

ReadAt = Callable[[int, int], bytes]
"""Read exactly `size` bytes at `offset` (relative to a volume); raise on a short read."""


class OutsideVolume(ValueError):
    """A filesystem structure pointed outside its volume: the filesystem is damaged, and its
    plugin reports it as such (a ValueError), never as a device failure."""


def sector_size_of(fd: int, is_device: bool) -> int:
    if not is_device:
        return 512
    buf = fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4)
    return int(struct.unpack("i", buf)[0])


class Device:
    """An open device or image file; `size` and `sector` are read once at open."""

    def __init__(self, path: str, writable: bool = False, create: bool = False) -> None:
        """Open for reading, or for writing; a block device opened for writing is claimed
        exclusively (O_EXCL), so the kernel refuses it while mounted or otherwise held."""
        self.path = path
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
        elif writable and os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode):
            flags |= os.O_EXCL
        try:
            self.fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise UsageError(f"{path} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise UsageError(f"{path} is in use (mounted, or held by another program)") from None
            raise UsageError(f"cannot open {path}: {exc.strerror}") from None
        st = os.fstat(self.fd)
        self.is_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_device or stat.S_ISREG(st.st_mode)):
            os.close(self.fd)
            raise UsageError(f"{path} is neither a block device nor a regular file")
        self.rdev = st.st_rdev if self.is_device else 0
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.sector = sector_size_of(self.fd, self.is_device)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset: int, size: int) -> bytes:
        buf = bytearray(size)
        self.readinto(memoryview(buf), offset)
        return bytes(buf)

    def readinto(self, view: memoryview, offset: int) -> None:
        """Fill `view` from `offset`; retries short reads, raises at the end of the device."""
        done = 0
        while done < len(view):
            try:
                got = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as exc:
                raise DeviceError(f"reading {self.path} at byte {offset + done}: {exc.strerror}") from None
            if got == 0:
                raise DeviceError(f"{self.path} ended at byte {offset + done}, expected more data")
            done += got

    def write(self, offset: int, data: bytes | memoryview, limit: int) -> None:
        """Write at `offset`, never past `limit` (the end the restore was allowed to touch)."""
        if offset < 0 or offset + len(data) > limit:
            raise DeviceError(f"refusing to write {len(data)} bytes at {offset}: outside the target")
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                raise DeviceError(f"writing {self.path} at byte {offset + done}: {exc.strerror}") from None

    def zero(self, offset: int, length: int, limit: int, sparse: bool) -> None:
        """Make a span read as zeros: a hole in a file, BLKZEROOUT on a device, else writes."""
        if offset < 0 or offset + length > limit:
            raise DeviceError(f"refusing to zero {length} bytes at {offset}: outside the target")
        if sparse and not self.is_device and punch_hole(self.fd, offset, length):
            return
        if self.is_device:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
                return
            except OSError:
                pass
        self.write(offset, bytes(length), limit)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise DeviceError(f"flushing {self.path}: {exc.strerror}") from None

    def drop_cache(self) -> None:
        """Forget cached pages, so the next read comes from the medium, not from memory."""
        try:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass

    def advise_sequential(self) -> None:
        """Tell the kernel the device is read front to back, so it reads further ahead (a
        delta restore reads the whole used part of a target in order)."""
        try:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass

    def volume(self, start: int, length: int) -> ReadAt:
        """A reader confined to `[start, start + length)`, as the filesystem readers expect."""

        def read(offset: int, size: int) -> bytes:
            if offset < 0 or size < 0 or offset + size > length:
                raise OutsideVolume(f"a read at {offset}+{size} leaves the volume of {length} bytes")
            return self.read(start + offset, size)

        return read


@functools.cache
def _fallocate() -> Callable[..., int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fn  # type: ignore[no-any-return]


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a span of a file (FALLOC_FL_PUNCH_HOLE); False where the filesystem cannot."""
    flags = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
    return _fallocate()(fd, flags, offset, length) == 0
