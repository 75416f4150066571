"""A repository on a disk that fills up during a backup, through the real CLI.

What a user sees: one line saying the disk is full, exit code 18, and a repository that still
opens, checks clean and restores what was saved before.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cairn.errors import StorageFull
from tests.conftest import FAST_KDF_ARGS, PASSWORD

pytestmark = pytest.mark.root

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_backup_that_fills_the_disk_fails_in_one_line_and_leaves_the_repository_usable(
    small_disk: Path, tmp_path: Path, run_cairn: Run
) -> None:
    repo = small_disk / "repo"
    env = {"CAIRN_PASSWORD": PASSWORD}
    assert run_cairn("-r", str(repo), "init", *FAST_KDF_ARGS, env=env).returncode == 0

    first = tmp_path / "first"
    first.mkdir()
    (first / "kept.txt").write_bytes(b"saved before the disk filled\n" * 100)
    assert run_cairn("-r", str(repo), "backup", str(first), env=env).returncode == 0

    big = tmp_path / "big"
    big.mkdir()
    (big / "random.bin").write_bytes(os.urandom(8 << 20))  # incompressible, larger than the disk
    failed = run_cairn("-r", str(repo), "backup", str(big), env=env)
    assert failed.returncode == StorageFull.exit_code, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith("cairn: no space left on ") and str(repo) in lines[0]

    assert run_cairn("-r", str(repo), "unlock", env=env).returncode == 0
    checked = run_cairn("-r", str(repo), "check", "--read-data", env=env)
    assert checked.returncode == 0, checked.stderr
    target = tmp_path / "restored"
    restored = run_cairn("-r", str(repo), "restore", "latest", "--target", str(target), env=env)
    assert restored.returncode == 0, restored.stderr
    assert (target / str(first).lstrip("/") / "kept.txt").read_bytes() == (first / "kept.txt").read_bytes()
    leftovers = [p for p in small_disk.rglob(".tmp-*")]
    assert leftovers == []
