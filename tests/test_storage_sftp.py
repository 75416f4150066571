"""The SFTP backend against a real OpenSSH server on 127.0.0.1, set up as a user's ~/.ssh would be."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.storage.sftp import SftpBackend
from cairn.storage.stack import open_storage
from cairn.testing.conformance import BackendConformance
from servers import Sshd


@pytest.fixture
def ssh_home(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Sshd:
    """HOME is the server's private home (its ~/.ssh/config has the alias cairn-test)."""
    for name, value in sshd.env.items():
        monkeypatch.setenv(name, value)
    sshd.write_config()
    return sshd


def raw_backend(location: str, **kwargs: object) -> SftpBackend:
    backend = open_storage(location, **kwargs)  # type: ignore[arg-type]
    return backend.inner.inner  # type: ignore[attr-defined,no-any-return]


class TestSftpConformance(BackendConformance):
    @pytest.fixture
    def backend(self, ssh_home: Sshd, tmp_path: Path) -> Iterator[SftpBackend]:
        (tmp_path / "repo").mkdir()
        backend = raw_backend(f"sftp:cairn-test:{tmp_path}/repo")
        yield backend
        backend.close()
