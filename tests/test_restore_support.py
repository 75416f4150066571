"""Shared by the restore tests: a tree with every kind of entry, an independent comparator
(rsync from Debian), and a reference snapshot writer.

The reference writer stores a folder with `files.metadata.capture` and the chunker, without the
archiver, so the restore tests depend only on the metadata module and the tree format; the
archiver's own tests cover the walk. The comparison is rsync's, not ours: `rsync -naAXHc
--itemize-changes --numeric-ids SRC/ DST/` prints one line per difference in content (checksum),
type, permissions, owner, mtime, ACLs, xattrs, hard-link grouping or device numbers.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cairn.files import metadata
from cairn.files.chunker import Chunker
from cairn.files.restorer import load_tree
from cairn.files.tree import DIR, FILE, Node, encode_tree
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot

MiB = 1024 * 1024
GiB = 1024 * MiB
T0 = 1_600_000_000_123_456_789  # every nanosecond digit set
AS_ROOT = os.geteuid() == 0
NOT_ROOT_REASON = "needs root: device nodes, chown to other users, trusted.* xattrs"
DEEP = 100
NOBODY = 65534


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temporary folder every user can enter (pytest's own is private to root), for tests
    that drop to another user."""
    path = Path(tempfile.mkdtemp(prefix="cairn-test-", dir="/tmp"))
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)


def as_user(fn: Callable[[], Any], uid: int = NOBODY) -> Any:
    """Run `fn` in a forked child that dropped root (so the test process keeps it), and return
    what it returned or raise what it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                out: tuple[str, Any] = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the parent
                out = ("raised", exc)
            with os.fdopen(write, "wb") as pipe:
                pickle.dump(out, pipe)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "raised":
        raise value
    return value


def needs_root(test: Any) -> Any:
    """Mark a test as needing root, skipped with the reason elsewhere."""
    return pytest.mark.root(pytest.mark.skipif(not AS_ROOT, reason=NOT_ROOT_REASON)(test))


def run(*cmd: str | bytes | Path) -> str:
    done = subprocess.run([os.fsencode(c) if isinstance(c, Path) else c for c in cmd],
                          capture_output=True, check=True)
    return done.stdout.decode(errors="replace")


def rsync_differences(src: Path, dst: Path) -> list[str]:
    """rsync's itemized list of what differs between two folders (empty when identical)."""
    out = run("rsync", "-naAXHc", "--itemize-changes", "--numeric-ids", f"{src}/", f"{dst}/")
    return out.splitlines()


def times(root: Path) -> dict[bytes, tuple[int | None, int]]:
    """(atime ns, mtime ns) of every entry below `root`, symlinks themselves, by relative path.
    Taken before rsync reads the files (reading moves atime). The atime of folders and
    symlinks is left out: listing a folder moves it, and so does reading a link's target, which
    a backup must do (test_metadata checks that a symlink's atime is restored as captured)."""
    found: dict[bytes, tuple[int | None, int]] = {}
    base = bytes(root)
    for folder, dirs, files in os.walk(base):
        for name in dirs + files + [b""]:
            path = os.path.join(folder, name) if name else folder
            st = os.lstat(path)
            atime = None if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) else st.st_atime_ns
            found[os.path.relpath(path, base)] = (atime, st.st_mtime_ns)
    return found


def make_every_kind(src: Path, sparse_size: int = 4 * GiB, root: bool = AS_ROOT) -> None:
    """A folder holding each kind of entry and metadata a backup must keep (devices, foreign
    owners and trusted.* attributes only as root)."""
    rng = random.Random(5)
    b = bytes(src)
    src.mkdir()
    for sub in ("files", "links/a", "links/b", "modes", "empty-dir", "acl-dir", "specials"):
        (src / sub).mkdir(parents=True)
    (src / "files" / "small.txt").write_bytes(b"hello\n")
    (src / "files" / "empty").write_bytes(b"")
    (src / "files" / "big.bin").write_bytes(rng.randbytes(3 * MiB + 17))
    Path(os.fsdecode(b + b"/files/caf\xe9-latin1")).write_bytes(b"non-UTF-8 name")
    os.mkdir(b + b"/\xff\xfe-folder")
    Path(os.fsdecode(b + b"/\xff\xfe-folder/inside")).write_bytes(b"x")
    (src / "files" / ("n" * 255)).write_bytes(b"a 255-byte name")
    deep = src / "deep"
    for i in range(DEEP):
        deep = deep / f"level-{i:03d}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"100 folders down")
    # symlinks: relative, dangling, absolute, non-UTF-8 target; and one to a folder
    os.symlink("small.txt", src / "files" / "rel-link")
    os.symlink("does/not/exist", src / "files" / "dangling")
    os.symlink("/etc/passwd", src / "files" / "absolute")
    os.symlink(b"target-\xff\xfe\x80", b + b"/files/binary-target")
    os.symlink("../files", src / "links" / "to-folder")
    # hard links across folders: a pair, and a group of three with one in a third folder
    (src / "links" / "a" / "pair").write_bytes(b"one inode, two names")
    os.link(src / "links" / "a" / "pair", src / "links" / "b" / "pair-too")
    (src / "links" / "a" / "three").write_bytes(rng.randbytes(200_000))
    os.link(src / "links" / "a" / "three", src / "links" / "b" / "three-2")
    os.link(src / "links" / "a" / "three", src / "files" / "three-3")
    # special files
    os.mkfifo(src / "specials" / "fifo", 0o640)
    if root:
        os.mknod(src / "specials" / "null-like", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(src / "specials" / "loop-like", stat.S_IFBLK | 0o660, os.makedev(7, 200))
    # sparse: a little data at the start, in the middle and at the end of a big hole
    with open(src / "files" / "sparse.img", "wb") as f:
        f.truncate(sparse_size)
        for at in (0, sparse_size // 2, sparse_size - 100_000):
            f.seek(at)
            f.write(rng.randbytes(100_000))
    # modes, owners, xattrs, ACLs
    for name, mode in [("setuid", 0o4755), ("setgid", 0o2711), ("none", 0o000), ("odd", 0o1604)]:
        (src / "modes" / name).write_bytes(name.encode())
    os.mkdir(src / "modes" / "sticky-dir")
    os.mkdir(src / "modes" / "setgid-dir")
    if root:
        os.chown(src / "modes" / "setuid", 1234, 5678)
        os.chown(src / "modes" / "setgid-dir", 1234, 5678)
        os.chown(src / "files" / "rel-link", 1234, 5678, follow_symlinks=False)
        os.chown(src / "links" / "a" / "pair", 4321, 8765)
        os.setxattr(src / "files" / "small.txt", "trusted.cairn", b"root only")
    for name, mode in [("setuid", 0o4755), ("setgid", 0o2711), ("none", 0o000), ("odd", 0o1604)]:
        os.chmod(src / "modes" / name, mode)
    os.chmod(src / "modes" / "sticky-dir", 0o1777)
    os.chmod(src / "modes" / "setgid-dir", 0o2775)
    os.setxattr(src / "files" / "small.txt", "user.note", b"hello")
    os.setxattr(src / "files" / "small.txt", "user.binary", bytes(range(256)))
    os.setxattr(src / "empty-dir", "user.on-a-folder", b"")
    run("setfacl", "-m", "u:1234:rwx,g:5678:r", src / "files" / "big.bin")
    run("setfacl", "-m", "u:1234:rwx", "-m", "d:u:1234:rx,d:g:5678:rwx", src / "acl-dir")
    # distinct ns times on everything, deepest first (entries change their folder's mtime)
    for i, (folder, dirs, files) in enumerate(os.walk(b, topdown=False)):
        for j, name in enumerate(sorted(files + dirs) + [b""]):
            path = os.path.join(folder, name) if name else folder
            when = T0 + i * 1_000_003 + j * 7_919
            os.utime(path, ns=(when - 123_456_789_011, when), follow_symlinks=False)


def _store_file(repo: Repository, path: bytes) -> tuple[list[bytes], int]:
    chunker = Chunker(repo.config.chunker)
    ids, size = [], 0
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME), "rb", buffering=0) as f:
        for chunk in chunker.chunks(f):
            ids.append(repo.save_blob(BlobType.DATA, chunk)[0])
            size += len(chunk)
    return ids, size


def _store_folder(repo: Repository, path: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        nodes = []
        for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if metadata.entry_type(st) is None:
                continue
            node = metadata.capture(fd, name, st)
            child = path + b"/" + name
            if node.type == DIR:
                node.subtree = _store_folder(repo, child)
            elif node.type == FILE:
                node.content, node.size = _store_file(repo, child)
            nodes.append(node)
        return repo.save_blob(BlobType.TREE, encode_tree(nodes))[0]
    finally:
        os.close(fd)


def reference_snapshot(repo: Repository, src: Path) -> bytes:
    """Store `src` the way the archiver lays a snapshot out (root -> each component -> src),
    with metadata.capture, and return the snapshot id."""
    tree = _store_folder(repo, bytes(src))
    parts = bytes(src).strip(b"/").split(b"/")
    for depth in range(len(parts), 0, -1):
        parent = b"/" + b"/".join(parts[: depth - 1])
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            node = metadata.capture(fd, parts[depth - 1], os.stat(parts[depth - 1], dir_fd=fd))
        finally:
            os.close(fd)
        node.subtree = tree
        tree = repo.save_blob(BlobType.TREE, encode_tree([node]))[0]
    repo.flush()
    return repo.save_snapshot(Snapshot(kind="files", root=tree, paths=[bytes(src)], host="h", user="u"))


def folder_tree(repo: Repository, folder: Path, snapshot: str = "latest") -> bytes:
    """The tree id of the absolute path `folder` in a snapshot of it (or of a folder above it)."""
    tree = repo.find_snapshot(snapshot).root
    for part in folder.parts[1:]:
        tree = next(n for n in load_tree(repo, tree) if n.name == os.fsencode(part)).subtree
    return tree


def inside(target: Path, src: Path) -> Path:
    """Where a full restore puts `src`: its absolute path recreated below the target."""
    return target / str(src).lstrip("/")


def fake_node(**fields: object) -> Node:
    base: dict[str, object] = {"name": b"f", "type": FILE, "mode": 0o644}
    base.update(fields)
    return Node(**base)  # type: ignore[arg-type]


FOLDERS, PER_FOLDER = 20, 100


def many_files(root: Path, seed: int = 3) -> Path:
    """2,000 small files in 20 folders: more batches than the writers or workers may hold at once."""
    rng = random.Random(seed)
    for d in range(FOLDERS):
        folder = root / f"d{d:02d}"
        folder.mkdir(parents=True)
        for f in range(PER_FOLDER):
            (folder / f"f{f:03d}").write_bytes(rng.randbytes(rng.randrange(0, 3000)))
    return root


def children() -> set[int]:
    """Children of the main thread, which is where restores and backups fork their processes
    (and where other tests started the servers they share)."""
    return {int(pid) for pid in Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()}


def count_forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the pid of every child `os.fork` makes in this process, in order."""
    forks: list[int] = []
    real_fork = os.fork

    def counted_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counted_fork)
    return forks
