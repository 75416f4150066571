"""Shared fixtures.

The package is found under src/ through pyproject's ``[tool.pytest.ini_options] pythonpath``.
Every test runs without the user's CAIRN_* variables and with XDG_DATA_HOME in its own temporary
folder, so no test can read a real password or touch the real default repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cairn.repo.keys import KdfParams

SRC = Path(__file__).resolve().parent.parent / "src"

# Argon2id at its cheapest, so a test opens a repository in microseconds rather than 0.15 s.
FAST_KDF = KdfParams(iterations=1, memory_kib=8, lanes=1)
FAST_KDF_ARGS = ["--kdf-iterations", "1", "--kdf-memory-kib", "8", "--kdf-lanes", "1"]
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No CAIRN_* from the caller's shell; a private XDG_DATA_HOME (returned) and XDG_CACHE_HOME."""
    for name in list(os.environ):
        if name.startswith("CAIRN_"):
            monkeypatch.delenv(name)
    data_home = tmp_path_factory.mktemp("xdg-data")
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    # The files cache and checkpoints live under XDG_CACHE_HOME: keep each test's apart, and
    # out of the real ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    return data_home


CliRun = Callable[..., Result]


@pytest.fixture
def cli() -> CliRun:
    """Run `cairn ARGS...` in-process, as a user would type it; returns click's Result.

    stdout and stderr are kept apart (`result.stdout`, `result.stderr`), since what goes where is
    part of the interface. stdin is not a terminal, so cairn never prompts.
    """
    from cairn.cli.main import cli as group

    def run(*args: str, env: dict[str, str] | None = None, input: str | bytes | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(group, list(args), env=env, input=input, catch_exceptions=False)

    return run


@pytest.fixture
def run_cairn() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m cairn ARGS...` in a real subprocess (for locks held by other processes,
    signals and the module entry point)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), full_env.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-m", "cairn", *args], capture_output=True, text=True, env=full_env,
            stdin=subprocess.DEVNULL, timeout=timeout,
        )

    return run


@pytest.fixture
def repo_dir(tmp_path: Path, cli: CliRun, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An initialised repository opened by PASSWORD, which CAIRN_PASSWORD holds."""
    path = tmp_path / "repo"
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    result = cli("-r", str(path), "init", *FAST_KDF_ARGS)
    assert result.exit_code == 0, result.stderr
    yield path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A small tree to back up: a text file in a folder and an incompressible file."""
    root = tmp_path / "data"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "letter.txt").write_text("Dear reader,\n" * 50)
    (root / "photo.raw").write_bytes(os.urandom(300_000))
    return root


def one_line_error(result: Result) -> str:
    """The single `cairn: ...` line a failure prints; fails the test on a traceback or more lines."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cairn: "), lines[0]
    return lines[0]


# Real storage servers (sshd, SeaweedFS, moto) as session fixtures, started on first use only.
from servers import moto_s3, seaweedfs, sshd  # noqa: E402,F401

# Under CI, skipped root tests and skips for a missing tool fail the run (tests/ci_skips.py).
from ci_skips import pytest_collection_modifyitems, pytest_runtest_logreport, pytest_sessionfinish  # noqa: E402,F401
