"""Whole repositories on remote locations, through the real `cairn` command: init, backup,
restore bit-exact and check --read-data on SFTP (OpenSSH), S3 (SeaweedFS) and rclone; and the
one-line errors for wrong credentials and a bucket that does not exist."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from cairn.errors import StorageAccessDenied, StorageError
from remote_repo import MiB, Remote, digest_tree, make_tree, one_line, rclone_remote, restored, s3_remote, sftp_remote
from servers import SeaweedFS, Sshd, s3_client


@pytest.fixture(params=["sftp", "s3", "rclone"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    if request.param == "sftp":
        sshd: Sshd = request.getfixturevalue("sshd")
        sshd.write_config()
        return sftp_remote(sshd, tmp_path / "repo")
    if request.param == "s3":
        return s3_remote(request.getfixturevalue("seaweedfs"), tmp_path)
    return rclone_remote(tmp_path, tmp_path / "repo")


def test_init_backup_restore_check(remote: Remote, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", seed=1, big=17 * MiB)  # two packs
    remote.init()
    first = remote.ok("backup", str(source))
    assert "saved" in first.stdout
    (source / "sub" / "added.txt").write_bytes(b"a second snapshot")
    second = remote.ok("--json", "backup", str(source))
    assert json.loads(second.stdout.splitlines()[-1])["parent"]  # found through the remote repository
    remote.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert digest_tree(restored(tmp_path / "out", source)) == digest_tree(source)
    checked = remote.ok("check", "--read-data")
    assert checked.returncode == 0


def test_wrong_s3_credentials_are_one_line_with_their_own_exit_code(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    remote = s3_remote(seaweedfs, tmp_path)
    remote.init()
    done = remote.cairn("snapshots", env={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert done.returncode == StorageAccessDenied.exit_code == 21
    assert one_line(done) == (f"cairn: {seaweedfs.endpoint} refused the S3 credentials (SignatureDoesNotMatch) "
                              f"for {remote.location}")


def test_a_refused_ssh_key_is_one_line_with_its_own_exit_code(sshd: Sshd, tmp_path: Path) -> None:
    sshd.write_config(identity=sshd.base / "other_key.pub")  # a public key is no identity
    remote = sftp_remote(sshd, tmp_path / "repo")
    done = remote.cairn("init")
    sshd.write_config()
    assert done.returncode == StorageAccessDenied.exit_code
    assert one_line(done).startswith(f"cairn: {sshd.user}@127.0.0.1:{sshd.port} refused the login")


def test_a_missing_bucket_is_reported_and_init_creates_it(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = f"new-{uuid.uuid4().hex[:10]}"
    remote = s3_remote(seaweedfs, tmp_path, bucket="cairn-tests")
    remote = Remote("s3", f"s3:{seaweedfs.endpoint}/{bucket}/repo", remote.env)
    done = remote.cairn("snapshots")
    assert done.returncode == StorageError.exit_code
    assert one_line(done) == (f"cairn: the bucket {bucket} does not exist at {seaweedfs.endpoint}: check the location, "
                              "or create the repository (and the bucket) with 'cairn init'")
    remote.init()
    assert any(b["Name"] == bucket for b in s3_client(seaweedfs.endpoint).list_buckets()["Buckets"])
    source = make_tree(tmp_path / "src", seed=2, big=MiB)
    remote.ok("backup", str(source))
    remote.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert digest_tree(restored(tmp_path / "out", source)) == digest_tree(source)


def test_a_missing_sftp_folder_is_reported_and_init_creates_it(sshd: Sshd, tmp_path: Path) -> None:
    sshd.write_config()
    remote = sftp_remote(sshd, tmp_path / "not" / "yet")
    done = remote.cairn("snapshots")
    assert done.returncode == StorageError.exit_code
    assert one_line(done) == (f"cairn: the folder {tmp_path}/not/yet does not exist on {sshd.user}@127.0.0.1:{sshd.port} "
                              f"({remote.location})")
    remote.init()
    assert (tmp_path / "not" / "yet" / "config").is_file()
