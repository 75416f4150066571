"""The `cairn` command as a user meets it: what it prints, where, and with which exit code.

Repository commands (init, key, snapshots, cat, unlock) and the failures every command shares
(wrong password, no repository, newer format, locked). Backup and restore are in
test_cli_backup.py, password and location sources in test_cli_access.py.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST_KDF_ARGS, PASSWORD, SRC, CliRun, one_line_error
from cairn.errors import (
    NotFound,
    RepositoryLocked,
    RepositoryNotFound,
    UnsupportedVersion,
    UsageError,
    WrongPassword,
)
from cairn.repo import lock as lock_mod
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend


def open_repo(path: Path, password: str = PASSWORD) -> Repository:
    return Repository.open(LocalBackend(path), password.encode())


def add_snapshot(path: Path, *, host: str = "laptop", tags: list[str] | None = None,
                 paths: list[bytes] | None = None, when_ns: int | None = None) -> str:
    repo = open_repo(path)
    snap = Snapshot(
        kind="files", root=os.urandom(32), paths=paths or [b"/home/me"], host=host, user="me",
        tags=tags or [], time_ns=when_ns or time.time_ns(),
    )
    return repo.save_snapshot(snap).hex()


def password_file(tmp_path: Path, text: str, name: str = "pw") -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


# -- init ---------------------------------------------------------------------------------------


def test_init_creates_a_repository_and_warns_about_the_password(tmp_path: Path, cli: CliRun,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    result = cli("-r", str(tmp_path / "repo"), "init", *FAST_KDF_ARGS)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("created repository ")
    assert str(tmp_path / "repo") in result.stdout
    assert "cannot be recovered" in result.stderr
    assert "cairn key add" in result.stderr
    assert (tmp_path / "repo" / "config").is_file()
    open_repo(tmp_path / "repo")  # the password opens it


def test_init_json_names_the_repository_and_key(tmp_path: Path, cli: CliRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    result = cli("--json", "-r", str(tmp_path / "repo"), "init", *FAST_KDF_ARGS)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"location", "repository_id", "key_id"}
    assert open_repo(tmp_path / "repo").key_id == data["key_id"]


def test_init_twice_is_refused(repo_dir: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "init", *FAST_KDF_ARGS)
    assert result.exit_code == UsageError.exit_code
    assert one_line_error(result) == f"cairn: a repository already exists at {repo_dir}"


def test_init_kdf_options_are_hidden_but_documented(cli: CliRun) -> None:
    result = cli("init", "--help")
    assert result.exit_code == 0
    options_part = result.stdout.split("Advanced:")[0]
    assert "--kdf-iterations" not in options_part
    assert "Advanced: --kdf-iterations" in " ".join(result.stdout.split())


def test_init_refuses_too_little_kdf_memory_for_its_lanes(tmp_path: Path, cli: CliRun,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    result = cli("-r", str(tmp_path / "r"), "init", "--kdf-memory-kib", "8", "--kdf-lanes", "4")
    assert result.exit_code == 2
    assert "8 KiB of memory per lane" in one_line_error(result)


# -- keys ---------------------------------------------------------------------------------------


def test_two_passwords_open_the_same_repository(repo_dir: Path, tmp_path: Path, cli: CliRun) -> None:
    second = password_file(tmp_path, "second password")
    added = cli("-r", str(repo_dir), "key", "add", "--new-password-file", second, *FAST_KDF_ARGS)
    assert added.exit_code == 0, added.stderr
    assert added.stdout.startswith("added key ")

    with_first = cli("-r", str(repo_dir), "--json", "key", "list")
    with_second = cli("-r", str(repo_dir), "--password-file", second, "--json", "key", "list")
    assert with_first.exit_code == with_second.exit_code == 0
    first_keys, second_keys = json.loads(with_first.stdout), json.loads(with_second.stdout)
    assert [k["id"] for k in first_keys] == [k["id"] for k in second_keys]
    assert len(first_keys) == 2
    # Each password opens its own key: the "current" marker moves.
    assert [k["current"] for k in first_keys] == [True, False]
    assert [k["current"] for k in second_keys] == [False, True]


def test_key_list_table_marks_the_key_in_use(repo_dir: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "key", "list")
    assert result.exit_code == 0
    key_id = open_repo(repo_dir).key_id
    assert f"*{key_id[:8]}" in result.stdout
    assert "argon2id t=1" in result.stdout
    assert result.stdout.rstrip().endswith("1 keys")


def test_key_passwd_then_the_old_password_is_refused(repo_dir: Path, tmp_path: Path, cli: CliRun) -> None:
    new = password_file(tmp_path, "brand new")
    changed = cli("-r", str(repo_dir), "key", "passwd", "--new-password-file", new, *FAST_KDF_ARGS)
    assert changed.exit_code == 0, changed.stderr
    assert changed.stdout.startswith("password changed: key ")

    old = cli("-r", str(repo_dir), "snapshots")
    assert old.exit_code == WrongPassword.exit_code == 11
    assert one_line_error(old) == "cairn: wrong password: no key of this repository opens with it"

    fresh = cli("-r", str(repo_dir), "--password-file", new, "--json", "key", "list")
    assert fresh.exit_code == 0, fresh.stderr
    assert [k["current"] for k in json.loads(fresh.stdout)] == [True]


def test_key_add_without_a_new_password_and_no_terminal_fails_clearly(repo_dir: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "key", "add")
    assert result.exit_code == 2
    assert "no new password given: use --new-password-file" in one_line_error(result)


def test_key_remove(repo_dir: Path, tmp_path: Path, cli: CliRun) -> None:
    first_id = open_repo(repo_dir).key_id
    second = password_file(tmp_path, "second password")
    added = cli("-r", str(repo_dir), "--json", "key", "add", "--new-password-file", second, *FAST_KDF_ARGS)
    second_id = json.loads(added.stdout)["key_id"]

    in_use = cli("-r", str(repo_dir), "key", "remove", first_id[:8])
    assert in_use.exit_code == UsageError.exit_code
    assert "it is the one in use" in one_line_error(in_use)

    removed = cli("-r", str(repo_dir), "key", "remove", first_id[:8], "--password-file", second)
    assert removed.exit_code == 0, removed.stderr
    assert removed.stdout.strip() == f"removed key {first_id[:8]}"
    assert [k.id for k in open_repo(repo_dir, "second password").list_keys()] == [second_id]

    gone = cli("-r", str(repo_dir), "snapshots")
    assert gone.exit_code == WrongPassword.exit_code


def test_key_remove_refuses_the_last_key(repo_dir: Path, cli: CliRun) -> None:
    key_id = open_repo(repo_dir).key_id
    result = cli("-r", str(repo_dir), "key", "remove", key_id)
    assert result.exit_code == UsageError.exit_code
    assert "refusing to remove the last key" in one_line_error(result)
    assert len(open_repo(repo_dir).list_keys()) == 1


def test_key_remove_unknown_id(repo_dir: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "key", "remove", "0000dead")
    assert result.exit_code == NotFound.exit_code == 15
    assert one_line_error(result) == "cairn: no key 0000dead"


# -- failures every command shares -------------------------------------------------------------


def test_wrong_password_is_exit_11_with_one_line(repo_dir: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "snapshots", env={"CAIRN_PASSWORD": "not it"})
    assert result.exit_code == 11
    assert one_line_error(result) == "cairn: wrong password: no key of this repository opens with it"
    assert result.stdout == ""


def test_debug_shows_the_traceback(repo_dir: Path, cli: CliRun) -> None:
    result = cli("--debug", "-r", str(repo_dir), "snapshots", env={"CAIRN_PASSWORD": "not it"})
    assert result.exit_code == 11
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cairn: wrong password")


def test_not_a_repository_is_exit_10(tmp_path: Path, cli: CliRun) -> None:
    (tmp_path / "empty").mkdir()
    # No password is given: the missing repository is reported before one is asked for.
    result = cli("-r", str(tmp_path / "empty"), "snapshots")
    assert result.exit_code == RepositoryNotFound.exit_code == 10
    assert one_line_error(result) == f"cairn: no repository at {tmp_path / 'empty'}: run 'cairn init' first"


def test_a_foreign_config_file_is_not_a_repository(tmp_path: Path, cli: CliRun) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config").write_text("[core]\nbare = false\n")
    result = cli("-r", str(tmp_path / "other"), "snapshots")
    assert result.exit_code == 10
    assert "not a cairn repository" in one_line_error(result)


def test_newer_format_version_is_exit_12_and_says_to_upgrade(repo_dir: Path, cli: CliRun,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = repo_dir / "config"
    data = bytearray(config.read_bytes())
    assert data[:8] == b"CAIRNREP"
    data[8:10] = struct.pack(">H", 2)
    config.write_bytes(bytes(data))
    monkeypatch.delenv("CAIRN_PASSWORD")  # the version is checked before any password is needed
    result = cli("-r", str(repo_dir), "snapshots")
    assert result.exit_code == UnsupportedVersion.exit_code == 12
    line = one_line_error(result)
    assert "format version 2" in line
    assert line.endswith("upgrade cairn")


def test_unknown_command_and_bad_option_exit_2(cli: CliRun) -> None:
    assert cli("frobnicate").exit_code == 2
    assert cli("snapshots", "--no-such-option").exit_code == 2


def test_global_options_work_after_the_command_too(repo_dir: Path, cli: CliRun) -> None:
    snap = add_snapshot(repo_dir)
    result = cli("snapshots", "-r", str(repo_dir), "--json")
    assert result.exit_code == 0, result.stderr
    assert [s["id"] for s in json.loads(result.stdout)] == [snap]


def test_interrupt_is_exit_130_with_one_line(repo_dir: Path, cli: CliRun, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cairn.cli.snapshots_cmd.list_snapshots", interrupted)
    result = cli("-r", str(repo_dir), "snapshots")
    assert result.exit_code == 130
    assert one_line_error(result).startswith("cairn: interrupted")


def test_a_bug_keeps_its_traceback_and_says_so(repo_dir: Path, cli: CliRun, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr("cairn.cli.snapshots_cmd.list_snapshots", broken)
    result = cli("-r", str(repo_dir), "snapshots")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "internal error (ZeroDivisionError: oops); this is a bug" in result.stderr


# -- locks --------------------------------------------------------------------------------------

HOLDER = """
import sys
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
repo = Repository.open(LocalBackend(sys.argv[1]), sys.argv[2].encode())
with repo.lock(exclusive=True, command="test holder"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_repository_locked_by_another_process_is_exit_14(repo_dir: Path, cli: CliRun) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(repo_dir), PASSWORD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = cli("-r", str(repo_dir), "snapshots")
        assert result.exit_code == RepositoryLocked.exit_code == 14
        line = one_line_error(result)
        assert "exclusive lock by" in line and f"pid {holder.pid} (test holder)" in line
        assert line.endswith("run 'cairn unlock'")
        # unlock leaves a live lock alone and says who holds it
        kept = cli("-r", str(repo_dir), "unlock")
        assert kept.exit_code == 0
        assert "kept exclusive lock by" in kept.stdout and "no stale locks" in kept.stdout
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert cli("-r", str(repo_dir), "snapshots").exit_code == 0
    assert list((repo_dir / "locks").iterdir()) == []


def dead_pid() -> int:
    """A pid that belonged to a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_stale_lock_is_ignored_and_removed_by_unlock(repo_dir: Path, cli: CliRun) -> None:
    repo = open_repo(repo_dir)
    now = time.time_ns()
    stale = lock_mod.LockInfo(
        id=os.urandom(32).hex(), exclusive=True, host=socket.gethostname(), pid=dead_pid(), user="me",
        time_ns=now, refreshed_ns=now, command="backup",
    )
    repo.store_object("locks", stale.id, lock_mod.encode(stale))

    listed = cli("-r", str(repo_dir), "snapshots")
    assert listed.exit_code == 0, listed.stderr

    removed = cli("-r", str(repo_dir), "unlock")
    assert removed.exit_code == 0
    assert removed.stdout.startswith(f"removed exclusive lock by me@{socket.gethostname()} pid {stale.pid} (backup)")
    assert list((repo_dir / "locks").iterdir()) == []
    assert cli("-r", str(repo_dir), "unlock").stdout.strip() == "no stale locks"


def test_unlock_remove_all_removes_live_locks(repo_dir: Path, cli: CliRun) -> None:
    repo = open_repo(repo_dir)
    repo.locks.acquire(exclusive=False, command="someone")
    result = cli("-r", str(repo_dir), "--json", "unlock", "--remove-all")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [lock["command"] for lock in data["removed"]] == ["someone"]
    assert data["kept"] == []


def test_unlock_remove_all_removes_an_undecodable_lock(repo_dir: Path, cli: CliRun) -> None:
    (repo_dir / "locks").mkdir(exist_ok=True)
    (repo_dir / "locks" / ("ab" * 32)).write_bytes(b"garbage that no key opens")
    assert cli("-r", str(repo_dir), "unlock", "--remove-all").exit_code == 0
    assert list((repo_dir / "locks").iterdir()) == []


# -- snapshots ----------------------------------------------------------------------------------


def test_snapshots_empty(repo_dir: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "snapshots")
    assert result.exit_code == 0
    assert result.stdout.strip() == "no snapshots"
    assert json.loads(cli("-r", str(repo_dir), "--json", "snapshots").stdout) == []


def test_snapshots_table_and_json(repo_dir: Path, cli: CliRun) -> None:
    old = add_snapshot(repo_dir, host="laptop", tags=["daily"], when_ns=1_700_000_000 * 10**9)
    new = add_snapshot(repo_dir, host="server", tags=["daily", "db"], paths=[b"/srv", b"/etc"],
                       when_ns=1_700_000_100 * 10**9)

    table = cli("-r", str(repo_dir), "snapshots")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "time", "host", "tags", "paths", "kind"]
    old_row = next(line for line in lines if line.startswith(old[:8]))
    assert "laptop" in old_row and "/home/me" in old_row and old_row.rstrip().endswith("files")
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert local in old_row
    assert any(line.startswith(new[:8]) and "daily,db" in line for line in lines)
    assert lines[-1] == "2 snapshots"

    data = json.loads(cli("-r", str(repo_dir), "--json", "snapshots").stdout)
    assert [s["id"] for s in data] == [old, new]  # full ids, oldest first
    assert data[1]["paths"] == ["/srv", "/etc"]
    assert data[1]["tags"] == ["daily", "db"]
    assert data[1]["kind"] == "files"
    assert data[0]["time"].startswith("2023-11-14T22:13:20")


def test_snapshots_filters(repo_dir: Path, cli: CliRun) -> None:
    a = add_snapshot(repo_dir, host="laptop", tags=["daily"])
    b = add_snapshot(repo_dir, host="server", tags=["daily", "db"], paths=[b"/srv"])
    c = add_snapshot(repo_dir, host="server", tags=["weekly"], paths=[b"/srv", b"/etc"])

    def ids(*args: str) -> list[str]:
        result = cli("-r", str(repo_dir), "--json", "snapshots", *args)
        assert result.exit_code == 0, result.stderr
        return [s["id"] for s in json.loads(result.stdout)]

    assert ids("--host", "server") == [b, c]
    assert ids("--host", "laptop", "--host", "server") == [a, b, c]
    assert ids("--tag", "daily") == [a, b]
    assert ids("--tag", "daily,db") == [b]
    assert ids("--tag", "db", "--tag", "weekly") == [b, c]
    assert ids("--path", "/srv") == [b, c]
    assert ids("--path", "/srv/", "--path", "/etc") == [c]
    assert ids("--host", "laptop", "--path", "/srv") == []


# -- cat ----------------------------------------------------------------------------------------


def test_cat_config_and_key(repo_dir: Path, cli: CliRun) -> None:
    repo = open_repo(repo_dir)
    config = json.loads(cli("-r", str(repo_dir), "cat", "config").stdout)
    assert config["id"] == repo.config.id.hex()
    assert config["version"] == 1
    key = json.loads(cli("-r", str(repo_dir), "cat", "key", repo.key_id[:6]).stdout)
    assert key["id"] == repo.key_id
    assert key["kdf"] == "argon2id" and key["iterations"] == 1
    bytes.fromhex(key["salt"])  # bytes are shown as hex


def test_cat_snapshot_blob_pack_and_index(repo_dir: Path, cli: CliRun) -> None:
    repo = open_repo(repo_dir)
    payload = b"hello, cairn\n" * 100
    blob_id, _ = repo.save_blob(BlobType.DATA, payload)
    repo.flush()
    snap_id = add_snapshot(repo_dir, tags=["t"])

    snap = json.loads(cli("-r", str(repo_dir), "cat", "snapshot", "latest").stdout)
    assert snap["id"] == snap_id and snap["paths"] == ["/home/me"] and snap["tags"] == ["t"]

    blob = cli("-r", str(repo_dir), "cat", "blob", blob_id.hex())
    assert blob.exit_code == 0
    assert blob.stdout_bytes == payload

    entry = repo.lookup(blob_id)
    pack = json.loads(cli("-r", str(repo_dir), "cat", "pack", entry.pack_id.hex()[:10]).stdout)
    assert pack["id"] == entry.pack_id.hex()
    assert [b["id"] for b in pack["blobs"]] == [blob_id.hex()]

    (index_file,) = (repo_dir / "index").iterdir()
    index = json.loads(cli("-r", str(repo_dir), "cat", "index", index_file.name[:8]).stdout)
    assert index["packs"][0]["id"] == entry.pack_id.hex()
    assert index["packs"][0]["blobs"][0]["raw_length"] == len(payload)


def test_cat_errors(repo_dir: Path, cli: CliRun) -> None:
    missing = cli("-r", str(repo_dir), "cat", "snapshot", "abcd")
    assert missing.exit_code == 15
    assert one_line_error(missing) == "cairn: no snapshot abcd"
    no_id = cli("-r", str(repo_dir), "cat", "index")
    assert no_id.exit_code == 2
    assert one_line_error(no_id) == "cairn: 'cat index' needs an id"
    short_blob = cli("-r", str(repo_dir), "cat", "blob", "abcd")
    assert short_blob.exit_code == 2
    assert cli("-r", str(repo_dir), "cat", "nonsense").exit_code == 2


# -- the module entry point ---------------------------------------------------------------------


def test_python_dash_m_cairn(repo_dir: Path, run_cairn) -> None:  # type: ignore[no-untyped-def]
    version = run_cairn("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == "cairn, version 0.1.0"
    wrong = run_cairn("-r", str(repo_dir), "snapshots", env={"CAIRN_PASSWORD": "nope"})
    assert wrong.returncode == 11
    assert wrong.stderr == "cairn: wrong password: no key of this repository opens with it\n"
