"""Read every piece of an entry's metadata at backup time, and set it back at restore time.

The archiver calls `entry_type` and `capture` for each entry it walks (it adds the content or
subtree itself); the restorer calls `apply` once an entry exists and its content is written.
Both sides work relative to an open descriptor of the parent folder, never by a path string,
so a folder renamed or replaced by a symlink during the walk cannot redirect them elsewhere.

What is captured, and why it is enough for an exact copy:

- mode with setuid/setgid/sticky, numeric owner (plus the names, for people reading a listing),
  atime/mtime/ctime in ns (ctime cannot be set back; it is kept for `diff` and the files cache);
- a symlink's target as raw bytes (never decoded, so any byte survives);
- device numbers as the raw Linux `st_rdev` (`os.major`/`os.minor` split it);
- every extended attribute readable by the caller, in every namespace. POSIX ACLs are the
  `system.posix_acl_access` / `system.posix_acl_default` attributes: kept byte for byte and
  written back the same way, they come back exactly (`getfacl` shows the same entries);
- hard-link identity (device, inode, link count) for non-folders with more than one link, so a
  restore can link the names again instead of writing the content twice.

Order at restore matters: owner first (chown clears setuid/setgid and file capabilities), then
extended attributes (ACLs, `security.capability`), then the mode (it must come after chown, and
chmod after an ACL keeps both consistent), times last (every change before touches ctime only,
but writing an attribute on some filesystems updates mtime). A symlink gets no chmod (Linux has
no symlink modes) and its owner and times are set without following it.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from functools import lru_cache

from cairn.files.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node

_TYPES = {
    stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK,
    stat.S_IFIFO: FIFO, stat.S_IFCHR: CHARDEV, stat.S_IFBLK: BLOCKDEV,
}
# Attributes the system assigns itself (SELinux labels and the like): never removed from a
# restored entry just because the snapshot does not have them.
_KEEP_PREFIX = b"security."
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def entry_type(st: os.stat_result) -> str | None:
    """The tree `type` of an entry, or None for a socket (nothing to back up: it is recreated by
    whatever program listens on it)."""
    return _TYPES.get(stat.S_IFMT(st.st_mode))


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """The user name of `uid`, "" when the system does not know it (cached: one lookup per id)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return ""


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    """The group name of `gid`, "" when the system does not know it (cached)."""
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return ""


def _proc_path(parent_fd: int, name: bytes) -> bytes:
    """A path reaching `name` through the open parent folder, for the calls Linux offers only by
    path (l*xattr): /proc's magic link pins the folder itself, not a path that could change."""
    return b"/proc/self/fd/%d/%s" % (parent_fd, name)


def read_xattrs(parent_fd: int, name: bytes, fd: int | None = None) -> list[tuple[bytes, bytes]]:
    """All extended attributes of an entry the caller may read, sorted by name.

    A filesystem without xattr support gives []; an attribute removed between listing and
    reading is left out. Through `fd` when given (files and folders), else without following a
    symlink (special files: opening a device could have side effects).
    """
    target: int | bytes = fd if fd is not None else _proc_path(parent_fd, name)
    try:
        names = os.listxattr(target, follow_symlinks=False) if fd is None else os.listxattr(fd)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return []
        raise
    if not names:
        return []  # most entries: no attribute, nothing more to ask
    found = []
    for attr in names:
        try:
            value = os.getxattr(target, attr, follow_symlinks=fd is not None)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, *_UNSUPPORTED):
                continue
            raise
        found.append((os.fsencode(attr), value))
    found.sort()
    return found


def capture(parent_fd: int, name: bytes, st: os.stat_result, fd: int | None = None, kind: str | None = None) -> Node:
    """A Node with every metadata field of the entry `name` in the folder `parent_fd`.

    `st` is the entry's lstat (or fstat of `fd`); `fd`, when the caller has the entry open,
    is used to read attributes from the very object whose content is read. Content and subtree
    are left empty for the caller; `size` is st_size for a file (the archiver overwrites it with
    the bytes it really read). `kind`, when the caller knows it, is `entry_type(st)`. Raises
    OSError when the entry vanished or cannot be read.
    """
    if kind is None:
        kind = entry_type(st)
        if kind is None:
            raise ValueError(f"{name!r} is a socket, which has no tree type")
    uid, gid = st.st_uid, st.st_gid
    # Positional: called once per entry of a backup, and keywords cost a third of the call.
    node = Node(name, kind, stat.S_IMODE(st.st_mode), uid, gid, user_name(uid), group_name(gid),
                st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns)
    if kind == FILE:
        node.size = st.st_size
    elif kind == SYMLINK:
        node.target = os.readlink(name, dir_fd=parent_fd)
    elif kind in (CHARDEV, BLOCKDEV):
        node.rdev = st.st_rdev
    if kind != DIR and st.st_nlink > 1:
        node.links = (st.st_dev, st.st_ino, st.st_nlink)
    node.xattrs = read_xattrs(parent_fd, name, fd)
    return node


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


@dataclass(frozen=True)
class Created:
    """What an entry the restore has just created (O_EXCL, a new name) has without being told,
    as its folder shows: `apply` leaves out the calls that would change nothing. For a small
    file that is three system calls of seven (chown, listxattr, chmod), and each one also hands
    the GIL to another thread and back.

    `owner`: the (uid, gid) every new entry of the folder gets, or None when not known.
    `bare`: it has no extended attribute other than security.* ones (which `apply` never
    removes): the folder has no default ACL or other attribute for it to inherit.
    `mode`: the permission bits it was created with, when they are already the snapshot's.
    """

    owner: tuple[int, int] | None
    bare: bool
    mode: int | None = None


def probe_folder(fd: int, made: bool) -> Created:
    """What entries created in the open folder `fd` get by themselves (see Created).

    The owner is trusted only for a folder this restore has just made (`made`) and only when it
    is the process's own: then the filesystem gives new entries their creator's uid and this
    folder's gid (it has no set-group-ID bit from a parent, or the parent's group is ours), as
    it did to the folder. An existing folder on a filesystem that maps owners (root squashing,
    a FAT mount's uid=) could say otherwise, so there every entry is chowned as before. Any
    attribute on the folder other than security.* (a default ACL, an NFSv4 ACL) may be
    inherited, so then every new entry's attributes are listed and cleaned as before.
    """
    owner = None
    if made:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()):
            owner = (st.st_uid, st.st_gid)
    try:
        bare = all(a.startswith("security.") for a in os.listxattr(fd))
    except OSError:
        bare = False  # no attributes here, or unreadable: keep the per-entry listing and its warning
    return Created(owner, bare)


def creation_mode(node: Node, created: Created | None, umask: int | None, owner: bool) -> int | None:
    """The snapshot's permission bits, when a new file can be created with them and need no
    chmod afterwards: plain bits the umask leaves alone, no attributes to set (an ACL changes
    the group bits), no default ACL in the folder, and the final owner already (a file must not
    be readable by the wrong group or user while its content is written). Else None."""
    if created is None or umask is None or not created.bare or node.xattrs:
        return None
    if node.mode & ~0o777 or node.mode & umask:
        return None
    if owner and created.owner != (node.uid, node.gid):
        return None
    return node.mode


def process_umask() -> int | None:
    """The umask, read without changing it (os.umask can only set it, racing other threads);
    None when /proc does not say (then files are chmod'ed as before)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _set_xattrs(parent_fd: int, name: bytes, node: Node, fd: int | None, bare: bool = False) -> list[str]:
    """Make the entry's attributes those of `node`: set each, remove the ones the snapshot does
    not have (an ACL inherited from a folder's default ACL, a stale one from an earlier file).
    `bare`: the entry is known to have none to remove (Created), so they are not listed."""
    warnings: list[str] = []
    target: int | bytes = fd if fd is not None else _proc_path(parent_fd, name)
    follow = fd is not None
    wanted = dict(node.xattrs)
    if bare and not wanted:
        return warnings
    try:
        present = [] if bare else [os.fsencode(a) for a in os.listxattr(target, follow_symlinks=follow)]
    except OSError as exc:
        if wanted:
            warnings.append(f"extended attributes not restored: {_why(exc)}")
        return warnings
    for attr in present:
        if attr not in wanted and not attr.startswith(_KEEP_PREFIX):
            try:
                os.removexattr(target, attr, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    warnings.append(f"extended attribute {os.fsdecode(attr)} not removed: {_why(exc)}")
    for attr, value in node.xattrs:
        try:
            os.setxattr(target, attr, value, follow_symlinks=follow)
        except OSError as exc:
            warnings.append(f"extended attribute {os.fsdecode(attr)} not restored: {_why(exc)}")
    return warnings


def apply(
    parent_fd: int, name: bytes, node: Node, *, owner: bool, fd: int | None = None, created: Created | None = None
) -> list[str]:
    """Set the metadata of `node` on the entry `name` in `parent_fd` (or on `fd`, the entry
    itself, open). Returns one message per thing that could not be set, never raises for those:
    a restore as a normal user still gets modes, times and attributes right.

    `owner=False` skips ownership without a warning (the caller notes once that it is not root).
    `created`: what the entry, just created, already has (calls that would change nothing are
    left out); None for an entry that was there before, which gets every call.
    """
    warnings: list[str] = []
    is_link = node.type == SYMLINK
    if owner and (created is None or created.owner != (node.uid, node.gid)):
        try:
            if fd is not None:
                os.fchown(fd, node.uid, node.gid)
            else:
                os.chown(name, node.uid, node.gid, dir_fd=parent_fd, follow_symlinks=False)
        except OSError as exc:
            warnings.append(f"owner {node.uid}:{node.gid} not restored: {_why(exc)}")
    warnings += _set_xattrs(parent_fd, name, node, fd, bare=created is not None and created.bare)
    if not is_link and (created is None or created.mode != node.mode):
        try:
            if fd is not None:
                os.fchmod(fd, node.mode)
            else:
                os.chmod(name, node.mode, dir_fd=parent_fd, follow_symlinks=False)
        except OSError as exc:
            warnings.append(f"mode {node.mode:o} not restored: {_why(exc)}")
    try:
        if fd is not None:
            os.utime(fd, ns=(node.atime, node.mtime))
        else:
            os.utime(name, ns=(node.atime, node.mtime), dir_fd=parent_fd, follow_symlinks=False)
    except OSError as exc:
        warnings.append(f"times not restored: {_why(exc)}")
    return warnings
