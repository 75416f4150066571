"""The folder cache: an unchanged folder keeps its tree without its parent tree being read, and
whatever changed gives exactly the tree a backup without the cache gives.

Every test backs up a real folder, changes it, and compares what the cached backup stored with
what a backup from the same parent stores once the cache file is gone.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable
from typing import Any
from pathlib import Path

import pytest

from conftest import FAST_KDF
from cairn.files import foldercache
from cairn.files.checkpoint import cache_root
from cairn.files.excludes import ExcludeOptions
from cairn.files.filescache import ParentTrees
from cairn.files.foldercache import FolderCache, fingerprint
from cairn.files.restorer import load_tree
from cairn.ops.backup import BackupOptions, BackupResult, backup, program
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rng = random.Random(7)
    root = tmp_path / "src"
    for top in range(3):
        for sub in range(3):
            folder = root / f"d{top}" / f"s{sub}"
            folder.mkdir(parents=True)
            for j in range(4):
                (folder / f"f{j}").write_bytes(rng.randbytes(rng.randrange(1, 20_000)))
        (root / f"d{top}" / "top.txt").write_bytes(rng.randbytes(3000))
    (root / "d0" / "link").symlink_to("top.txt")
    os.mkfifo(root / "d1" / "fifo")
    os.link(root / "d2" / "top.txt", root / "d2" / "s0" / "hard")
    (root / "empty").mkdir()
    return root


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The parent trees each backup reads (a spy on the real loader)."""
    seen: list[bytes] = []
    real = ParentTrees._load

    def spy(self: ParentTrees, tree_id: bytes):  # type: ignore[no-untyped-def]
        seen.append(tree_id)
        return real(self, tree_id)

    monkeypatch.setattr(ParentTrees, "_load", spy)
    return seen


def settled(repo: Repository, source: Path, **options: Any) -> BackupResult:
    """Two backups: the first one's reading (of symlinks) moves access times it recorded."""
    run(repo, source, **options)
    return run(repo, source, **options)


def run(repo: Repository, source: Path, parent: bytes | None = None, **options: object) -> BackupResult:
    result = backup(repo, BackupOptions([str(source)], host="h", parent=parent.hex() if parent else None,
                                        **options))  # type: ignore[arg-type]
    assert result.snapshot_id is not None
    return result


def subtree_at(repo: Repository, snapshot_id: bytes, path: Path) -> bytes:
    """The tree id a snapshot has for the folder `path`."""
    tree = next(s for s in repo.list_snapshots() if s.id == snapshot_id).root
    for part in path.parts[1:]:
        tree = next(n for n in load_tree(repo, tree) if n.name == os.fsencode(part)).subtree or b""
    return tree


def trees_below(repo: Repository, tree_id: bytes) -> dict[bytes, str]:
    """Every tree id at and below `tree_id`, with its path relative to it."""
    found = {tree_id: "."}
    todo = [(tree_id, "")]
    while todo:
        tree, prefix = todo.pop()
        for node in load_tree(repo, tree):
            if node.subtree:
                path = prefix + node.name.decode()
                found[node.subtree] = path
                todo.append((node.subtree, path + "/"))
    return found


def records_file(repo: Repository, snapshot_id: bytes) -> Path:
    return cache_root() / repo.config.id.hex() / "folders" / snapshot_id.hex()


def test_an_unchanged_backup_reads_no_parent_tree_below_its_paths(repo: Repository, source: Path, loads: list[bytes]) -> None:
    first = settled(repo, source)
    assert first.snapshot_id is not None and records_file(repo, first.snapshot_id).exists()
    below = trees_below(repo, subtree_at(repo, first.snapshot_id, source))
    loads.clear()
    again = run(repo, source)
    assert again.snapshot_id is not None
    # the given folder's own tree is read ahead by the folder above it (not from the cache)
    assert {below[t] for t in loads if t in below} <= {"."}, "an unchanged folder's parent tree was read"
    assert (again.files_unchanged, again.bytes_read, again.dirs_unchanged) == (first.files, 0, again.dirs)
    assert subtree_at(repo, again.snapshot_id, source) == subtree_at(repo, first.snapshot_id, source)
    assert not records_file(repo, first.snapshot_id).exists()  # replaced by the new snapshot's
    assert records_file(repo, again.snapshot_id).exists()


def test_only_a_changed_folder_and_those_above_it_are_compared(repo: Repository, source: Path, loads: list[bytes]) -> None:
    first = settled(repo, source)
    assert first.snapshot_id is not None
    below = trees_below(repo, subtree_at(repo, first.snapshot_id, source))
    changed = source / "d1" / "s2" / "f3"
    changed.write_bytes(b"new content")
    loads.clear()
    again = run(repo, source)
    assert {below[t] for t in loads if t in below} == {".", "d1", "d1/s2"}
    assert (again.files_changed, again.bytes_read, again.files_unchanged) == (1, len(b"new content"), first.files - 1)


def _touch_atime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns - 10**9, st.st_mtime_ns))


def _same_size_same_mtime(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _relink(link: Path, target: str) -> None:
    link.unlink()
    link.symlink_to(target)
    mtime = link.lstat().st_mtime_ns  # an access time after it, so that reading it moves nothing (relatime)
    os.utime(link, ns=(mtime + 10**9, mtime), follow_symlinks=False)


CHANGES: dict[str, Callable[[Path], object]] = {
    "nothing": lambda root: None,
    "content, same size and mtime": lambda root: _same_size_same_mtime(root / "d0" / "s1" / "f2"),
    "mode": lambda root: (root / "d2" / "s2" / "f0").chmod(0o600),
    "atime only": lambda root: _touch_atime(root / "d1" / "s0" / "f1"),
    "folder atime only": lambda root: _touch_atime(root / "d1" / "s1"),
    "xattr": lambda root: os.setxattr(root / "d0" / "s0" / "f0", "user.note", b"x"),
    "new file": lambda root: (root / "d2" / "s1" / "new").write_bytes(b"new"),
    "removed file": lambda root: (root / "d0" / "s2" / "f1").unlink(),
    "renamed file": lambda root: (root / "d1" / "s1" / "f0").rename(root / "d1" / "s1" / "g0"),
    "new folder": lambda root: (root / "d0" / "s0" / "deeper").mkdir(),
    "new hard link": lambda root: os.link(root / "d1" / "s1" / "f2", root / "d1" / "s2" / "h"),
    "symlink target": lambda root: _relink(root / "d0" / "link", "s0"),
    "fifo mode": lambda root: (root / "d1" / "fifo").chmod(0o640),
    "empty folder mode": lambda root: (root / "empty").chmod(0o700),
}


@pytest.mark.parametrize("change", CHANGES)
def test_each_change_gives_the_tree_a_backup_without_the_cache_gives(repo: Repository, source: Path, change: str) -> None:
    first = settled(repo, source)
    assert first.snapshot_id is not None
    CHANGES[change](source)
    record = records_file(repo, first.snapshot_id).read_bytes()
    cached = run(repo, source, parent=first.snapshot_id)
    records_file(repo, first.snapshot_id).unlink(missing_ok=True)
    uncached = run(repo, source, parent=first.snapshot_id)
    assert cached.snapshot_id is not None and uncached.snapshot_id is not None
    assert trees_below(repo, subtree_at(repo, cached.snapshot_id, source)) == \
        trees_below(repo, subtree_at(repo, uncached.snapshot_id, source))
    assert (cached.files_unchanged, cached.files_changed, cached.files_new, cached.bytes_read) == \
        (uncached.files_unchanged, uncached.files_changed, uncached.files_new, uncached.bytes_read)
    if change == "nothing":
        assert subtree_at(repo, cached.snapshot_id, source) == subtree_at(repo, first.snapshot_id, source)
    else:
        assert subtree_at(repo, cached.snapshot_id, source) != subtree_at(repo, first.snapshot_id, source)
    assert record  # the cached run had a record to use


def test_a_damaged_cache_file_is_ignored(repo: Repository, source: Path, loads: list[bytes]) -> None:
    first = settled(repo, source)
    assert first.snapshot_id is not None
    path = records_file(repo, first.snapshot_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    (source / "d2" / "s0" / "f0").write_bytes(b"changed")
    loads.clear()
    again = run(repo, source)
    assert again.snapshot_id is not None
    below = trees_below(repo, subtree_at(repo, first.snapshot_id, source))
    assert set(below) <= set(loads)  # compared entry by entry, every folder
    assert (again.files_changed, again.files_unchanged) == (1, first.files - 1)


def test_a_cache_of_other_settings_or_owner_names_is_not_used(repo: Repository, source: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = settled(repo, source)
    assert first.snapshot_id is not None
    cache = FolderCache(repo, cache_root())
    settings = fingerprint(program(), [os.fsencode(source)], (ExcludeOptions(), False))
    records = cache.load(first.snapshot_id, settings)
    assert records and os.fsencode(source) in records
    assert cache.load(first.snapshot_id, fingerprint(program(), [os.fsencode(source)], (ExcludeOptions(), True))) is None
    assert cache.load(first.snapshot_id, fingerprint("cairn 0.0.1", [os.fsencode(source)], (ExcludeOptions(), False))) is None
    uid = os.getuid()
    real = foldercache.user_name
    monkeypatch.setattr(foldercache, "user_name", lambda u: "renamed" if u == uid else real(u))
    assert cache.load(first.snapshot_id, settings) is None  # the tree records the old name


def test_other_exclude_options_do_not_keep_folders(repo: Repository, source: Path) -> None:
    (source / "d0" / "s0" / "skip.log").write_bytes(b"log")
    first = settled(repo, source)
    assert first.snapshot_id is not None
    again = run(repo, source, excludes=ExcludeOptions(patterns=["*.log"]))
    assert again.snapshot_id is not None
    names = {n.name for n in load_tree(repo, subtree_at(repo, again.snapshot_id, source / "d0" / "s0"))}
    assert b"skip.log" not in names and b"f0" in names


def test_checkpoints_inside_deferred_folders_keep_the_trees_right(repo: Repository, source: Path, tmp_path: Path) -> None:
    first = settled(repo, source, cache_dir=tmp_path / "c")
    assert first.snapshot_id is not None
    (source / "d1" / "s1" / "f1").write_bytes(b"changed while checkpointing")
    (source / "d2" / "new").write_bytes(b"new")
    cached = run(repo, source, parent=first.snapshot_id, checkpoint_interval=1e-9, cache_dir=tmp_path / "c")
    uncached = run(repo, source, parent=first.snapshot_id, cache_dir=tmp_path / "other")
    assert cached.snapshot_id is not None and uncached.snapshot_id is not None
    assert subtree_at(repo, cached.snapshot_id, source) == subtree_at(repo, uncached.snapshot_id, source)
    assert (cached.files_changed, cached.files_new) == (1, 1)


def test_skipped_entries_are_reported_again(repo: Repository, source: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(source / "d0" / "s1" / "sock"))
        first = settled(repo, source)
        again = run(repo, source)
    assert [p for p, _ in first.skipped] == [p for p, _ in again.skipped] == [str(source / "d0" / "s1" / "sock")]
    assert again.files_unchanged == first.files


def test_when_most_folders_change_the_walk_compares_as_it_goes_with_the_same_trees(
    repo: Repository, source: Path, loads: list[bytes]
) -> None:
    """A file changed in every folder (1% of files spread over all of them): after the first
    folders are found changed, the others are compared as they are walked, not deferred."""
    first = settled(repo, source)
    assert first.snapshot_id is not None
    changed = sorted(source.glob("d*/s*/f1"))
    for path in changed:
        path.write_bytes(path.read_bytes() + b"more")
    loads.clear()
    cached = run(repo, source, parent=first.snapshot_id)
    assert len(loads) >= 12  # every changed folder and those above it compared
    records_file(repo, first.snapshot_id).unlink(missing_ok=True)
    uncached = run(repo, source, parent=first.snapshot_id)
    assert cached.snapshot_id is not None and uncached.snapshot_id is not None
    assert trees_below(repo, subtree_at(repo, cached.snapshot_id, source)) == \
        trees_below(repo, subtree_at(repo, uncached.snapshot_id, source))
    assert (cached.files_changed, cached.files_unchanged) == (len(changed), first.files - len(changed))
    assert (cached.files_changed, cached.bytes_read) == (uncached.files_changed, uncached.bytes_read)
