"""`cairn backup` flags end to end through the command line: what each one records or leaves
out, its errors and exit codes, progress and the summary."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import PASSWORD, CliRun, one_line_error
from cairn.cli.backup_cmd import _Progress, parse_duration
from cairn.cli.output import LiveLine, Ticker
from cairn.errors import CairnError, NotFound, UsageError
from cairn.files.excludes import CACHEDIR_SIGNATURE
from cairn.files.restorer import load_tree
from cairn.files.scanner import Totals
from cairn.files.tree import DIR
from cairn.ops.check import CheckOptions, check
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from test_restore_support import folder_tree

AS_ROOT = os.geteuid() == 0


def open_repo(path: Path) -> Repository:
    return Repository.open(LocalBackend(path), PASSWORD.encode())


def listing(repo: Repository, folder: Path, snapshot: str = "latest") -> set[str]:
    """Every path below `folder` in a snapshot, relative to it."""
    found, stack = set(), [("", folder_tree(repo, folder, snapshot))]
    while stack:
        prefix, tree_id = stack.pop()
        for node in load_tree(repo, tree_id):
            found.add(prefix + os.fsdecode(node.name))
            if node.type == DIR:
                stack.append((prefix + os.fsdecode(node.name) + "/", node.subtree))
    return found


def summary(result: object) -> dict[str, object]:
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[attr-defined]


def test_tag_host_and_time_are_recorded(repo_dir: Path, data: Path, cli: CliRun) -> None:
    for when, expected in [
        ("2024-05-01T12:30:00Z", "2024-05-01T12:30:00+00:00"),
        ("2024-05-01T14:30:00+02:00", "2024-05-01T14:30:00+02:00"),
        ("2024-05-01 12:30:00.250", None),
    ]:
        done = cli("-r", str(repo_dir), "backup", str(data), "--tag", "a,b", "--tag", "c", "--host", "box",
                   "--time", when)
        assert done.exit_code == 0, done.stderr
    snaps = open_repo(repo_dir).list_snapshots()
    assert [(s.host, s.tags) for s in snaps] == [("box", ["a", "b", "c"])] * 3
    times = sorted(s.time_ns for s in snaps)
    assert 1714566600 * 10**9 in times
    utc_plus_2 = [s for s in snaps if s.tz_offset == 7200]
    assert len(utc_plus_2) == 1 and utc_plus_2[0].time_ns == 1714566600 * 10**9
    assert any(t % 10**9 == 250_000_000 for t in times)  # the fraction is kept

    bad = cli("-r", str(repo_dir), "backup", str(data), "--time", "yesterday")
    assert bad.exit_code == UsageError.exit_code
    assert one_line_error(bad) == "cairn: 'yesterday' is not a time: use ISO 8601 or 'YYYY-MM-DD HH:MM:SS'"


def test_parent_and_force(repo_dir: Path, data: Path, cli: CliRun) -> None:
    first = summary(cli("-r", str(repo_dir), "--json", "backup", str(data)))
    assert first["parent"] is None and first["files_new"] == 2
    second = summary(cli("-r", str(repo_dir), "--json", "backup", str(data)))
    assert second["parent"] == first["snapshot_id"] and second["bytes_read"] == 0
    assert second["files_unmodified"] == 2
    chosen = summary(cli("-r", str(repo_dir), "--json", "backup", "--parent", str(first["snapshot_id"])[:8], str(data)))
    assert chosen["parent"] == first["snapshot_id"]
    forced = summary(cli("-r", str(repo_dir), "--json", "backup", "--force", str(data)))
    assert forced["parent"] is None and forced["bytes_read"] == 300_000 + 13 * 50
    missing = cli("-r", str(repo_dir), "backup", "--parent", "abcdef12", str(data))
    assert missing.exit_code == NotFound.exit_code and one_line_error(missing) == "cairn: no snapshot abcdef12"


def test_human_summary(repo_dir: Path, data: Path, cli: CliRun) -> None:
    cli("-r", str(repo_dir), "backup", str(data))
    (data / "docs" / "new.txt").write_text("new")
    done = cli("-r", str(repo_dir), "backup", str(data))
    lines = done.stdout.splitlines()
    assert lines[0].startswith("snapshot ") and " saved: 3 files, 2 folders, 3 B read, " in lines[0]
    assert lines[1] == "  files:   1 new, 0 changed, 2 unchanged (293.6 KiB)"
    assert lines[2] == "  folders: 0 new, 2 changed, 0 unchanged"
    assert lines[3].startswith("  compared with snapshot ")


def test_exclude_flags(repo_dir: Path, data: Path, tmp_path: Path, cli: CliRun) -> None:
    for rel in ("build/x.o", "Cache/CACHEDIR.TAG", "Cache/blob", "tmp/.nobackup", "tmp/t", "a.LOG", "b.iso"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"x" * (200_000 if rel == "b.iso" else 3))
    (data / "Cache" / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE)
    patterns = tmp_path / "patterns"
    patterns.write_text("# compiled\n*.o\n")
    done = cli("-r", str(repo_dir), "backup", str(data), "--exclude-file", str(patterns), "-e", f"{data}/photo.raw",
               "--iexclude", "*.log", "--exclude-if-present", ".nobackup", "--exclude-caches",
               "--exclude-larger-than", "100k")
    assert done.exit_code == 0, done.stderr
    assert listing(open_repo(repo_dir), data) == {"docs", "docs/letter.txt", "build"}
    for flag, value, message in [
        ("--exclude-larger-than", "huge", "cairn: 'huge' is not a size: use a number with an optional unit (k, M, G, T)"),
        ("--exclude", "!keep", "cairn: exclude pattern '!keep': negated patterns ('!') are not supported"),
        ("--exclude-file", str(tmp_path / "none"), f"cairn: cannot read exclude file {tmp_path / 'none'}: No such file or directory"),
        ("--checkpoint-interval", "often", "cairn: 'often' is not a duration: use e.g. 30s, 5m or 1h"),
    ]:
        bad = cli("-r", str(repo_dir), "backup", str(data), flag, value)
        assert bad.exit_code == UsageError.exit_code and one_line_error(bad) == message


@pytest.mark.skipif(not AS_ROOT, reason="mounting a tmpfs needs root")
def test_one_file_system_keeps_mount_points_empty(repo_dir: Path, data: Path, cli: CliRun) -> None:
    mount = data / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "cairn-test", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "other-fs.txt").write_text("on another filesystem")
        assert cli("-r", str(repo_dir), "backup", str(data)).exit_code == 0
        assert "mnt/other-fs.txt" in listing(open_repo(repo_dir), data)
        assert cli("-r", str(repo_dir), "backup", "-x", str(data)).exit_code == 0
        assert listing(open_repo(repo_dir), data) == {"docs", "docs/letter.txt", "photo.raw", "mnt"}
        # a path given on another filesystem is backed up: -x only stops crossing into others
        assert cli("-r", str(repo_dir), "backup", "--one-file-system", str(data), str(mount)).exit_code == 0
        assert "mnt/other-fs.txt" in listing(open_repo(repo_dir), data)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_stdin(repo_dir: Path, tmp_path: Path, cli: CliRun) -> None:
    dump = os.urandom(3_000_000)
    done = summary(cli("-r", str(repo_dir), "--json", "backup", "--stdin", "--stdin-filename", "db/dump.sql",
                       input=dump))
    assert done["files"] == 1 and done["bytes_read"] == len(dump)
    repo = open_repo(repo_dir)
    snap = repo.find_snapshot("latest")
    assert snap.paths == [b"/db/dump.sql"]
    (db,) = load_tree(repo, snap.root)
    (node,) = load_tree(repo, db.subtree)
    assert (db.name, db.type, node.name, node.mode, node.uid) == (b"db", "dir", b"dump.sql", 0o644, os.getuid())
    assert b"".join(repo.load_blob(c) for c in node.content) == dump
    both = cli("-r", str(repo_dir), "backup", "--stdin", "/etc", input=b"x")
    assert both.exit_code == 2 and "either paths or --stdin" in one_line_error(both)


def test_stdin_from_command(repo_dir: Path, cli: CliRun) -> None:
    done = summary(cli("-r", str(repo_dir), "--json", "backup", "--stdin-from-command", "--stdin-filename", "out.txt",
                       "--", "sh", "-c", "printf 'dumped\\n'; printf 'noise\\n' >&2"))
    repo = open_repo(repo_dir)
    (node,) = load_tree(repo, repo.find_snapshot(done["snapshot_id"]).root)  # type: ignore[arg-type]
    assert b"".join(repo.load_blob(c) for c in node.content) == b"dumped\n"

    failed = cli("-r", str(repo_dir), "backup", "--stdin-from-command", "--", "sh", "-c", "head -c 5000000 /dev/urandom; exit 7")
    assert failed.exit_code == CairnError.exit_code
    assert one_line_error(failed) == "cairn: sh exited with status 7; its output was not saved as a snapshot"
    assert len(repo.snapshot_ids()) == 1  # no truncated dump saved
    assert check(open_repo(repo_dir), CheckOptions(read_data=True)).ok

    missing = cli("-r", str(repo_dir), "backup", "--stdin-from-command", "--", "no-such-program-xyz")
    assert missing.exit_code == UsageError.exit_code
    assert one_line_error(missing) == "cairn: cannot run no-such-program-xyz: No such file or directory"
    empty = cli("-r", str(repo_dir), "backup", "--stdin-from-command")
    assert empty.exit_code == 2 and "needs a command" in one_line_error(empty)


def test_json_progress_lines_then_a_summary(repo_dir: Path, tmp_path: Path, cli: CliRun,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    many = tmp_path / "many"
    for i in range(3000):
        (many / f"d{i // 100}").mkdir(parents=True, exist_ok=True)
        (many / f"d{i // 100}" / f"f{i}").write_bytes(os.urandom(2000))
    monkeypatch.setenv("CAIRN_PROGRESS_FPS", "200")
    done = cli("-r", str(repo_dir), "--json", "backup", str(many))
    assert done.exit_code == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    statuses, final = messages[:-1], messages[-1]
    assert statuses and all(m["message_type"] == "status" for m in statuses)
    assert {"seconds_elapsed", "percent_done", "files_done", "bytes_done", "error_count", "current_files"} <= set(statuses[-1])
    assert final["message_type"] == "summary" and final["files_new"] == 3000 and final["dirs_new"] == 31
    assert final["total_bytes_processed"] == 6_000_000 and final["skipped"] == []


def test_live_line_shows_counts_rate_eta_and_the_current_file() -> None:
    status = SimpleNamespace(started=time.monotonic() - 10, files=1200, bytes_done=50 << 20, skipped=1,
                             path="/data/photos/x.jpg", totals=Totals(files=2400, bytes=100 << 20, done=True))
    progress = _Progress()
    progress(status)
    line = progress.line()
    assert line is not None and line.startswith("[10.0s] 50.0% 1,200 of 2,400 files, 50.0 MiB, 5.0 MiB/s ETA 10.0s")
    assert line.endswith("1 skipped  /data/photos/x.jpg")
    as_json = progress.json()
    assert as_json is not None and as_json["seconds_remaining"] == 10 and as_json["percent_done"] == 0.5
    status.totals = Totals(files=5, bytes=9, done=False)  # still counting: no percentage or ETA yet
    assert "%" not in (progress.line() or "") and "ETA" not in (progress.line() or "")

    stream = io.StringIO()
    with Ticker(LiveLine(stream, lambda: "working " + "x" * 500), 0.01):
        time.sleep(0.1)
    drawn = stream.getvalue()
    assert drawn.startswith("\rworking ") and drawn.endswith("\r\x1b[K")  # redrawn in place, erased at the end
    assert max(len(part) for part in drawn.split("\r")) < 300  # cut to the terminal width


def test_durations() -> None:
    assert [parse_duration(t) for t in ("300", "30s", "5m", "1.5h", "0")] == [300, 30, 300, 5400, 0]
