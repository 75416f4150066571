"""`cairn ls`: plain, long and JSON listings of real snapshots, sub-trees, odd names, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import PASSWORD, SRC, CliRun, one_line_error
from cairn.errors import NotFound
from cairn.ops.backup import BackupOptions, backup
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend

T0 = 1_600_000_000_123_456_789
ODD = b"caf\xe9"  # Latin-1 "café": not UTF-8
NEWLINE = b"two\nlines"
BACKSLASH = b"back\\slash"


def bpath(folder: Path, name: bytes) -> bytes:
    return os.fsencode(folder) + b"/" + name


def write(path: Path | bytes, data: bytes, mode: int = 0o644, mtime: int = T0) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime, mtime))


def snapshot(repo_dir: Path, *paths: Path, host: str | None = None, tags: list[str] | None = None) -> str:
    """Back up `paths` with the real backup operation; the new snapshot's id in hex."""
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    result = backup(repo, BackupOptions([str(p) for p in paths], host=host, tags=tags or []))
    assert result.snapshot_id is not None and not result.skipped, result.skipped
    return result.snapshot_id.hex()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Nested folders, modes, fixed times and three awkward names."""
    root = tmp_path / "src"
    (root / "docs" / "old" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    write(root / "docs" / "letter.txt", b"Dear reader,\n" * 10, 0o640, T0 + 1)
    write(root / "docs" / "old" / "deep" / "leaf.bin", os.urandom(5000), 0o600, T0 + 2)
    write(root / "run.sh", b"#!/bin/sh\n", 0o4755, T0 + 3)
    for name in (ODD, NEWLINE, BACKSLASH):
        write(bpath(root, name), name, 0o644, T0 + 4)
    for folder in (root / "docs" / "old" / "deep", root / "docs" / "old", root / "docs", root / "empty", root):
        os.utime(folder, ns=(T0, T0))
    return root


EXPECTED = [  # below src, in the order ls prints them: parents first, names bytewise, escaped
    "/back\\\\slash", "/caf\\xe9",
    "/docs", "/docs/letter.txt", "/docs/old", "/docs/old/deep", "/docs/old/deep/leaf.bin",
    "/empty", "/run.sh", "/two\\nlines",
]
DOCS = EXPECTED[2:7]


def expected(src: Path, rel: list[str]) -> list[str]:
    return [str(src) + r for r in rel]


def test_ls_lists_everything_below_the_root_recursively_with_odd_names_escaped(
    repo_dir: Path, src: Path, cli: CliRun
) -> None:
    snapshot(repo_dir, src)
    result = cli("-r", str(repo_dir), "ls", "latest")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # the path components above src come first, as in the snapshot's root tree
    parents = [str(p) for p in reversed(src.parents) if str(p) != "/"]
    assert lines == parents + [str(src)] + expected(src, EXPECTED)
    assert result.stderr == ""


def test_ls_of_a_sub_tree_by_colon_or_path_and_not_recursive(repo_dir: Path, src: Path, cli: CliRun) -> None:
    snap = snapshot(repo_dir, src)
    by_colon = cli("-r", str(repo_dir), "ls", f"{snap[:8]}:{src}/docs")
    by_path = cli("-r", str(repo_dir), "ls", snap, f"{src}/docs")
    joined = cli("-r", str(repo_dir), "ls", f"latest:{src}", "docs/old")
    assert by_colon.exit_code == by_path.exit_code == joined.exit_code == 0
    assert by_colon.stdout == by_path.stdout
    assert by_colon.stdout.splitlines() == expected(src, DOCS)
    assert joined.stdout.splitlines() == expected(src, DOCS[2:])

    flat = cli("-r", str(repo_dir), "ls", "--no-recursive", f"latest:{src}/docs")
    assert flat.stdout.splitlines() == expected(src, ["/docs", "/docs/letter.txt", "/docs/old"])
    one_file = cli("-r", str(repo_dir), "ls", f"latest:{src}/docs/letter.txt")
    assert one_file.stdout.splitlines() == [f"{src}/docs/letter.txt"]


def test_ls_long_shows_mode_owner_size_time_and_path(repo_dir: Path, src: Path, cli: CliRun) -> None:
    snapshot(repo_dir, src)
    result = cli("-r", str(repo_dir), "ls", "-l", f"latest:{src}")
    assert result.exit_code == 0, result.stderr
    lines = {line.rsplit(" ", 1)[-1]: line for line in result.stdout.splitlines()}
    st = os.stat(src / "run.sh")
    user = _name(st.st_uid, "pwd")
    group = _name(st.st_gid, "grp")
    when = datetime.fromtimestamp((T0 + 3) // 10**9).strftime("%Y-%m-%d %H:%M:%S")
    assert lines[f"{src}/run.sh"].split() == ["-rwsr-xr-x", user, group, "10", *when.split(), f"{src}/run.sh"]
    assert lines[f"{src}/docs/letter.txt"].startswith("-rw-r----- ")
    assert lines[f"{src}/docs"].startswith("d")
    assert f"{src}/caf\\xe9" in lines


def _name(number: int, module: str) -> str:
    import grp
    import pwd

    try:
        return pwd.getpwuid(number).pw_name if module == "pwd" else grp.getgrgid(number).gr_name
    except KeyError:
        return str(number)


def test_ls_json_is_one_object_per_line_with_full_metadata(repo_dir: Path, src: Path, cli: CliRun) -> None:
    snap = snapshot(repo_dir, src)
    result = cli("-r", str(repo_dir), "--json", "ls", f"latest:{src}")
    assert result.exit_code == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    head, nodes = objects[0], objects[1:]
    assert head["struct_type"] == "snapshot" and head["id"] == snap and head["paths"] == [str(src)]
    assert all(n["struct_type"] == "node" for n in nodes)
    by_path = {n["path"]: n for n in nodes}
    run = by_path[f"{src}/run.sh"]
    assert run["type"] == "file" and run["size"] == 10 and run["mode"] == 0o4755
    assert run["permissions"] == "-rwsr-xr-x" and run["mtime_ns"] == T0 + 3 and run["name"] == "run.sh"
    assert run["uid"] == os.getuid() and "user" in run and "group" in run
    assert run["mtime"].endswith(f".{(T0 + 3) % 10**9:09d}" + run["mtime"][-6:])
    assert by_path[f"{src}/docs"]["type"] == "dir" and len(by_path[f"{src}/docs"]["subtree"]) == 64
    odd = by_path[f"{src}/caf\\xe9"]
    assert bytes.fromhex(odd["path_hex"]) == bpath(src, ODD) and bytes.fromhex(odd["name_hex"]) == ODD
    newline = by_path[f"{src}/two\nlines"]  # valid UTF-8: exact text, JSON escapes the newline
    assert "path_hex" not in newline and newline["name"] == "two\nlines"
    assert by_path[f"{src}/back\\slash"]["name"] == "back\\slash"


def test_ls_of_a_missing_path_or_snapshot_is_not_found(repo_dir: Path, src: Path, cli: CliRun) -> None:
    snap = snapshot(repo_dir, src)
    missing = cli("-r", str(repo_dir), "ls", f"latest:{src}/nope")
    assert missing.exit_code == NotFound.exit_code
    assert one_line_error(missing) == f"cairn: snapshot {snap[:8]} has no {src}/nope"
    through_file = cli("-r", str(repo_dir), "ls", snap, f"{src}/run.sh/x")
    assert through_file.exit_code == NotFound.exit_code
    assert one_line_error(through_file) == f"cairn: snapshot {snap[:8]}: {src}/run.sh is not a folder"
    other = "0000" if not snap.startswith("0000") else "1111"
    unknown = cli("-r", str(repo_dir), "ls", other)
    assert unknown.exit_code == NotFound.exit_code
    assert one_line_error(unknown) == f"cairn: no snapshot {other}"


def test_ls_of_an_empty_repository_latest_is_not_found(repo_dir: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "ls", "latest")
    assert result.exit_code == NotFound.exit_code
    assert one_line_error(result) == "cairn: the repository has no snapshots yet"


def test_ls_into_a_closed_pipe_ends_quietly(repo_dir: Path, tmp_path: Path) -> None:
    many = tmp_path / "many"
    many.mkdir()
    for i in range(3000):
        (many / f"file-{i:05d}").write_bytes(b"x")
    snapshot(repo_dir, many)
    env = {**os.environ, "PYTHONPATH": str(SRC), "CAIRN_PASSWORD": PASSWORD}
    cairn = subprocess.Popen([sys.executable, "-m", "cairn", "-r", str(repo_dir), "ls", "latest"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert cairn.stdout is not None and cairn.stderr is not None
    cairn.stdout.readline()
    cairn.stdout.close()
    stderr = cairn.stderr.read().decode()
    assert cairn.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
