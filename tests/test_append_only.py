"""A backup account whose storage credential may not delete (docs/RETENTION.md's recipe).

The SFTP case is real: OpenSSH's ``internal-sftp -P remove`` serves the account ``cairn-append``
(tests/servers.py), the same server with a full key serves the trusted machine. Backups there
must succeed although their locks cannot be deleted, leave locks that block nobody, and
`unlock` must say why it cannot remove them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from conftest import FAST_KDF, FAST_KDF_ARGS, PASSWORD
from remote_repo import digest_tree, make_tree, restored, sftp_remote
from servers import Sshd
from cairn.errors import StorageAccessDenied, StorageReadOnly
from cairn.repo.lock import STALE_AFTER
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from cairn.testing.faulty import FaultyBackend


def locks_in(folder: Path) -> list:  # type: ignore[type-arg]
    """The lock objects as any client sees them (the SFTP folder is local to this machine)."""
    return Repository.open(LocalBackend(folder), PASSWORD.encode()).locks.list_locks()


def test_backups_through_an_account_that_cannot_delete(sshd: Sshd, tmp_path: Path) -> None:
    sshd.write_config()
    folder = tmp_path / "repo"
    trusted = sftp_remote(sshd, folder)
    backup_host = sftp_remote(sshd, folder, host="cairn-append")
    trusted.ok("init", *FAST_KDF_ARGS)
    source = make_tree(tmp_path / "src", seed=5, big=300_000)

    first = backup_host.ok("backup", str(source))
    assert "Traceback" not in first.stderr
    warning = [line for line in first.stderr.splitlines() if line.startswith("cairn: warning:")]
    assert len(warning) == 1 and "could not delete lock" in warning[0] and "marked released" in warning[0], first.stderr
    left = locks_in(folder)
    assert len(left) == 1 and left[0].command == "backup"
    # Stale to every client at once, whatever host it names: it blocks no one.
    elsewhere = dataclasses.replace(left[0], host="another-host")  # no process check applies
    assert left[0].released and elsewhere.is_stale(now_ns=left[0].time_ns)

    (source / "new.txt").write_text("written after the first backup\n")
    backup_host.ok("backup", str(source))  # the leftover lock does not stand in the way
    assert len(locks_in(folder)) == 2
    listed = backup_host.ok("--json", "snapshots")  # a reading command leaves its lock too
    assert len(json.loads(listed.stdout)) == 2 and "could not delete lock" in listed.stderr
    assert len(locks_in(folder)) == 3

    # unlock through that account explains, and exits 0: the locks block nobody.
    done = backup_host.cairn("unlock")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("could not remove shared lock") == 3 and "released by its process" in done.stdout
    assert "the storage refused to delete 3 stale locks" in done.stderr
    assert "with a storage credential that may delete" in done.stderr
    assert len(locks_in(folder)) == 3
    # A live lock the user asked to remove, and which still blocks: an error, storage's exit code.
    holder = Repository.open(LocalBackend(folder), PASSWORD.encode())
    with holder.lock(exclusive=True, command="repair index"):
        done = backup_host.cairn("unlock", "--remove-all")
    assert done.returncode == StorageReadOnly.exit_code, done.stderr
    assert "cairn: 1 live locks could not be removed" in done.stderr and "Traceback" not in done.stderr

    # The trusted machine prunes beside it without waiting for those locks, and cleans up.
    forgot = trusted.ok("forget", "--keep-last", "1", "--prune", "--max-unused", "0%")
    assert "wait until" not in forgot.stdout, forgot.stdout  # no deletion left pending for the leftover locks
    trusted.ok("check", "--read-data")
    removed = trusted.ok("unlock")
    assert removed.stdout.count("removed shared lock") == 3
    assert locks_in(folder) == []
    trusted.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert digest_tree(restored(tmp_path / "out", source)) == digest_tree(source)


def test_forget_through_an_account_that_cannot_delete_says_so(sshd: Sshd, tmp_path: Path) -> None:
    sshd.write_config()
    folder = tmp_path / "repo"
    sftp_remote(sshd, folder).ok("init", *FAST_KDF_ARGS)
    backup_host = sftp_remote(sshd, folder, host="cairn-append")
    backup_host.ok("backup", str(make_tree(tmp_path / "src", seed=6, big=1000)))
    (snap,) = json.loads(backup_host.ok("--json", "snapshots").stdout)
    done = backup_host.cairn("forget", snap["id"])
    assert done.returncode == StorageReadOnly.exit_code, done.stderr
    assert "permission denied to delete snapshots/" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("refusal", [StorageReadOnly, StorageAccessDenied])
def test_a_lock_that_can_be_neither_deleted_nor_marked_is_left_with_a_warning(
    tmp_path: Path, refusal: type, caplog: pytest.LogCaptureFixture
) -> None:
    """S3 with Object Lock refuses the overwrite too; B2 says "denied" rather than read-only."""
    Repository.init(LocalBackend(tmp_path / "repo"), PASSWORD.encode(), FAST_KDF)
    faulty = FaultyBackend(LocalBackend(tmp_path / "repo"))
    faulty.fail("delete", refusal, prefix="locks/", times=None)
    faulty.fail("store", refusal, prefix="locks/", nth=2, times=None)  # the 1st store takes the lock
    repo = Repository.open(faulty, PASSWORD.encode())
    with caplog.at_level(logging.WARNING, logger="cairn"):
        with repo.lock(command="backup") as held:
            pass
    assert "nor mark it released" in caplog.text and f"{STALE_AFTER // 60} minutes" in caplog.text
    (left,) = locks_in(tmp_path / "repo")
    assert left.id == held.id and not left.released
    assert not left.is_stale()  # its process (this one) still runs, and it is fresh
    assert left.is_stale(now_ns=left.refreshed_ns + (STALE_AFTER + 1) * 10**9)  # the age rule still applies
