"""`cairn copy --from-repo`: snapshots move between repositories with different keys, only
missing blobs are uploaded, and copying twice copies nothing twice."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import FAST_KDF, FAST_KDF_ARGS, PASSWORD, CliRun, one_line_error
from cairn.image import format as disk_format
from cairn.image.pages import DATA, UNUSED, PageBuilder
from cairn.ops.check import CheckOptions, check
from cairn.ops.copy import copy
from cairn.ops.stats import stats
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend
from cairn.testing.memory import MemoryBackend
from remote_repo import MiB, Remote, make_tree, rclone_remote, restored, s3_remote, sftp_remote
from remote_repo import digest_tree as remote_digest
from servers import SeaweedFS, Sshd
from tcp_proxy import TcpProxy

OTHER = "another password entirely"


@pytest.fixture
def pair(cli: CliRun, repo_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(source repository, destination repository, password file of the source)."""
    dst = tmp_path / "offsite"
    assert cli("-r", str(dst), "init", *FAST_KDF_ARGS, env={"CAIRN_PASSWORD": OTHER}).exit_code == 0
    password_file = tmp_path / "source-password"
    password_file.write_text(PASSWORD + "\n")
    return repo_dir, dst, password_file


def run(cli: CliRun, dst: Path, *args: str) -> dict:
    result = cli("-r", str(dst), "--json", *args, env={"CAIRN_PASSWORD": OTHER})
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else {}


def digest_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_copy_moves_snapshots_uploading_only_what_is_missing(cli: CliRun, pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    src_repo, dst, password_file = pair
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    rng = random.Random(9)
    (data / "big.bin").write_bytes(rng.randbytes(3_000_000))
    (data / "sub" / "small.txt").write_bytes(b"hello\n" * 1000)
    assert cli("-r", str(src_repo), "backup", str(data), "--tag", "one").exit_code == 0
    (data / "sub" / "new.bin").write_bytes(rng.randbytes(500_000))
    assert cli("-r", str(src_repo), "backup", str(data)).exit_code == 0
    expected = digest_tree(data)

    first = run(cli, dst, "copy", "--from-repo", str(src_repo), "--from-password-file", str(password_file))
    assert len(first["copied"]) == 2 and first["skipped"] == 0
    assert 3_500_000 <= first["bytes_new"] < 3_600_000  # the second snapshot's big.bin deduplicated
    again = run(cli, dst, "copy", "--from-repo", str(src_repo), "--from-password-file", str(password_file))
    assert again["copied"] == [] and again["skipped"] == 2

    listed = run(cli, dst, "snapshots")
    source_ids = [s["id"] for s in json.loads(cli("-r", str(src_repo), "--json", "snapshots").stdout)]
    assert [s["original"] for s in listed] == source_ids and listed[0]["tags"] == ["one"]
    repo = Repository.open(LocalBackend(dst), OTHER.encode())
    assert check(repo, CheckOptions(read_data=True)).errors == []
    target = tmp_path / "restored"
    result = cli("-r", str(dst), "restore", "latest", "--target", str(target), env={"CAIRN_PASSWORD": OTHER})
    assert result.exit_code == 0, result.stderr
    assert digest_tree(target / data.relative_to("/")) == expected

    # A retagged source snapshot is the same snapshot: not copied again. A new one is, and
    # its unchanged big.bin is neither read from the source nor uploaded.
    assert cli("-r", str(src_repo), "tag", "--add", "later", "latest").exit_code == 0
    (data / "sub" / "small.txt").write_bytes(b"changed\n")
    assert cli("-r", str(src_repo), "backup", str(data)).exit_code == 0
    third = run(cli, dst, "copy", "--from-repo", str(src_repo), "--from-password-file", str(password_file))
    assert len(third["copied"]) == 1 and third["skipped"] == 2
    assert third["bytes_new"] < 5000 and third["blobs_read"] <= 12  # the change and the trees above it


def test_copy_needs_the_source_password_of_its_own(cli: CliRun, pair: tuple[Path, Path, Path]) -> None:
    src_repo, dst, _ = pair
    result = cli("-r", str(dst), "copy", "--from-repo", str(src_repo), env={"CAIRN_PASSWORD": OTHER})
    assert result.exit_code == 2 and "source repository" in one_line_error(result)
    result = cli("-r", str(dst), "copy", "--from-repo", str(src_repo),
                 env={"CAIRN_PASSWORD": OTHER, "CAIRN_FROM_PASSWORD": "wrong"})
    assert result.exit_code == 11
    ok = cli("-r", str(dst), "copy", "--from-repo", str(src_repo), env={"CAIRN_PASSWORD": OTHER, "CAIRN_FROM_PASSWORD": PASSWORD})
    assert ok.exit_code == 0, ok.stderr


def test_copy_of_an_image_snapshot() -> None:
    src = Repository.init(MemoryBackend(), b"a", FAST_KDF)
    dst = Repository.init(MemoryBackend(), b"b", FAST_KDF)
    chunk = 256 * 1024
    with src.lock():
        blob_id, _ = src.save_blob(BlobType.DATA, random.Random(4).randbytes(chunk))
        page = PageBuilder(0)
        page.add(DATA, blob_id)
        page.add(UNUSED)
        page.add(DATA, blob_id)
        page_id, _ = src.save_blob(BlobType.DISK, page.encode())
        region = disk_format.Region("partition", 0, 3 * chunk, pages=[page_id], number=1)
        disk = disk_format.Disk("partition", 3 * chunk, 512, "none", chunk, 4, regions=[region])
        root, _ = src.save_blob(BlobType.DISK, disk_format.encode(disk))
        src.flush()
        src.save_snapshot(Snapshot("image", root, [b"/dev/x"], "h", "u"))
    result = copy(src, dst)
    assert len(result.copied) == 1 and result.blobs_new == 3
    assert check(dst, CheckOptions(read_data=True)).errors == []
    assert stats(dst).logical_size == stats(src).logical_size == 2 * chunk
    assert copy(src, dst).skipped == 1


# -- between kinds of location --------------------------------------------------------------------


def _location(kind: str, request: pytest.FixtureRequest, tmp_path: Path, name: str) -> tuple[Remote, TcpProxy | None]:
    """A fresh repository location of `kind`; S3 goes through a proxy that counts connections."""
    if kind == "local":
        return Remote("local", str(tmp_path / name)), None
    if kind == "sftp":
        sshd: Sshd = request.getfixturevalue("sshd")
        sshd.write_config()
        return sftp_remote(sshd, tmp_path / name), None
    if kind == "rclone":
        return rclone_remote(tmp_path, tmp_path / name), None
    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    proxy = TcpProxy(seaweedfs.s3_port)
    return s3_remote(seaweedfs, tmp_path, endpoint=f"http://127.0.0.1:{proxy.port}"), proxy


@pytest.mark.parametrize("source_kind, destination_kind", [("local", "s3"), ("sftp", "rclone"), ("s3", "local")])
def test_copy_between_kinds_of_location(source_kind: str, destination_kind: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    source, source_proxy = _location(source_kind, request, tmp_path, "from")
    destination, destination_proxy = _location(destination_kind, request, tmp_path, "to")
    proxy = source_proxy or destination_proxy
    data = make_tree(tmp_path / "data", seed=31, big=6 * MiB)
    try:
        source.init()
        source.ok("backup", str(data), "--tag", "first")
        (data / "sub" / "later.bin").write_bytes(random.Random(32).randbytes(300_000))
        source.ok("backup", str(data))
        destination.ok("init", *FAST_KDF_ARGS, env={"CAIRN_PASSWORD": OTHER})
        both = {**source.env, "CAIRN_PASSWORD": OTHER, "CAIRN_FROM_PASSWORD": PASSWORD}
        if proxy is not None:
            proxy.connections = 0
        copied = json.loads(destination.ok("--connections", "1", "--json", "copy", "--from-repo", source.location,
                                           env=both).stdout)
        if proxy is not None:
            assert proxy.connections == 1  # --connections reached the S3 side, source or destination
        assert len(copied["copied"]) == 2 and copied["skipped"] == 0
        again = json.loads(destination.ok("--json", "copy", "--from-repo", source.location, env=both).stdout)
        assert again["copied"] == [] and again["skipped"] == 2
    finally:
        if proxy is not None:
            proxy.stop()
    if destination_proxy is not None:  # read the copy without the proxy, which is gone now
        destination = Remote("s3", destination.location.replace(f":{destination_proxy.port}/",
                                                                f":{request.getfixturevalue('seaweedfs').s3_port}/"),
                             destination.env)
    mine = {"CAIRN_PASSWORD": OTHER}
    destination.ok("check", "--read-data", env=mine)
    listed = json.loads(destination.ok("--json", "snapshots", env=mine).stdout)
    assert [s["tags"] for s in listed] == [["first"], []]
    destination.ok("restore", "latest", "--target", str(tmp_path / "out"), env=mine)
    assert remote_digest(restored(tmp_path / "out", data)) == remote_digest(data)
