"""The rclone backend: a private `rclone serve sftp` for a local remote, through the SFTP backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.storage.location import parse_location
from cairn.storage.rclone import RcloneBackend
from cairn.testing.conformance import BackendConformance


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
