"""Bad input during a backup: each case warns naming the path, the backup goes on, the snapshot
is saved with the rest and records what was skipped, the exit code is 3 (or 0 when nothing was
left out), and the repository passes `check --read-data` afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FAST_KDF_ARGS, PASSWORD, SRC, CliRun
from cairn.errors import PartialSuccess
from cairn.files import pipeline as pipeline_mod
from cairn.files import scanner as scanner_mod
from cairn.files.restorer import load_tree
from cairn.ops.check import CheckOptions, check
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from test_restore_support import folder_tree

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "letter.txt").write_text("Dear reader,\n" * 50)
    (root / "photo.raw").write_bytes(os.urandom(300_000))
    (root / "zz-last.txt").write_text("the walk goes on after a bad entry\n")
    return root


def open_repo(path: Path) -> Repository:
    return Repository.open(LocalBackend(path), PASSWORD.encode())


def snapshot_names(repo: Repository, folder: Path) -> set[str]:
    return {n.name.decode() for n in load_tree(repo, folder_tree(repo, folder))}


def assert_saved_with_skips(repo_dir: Path, data: Path, skipped: dict[str, str]) -> None:
    repo = open_repo(repo_dir)
    snap = repo.find_snapshot("latest")
    assert snap.summary["skipped"] == [[os.fsencode(p), why] for p, why in sorted(skipped.items())]
    assert snap.summary["skipped_count"] == len(skipped)
    assert "zz-last.txt" in snapshot_names(repo, data)
    assert check(repo, CheckOptions(read_data=True)).ok


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cairn: warning: ")]


def test_unreadable_file_and_folder(tmp_path: Path, data: Path) -> None:
    """Real permission errors: as root, cairn runs without the capabilities that bypass them."""
    secret, closed = data / "docs" / "secret.txt", data / "closed"
    secret.write_text("no")
    closed.mkdir()
    (closed / "inside").write_text("unseen")
    secret.chmod(0)
    closed.chmod(0)
    repo_dir = tmp_path / "repo"
    env = {**os.environ, "CAIRN_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": str(SRC)}
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if AS_ROOT else []
    if AS_ROOT and shutil.which("setpriv") is None:
        pytest.skip("setpriv is needed to drop root's permission override")
    cairn = [*prefix, sys.executable, "-m", "cairn", "-r", str(repo_dir)]
    try:
        subprocess.run([*cairn, "init", *FAST_KDF_ARGS], env=env, check=True, capture_output=True)
        done = subprocess.run([*cairn, "backup", str(data)], env=env, capture_output=True, text=True)
    finally:
        secret.chmod(0o600)
        closed.chmod(0o700)
    assert done.returncode == PartialSuccess.exit_code == 3, done.stderr
    assert warnings(done.stderr) == [
        f"cairn: warning: skipped {closed}: Permission denied",
        f"cairn: warning: skipped {secret}: Permission denied",
    ]
    assert done.stderr.strip().splitlines()[-1] == "cairn: 2 item(s) could not be read and were left out of the snapshot"
    assert done.stdout.startswith("snapshot ")
    assert_saved_with_skips(repo_dir, data, {str(closed): "Permission denied", str(secret): "Permission denied"})


def test_a_socket_is_skipped_with_a_warning(repo_dir: Path, data: Path, cli: CliRun) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(data / "docs" / "app.sock"))
        result = cli("-r", str(repo_dir), "backup", str(data))
    finally:
        sock.close()
    path = data / "docs" / "app.sock"
    assert result.exit_code == 3
    assert warnings(result.stderr) == [f"cairn: warning: skipped {path}: is a socket: sockets are not backed up"]
    assert_saved_with_skips(repo_dir, data, {str(path): "is a socket: sockets are not backed up"})


@pytest.fixture
def vanishing(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Paths in this list are deleted right after their folder was listed: the real race of a
    file removed while the backup walks (the walk then finds it gone)."""
    doomed: list[Path] = []
    real = scanner_mod.list_names

    def listing_then_delete(fd: int) -> list[bytes]:
        names = real(fd)
        for path in doomed:
            if path.parent.samefile(f"/proc/self/fd/{fd}") and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return names

    monkeypatch.setattr("cairn.files.archiver.list_names", listing_then_delete)
    yield doomed


def test_files_and_folders_that_vanish(repo_dir: Path, data: Path, cli: CliRun, vanishing: list[Path]) -> None:
    vanishing += [data / "photo.raw", data / "docs"]
    result = cli("-r", str(repo_dir), "backup", str(data))
    assert result.exit_code == 3
    assert warnings(result.stderr) == [
        f"cairn: warning: skipped {data / 'docs'}: vanished during the backup",
        f"cairn: warning: skipped {data / 'photo.raw'}: vanished during the backup",
    ]
    assert_saved_with_skips(repo_dir, data, {str(data / "docs"): "vanished during the backup",
                                             str(data / "photo.raw"): "vanished during the backup"})


@pytest.fixture
def changing(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Named files get bytes appended right after each of their first `n` reads (between the
    fstat before and the one after): a file written to while it is backed up."""
    times: dict[str, int] = {}
    real = pipeline_mod.FileReader._content

    def read_then_write(self: pipeline_mod.FileReader, fd: int, size_hint: int) -> tuple[list[bytes], int]:
        result = real(self, fd, size_hint)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if times.get(name, 0) > 0:
            times[name] -= 1
            with open(name, "ab") as f:
                f.write(b"appended while being read\n")
        return result

    monkeypatch.setattr(pipeline_mod.FileReader, "_content", read_then_write)
    yield times


def test_a_file_changed_once_while_read_is_read_again(repo_dir: Path, data: Path, cli: CliRun,
                                                      changing: dict[str, int]) -> None:
    letter = data / "docs" / "letter.txt"
    changing[str(letter)] = 1
    result = cli("-r", str(repo_dir), "backup", str(data))
    assert result.exit_code == 0, result.stderr
    assert warnings(result.stderr) == [f"cairn: warning: {letter}: changed while it was read; read again"]
    repo = open_repo(repo_dir)
    node = next(n for n in load_tree(repo, folder_tree(repo, letter.parent)) if n.name == b"letter.txt")
    assert b"".join(repo.load_blob(c) for c in node.content) == letter.read_bytes()  # the second read
    assert node.size == letter.stat().st_size and node.mtime == letter.stat().st_mtime_ns
    assert check(repo, CheckOptions(read_data=True)).ok


def test_a_file_that_keeps_changing_is_skipped(repo_dir: Path, data: Path, cli: CliRun,
                                               changing: dict[str, int]) -> None:
    photo = data / "photo.raw"  # big enough to be cut into chunks by the savers
    changing[str(photo)] = 2
    result = cli("-r", str(repo_dir), "backup", str(data))
    assert result.exit_code == 3
    why = "changed while it was read, twice: not backed up"
    assert warnings(result.stderr) == [f"cairn: warning: skipped {photo}: {why}"]
    assert_saved_with_skips(repo_dir, data, {str(photo): why})


def test_a_file_that_fails_to_read_is_skipped(repo_dir: Path, data: Path, cli: CliRun) -> None:
    """/proc/self/mem: a regular file whose first read fails with EIO for everyone, root too."""
    result = cli("-r", str(repo_dir), "backup", str(data), "/proc/self/mem")
    assert result.exit_code == 3
    assert warnings(result.stderr) == ["cairn: warning: skipped /proc/self/mem: Input/output error"]
    repo = open_repo(repo_dir)
    assert repo.find_snapshot("latest").summary["skipped"] == [[b"/proc/self/mem", "Input/output error"]]
    assert check(repo, CheckOptions(read_data=True)).ok


def test_with_json_the_skips_are_messages_too(repo_dir: Path, data: Path, cli: CliRun) -> None:
    import json

    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(data / "app.sock"))
        result = cli("-r", str(repo_dir), "--json", "backup", str(data))
    finally:
        sock.close()
    assert result.exit_code == 3
    messages = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert messages == [{"message_type": "error", "error": {"message": "is a socket: sockets are not backed up"},
                         "during": "archival", "item": str(data / "app.sock")}]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["message_type"] == "summary" and summary["snapshot_id"]
    assert summary["skipped"] == [{"path": str(data / "app.sock"), "reason": "is a socket: sockets are not backed up"}]
