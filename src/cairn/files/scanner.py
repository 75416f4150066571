"""Walking the source: the plan of given paths, opening and listing folders, and the pre-scan.

Everything is opened relative to the descriptor of its parent folder, with O_NOFOLLOW, never by
a path string: a folder renamed or replaced by a symlink while the backup runs cannot redirect
it elsewhere (a backup run as root must not be tricked into reading /etc/shadow into a user's
folder). O_NOATIME keeps a backup from touching access times where the kernel allows it (the
owner or root), so that backing up does not itself change what the next backup compares.

The pre-scan counts the files and bytes a backup will visit, with the same excludes, in a
thread of its own; it exists only so that progress can show a percentage and an ETA (restic
does the same), and is not started when nobody looks at the progress.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass

from cairn.files.excludes import Excluder

Plan = dict[bytes, "Plan | None"]
"""What to walk above the given paths: name -> deeper plan, or None for "this entry and all
below it"."""

_NOATIME = getattr(os, "O_NOATIME", 0)
_EUID = os.geteuid()
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def make_plan(paths: list[bytes]) -> Plan | None:
    """Merge absolute paths into one plan; None when "/" itself is given (walk everything).

    A path inside another given path adds nothing: it is walked once, as part of the outer one.
    """
    plan: Plan = {}
    for path in paths:
        parts = [p for p in path.split(b"/") if p not in (b"", b".")]
        if not parts:
            return None
        level: Plan | None = plan
        for part in parts[:-1]:
            assert level is not None
            if part in level and level[part] is None:
                level = None
                break
            level = level.setdefault(part, {})
        if level is not None:
            level[parts[-1]] = None
    return plan


def join(folder: bytes, name: bytes) -> bytes:
    return folder + name if folder.endswith(b"/") else folder + b"/" + name


def open_at(dir_fd: int | None, name: bytes, flags: int, owner: int | None = None) -> int:
    """Open `name` in `dir_fd` without touching its access time where the kernel allows that.

    O_NOATIME needs root or ownership; asked for anyway it fails with EPERM, so it is asked for
    only when it will work (knowing the `owner` uid from a stat saves a failing system call per
    file).
    """
    if _NOATIME and (_EUID == 0 or owner == _EUID):
        try:
            return os.open(name, flags | _NOATIME, dir_fd=dir_fd)
        except PermissionError:
            pass
    return os.open(name, flags, dir_fd=dir_fd)


def list_names(fd: int) -> list[bytes]:
    """The names in the open folder `fd`, as bytes, sorted (trees are sorted by raw bytes)."""
    names = [os.fsencode(n) for n in os.listdir(fd)]
    names.sort()
    return names


def reason(exc: OSError) -> str:
    """What a user reads in the warning about an entry that could not be backed up."""
    if isinstance(exc, FileNotFoundError):
        return "vanished during the backup"
    return exc.strerror or str(exc)


@dataclass
class Totals:
    """What the pre-scan found so far; `done` once it has seen everything."""

    files: int = 0
    bytes: int = 0
    dirs: int = 0
    done: bool = False


def prescan(
    paths: list[bytes], excluder: Excluder, one_file_system: bool, totals: Totals, stop: threading.Event
) -> None:
    """Count the regular files and their bytes under `paths` with the backup's excludes.

    Best effort by design: it races the backup, so an entry that changes in between is counted
    as the scan saw it, and errors are ignored (the backup reports them).
    """
    stack: list[tuple[bytes, int | None]] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if excluder.path_excluded(path):
            continue
        if stat.S_ISDIR(st.st_mode):
            stack.append((path, st.st_dev if one_file_system else None))
        elif stat.S_ISREG(st.st_mode) and not excluder.too_large(st.st_size):
            totals.files += 1
            totals.bytes += st.st_size
    while stack and not stop.is_set():
        folder, device = stack.pop()
        try:
            fd = os.open(folder, DIR_FLAGS | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if excluder.markers and excluder.folder_marker(fd) is not None:
                continue
            totals.dirs += 1
            with os.scandir(fd) as entries:
                items = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
        except OSError:
            continue
        finally:
            os.close(fd)
        for name, st in items:
            path = join(folder, os.fsencode(name))
            if excluder.matchers and excluder.path_excluded(path):
                continue
            if stat.S_ISDIR(st.st_mode):
                if device is None or st.st_dev == device:
                    stack.append((path, device))
            elif stat.S_ISREG(st.st_mode) and not excluder.too_large(st.st_size):
                totals.files += 1
                totals.bytes += st.st_size
    totals.done = not stop.is_set()


def start_prescan(paths: list[bytes], excluder: Excluder, one_file_system: bool) -> tuple[Totals, threading.Event]:
    """Run `prescan` in a daemon thread; set the returned event to stop it early."""
    totals, stop = Totals(), threading.Event()
    thread = threading.Thread(
        target=prescan, args=(paths, excluder, one_file_system, totals, stop), name="cairn-prescan", daemon=True
    )
    thread.start()
    return totals, stop
