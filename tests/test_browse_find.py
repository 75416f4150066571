"""`cairn find` across snapshots: name and path patterns, case, filters, JSON, and that folders
shared by snapshots are read once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import PASSWORD, CliRun, one_line_error
from test_browse_ls import T0, snapshot, write
from cairn.errors import NotFound, UsageError
from cairn.files.walk import TreeLoader, walk
from cairn.ops.find import FindGroup, FindOptions, Matcher, find
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend


def open_repo(repo_dir: Path) -> Repository:
    return Repository.open(LocalBackend(repo_dir), PASSWORD.encode())


@pytest.fixture
def three(repo_dir: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Three snapshots of one folder: notes.txt in all, Report.TXT from the second on, old.txt
    only in the first, and a folder of 20 subfolders that never changes."""
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    for i in range(20):
        (src / "stable" / f"d{i:02d}").mkdir(parents=True)
        write(src / "stable" / f"d{i:02d}" / "data.bin", bytes([i]) * 100, mtime=T0)
    write(src / "notes.txt", b"notes", mtime=T0)
    write(src / "docs" / "old.txt", b"old", mtime=T0 + 10**9)
    ids = [snapshot(repo_dir, src, host="alpha", tags=["daily"])]
    write(src / "docs" / "Report.TXT", b"report", mtime=T0 + 5 * 10**9)
    ids.append(snapshot(repo_dir, src, host="beta"))
    (src / "docs" / "old.txt").unlink()
    ids.append(snapshot(repo_dir, src, host="alpha", tags=["weekly"]))
    return src, ids


def groups(repo_dir: Path, **options: object) -> list[FindGroup]:
    found: list[FindGroup] = []
    find(open_repo(repo_dir), FindOptions(**options), found.append)  # type: ignore[arg-type]
    return found


def summary(found: list[FindGroup], src: Path) -> list[tuple[str, list[str]]]:
    """(short id, paths relative to src) per group."""
    prefix = os.fsencode(src)
    return [(g.snapshot.short_id, [e.path[len(prefix):].decode() for e in g.matches]) for g in found]


def test_a_name_pattern_finds_each_snapshot_that_holds_a_match(repo_dir: Path, three: tuple[Path, list[str]]) -> None:
    src, (s1, s2, s3) = three
    assert summary(groups(repo_dir, patterns=["*.txt"]), src) == [
        (s1[:8], ["/docs/old.txt", "/notes.txt"]),
        (s2[:8], ["/docs/old.txt", "/notes.txt"]),
        (s3[:8], ["/notes.txt"]),
    ]
    assert summary(groups(repo_dir, patterns=["old.*"]), src) == [
        (s1[:8], ["/docs/old.txt"]), (s2[:8], ["/docs/old.txt"])
    ]
    assert summary(groups(repo_dir, patterns=["*.txt"], ignore_case=True), src)[1] == (
        s2[:8], ["/docs/Report.TXT", "/docs/old.txt", "/notes.txt"]
    )
    assert summary(groups(repo_dir, patterns=["doc?"]), src)[0] == (s1[:8], ["/docs"])  # folders match too
    assert groups(repo_dir, patterns=["nothing*"]) == []


def test_a_pattern_with_a_slash_matches_the_path(repo_dir: Path, three: tuple[Path, list[str]]) -> None:
    src, (s1, s2, s3) = three
    assert summary(groups(repo_dir, patterns=["docs/*"]), src) == [
        (s1[:8], ["/docs/old.txt"]), (s2[:8], ["/docs/Report.TXT", "/docs/old.txt"]), (s3[:8], ["/docs/Report.TXT"]),
    ]
    # anchored at the snapshot root when it starts with '/'
    assert groups(repo_dir, patterns=["/docs/*"]) == []
    anchored = groups(repo_dir, patterns=[f"{src}/*.txt"])
    assert [len(g.matches) for g in anchored] == [1, 1, 1]
    # '*' stays within one name, '**' crosses folders
    assert summary(groups(repo_dir, patterns=["src/*.bin"]), src) == []
    deep = groups(repo_dir, patterns=["src/**/data.bin"])
    assert [len(g.matches) for g in deep] == [20, 20, 20]
    assert summary(groups(repo_dir, patterns=["DOCS/report.txt"], ignore_case=True), src) == [
        (s2[:8], ["/docs/Report.TXT"]), (s3[:8], ["/docs/Report.TXT"])
    ]


def test_snapshot_host_tag_and_time_filters(repo_dir: Path, three: tuple[Path, list[str]]) -> None:
    from cairn.ops.snapshots import SnapshotFilter

    src, (s1, s2, s3) = three
    assert [g.snapshot.id for g in groups(repo_dir, patterns=["notes.txt"], snapshots=["latest", s1[:6]])] == [s1, s3]
    beta = groups(repo_dir, patterns=["notes.txt"], filter=SnapshotFilter(hosts=["beta"]))
    assert [g.snapshot.id for g in beta] == [s2]
    assert [g.snapshot.id for g in groups(repo_dir, patterns=["*"], filter=SnapshotFilter(tags=["weekly"]))] == [s3]
    newer = groups(repo_dir, patterns=["*.txt", "*.TXT"], newer_ns=T0 + 10**9)
    assert summary(newer, src) == [(s1[:8], ["/docs/old.txt"]), (s2[:8], ["/docs/Report.TXT", "/docs/old.txt"]),
                                   (s3[:8], ["/docs/Report.TXT"])]
    older = groups(repo_dir, patterns=["*.txt"], older_ns=T0 + 10**9)
    assert [m for _, m in summary(older, src)] == [["/notes.txt"]] * 3


def test_folders_shared_by_snapshots_are_read_once(repo_dir: Path, three: tuple[Path, list[str]]) -> None:
    src, ids = three
    repo = open_repo(repo_dir)
    loader = TreeLoader(repo)
    distinct = set()
    for snap_id in ids:
        root = repo.load_snapshot(bytes.fromhex(snap_id)).root
        distinct.add(root)
        distinct.update(n.subtree for _, n in walk(loader, root) if n.subtree is not None)
    folders_walked = sum(1 + sum(1 for _, n in walk(loader, repo.load_snapshot(bytes.fromhex(i)).root)
                                 if n.subtree) for i in ids)
    assert folders_walked - len(distinct) >= 2 * 21  # the 21 folders of stable/ are shared
    for patterns in (["*.bin"], ["stable/*/data.bin"]):  # by name, and by path
        result = find(open_repo(repo_dir), FindOptions(patterns=patterns), lambda g: None)
        assert result.hits == 60
        assert result.trees_loaded == len(distinct), patterns


def test_the_matcher_reads_globs_like_a_shell() -> None:
    def hit(pattern: str, path: bytes, ignore_case: bool = False) -> bool:
        from cairn.files.tree import Node

        match = Matcher.compile(FindOptions(patterns=[pattern], ignore_case=ignore_case))
        return match(path, Node(name=path.rsplit(b"/", 1)[-1], type="file"))

    assert hit("*.jp?g", b"/a/b.jpeg") and not hit("*.jp?g", b"/a/b.jpg")
    assert hit("[!a]*", b"/x/bc") and not hit("[!a]*", b"/x/abc")
    assert hit("[ab]c", b"/x/bc") and hit("a[]]b", b"/x/a]b")
    assert hit("caf?", b"/x/caf\xe9")  # a byte that is not UTF-8 is one character
    assert hit("a.b", b"/x/a.b") and not hit("a.b", b"/x/aXb")  # regex characters are literal
    assert hit("x/**/z", b"/x/z") and hit("x/**/z", b"/x/y/w/z") and not hit("x/*/z", b"/x/y/w/z")
    assert hit("ÉTÉ.txt", "/x/été.txt".encode(), ignore_case=True)
    with pytest.raises(UsageError):
        Matcher.compile(FindOptions(patterns=[]))


def test_find_cli_groups_by_snapshot_and_prints_json(
    repo_dir: Path, three: tuple[Path, list[str]], cli: CliRun
) -> None:
    src, (s1, s2, s3) = three
    result = cli("-r", str(repo_dir), "find", "old.txt", "--host", "alpha")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"snapshot {s1[:8]} of {src} at ") and lines[0].endswith("(alpha):")
    assert lines[1].startswith("-rw-r--r-- ") and lines[1].endswith(f" 3 {_time(T0 + 10**9)} {src}/docs/old.txt")
    assert lines[2:] == ["1 matches in 1 of 2 snapshots"]

    as_json = cli("-r", str(repo_dir), "--json", "find", "-i", "report.txt", "notes.txt", "-s", s3[:8], "-s", s2)
    assert as_json.exit_code == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert [(g["snapshot"]["id"], g["hits"]) for g in data] == [(s2, 2), (s3, 2)]
    assert [m["path"] for m in data[0]["matches"]] == [f"{src}/docs/Report.TXT", f"{src}/notes.txt"]
    assert data[0]["matches"][0]["size"] == 6 and data[0]["matches"][0]["mtime_ns"] == T0 + 5 * 10**9
    empty = cli("-r", str(repo_dir), "--json", "find", "nothing")
    assert json.loads(empty.stdout) == []

    newer = cli("-r", str(repo_dir), "find", "*.txt", "--newer", _time(T0 + 10**9))  # local time, whole seconds
    assert newer.exit_code == 0 and "old.txt" in newer.stdout and "notes.txt" not in newer.stdout
    bad = cli("-r", str(repo_dir), "find", "x", "--older", "yesterday")
    assert bad.exit_code == UsageError.exit_code
    missing = cli("-r", str(repo_dir), "find", "x", "-s", "ffffffffff")
    assert missing.exit_code == NotFound.exit_code and one_line_error(missing) == "cairn: no snapshot ffffffffff"


def _time(ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ns // 10**9).strftime("%Y-%m-%d %H:%M:%S")


def test_find_needs_a_pattern_and_passes_over_image_snapshots(repo_dir: Path, cli: CliRun) -> None:
    assert cli("-r", str(repo_dir), "find").exit_code == UsageError.exit_code
    none = cli("-r", str(repo_dir), "find", "*")
    assert none.exit_code == 0 and none.stdout == "0 matches in 0 of 0 snapshots\n"

    image = Snapshot(kind="image", root=os.urandom(32), paths=[b"/dev/sda"], host="h", user="u")
    image_id = open_repo(repo_dir).save_snapshot(image).hex()
    assert cli("-r", str(repo_dir), "find", "*").stdout == "0 matches in 0 of 0 snapshots\n"
    for args in (["ls", image_id], ["find", "*", "-s", image_id], ["diff", image_id, "latest"], ["dump", image_id]):
        refused = cli("-r", str(repo_dir), *args)
        assert refused.exit_code == UsageError.exit_code, args
        assert one_line_error(refused) == f"cairn: snapshot {image_id[:8]} is an image snapshot, not a files snapshot"
