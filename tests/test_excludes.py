"""Exclude rules: restic's pattern semantics, exclude files, marker files, CACHEDIR.TAG, sizes;
each checked on its own and through a real backup whose snapshot is then listed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.errors import UsageError
from cairn.files.excludes import CACHEDIR_SIGNATURE, ExcludeOptions, Excluder, PathMatcher, parse_size, read_pattern_file
from cairn.files.restorer import load_tree
from cairn.files.tree import DIR
from cairn.ops.backup import BackupOptions, backup
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend


def matches(pattern: str, path: str, ignore_case: bool = False) -> bool:
    return PathMatcher([pattern], ignore_case).matches(path.encode())


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        # a name without a slash matches a whole component at any depth, and what is below it
        ("foo", "/dir1/foo", True),
        ("foo", "/dir1/foo/dir2/file", True),
        ("foo", "/dir/foobar", False),
        ("foo", "/dir/barfoo", False),
        ("*.o", "/src/a/main.o", True),
        ("*.o", "/src/a/main.c", False),
        ("*.o", "/src/x.o/inside", True),
        # a leading slash anchors at the root
        ("/bin", "/bin/bash", True),
        ("/bin", "/usr/bin/restic", False),
        ("/home/*/cache", "/home/ann/cache/x", True),
        ("/home/*/cache", "/home/ann/sub/cache", False),
        # a pattern with inner slashes but no leading one still matches at any depth
        ("foo/bar", "/x/foo/bar", True),
        ("foo/bar", "/x/foo/bar/baz", True),
        ("foo/bar", "/x/foo/baz/bar", False),
        # wildcards never cross a slash; ** crosses any number of components, none included
        ("b*ash", "/bin/bash", True),
        ("b*ash", "/bin/ash", False),
        ("/bin*", "/bin/x", True),
        ("/b*h", "/bin/bash", False),
        ("foo/**/bar", "/dir1/foo/dir2/bar/file", True),
        ("foo/**/bar", "/foo/bar/file", True),
        ("foo/**/bar", "/tmp/foo/bar", True),
        ("foo/**/bar", "/tmp/foo/x/y/bar", True),
        ("foo/**/bar", "/tmp/foo/x/ybar", False),
        ("/var/**/*.log", "/var/log/app/x.log", True),
        ("/var/**/*.log", "/srv/log/x.log", False),
        ("**/.git", "/code/p/.git/config", True),
        # character classes, ? and escapes
        ("file?.txt", "/a/file1.txt", True),
        ("file?.txt", "/a/file12.txt", False),
        ("[abc].dat", "/x/b.dat", True),
        ("[!abc].dat", "/x/b.dat", False),
        ("[^abc].dat", "/x/d.dat", True),
        ("[a-c]?", "/x/b9", True),
        ("\\*star", "/x/*star", True),
        ("\\*star", "/x/Xstar", False),
        # a trailing slash is ignored; regex characters are literal
        ("cache/", "/home/u/cache", True),
        ("a+b(c).d", "/x/a+b(c).d", True),
        ("a+b(c).d", "/x/aab(c)xd", False),
    ],
)
def test_patterns_follow_restic(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


def test_case_insensitive_patterns_and_raw_names() -> None:
    assert matches("*.JPG", "/p/holiday.jpg", ignore_case=True)
    assert not matches("*.JPG", "/p/holiday.jpg")
    assert matches("Ärger", "/p/ärger", ignore_case=True)
    # a name that is not UTF-8 is matched on its raw bytes (surrogate-escaped), never an error
    assert PathMatcher(["caf*"]).matches(b"/x/caf\xe9")
    assert not PathMatcher(["tea*"]).matches(b"/x/caf\xe9")


def test_bad_patterns_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="negated patterns"):
        PathMatcher(["!keep"])
    with pytest.raises(UsageError, match="without a closing"):
        PathMatcher(["[abc"])
    with pytest.raises(UsageError, match="matches nothing"):
        PathMatcher(["/"])


@pytest.mark.parametrize(
    ("text", "size"),
    [("2048", 2048), ("500k", 500 << 10), ("10M", 10 << 20), ("1.5G", 3 << 29), ("2T", 2 << 40), ("4 MiB", 4 << 20)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_size_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not a size"):
        parse_size("ten megs")


def test_exclude_files_skip_comments_and_expand_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_TEST_DIR", "/data")
    listing = tmp_path / "excludes"
    listing.write_text("# build output\n*.o\n\n  $CAIRN_TEST_DIR/tmp  \n${CAIRN_TEST_DIR}/cache\n")
    assert read_pattern_file(str(listing)) == ["*.o", "/data/tmp", "/data/cache"]
    with pytest.raises(UsageError, match="cannot read exclude file"):
        read_pattern_file(str(tmp_path / "missing"))


def test_markers_need_their_header(tmp_path: Path) -> None:
    excluder = Excluder(ExcludeOptions(if_present=[".nobackup", "TAG:magic"], caches=True))
    cases = {
        "plain": ({}, None),
        "marked": ({".nobackup": b""}, b".nobackup"),
        "tag-right": ({"TAG": b"magic and more"}, b"TAG"),
        "tag-wrong": ({"TAG": b"other"}, None),
        "cache": ({"CACHEDIR.TAG": CACHEDIR_SIGNATURE + b"\n# a cache\n"}, b"CACHEDIR.TAG"),
        "fake-cache": ({"CACHEDIR.TAG": b"Signature: 0000"}, None),
    }
    for name, (files, expected) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, data in files.items():
            (folder / file).write_bytes(data)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert excluder.folder_marker(fd) == expected, name
        finally:
            os.close(fd)
    with pytest.raises(UsageError, match="wants a file name"):
        Excluder(ExcludeOptions(if_present=["a/b"]))


# -- through a real backup ---------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", KdfParams(iterations=1, memory_kib=8, lanes=1))


def snapshot_paths(repo: Repository, below: Path) -> set[str]:
    """Every path in the latest snapshot under `below`, relative to it."""
    snap = repo.find_snapshot("latest")
    tree = snap.root
    for part in below.parts[1:]:
        tree = next(n for n in load_tree(repo, tree) if n.name == part.encode()).subtree
    found: set[str] = set()
    stack = [("", tree)]
    while stack:
        prefix, tree_id = stack.pop()
        for node in load_tree(repo, tree_id):
            path = prefix + node.name.decode()
            found.add(path)
            if node.type == DIR:
                stack.append((path + "/", node.subtree))
    return found


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel, size in {
        "keep.txt": 10, "big.iso": 300_000, "notes/a.o": 5, "notes/a.c": 5, "Photos/IMG.JPG": 5,
        "Photos/img2.jpg": 5, "build/out.bin": 5, "private/.nobackup": 0, "private/secret": 5,
        "cache/CACHEDIR.TAG": 0, "cache/blob": 5, "fakecache/CACHEDIR.TAG": 0, "fakecache/blob": 5,
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    (root / "cache" / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n")
    (root / "fakecache" / "CACHEDIR.TAG").write_bytes(b"not the signature\n")
    return root


def test_every_exclude_kind_in_one_backup(repo: Repository, tree: Path) -> None:
    options = ExcludeOptions(
        patterns=["*.o", f"{tree}/build"], ipatterns=["*.jpg"], if_present=[".nobackup"], caches=True,
        larger_than=100_000,
    )
    result = backup(repo, BackupOptions([str(tree)], excludes=options))
    assert result.skipped == []
    assert snapshot_paths(repo, tree) == {"keep.txt", "notes", "notes/a.c", "Photos", "fakecache",
                                          "fakecache/CACHEDIR.TAG", "fakecache/blob"}
    assert repo.find_snapshot("latest").summary["excluded"] == 7


def test_a_given_path_that_is_excluded_leaves_nothing_of_it(repo: Repository, tree: Path) -> None:
    backup(repo, BackupOptions([str(tree / "notes"), str(tree / "keep.txt")], excludes=ExcludeOptions(patterns=["notes"])))
    assert snapshot_paths(repo, tree) == {"keep.txt"}


def test_the_prescan_counts_what_the_backup_will_visit(tree: Path) -> None:
    """The totals behind the progress percentage use the same excludes as the backup."""
    import threading

    from cairn.files.scanner import Totals, prescan

    excluder = Excluder(ExcludeOptions(patterns=["*.o", f"{tree}/build"], ipatterns=["*.jpg"],
                                       if_present=[".nobackup"], caches=True, larger_than=100_000))
    totals = Totals()
    prescan([bytes(tree)], excluder, False, totals, threading.Event())
    kept = ["keep.txt", "notes/a.c", "fakecache/CACHEDIR.TAG", "fakecache/blob"]
    assert totals.done and (totals.files, totals.dirs) == (4, 4)
    assert totals.bytes == sum((tree / k).stat().st_size for k in kept)
    everything = Totals()
    prescan([bytes(tree)], Excluder(ExcludeOptions()), False, everything, threading.Event())
    files = [p for p in tree.rglob("*") if p.is_file()]
    assert (everything.files, everything.bytes) == (len(files), sum(p.stat().st_size for p in files))
