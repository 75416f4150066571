"""What a backup does when the network or the server fails, and many hosts backing up at once.

Real servers (OpenSSH, SeaweedFS) behind `TcpProxy` on 127.0.0.1, driven through the real CLI:
the server stops in the middle of a backup (a short retry budget fails cleanly in one line; a long
one rides the outage out), a slow connection that keeps dropping, and two or four processes
backing up into one S3 repository. After each, `check` passes and everything restores bit-exact.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cairn.errors import StorageError
from remote_repo import MiB, Remote, digest_tree, make_tree, one_line, restored, s3_remote, sftp_remote
from servers import SeaweedFS, Sshd, s3_client
from tcp_proxy import TcpProxy


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the backup ended before the fault: {process.communicate()}"
        assert time.monotonic() < deadline, "the backup stored no pack in time"
        time.sleep(0.05)


def finished(process: subprocess.Popen[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def restores_bit_exact(remote: Remote, source: Path, target: Path, snapshot: str = "latest") -> None:
    remote.ok("restore", snapshot, "--target", str(target))
    assert digest_tree(restored(target, source)) == digest_tree(source)


def test_sftp_server_stops_mid_backup_fails_cleanly_and_the_next_backup_succeeds(sshd: Sshd, tmp_path: Path) -> None:
    proxy = TcpProxy(sshd.port, rate=8e6)  # slow enough to stop the server between two packs
    sshd.write_config(proxy_port=proxy.port)
    slow = sftp_remote(sshd, tmp_path / "repo", host="cairn-proxy")
    direct = sftp_remote(sshd, tmp_path / "repo")
    source = make_tree(tmp_path / "src", seed=3, big=24 * MiB)
    try:
        slow.init()
        backup = slow.start("backup", str(source), env={"CAIRN_RETRY_TIME": "2"})
        data = tmp_path / "repo" / "data"
        wait_until(lambda: any(not p.name.startswith(".") for p in data.rglob("*") if p.is_file()), backup)
        proxy.rate = 50e3  # the rest cannot get through before the server stops, however loaded the machine
        sshd.stop()
        failed = finished(backup)
    finally:
        proxy.stop()
        if sshd.process is None:
            sshd.start()
    assert failed.returncode == StorageError.exit_code, failed.stderr
    assert "gave up after" in one_line(failed)
    direct.ok("check")  # consistent: what was stored is complete, nothing refers to what was not
    direct.ok("backup", str(source))
    direct.ok("check", "--read-data")
    restores_bit_exact(direct, source, tmp_path / "out")


def test_s3_server_stops_mid_backup_and_the_backup_rides_it_out(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    proxy = TcpProxy(seaweedfs.s3_port, rate=8e6)
    remote = s3_remote(seaweedfs, tmp_path, endpoint=f"http://127.0.0.1:{proxy.port}")
    prefix = remote.location.split("/", 4)[4]
    source = make_tree(tmp_path / "src", seed=4, big=24 * MiB)
    client = s3_client(seaweedfs.endpoint)
    try:
        remote.init()
        backup = remote.start("backup", str(source), env={"CAIRN_RETRY_TIME": "120"})
        wait_until(lambda: client.list_objects_v2(Bucket="cairn-tests", Prefix=f"{prefix}/data/").get("KeyCount", 0) > 0,
                   backup)
        proxy.rate = 50e3  # the backup is still uploading when the server stops
        seaweedfs.stop()
        time.sleep(1)
    finally:
        if seaweedfs.process is None:
            seaweedfs.start()
        proxy.rate = 8e6
    done = finished(backup)
    proxy.stop()
    assert done.returncode == 0, done.stderr
    direct = Remote("s3", remote.location.replace(f"127.0.0.1:{proxy.port}", f"127.0.0.1:{seaweedfs.s3_port}"), remote.env)
    direct.ok("check", "--read-data")
    restores_bit_exact(direct, source, tmp_path / "out")


@pytest.mark.parametrize("kind", ["sftp", "s3"])
def test_a_slow_connection_that_keeps_dropping(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", seed=5, big=10 * MiB)
    if kind == "sftp":
        sshd: Sshd = request.getfixturevalue("sshd")
        proxy = TcpProxy(sshd.port, delay=0.002, drop_after=3 * MiB, max_drops=3)
        sshd.write_config(proxy_port=proxy.port)
        remote, direct = sftp_remote(sshd, tmp_path / "repo", host="cairn-proxy"), sftp_remote(sshd, tmp_path / "repo")
    else:
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        proxy = TcpProxy(seaweedfs.s3_port, delay=0.002, drop_after=3 * MiB, max_drops=3)
        remote = s3_remote(seaweedfs, tmp_path, endpoint=f"http://127.0.0.1:{proxy.port}")
        direct = Remote("s3", remote.location.replace(str(proxy.port), str(seaweedfs.s3_port)), remote.env)
    try:
        remote.init()
        remote.ok("backup", str(source), env={"CAIRN_RETRY_TIME": "60"})
        assert proxy.drops == 3  # every drop happened, and the backup went through all the same
        remote.ok("check", "--read-data", env={"CAIRN_RETRY_TIME": "60"})
    finally:
        proxy.stop()
    restores_bit_exact(direct, source, tmp_path / "out")


@pytest.mark.parametrize("hosts", [2, 4])
def test_concurrent_backups_from_separate_processes(hosts: int, seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    remote = s3_remote(seaweedfs, tmp_path)
    remote.init()
    shared = make_tree(tmp_path / "shared-src", seed=99, big=2 * MiB) / "big.bin"
    sources = [make_tree(tmp_path / f"src{i}", seed=10 + i, big=3 * MiB, shared=shared.read_bytes()) for i in range(hosts)]
    start = threading.Barrier(hosts)
    results: list[subprocess.CompletedProcess[str]] = [None] * hosts  # type: ignore[list-item]

    def back_up(i: int) -> None:
        start.wait()
        results[i] = remote.cairn("--json", "backup", "--host", f"host{i}", str(sources[i]))

    threads = [threading.Thread(target=back_up, args=(i,)) for i in range(hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert result.returncode == 0, result.stderr
    snapshots = json.loads(remote.ok("--json", "snapshots").stdout)
    assert sorted(s["host"] for s in snapshots) == [f"host{i}" for i in range(hosts)]
    for snapshot in snapshots:
        i = int(snapshot["host"].removeprefix("host"))
        restores_bit_exact(remote, sources[i], tmp_path / f"out{i}", snapshot["id"])
    remote.ok("check", "--read-data")
