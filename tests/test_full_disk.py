"""A repository on a disk that fills up during a backup, through the real CLI.

What a user sees: one line saying the disk is full and that the repository is unchanged and
readable, exit code 18, no lock left behind, and a repository that checks clean and restores
what was saved before, without any clean-up command first.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cairn.errors import StorageFull
from conftest import FAST_KDF_ARGS, PASSWORD

pytestmark = pytest.mark.root

Run = Callable[..., subprocess.CompletedProcess[str]]
MiB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    # Room for the first backup and one 16 MiB pack of the second, not for its second pack.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


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
    before = contents(repo)

    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):  # incompressible, twice the disk: one pack fits, the next does not
        (big / f"random{i}.bin").write_bytes(os.urandom(16 * MiB))
    failed = run_cairn("-r", str(repo), "backup", str(big), env=env)
    assert failed.returncode == StorageFull.exit_code, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith(f"cairn: no space left on {repo} while writing data/")
    assert lines[0].endswith(": nothing already in the repository was changed and it stays readable; "
                             "free some space and run the command again")

    # What the line promises: every object stored before is still there, byte for byte (the
    # failed backup added at most packs no index names yet, which a later prune removes: none
    # when the workers' packs all met the full disk at once) ...
    after = contents(repo)
    assert {name: after.get(name) for name in before} == before
    added = set(after) - set(before)
    assert all(name.startswith("data/") for name in added), added
    assert [p for p in small_disk.rglob(".tmp-*")] == []
    # ... and the failed backup released its lock: deleting needs no free space, so nothing
    # stands in the way of the next command and no `cairn unlock` is needed.
    assert list((repo / "locks").iterdir()) == []
    checked = run_cairn("-r", str(repo), "check", "--read-data", env=env)
    assert checked.returncode == 0, checked.stderr
    target = tmp_path / "restored"
    restored = run_cairn("-r", str(repo), "restore", "latest", "--target", str(target), env=env)
    assert restored.returncode == 0, restored.stderr
    assert (target / str(first).lstrip("/") / "kept.txt").read_bytes() == (first / "kept.txt").read_bytes()
