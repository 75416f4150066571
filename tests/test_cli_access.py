"""Where the repository and its password come from: flags, environment, defaults, a prompt."""

from __future__ import annotations

import os
import pty
import select
import shlex
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST_KDF, FAST_KDF_ARGS, PASSWORD, SRC, CliRun, one_line_error
from cairn.errors import RepositoryNotFound, UsageError, WrongPassword
from cairn.ops import access
from cairn.ops.access import NO_PASSWORD, RepoSelection
from cairn.ops.init import InitOptions
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend


@pytest.fixture
def repo_no_env(repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository opened by PASSWORD, with CAIRN_PASSWORD unset again."""
    monkeypatch.delenv("CAIRN_PASSWORD")
    return repo_dir


def ok(result, *, stdout: str = "no snapshots") -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == stdout


# -- passwords ----------------------------------------------------------------------------------


def test_password_from_env(repo_no_env: Path, cli: CliRun) -> None:
    ok(cli("-r", str(repo_no_env), "snapshots", env={"CAIRN_PASSWORD": PASSWORD}))


def test_password_from_file_strips_one_newline(repo_no_env: Path, tmp_path: Path, cli: CliRun) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    ok(cli("-r", str(repo_no_env), "--password-file", str(pw), "snapshots"))
    ok(cli("-r", str(repo_no_env), "snapshots", env={"CAIRN_PASSWORD_FILE": str(pw)}))
    pw.write_text(PASSWORD + "\n\n")  # only one newline is stripped: the password is then wrong
    result = cli("-r", str(repo_no_env), "--password-file", str(pw), "snapshots")
    assert result.exit_code == WrongPassword.exit_code


def test_password_file_problems(repo_no_env: Path, tmp_path: Path, cli: CliRun) -> None:
    missing = cli("-r", str(repo_no_env), "--password-file", str(tmp_path / "nope"), "snapshots")
    assert missing.exit_code == 2
    assert one_line_error(missing) == f"cairn: cannot read the password file {tmp_path / 'nope'}: No such file or directory"
    (tmp_path / "empty").write_text("\n")
    empty = cli("-r", str(repo_no_env), "--password-file", str(tmp_path / "empty"), "snapshots")
    assert empty.exit_code == 2
    assert one_line_error(empty) == f"cairn: the password file {tmp_path / 'empty'} is empty"


def python_command(code: str) -> str:
    return shlex.join([sys.executable, "-c", code])


def test_password_from_command(repo_no_env: Path, cli: CliRun) -> None:
    command = python_command(f"print({PASSWORD!r})")
    ok(cli("-r", str(repo_no_env), "--password-command", command, "snapshots"))
    ok(cli("-r", str(repo_no_env), "snapshots", env={"CAIRN_PASSWORD_COMMAND": command}))


def test_password_command_runs_without_a_shell(repo_no_env: Path, tmp_path: Path, cli: CliRun) -> None:
    # With a shell, `;` would run a second command; without one it is just an argument.
    marker = tmp_path / "marker"
    command = python_command(f"import sys; print({PASSWORD!r})") + f" ; touch {marker}"
    ok(cli("-r", str(repo_no_env), "--password-command", command, "snapshots"))
    assert not marker.exists()


def test_password_command_failures_are_clear(repo_no_env: Path, cli: CliRun) -> None:
    failing = cli("-r", str(repo_no_env), "--password-command", python_command("raise SystemExit(3)"), "snapshots")
    assert failing.exit_code == 2
    assert one_line_error(failing) == f"cairn: the password command {sys.executable!r} failed with exit code 3"
    absent = cli("-r", str(repo_no_env), "--password-command", "no-such-password-manager show x", "snapshots")
    assert absent.exit_code == 2
    assert one_line_error(absent) == (
        "cairn: cannot run the password command 'no-such-password-manager': No such file or directory"
    )
    silent = cli("-r", str(repo_no_env), "--password-command", python_command("pass"), "snapshots")
    assert silent.exit_code == 2
    assert "printed no password" in one_line_error(silent)


def test_a_flag_wins_over_the_environment(repo_no_env: Path, tmp_path: Path, cli: CliRun) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    ok(cli("-r", str(repo_no_env), "--password-file", str(pw), "snapshots", env={"CAIRN_PASSWORD": "wrong"}))


def test_both_password_flags_are_refused(repo_no_env: Path, tmp_path: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_no_env), "--password-file", "x", "--password-command", "y", "snapshots")
    assert result.exit_code == 2
    assert one_line_error(result) == "cairn: give either --password-file or --password-command, not both"


def test_no_password_and_no_terminal_is_a_clear_error(repo_no_env: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_no_env), "snapshots")
    assert result.exit_code == UsageError.exit_code == 2
    assert one_line_error(result) == f"cairn: {NO_PASSWORD}"
    assert NO_PASSWORD.startswith("no password given: set CAIRN_PASSWORD")


def run_in_terminal(args: list[str], answers: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    """Run `python -m cairn ARGS` on a pseudo-terminal, answering each prompt; (exit code, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout, stderr and /dev/tty are the terminal
        os.execve(sys.executable, [sys.executable, "-m", "cairn", *args], env)
    screen = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
            if pending and screen.endswith(b": "):  # a prompt waits (getpass turned echo off first)
                os.write(fd, pending.pop(0).encode() + b"\n")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal")
def test_a_terminal_prompts_for_passwords(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env["PYTHONPATH"] = str(SRC)
    repo = str(tmp_path / "repo")
    code, screen = run_in_terminal(["-r", repo, "init", *FAST_KDF_ARGS], ["typed secret", "typed secret"], env)
    assert code == 0, screen
    assert f"new password for {repo}:" in screen and f"new password for {repo} again:" in screen
    assert "typed secret" not in screen  # not echoed

    code, screen = run_in_terminal(["-r", repo, "init", *FAST_KDF_ARGS], [], env)
    assert code == 2 and "a repository already exists" in screen  # refused before any prompt

    code, screen = run_in_terminal(["-r", repo, "snapshots"], ["typed secret"], env)
    assert code == 0, screen
    assert f"password for {repo}:" in screen and "no snapshots" in screen

    code, screen = run_in_terminal(["-r", repo, "snapshots"], ["not it"], env)
    assert code == WrongPassword.exit_code, screen


# -- locations ----------------------------------------------------------------------------------


def test_repository_from_env_and_local_prefix(repo_dir: Path, cli: CliRun) -> None:
    ok(cli("snapshots", env={"CAIRN_REPOSITORY": str(repo_dir)}))
    ok(cli("-r", f"local:{repo_dir}", "snapshots"))


def test_flag_wins_over_repository_env(repo_dir: Path, tmp_path: Path, cli: CliRun) -> None:
    ok(cli("-r", str(repo_dir), "snapshots", env={"CAIRN_REPOSITORY": str(tmp_path / "elsewhere")}))


@pytest.mark.parametrize("location", ["ftp://nas/srv/cairn", "webdav:nas/x", "sftp:nas", "s3:https://endpoint/"])
def test_unknown_or_incomplete_locations_are_usage_errors(location: str, cli: CliRun) -> None:
    result = cli("-r", location, "snapshots")
    assert result.exit_code == 2
    assert location in one_line_error(result) or "unknown repository location scheme" in one_line_error(result)


def test_init_without_a_location_uses_the_default_under_xdg_data_home(isolated_env: Path, cli: CliRun) -> None:
    result = cli("init", *FAST_KDF_ARGS, env={"CAIRN_PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.stderr
    default = isolated_env / "cairn" / "repo"
    assert (default / "config").is_file()
    assert str(default) in result.stdout
    ok(cli("snapshots", env={"CAIRN_PASSWORD": PASSWORD}))


def test_no_default_repository_yet(isolated_env: Path, cli: CliRun) -> None:
    result = cli("snapshots", env={"CAIRN_PASSWORD": PASSWORD})
    assert result.exit_code == RepositoryNotFound.exit_code
    line = one_line_error(result)
    assert str(isolated_env / "cairn" / "repo") in line and "(the default;" in line
    assert not (isolated_env / "cairn").exists()  # looking does not create it


# -- the same rules through the Python API ---------------------------------------------------------


def test_ensure_repository_creates_only_the_default(isolated_env: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    with pytest.raises(RepositoryNotFound, match="run 'cairn init' first"):
        access.ensure_repository(RepoSelection(location=str(tmp_path / "explicit")))
    assert not (tmp_path / "explicit").exists()

    monkeypatch.setenv("CAIRN_REPOSITORY", str(tmp_path / "from-env"))
    with pytest.raises(RepositoryNotFound):
        access.ensure_repository(RepoSelection())
    monkeypatch.delenv("CAIRN_REPOSITORY")

    repo, created = access.ensure_repository(RepoSelection())
    assert created and repo.backend.properties.location == str(isolated_env / "cairn" / "repo")
    again, created_again = access.ensure_repository(RepoSelection())
    assert not created_again and again.config.id == repo.config.id


def test_a_new_password_is_asked_twice(tmp_path: Path) -> None:
    answers = iter(["one", "two"])
    selection = RepoSelection(location=str(tmp_path / "r"), interactive=True, prompt=lambda _: next(answers))
    with pytest.raises(UsageError, match="the passwords do not match"):
        access.create_repository(selection, InitOptions(kdf=FAST_KDF))
    assert not (tmp_path / "r").exists()

    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return "same"

    selection = RepoSelection(location=str(tmp_path / "r"), interactive=True, prompt=prompt)
    access.create_repository(selection, InitOptions(kdf=FAST_KDF))
    assert prompts == [f"new password for {tmp_path / 'r'}: ", f"new password for {tmp_path / 'r'} again: "]
    Repository.open(LocalBackend(tmp_path / "r"), b"same")


def test_open_backend_recognises_locations(tmp_path: Path) -> None:
    assert isinstance(access.open_backend(str(tmp_path)), LocalBackend)
    assert access.open_backend(f"local:{tmp_path}").properties.location == str(tmp_path)
    assert isinstance(access.open_backend("relative/folder"), LocalBackend)
    with pytest.raises(UsageError, match=r"unknown repository location scheme ftp:"):
        access.open_backend("ftp://host/x")
    with pytest.raises(UsageError, match="names no folder"):
        access.open_backend("local:")
