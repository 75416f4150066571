"""`cairn diff`: every kind of change between two real snapshots, the summary, JSON, and that
unchanged folders are skipped without being read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, CliRun, one_line_error
from test_browse_ls import T0, snapshot, write
from cairn.errors import NotFound
from cairn.ops.diff import Change, DiffOptions, diff
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend

S = 10**9


def open_repo(repo_dir: Path) -> Repository:
    return Repository.open(LocalBackend(repo_dir), PASSWORD.encode())


def settle(*folders: Path) -> None:
    """Give folders the same fixed mtime, so only the changes made on purpose show.

    The access time is set to now: an access time older than the mtime would be updated by the
    backup's own reading (relatime), which changes the folder's tree and hides the skipping.
    Only folders that changed are settled the second time: setting times changes the ctime.
    """
    for folder in folders:
        os.utime(folder, ns=(time.time_ns(), T0))


@pytest.fixture
def before_after(repo_dir: Path, tmp_path: Path) -> tuple[Path, str, str]:
    src = tmp_path / "src"
    for folder in ("keep", "gone", "static/a/b/c", "static/x/y"):
        (src / folder).mkdir(parents=True)
    write(src / "keep" / "same.txt", b"unchanged", mtime=T0)
    write(src / "keep" / "edit.txt", b"version 1", mtime=T0)  # same size after the edit
    write(src / "keep" / "mode.sh", b"#!/bin/sh\n", 0o644, T0)
    write(src / "keep" / "touched.txt", b"touch me", mtime=T0)
    write(src / "keep" / "removed.bin", b"r" * 1000, mtime=T0)
    write(src / "gone" / "one", b"1" * 100, mtime=T0)
    write(src / "gone" / "two", b"2" * 200, mtime=T0)
    write(src / "shape", b"a file, then a folder", mtime=T0)
    write(src / "static" / "a" / "b" / "c" / "deep.txt", b"deep", mtime=T0)
    write(src / "static" / "x" / "y" / "z.txt", b"z", mtime=T0)
    settle(*sorted((Path(f) for f, _, _ in os.walk(src)), reverse=True))
    first = snapshot(repo_dir, src)

    write(src / "keep" / "edit.txt", b"version 2", mtime=T0 + S)
    os.chmod(src / "keep" / "mode.sh", 0o755)
    subprocess.run(["touch", "-d", "2001-02-03 04:05:06", str(src / "keep" / "touched.txt")], check=True)
    (src / "keep" / "removed.bin").unlink()
    write(src / "keep" / "added.txt", b"a" * 50, mtime=T0)
    shutil.rmtree(src / "gone")
    (src / "fresh" / "inner").mkdir(parents=True)
    write(src / "fresh" / "inner" / "new.dat", b"n" * 300, mtime=T0)
    (src / "shape").unlink()
    (src / "shape").mkdir()
    write(src / "shape" / "inside", b"i" * 7, mtime=T0)
    os.chmod(src / "shape", 0o755)
    settle(src / "fresh" / "inner", src / "fresh", src / "shape", src / "keep", src)
    second = snapshot(repo_dir, src)
    return src, first, second


def changes(repo_dir: Path, before: str, after: str) -> tuple[list[tuple[str, str, tuple[str, ...]]], object]:
    found: list[Change] = []
    result = diff(open_repo(repo_dir), DiffOptions(before, after), found.append)
    return [(c.kind, c.path.decode(), c.fields) for c in found], result


def test_every_kind_of_change_is_reported_once_in_walk_order(
    repo_dir: Path, before_after: tuple[Path, str, str]
) -> None:
    src, first, second = before_after
    found, result = changes(repo_dir, f"{first}:{src}", f"latest:{src}")
    s = str(src)
    assert found == [
        ("+", f"{s}/fresh", ()),
        ("+", f"{s}/fresh/inner", ()),
        ("+", f"{s}/fresh/inner/new.dat", ()),
        ("-", f"{s}/gone", ()),
        ("-", f"{s}/gone/one", ()),
        ("-", f"{s}/gone/two", ()),
        ("+", f"{s}/keep/added.txt", ()),
        ("M", f"{s}/keep/edit.txt", ("mtime",)),
        ("U", f"{s}/keep/mode.sh", ("mode",)),
        ("-", f"{s}/keep/removed.bin", ()),
        ("U", f"{s}/keep/touched.txt", ("mtime",)),
        ("T", f"{s}/shape", ("mode",)),
        ("+", f"{s}/shape/inside", ()),
    ]
    stats = result.stats  # type: ignore[attr-defined]
    assert (stats.files_added, stats.files_removed, stats.dirs_added, stats.dirs_removed) == (3, 3, 2, 1)
    assert (stats.modified, stats.metadata_changed, stats.type_changed) == (1, 2, 1)
    # added: added.txt 50 + new.dat 300 + inside 7 + edit.txt 9; removed: 1000 + 100 + 200 + shape 21 + 9
    assert (stats.bytes_added, stats.bytes_removed) == (366, 1330)
    assert result.before.id == first and result.after.id == second  # type: ignore[attr-defined]


def test_unchanged_folders_are_skipped_without_loading_them(
    repo_dir: Path, before_after: tuple[Path, str, str]
) -> None:
    src, first, second = before_after
    _, result = changes(repo_dir, first, second)
    stats = result.stats  # type: ignore[attr-defined]
    # loaded: both roots and the folders down to src (both sides), keep (both), and what only one
    # side has: gone, fresh, fresh/inner, shape. Never static/ and the five folders below it.
    depth = len(src.parts)  # root tree + one per component of src's parents (tmp, ...) + src itself
    assert stats.trees_loaded == 2 * depth + 2 * 1 + 4
    assert stats.trees_skipped == 1  # static/, equal ids on both sides
    identical, same = changes(repo_dir, second, "latest")
    assert identical == [] and same.stats.trees_loaded == 0  # type: ignore[attr-defined]


def test_diff_cli_prints_changes_and_the_summary(
    repo_dir: Path, before_after: tuple[Path, str, str], cli: CliRun
) -> None:
    src, first, second = before_after
    result = cli("-r", str(repo_dir), "diff", f"{first[:8]}:{src}", f"{second[:8]}:{src}")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [f"+    {src}/fresh/", f"+    {src}/fresh/inner/", f"+    {src}/fresh/inner/new.dat",
                         f"-    {src}/gone/"]
    assert f"U    {src}/keep/mode.sh  (mode)" in lines and f"M    {src}/keep/edit.txt" in lines
    assert f"T    {src}/shape  (mode)" in lines
    summary = lines[lines.index(f"compared snapshot {first[:8]} to {second[:8]}:") + 1:]
    assert [line.split() for line in summary] == [
        ["Files:", "3", "new,", "3", "removed,", "1", "changed"],
        ["Dirs:", "2", "new,", "1", "removed"],
        ["Others:", "0", "new,", "0", "removed"],
        ["Metadata", "only:", "2", "changed"],
        ["Type", "changed:", "1"],
        ["Added:", "366", "B"],
        ["Removed:", "1.3", "KiB"],
    ]
    quiet = cli("-r", str(repo_dir), "diff", "--no-metadata", f"{first}:{src}", f"latest:{src}")
    assert not any(line.startswith("U ") for line in quiet.stdout.splitlines())
    assert "Metadata only:        2 changed" in quiet.stdout  # counted all the same


def test_diff_json_has_one_change_per_line_then_statistics(
    repo_dir: Path, before_after: tuple[Path, str, str], cli: CliRun
) -> None:
    src, first, second = before_after
    result = cli("-r", str(repo_dir), "--json", "diff", f"{first}:{src}", f"{second}:{src}")
    assert result.exit_code == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    *changed, stats = objects
    assert {c["message_type"] for c in changed} == {"change"} and len(changed) == 13
    mode = next(c for c in changed if c["path"] == f"{src}/keep/mode.sh")
    assert mode["modifier"] == "U" and mode["fields"] == ["mode"]
    assert mode["before"]["permissions"] == "-rw-r--r--" and mode["after"]["permissions"] == "-rwxr-xr-x"
    added = next(c for c in changed if c["path"] == f"{src}/fresh/inner/new.dat")
    assert added == {"message_type": "change", "modifier": "+", "path": f"{src}/fresh/inner/new.dat", "type": "file"}
    assert stats["message_type"] == "statistics" and stats["before"] == first and stats["after"] == second
    assert (stats["files_added"], stats["bytes_added"], stats["metadata_changed"]) == (3, 366, 2)


def test_diff_of_single_files_and_of_missing_paths(repo_dir: Path, before_after: tuple[Path, str, str],
                                                   cli: CliRun) -> None:
    src, first, second = before_after
    found, _ = changes(repo_dir, f"{first}:{src}/keep/edit.txt", f"{second}:{src}/keep/edit.txt")
    assert found == [("M", f"{src}/keep/edit.txt", ("mtime",))]
    missing = cli("-r", str(repo_dir), "diff", first, f"{second}:{src}/gone")
    assert missing.exit_code == NotFound.exit_code
    assert one_line_error(missing) == f"cairn: snapshot {second[:8]} has no {src}/gone"
