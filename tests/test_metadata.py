"""files.metadata on real entries: what capture reads, what apply sets back, in which order,
and what it reports instead of failing (as a normal user, on a filesystem without xattrs)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.files import metadata
from cairn.files.tree import Node
from test_restore_support import NOBODY, T0, as_user, needs_root, run, world_tmp  # noqa: F401 - a fixture



@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


def lstat(folder: Path, name: str) -> os.stat_result:
    return os.lstat(folder / name)


def test_entry_types_and_sockets(folder: tuple[Path, int]) -> None:
    path, _ = folder
    (path / "f").write_bytes(b"")
    os.mkfifo(path / "p")
    os.symlink("f", path / "l")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path / "s"))
        kinds = {n: metadata.entry_type(lstat(path, n)) for n in ("f", "p", "l", "s")}
    kinds["."] = metadata.entry_type(os.lstat(path))
    kinds["/dev/null"] = metadata.entry_type(os.lstat("/dev/null"))
    assert kinds == {"f": "file", "p": "fifo", "l": "symlink", "s": None, ".": "dir", "/dev/null": "chardev"}


def test_capture_reads_every_field(folder: tuple[Path, int]) -> None:
    path, fd = folder
    (path / "f").write_bytes(b"12345")
    os.chmod(path / "f", 0o6751)
    os.setxattr(path / "f", "user.b", b"2")
    os.setxattr(path / "f", "user.a", b"\0\xff")
    os.utime(path / "f", ns=(T0 - 1, T0))
    os.link(path / "f", path / "g")
    os.symlink(b"\xff/../x", bytes(path) + b"/l")
    st = lstat(path, "f")
    node = metadata.capture(fd, b"f", st)
    assert (node.type, node.mode, node.size, node.atime, node.mtime, node.ctime) == (
        "file", 0o6751, 5, T0 - 1, T0, st.st_ctime_ns)
    assert (node.uid, node.gid) == (os.getuid(), os.getgid())
    assert node.user and node.group  # this user has names
    assert node.xattrs == [(b"user.a", b"\0\xff"), (b"user.b", b"2")]
    assert node.links == (st.st_dev, st.st_ino, 2)
    assert node.content == [] and node.subtree is None
    with open(path / "f", "rb") as f:  # through a descriptor: the same
        assert metadata.capture(fd, b"f", st, fd=f.fileno()) == node
    link = metadata.capture(fd, b"l", lstat(path, "l"))
    assert (link.type, link.target, link.links, link.size) == ("symlink", b"\xff/../x", None, 0)
    os.mkdir(path / "d")
    assert metadata.capture(fd, b"d", lstat(path, "d")).links is None  # folders: never


@needs_root
def test_capture_devices_and_unknown_owners(folder: tuple[Path, int]) -> None:
    path, fd = folder
    os.mknod(path / "b", stat.S_IFBLK | 0o600, os.makedev(259, 70000))
    os.chown(path / "b", 1234, 5678)
    node = metadata.capture(fd, b"b", lstat(path, "b"))
    assert (node.type, os.major(node.rdev or 0), os.minor(node.rdev or 0)) == ("blockdev", 259, 70000)
    assert (node.uid, node.gid, node.user, node.group) == (1234, 5678, "", "")


@needs_root
def test_apply_sets_owner_before_mode_so_setuid_survives(folder: tuple[Path, int]) -> None:
    path, fd = folder
    node = Node(name=b"f", type="file", mode=0o6755, uid=1234, gid=5678, atime=T0 - 5, mtime=T0,
                xattrs=[(b"trusted.t", b"1"), (b"user.u", b"2")])
    (path / "f").write_bytes(b"x")
    with open(path / "f", "rb") as f:
        assert metadata.apply(fd, b"f", node, owner=True, fd=f.fileno()) == []
    st = lstat(path, "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns) == (
        0o6755, 1234, 5678, T0 - 5, T0)
    assert sorted(os.listxattr(path / "f")) == ["trusted.t", "user.u"]


def test_apply_removes_attributes_the_snapshot_lacks_such_as_an_inherited_acl(folder: tuple[Path, int]) -> None:
    path, fd = folder
    os.mkdir(path / "d")
    run("setfacl", "-d", "-m", "u:1234:rwx", path / "d")
    (path / "d" / "f").write_bytes(b"")  # inherits an access ACL from the folder's default ACL
    os.setxattr(path / "d" / "f", "user.stale", b"1")
    assert "system.posix_acl_access" in os.listxattr(path / "d" / "f")
    sub = os.open(path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        node = Node(name=b"f", type="file", mode=0o640, xattrs=[(b"user.kept", b"v")])
        assert metadata.apply(sub, b"f", node, owner=False) == []
    finally:
        os.close(sub)
    assert os.listxattr(path / "d" / "f") == ["user.kept"]
    assert stat.S_IMODE(os.stat(path / "d" / "f").st_mode) == 0o640
    assert "user:1234" not in run("getfacl", "-p", path / "d" / "f")


def test_what_a_folder_gives_new_entries_decides_which_calls_a_new_file_needs(folder: tuple[Path, int]) -> None:
    path, fd = folder
    os.mkdir(path / "plain")
    os.mkdir(path / "acl")
    run("setfacl", "-d", "-m", "u:1234:rwx", path / "acl")
    plain = os.open(path / "plain", os.O_RDONLY | os.O_DIRECTORY)
    acl = os.open(path / "acl", os.O_RDONLY | os.O_DIRECTORY)
    try:
        me = (os.geteuid(), os.getegid())
        assert metadata.probe_folder(plain, made=True) == metadata.Created(me, True)
        assert metadata.probe_folder(plain, made=False) == metadata.Created(None, True)  # not ours: chown
        assert metadata.probe_folder(acl, made=True).bare is False
        node = Node(name=b"f", type="file", mode=0o644, uid=me[0], gid=me[1], atime=T0 - 3, mtime=T0)
        made = metadata.probe_folder(plain, made=True)
        assert metadata.creation_mode(node, made, 0o022, owner=True) == 0o644
        for other in (Node(name=b"f", type="file", mode=0o664, uid=me[0], gid=me[1]),  # the umask takes a bit
                      Node(name=b"f", type="file", mode=0o4755, uid=me[0], gid=me[1]),  # setuid: chmod after
                      Node(name=b"f", type="file", mode=0o644, uid=me[0], gid=me[1], xattrs=[(b"user.a", b"")]),
                      Node(name=b"f", type="file", mode=0o644, uid=NOBODY, gid=me[1])):  # chown first
            assert metadata.creation_mode(other, made, 0o022, owner=True) is None
        assert metadata.creation_mode(node, metadata.probe_folder(acl, made=True), 0o022, owner=True) is None
        assert metadata.creation_mode(node, made, None, owner=True) is None  # umask unknown

        # a new file in each: what apply leaves out must not change the result
        for sub, at in (("plain", plain), ("acl", acl)):
            created = metadata.probe_folder(at, made=True)
            mode = metadata.creation_mode(node, created, metadata.process_umask(), owner=True)
            f = os.open(b"f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600 if mode is None else mode, dir_fd=at)
            try:
                created = metadata.Created(created.owner, created.bare, mode)
                assert metadata.apply(at, b"f", node, owner=True, fd=f, created=created) == []
            finally:
                os.close(f)
            st = lstat(path / sub, "f")
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns) == (
                0o644, *me, T0 - 3, T0)
            assert [a for a in os.listxattr(path / sub / "f") if not a.startswith("security.")] == []
    finally:
        os.close(plain)
        os.close(acl)


def test_the_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert metadata.process_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_apply_to_a_symlink_never_touches_what_it_points_to(folder: tuple[Path, int]) -> None:
    path, fd = folder
    outside = path / "outside"
    outside.write_bytes(b"")
    os.chmod(outside, 0o600)
    before = os.stat(outside)
    os.symlink(outside, path / "l")
    node = Node(name=b"l", type="symlink", mode=0o777, uid=os.getuid(), gid=os.getgid(), atime=T0 - 9,
                mtime=T0, target=bytes(outside))
    assert metadata.apply(fd, b"l", node, owner=True) == []
    st = lstat(path, "l")
    assert (st.st_atime_ns, st.st_mtime_ns) == (T0 - 9, T0)
    after = os.stat(outside)
    assert (after.st_mode, after.st_mtime_ns, after.st_atime_ns) == (before.st_mode, before.st_mtime_ns, before.st_atime_ns)


@needs_root
def test_a_normal_user_gets_warnings_not_errors(world_tmp: Path) -> None:
    tmp_path = world_tmp
    (tmp_path / "f").write_bytes(b"")
    os.chown(tmp_path / "f", NOBODY, NOBODY)
    node = Node(name=b"f", type="file", mode=0o4711, uid=1234, gid=5678, atime=T0, mtime=T0,
                xattrs=[(b"trusted.t", b"1"), (b"user.u", b"ok")])

    def apply() -> list[str]:
        fd = os.open(tmp_path, os.O_RDONLY)
        return metadata.apply(fd, b"f", node, owner=True)

    warnings = as_user(apply)
    assert warnings == ["owner 1234:5678 not restored: Operation not permitted",
                        "extended attribute trusted.t not restored: Operation not permitted"]
    st = os.stat(tmp_path / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid) == (0o4711, T0, NOBODY)
    assert os.getxattr(tmp_path / "f", "user.u") == b"ok"


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A mounted ramfs: a filesystem that stores no extended attributes at all."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        run("mount", "-t", "ramfs", "ramfs", mnt)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a ramfs here: {exc.stderr.decode().strip()}")
    yield mnt
    run("umount", mnt)


@needs_root
def test_a_filesystem_without_xattrs_is_tolerated(ramfs: Path) -> None:
    (ramfs / "f").write_bytes(b"x")
    fd = os.open(ramfs, os.O_RDONLY)
    try:
        node = metadata.capture(fd, b"f", lstat(ramfs, "f"))
        assert node.xattrs == []
        node.xattrs = [(b"user.a", b"1")]
        warnings = metadata.apply(fd, b"f", node, owner=False)
    finally:
        os.close(fd)
    assert warnings == ["extended attribute user.a not restored: Operation not supported"]
