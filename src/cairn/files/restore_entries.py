"""What a restore does with one entry, given what is already in the target.

Every call here works relative to an open descriptor of the parent folder and never follows a
symlink in the target: lstat, unlink, rmtree (fd-based, so a symlink planted inside a folder
being removed is removed, not followed), symlink/mkfifo/mknod (which fail on any existing name
instead of following it) and directory walks with O_NOFOLLOW.

An existing non-folder is kept (its metadata rewritten) only when it has a single link: a hard
link planted in the target to a file elsewhere would otherwise let a restore chmod, chown or
rewrite that file.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator
import stat

from cairn.files.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node

ALWAYS, IF_CHANGED, IF_NEWER, NEVER = "always", "if-changed", "if-newer", "never"
OVERWRITE_MODES = (ALWAYS, IF_CHANGED, IF_NEWER, NEVER)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_S_IFMT = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, FIFO: stat.S_IFIFO,
           CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK}


class Action(enum.Enum):
    CREATE = "create"  # nothing there: create it
    REPLACE = "replace"  # remove what is there, then create
    CHECK = "check"  # a file of the right size: compare content, rewrite only if it differs
    KEEP = "keep"  # the same entry is there: only set its metadata
    LEAVE = "leave"  # leave what is there untouched (--overwrite never / if-newer / if-changed)
    BLOCKED = "blocked"  # a folder is in the way of a non-folder and --delete was not given


def lstat_at(parent: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def same_special(parent: int, name: bytes, st: os.stat_result, node: Node) -> bool:
    """Whether an existing symlink/fifo/device is the one the snapshot has (target, numbers)."""
    if node.type == SYMLINK:
        return os.readlink(name, dir_fd=parent) == node.target
    if node.type in (CHARDEV, BLOCKDEV):
        return st.st_rdev == node.rdev
    return True


def decide(parent: int, name: bytes, st: os.stat_result | None, node: Node, mode: str, delete: bool) -> Action:
    """What to do for `node` given the target's entry `st` (lstat, None when absent).

    - never: anything already there stays; if-newer: it stays unless the snapshot's mtime is
      later than its own;
    - if-changed: a file (or symlink, fifo, device) with the snapshot's type, size and mtime is
      left as it is without being read: a completed earlier restore, or an untouched original;
    - otherwise a file of the snapshot's size is compared with the snapshot (CHECK) and kept when
      equal; a same special entry is kept; anything else is replaced. A folder standing where a
      non-folder goes is removed only with --delete.
    """
    if st is None:
        return Action.CREATE
    if mode == NEVER or (mode == IF_NEWER and node.mtime <= st.st_mtime_ns):
        return Action.LEAVE
    kind = stat.S_IFMT(st.st_mode)
    if node.type == DIR:
        return Action.KEEP if kind == stat.S_IFDIR else Action.REPLACE
    if kind == stat.S_IFDIR:
        return Action.REPLACE if delete else Action.BLOCKED
    if kind != _S_IFMT.get(node.type) or st.st_nlink != 1:
        return Action.REPLACE
    if node.type == FILE:
        if st.st_size != node.size:
            return Action.REPLACE
        if mode == IF_CHANGED and st.st_mtime_ns == node.mtime:
            return Action.LEAVE
        return Action.CHECK
    if not same_special(parent, name, st, node):
        return Action.REPLACE
    if mode == IF_CHANGED and st.st_mtime_ns == node.mtime:
        return Action.LEAVE
    return Action.KEEP


def remove(parent: int, name: bytes, st: os.stat_result) -> None:
    """Remove an entry of the target; a folder with all it holds, never following a symlink.

    Folders are emptied through descriptors opened with O_NOFOLLOW, one level at a time with
    an explicit stack: no path is resolved twice, and no depth is too deep (shutil.rmtree
    recurses, and a snapshot restores deeper than Python's recursion limit)."""
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    top = os.open(name, DIR_FLAGS, dir_fd=parent)
    stack = [(parent, name, top, iter(list_names(top)))]
    try:
        while stack:
            up, folder, fd, names = stack[-1]
            child = next(names, None)
            if child is None:
                stack.pop()
                os.close(fd)
                os.rmdir(folder, dir_fd=up)
                continue
            sub = lstat_at(fd, child)
            if sub is not None and stat.S_ISDIR(sub.st_mode):
                inner = os.open(child, DIR_FLAGS, dir_fd=fd)
                stack.append((fd, child, inner, iter(list_names(inner))))
            elif sub is not None:
                os.unlink(child, dir_fd=fd)
    finally:
        for _, _, fd, _ in stack:
            os.close(fd)


def make_special(parent: int, name: bytes, node: Node) -> None:
    """Create a symlink, FIFO or device node (mode 0600 until metadata.apply sets the real one).

    Raises FileExistsError when the name is taken (never following what is there) and
    PermissionError for a device node made by a user who is not root.
    """
    if node.type == SYMLINK:
        assert node.target is not None
        os.symlink(node.target, name, dir_fd=parent)
    elif node.type == FIFO:
        os.mkfifo(name, 0o600, dir_fd=parent)
    elif node.type in (CHARDEV, BLOCKDEV):
        assert node.rdev is not None
        os.mknod(name, _S_IFMT[node.type] | 0o600, node.rdev, dir_fd=parent)
    else:
        raise ValueError(f"not a special entry type: {node.type}")


def open_folder(top: int, parts: list[bytes]) -> int:
    """Open the folder `parts` below `top` one component at a time, never through a symlink."""
    fd = os.dup(top)
    try:
        for part in parts:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def list_names(fd: int) -> list[bytes]:
    """The names in an open folder, as bytes (listdir on a descriptor returns str)."""
    return [os.fsencode(n) for n in os.listdir(fd)]


def delete_strays(fd: int, folder: bytes, known: set[bytes], wanted: Callable[[bytes], bool]) -> Iterator[tuple[bytes, str]]:
    """Remove the entries of the target folder `fd` that the snapshot folder (snapshot path
    `folder`, names `known`) lacks and that `wanted` says a restore would have written.
    Yields (name, "") for each removed, (name, reason) for each that could not be."""
    for name in list_names(fd):
        if name in known or not wanted(folder + b"/" + name):
            continue
        try:
            st = lstat_at(fd, name)
            if st is not None:
                remove(fd, name, st)
                yield name, ""
        except OSError as exc:
            yield name, f"not deleted: {exc.strerror or exc}"
