"""Whole repositories on remote locations, through the real `cairn` command: init, backup,
restore bit-exact and check --read-data on SFTP (OpenSSH), S3 (SeaweedFS) and rclone; and the
one-line errors for wrong credentials and a bucket that does not exist."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from cairn.errors import StorageAccessDenied, StorageError, UsageError
from cairn.ops.access import RepoSelection, open_repository
from conftest import PASSWORD
from remote_repo import MiB, Remote, digest_tree, make_tree, one_line, rclone_remote, restored, s3_remote, sftp_remote
from servers import SeaweedFS, Sshd, aws_env, s3_client
from tcp_proxy import TcpProxy


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


def test_connections_option_bounds_what_the_server_sees(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    proxy = TcpProxy(seaweedfs.s3_port)
    remote = s3_remote(seaweedfs, tmp_path, endpoint=f"http://127.0.0.1:{proxy.port}")
    source = make_tree(tmp_path / "src", seed=6, big=40 * MiB)  # three packs: savers upload while others seal
    seen = []
    try:
        remote.init()
        for command in (["--connections", "1", "backup", str(source)],
                        ["check", "--read-data", "--connections", "1"]):  # after the command name too
            proxy.connections = 0
            remote.ok(*command)
            seen.append(proxy.connections)
    finally:
        proxy.stop()
    assert seen == [1, 1]  # one request at a time: one HTTP connection, kept alive
    remote = Remote("s3", remote.location.replace(f":{proxy.port}/", f":{seaweedfs.s3_port}/"), remote.env)
    remote.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert digest_tree(restored(tmp_path / "out", source)) == digest_tree(source)


@pytest.mark.parametrize("value", ["0", "65", "many", "-3"])
def test_a_bad_connections_value_is_one_line(value: str, tmp_path: Path) -> None:
    remote = Remote("local", str(tmp_path / "repo"))
    done = remote.cairn(f"--connections={value}", "snapshots")
    assert done.returncode == UsageError.exit_code == 2
    assert one_line(done) == f"cairn: --connections must be a number from 1 to 64, not {value!r}"


def test_the_connections_of_a_selection_reach_the_backend(seaweedfs: SeaweedFS, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    remote = s3_remote(seaweedfs, tmp_path)
    remote.init()
    for name, value in {**remote.env, "CAIRN_PASSWORD": PASSWORD, "CAIRN_CONNECTIONS": "5"}.items():
        monkeypatch.setenv(name, value)
    with open_repository(RepoSelection(remote.location, connections=3)) as repo:
        assert repo.backend.properties.connections == 3  # the option wins over the environment
    with open_repository(RepoSelection(remote.location)) as repo:
        assert repo.backend.properties.connections == 5


def test_virtual_host_addressing_round_trip(moto_s3: str, tmp_path: Path) -> None:
    """Requests name the bucket in the host (``bucket.s3.test``), as AWS wants them.

    No wildcard DNS here: the host names reach moto through an HTTP proxy (``HTTP_PROXY``, which
    boto3 honours), so nothing resolves them. moto takes a host's first label as the bucket, so a
    path-style request to ``s3.test`` would look for a bucket named "s3" and fail.
    """
    port = int(moto_s3.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    bucket = f"vh-{uuid.uuid4().hex[:10]}"
    env = {**aws_env(tmp_path), "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}", "NO_PROXY": "", "no_proxy": ""}
    remote = Remote("s3", f"s3:http://s3.test:{port}/{bucket}/repo?addressing=virtual", env)
    source = make_tree(tmp_path / "src", seed=8, big=2 * MiB)
    try:
        remote.init()  # creates the bucket, addressed by host name too
        remote.ok("backup", str(source))
        remote.ok("check", "--read-data")
        remote.ok("restore", "latest", "--target", str(tmp_path / "out"))
    finally:
        proxy.stop()
    assert proxy.connections > 0
    assert digest_tree(restored(tmp_path / "out", source)) == digest_tree(source)
    keys = [o["Key"] for o in s3_client(moto_s3).list_objects_v2(Bucket=bucket)["Contents"]]
    assert "repo/config" in keys and any(k.startswith("repo/data/") for k in keys)
