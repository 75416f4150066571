"""Who is using a device or image file: mounts, active swap, and freezing for a consistent read.

A source is "in use" through its own device number, its partitions, or a loop device backed by
it (including `losetup --offset` loops, which cover only a byte range of it). Each use carries
that byte range, so imaging partition 2 is not refused because partition 1 is mounted.
FUSE mounts (ntfs-3g) show the device or file they serve as their mount source, so they are
matched by path too.
"""

from __future__ import annotations

import fcntl
import glob
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cairn.errors import UsageError

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


@dataclass(frozen=True)
class Use:
    """One mount or swap area on (part of) a device or file."""

    mountpoint: str
    fstype: str
    read_only: bool
    start: int = 0
    length: int | None = None
    """The byte range of the source it covers; None = to the end."""

    def overlaps(self, start: int, length: int) -> bool:
        end = None if self.length is None else self.start + self.length
        return self.start < start + length and (end is None or end > start)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


def _devices_over(path: str) -> dict[str, tuple[int, int | None]]:
    """'major:minor' of every block device whose content is (part of) `path`, with the byte
    range of `path` it shows: the device itself, its partitions, loops backed by it."""
    real = os.path.realpath(path)
    st = os.stat(real)
    out: dict[str, tuple[int, int | None]] = {}
    bases: list[tuple[str, int]] = []
    if stat.S_ISBLK(st.st_mode):
        bases.append((f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", 0))
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        target = _read(backing)
        try:
            same = os.path.realpath(target) == real or os.stat(target).st_ino == st.st_ino and os.stat(target).st_dev == st.st_dev
        except OSError:
            same = False
        if same:
            loop_dir = os.path.dirname(os.path.dirname(backing))
            offset = int(_read(os.path.join(loop_dir, "loop", "offset")) or 0)
            limit = int(_read(os.path.join(loop_dir, "loop", "sizelimit")) or 0)
            dev = _read(os.path.join(loop_dir, "dev"))
            if dev:
                out[dev] = (offset, limit or None)
                bases.append((dev, offset))
    for dev, offset in bases:
        out.setdefault(dev, (offset, None))
        for part in glob.glob(f"/sys/dev/block/{dev}/*/partition"):
            part_dir = os.path.dirname(part)
            start = int(_read(os.path.join(part_dir, "start")) or 0) * 512
            size = int(_read(os.path.join(part_dir, "size")) or 0) * 512
            out[_read(os.path.join(part_dir, "dev"))] = (offset + start, size)
    return out


def uses_of(path: str) -> list[Use]:
    """Every mount and active swap area that reads or writes `path`'s bytes."""
    devices = _devices_over(path)
    real = os.path.realpath(path)
    names = {real} | {os.path.realpath(f"/dev/block/{d}") for d in devices}
    uses = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        source = os.path.realpath(_unescape(tail[1])) if tail[1].startswith("/") else tail[1]
        span = devices.get(fields[2])
        if span is None and source in names:
            span = next((devices[d] for d in devices if os.path.realpath(f"/dev/block/{d}") == source), (0, None))
        if span is None:
            continue
        options = set(fields[5].split(",")) | set(tail[2].split(",") if len(tail) > 2 else [])
        uses.append(Use(_unescape(fields[4]), tail[0], "ro" in options, span[0], span[1]))
    for line in _read("/proc/swaps").splitlines()[1:]:
        swap = _unescape(line.split()[0]) if line.split() else ""
        if swap and os.path.realpath(swap) in names:
            dev = next((d for d in devices if os.path.realpath(f"/dev/block/{d}") == os.path.realpath(swap)), None)
            start, length = devices.get(dev, (0, None)) if dev else (0, None)
            uses.append(Use("[swap]", "swap", False, start, length))
    return uses


@dataclass
class Freeze:
    """Set when the bound ran out and the filesystems were thawed before imaging finished."""

    expired: bool = False


@contextmanager
def frozen(mountpoints: list[str], bound: float) -> Iterator[Freeze]:
    """Freeze filesystems (FIFREEZE) for the block, thawing them after `bound` seconds at the
    latest: a frozen root filesystem blocks every writer on the machine, so the freeze must
    never outlive its purpose. If the bound expires, `expired` tells the caller its read may
    be inconsistent."""
    state = Freeze()
    fds: list[int] = []
    lock = threading.Lock()

    def thaw() -> None:
        with lock:
            for fd in fds:
                try:
                    fcntl.ioctl(fd, FITHAW, 0)
                except OSError:
                    pass
                os.close(fd)
            fds.clear()

    def expire() -> None:
        state.expired = True
        thaw()

    timer = threading.Timer(bound, expire)
    timer.daemon = True
    try:
        for mountpoint in mountpoints:
            fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.ioctl(fd, FIFREEZE, 0)
            except OSError as exc:
                os.close(fd)
                raise UsageError(f"cannot freeze {mountpoint}: {exc.strerror}") from None
            fds.append(fd)
        timer.start()
        yield state
    finally:
        timer.cancel()
        thaw()
