"""The rclone backend: a private `rclone serve sftp` for a local remote, through the SFTP backend."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import StorageError
from cairn.storage.location import parse_location
from cairn.storage.rclone import RcloneBackend, RcloneServer
from cairn.storage.retry import RetryPolicy
from cairn.storage.stack import open_storage
from cairn.testing.conformance import BackendConformance
from conftest import SRC


@pytest.fixture
def rclone_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An rclone config with one local remote, as `rclone config` would write it."""
    config = tmp_path / "rclone.conf"
    config.write_text("[disk]\ntype = local\n")
    monkeypatch.setenv("RCLONE_CONFIG", str(config))
    return config


class TestRcloneConformance(BackendConformance):
    @pytest.fixture
    def backend(self, rclone_config: Path, tmp_path: Path) -> Iterator[RcloneBackend]:
        (tmp_path / "repo").mkdir()
        backend = RcloneBackend(parse_location(f"rclone:disk:{tmp_path}/repo"))  # type: ignore[arg-type]
        yield backend
        backend.close()


def test_an_unknown_remote_is_one_clear_line(rclone_config: Path) -> None:
    backend = RcloneBackend(parse_location("rclone:nosuch:repo"))  # type: ignore[arg-type]
    with pytest.raises(StorageError) as caught:
        backend.load("config")
    backend.close()
    assert str(caught.value).startswith("rclone cannot serve nosuch:repo: ")
    assert "nosuch" in str(caught.value).split(": ", 1)[1] and "\n" not in str(caught.value)


def test_rclone_not_installed(rclone_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_RCLONE", str(tmp_path / "no-rclone"))
    backend = RcloneBackend(parse_location(f"rclone:disk:{tmp_path}"))  # type: ignore[arg-type]
    with pytest.raises(StorageError, match=f"^cannot start rclone \\({tmp_path}/no-rclone\\): No such file"):
        backend.load("config")


def test_the_server_is_restarted_if_it_dies_and_stopped_on_close(rclone_config: Path, tmp_path: Path) -> None:
    backend = open_storage(f"rclone:disk:{tmp_path}/repo", retry=RetryPolicy(base_delay=0.05, budget=20), cache=False)
    backend.store("config", b"one")
    server: RcloneServer = backend.inner.inner.server  # type: ignore[attr-defined]
    first = server._process
    assert first is not None
    first.kill()
    first.wait()
    backend.store("data/x", b"two")  # the dropped connection is retried against a new server
    assert backend.load("config") == b"one"
    second = server._process
    assert second is not None and second.pid != first.pid and second.poll() is None
    backend.close()
    assert second.poll() is not None


CHILD = """
import os, sys
from cairn.storage.location import parse_location
from cairn.storage.rclone import RcloneBackend
backend = RcloneBackend(parse_location(sys.argv[1]))
backend.store("config", b"x")
print(backend.server._process.pid, flush=True)
os._exit(0)  # dies without closing anything
"""


def test_the_server_dies_with_the_process_that_started_it(rclone_config: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", CHILD, f"rclone:disk:{tmp_path}"], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    pid = int(done.stdout.split()[0])
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("rclone outlived the process that started it")
