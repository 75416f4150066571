"""A snapshot or a target built to make restore write elsewhere: it never does.

Hostile snapshots are written by hand (tree blobs encoded without the encoder's checks); hostile
targets hold symlinks and hard links pointing outside. After each attempt, the outside folder
must be exactly as it was: same names, bytes, modes, owners and times.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cairn.errors import DamagedObject
from cairn.files.tree import Node, encode_tree
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo import encoding
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend
from conftest import FAST_KDF
from test_restore_support import T0


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder restore must never touch, with a file whose every attribute is checked."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim").write_bytes(b"must survive")
    os.chmod(folder / "victim", 0o640)
    os.utime(folder / "victim", ns=(T0, T0))
    return folder


def state(folder: Path) -> list[tuple[str, bytes, int, int, int]]:
    return [(p.name, p.read_bytes(), p.stat().st_mode, p.stat().st_uid, p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())]


def raw_entry(name: bytes, kind: str = "file", **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "type": kind, "mode": 0o644, "uid": 0, "gid": 0, "user": "",
                             "group": "", "mtime": T0, "atime": T0, "ctime": T0}
    entry.update(extra)
    return entry


def snapshot_of(repo: Repository, *entries: dict[str, Any]) -> str:
    """Save a snapshot whose root tree holds `entries` (sorted by name), unchecked."""
    ordered = sorted(entries, key=lambda e: e["name"])
    root, _ = repo.save_blob(BlobType.TREE, encoding.pack({"v": 1, "entries": ordered}))
    repo.flush()
    return repo.save_snapshot(Snapshot(kind="files", root=root, paths=[b"/x"], host="h", user="u")).hex()


def file_entry(repo: Repository, name: bytes, data: bytes = b"owned", **extra: Any) -> dict[str, Any]:
    blob, _ = repo.save_blob(BlobType.DATA, data)
    return raw_entry(name, size=len(data), content=[blob], **extra)


@pytest.mark.parametrize("name", [b"..", b"../escaped", b"/abs", b"/", b"a/b", b".", b"", b"x\0y"])
def test_names_that_leave_the_folder_are_refused_before_anything_is_written(
    repo: Repository, tmp_path: Path, outside: Path, name: bytes
) -> None:
    before = state(outside)
    snap = snapshot_of(repo, file_entry(repo, name))
    with pytest.raises(DamagedObject, match="name"):
        restore(repo, RestoreOptions(snap, str(tmp_path / "out")))
    assert state(outside) == before and not (tmp_path / "escaped").exists()
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_a_symlink_entry_then_an_entry_through_it_is_refused(repo: Repository, tmp_path: Path, outside: Path) -> None:
    before = state(outside)
    link = raw_entry(b"a", "symlink", target=os.fsencode(outside))
    for second in (file_entry(repo, b"a/victim"), file_entry(repo, b"a")):  # through it, or the same name
        snap = snapshot_of(repo, link, second)
        with pytest.raises(DamagedObject):
            restore(repo, RestoreOptions(snap, str(tmp_path / "out")))
    # and a folder named like the link, in the tree below: its own folder, never the link's target
    sub, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"victim", "file", size=5, content=[
        repo.save_blob(BlobType.DATA, b"owned")[0]])]))
    snap = snapshot_of(repo, raw_entry(b"a", "dir", subtree=sub), raw_entry(b"b", "symlink", target=b"a/victim"))
    restore(repo, RestoreOptions(snap, str(tmp_path / "out2")))
    assert (tmp_path / "out2" / "a" / "victim").read_bytes() == b"owned"
    assert os.readlink(tmp_path / "out2" / "b") == "a/victim"
    assert state(outside) == before


def test_symlinks_and_hard_links_in_the_target_are_replaced_never_followed(
    repo: Repository, tmp_path: Path, outside: Path
) -> None:
    sub, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"victim", "file", size=5, content=[
        repo.save_blob(BlobType.DATA, b"owned")[0]])]))
    snap = snapshot_of(
        repo,
        raw_entry(b"folder", "dir", subtree=sub),
        file_entry(repo, b"file", b"must survive", mode=0o777),  # same bytes as the victim
        file_entry(repo, b"hardlinked", b"must survive", mode=0o777, mtime=T0 + 1),
        raw_entry(b"fifo", "fifo"),
    )
    before = state(outside)
    for mode in ("always", "if-changed", "if-newer", "never"):
        target = tmp_path / f"out-{mode}"
        target.mkdir()
        (target / "folder").symlink_to(outside)
        (target / "file").symlink_to(outside / "victim")
        os.link(outside / "victim", target / "hardlinked")
        (target / "fifo").symlink_to(outside / "victim")
        restore(repo, RestoreOptions(snap, str(target), overwrite=mode, delete=True))
        assert state(outside) == before, mode
        if mode in ("always", "if-changed"):  # if-newer and never leave the newer links alone
            assert not (target / "folder").is_symlink() and (target / "folder" / "victim").read_bytes() == b"owned"
            assert (target / "hardlinked").stat().st_nlink == 1
    assert (outside / "victim").stat().st_nlink == 2  # only the link --overwrite never left alone


def test_a_path_longer_than_path_max_is_restored_through_descriptors(repo: Repository, tmp_path: Path) -> None:
    """1,500 folders of 3-byte names: 6,000 bytes of path, beyond PATH_MAX (4096), which no
    path-string restore could create."""
    depth = 1500
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"end", "file", mode=0o600, size=2, content=[
        repo.save_blob(BlobType.DATA, b"ok")[0]])]))
    for _ in range(depth):
        tree, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"abc", "dir", mode=0o755, mtime=T0, subtree=tree)]))
    repo.flush()
    snap = repo.save_snapshot(Snapshot(kind="files", root=tree, paths=[b"/x"], host="h", user="u")).hex()
    try:
        check_deep_restore(repo, snap, tmp_path, depth)
    finally:  # pytest's own cleanup recurses per level and would fail on this tree
        subprocess.run(["rm", "-rf", tmp_path / "out"], check=True)


def check_deep_restore(repo: Repository, snap: str, tmp_path: Path, depth: int) -> None:
    done = restore(repo, RestoreOptions(snap, str(tmp_path / "out")))
    assert (done.dirs, done.files, done.errors, done.skipped) == (depth, 1, [], [])
    fd = os.open(tmp_path / "out", os.O_RDONLY)
    try:
        for _ in range(depth):
            assert os.stat(b"abc", dir_fd=fd).st_mtime_ns == T0
            child = os.open(b"abc", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        end = os.open(b"end", os.O_RDONLY, dir_fd=fd)
        assert os.read(end, 10) == b"ok"
        os.close(end)
    finally:
        os.close(fd)
    # --delete removes a stray tree as deep, and no symlink inside it leads it astray
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"")
    fd = os.open(tmp_path / "out", os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(b"zzz", dir_fd=fd)
        child = os.open(b"zzz", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.symlink(outside, b"link", dir_fd=fd)
    os.close(fd)
    done = restore(repo, RestoreOptions(snap, str(tmp_path / "out"), delete=True))
    assert done.deleted == 1 and sorted(os.listdir(tmp_path / "out")) == ["abc"]
    assert os.listdir(outside) == ["keep"]
