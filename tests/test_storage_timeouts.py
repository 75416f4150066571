"""A server that goes silent without closing the connection: only a timeout can notice.

`TcpProxy.stall` freezes the path to a real OpenSSH server or SeaweedFS: connections stay open and
new ones are accepted, but no byte moves. With a short ``CAIRN_TIMEOUT`` each request gives up in
about a second, is retried on a fresh connection, and goes through once the proxy unstalls; a
server that stays silent ends in one line and exit code 16 once the retry budget is spent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import StorageError, UsageError
from cairn.storage.retry import RetryPolicy
from cairn.storage.stack import open_storage, timeout_from_env
from remote_repo import MiB, Remote, digest_tree, make_tree, one_line, restored, s3_remote, sftp_remote
from servers import SeaweedFS, Sshd
from tcp_proxy import TcpProxy

FAST = {"CAIRN_TIMEOUT": "1", "CAIRN_RETRY_TIME": "30"}


@pytest.fixture(params=["sftp", "s3"])
def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Remote, Remote, TcpProxy]]:
    """(the repository through a proxy, the same one reached directly, the proxy)."""
    if request.param == "sftp":
        sshd: Sshd = request.getfixturevalue("sshd")
        proxy = TcpProxy(sshd.port)
        sshd.write_config(proxy_port=proxy.port)
        slow, direct = sftp_remote(sshd, tmp_path / "repo", host="cairn-proxy"), sftp_remote(sshd, tmp_path / "repo")
    else:
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        proxy = TcpProxy(seaweedfs.s3_port)
        slow = s3_remote(seaweedfs, tmp_path, endpoint=f"http://127.0.0.1:{proxy.port}")
        direct = Remote("s3", slow.location.replace(f":{proxy.port}/", f":{seaweedfs.s3_port}/"), slow.env)
    try:
        yield slow, direct, proxy
    finally:
        proxy.stop()


def test_a_request_to_a_silent_server_times_out_and_is_retried_until_it_answers(
    proxied: tuple[Remote, Remote, TcpProxy], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    slow, _, proxy = proxied
    for name, value in slow.env.items():
        monkeypatch.setenv(name, value)
    backend = open_storage(slow.location, create=True, timeout=1.0, retry=RetryPolicy(budget=60, base_delay=0.2))
    payload = os.urandom(3 * MiB)
    try:
        backend.store("data/ab/object", payload)  # the connection is up and idle when the server goes silent
        proxy.stall()
        threading.Timer(4, proxy.unstall).start()
        with caplog.at_level(logging.INFO, logger="cairn.storage.retry"):
            assert backend.load("data/ab/object") == payload
    finally:
        proxy.unstall()
        backend.close()
    retried = [r.getMessage() for r in caplog.records if r.name == "cairn.storage.retry"]
    assert retried and all("load data/ab/object failed" in m for m in retried)
    assert any("time" in m.lower() for m in retried), retried  # "timed out", "Read timeout", ...


def test_a_backup_rides_out_a_server_that_goes_silent_for_a_while(
    proxied: tuple[Remote, Remote, TcpProxy], tmp_path: Path
) -> None:
    slow, direct, proxy = proxied
    source = make_tree(tmp_path / "src", seed=21, big=12 * MiB)
    slow.init()
    proxy.rate = 4e6  # the backup is still uploading when the stall begins
    start = proxy.carried
    backup = slow.start("backup", str(source), env=FAST)
    try:
        deadline = time.monotonic() + 120
        while proxy.carried - start < 2 * MiB:  # in the middle of uploading the first pack
            assert backup.poll() is None and time.monotonic() < deadline, backup.communicate()
            time.sleep(0.02)
        proxy.stall()
        before = proxy.connections
        time.sleep(4)  # several timeouts
        proxy.unstall()
        stdout, stderr = backup.communicate(timeout=240)
    finally:
        proxy.unstall()
        if backup.poll() is None:
            backup.kill()
    assert backup.returncode == 0, stderr
    assert proxy.connections > before  # it gave up on the silent connection and made a new one
    direct.ok("check", "--read-data")
    direct.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert digest_tree(restored(tmp_path / "out", source)) == digest_tree(source)


def test_a_server_that_stays_silent_ends_in_one_line_within_the_retry_budget(
    proxied: tuple[Remote, Remote, TcpProxy],
) -> None:
    slow, _, proxy = proxied
    slow.init()
    proxy.stall()
    done = slow.cairn("snapshots", env={"CAIRN_TIMEOUT": "0.5", "CAIRN_RETRY_TIME": "3"}, timeout=120)
    assert done.returncode == StorageError.exit_code == 16, done.stderr
    line = one_line(done)
    assert "gave up after" in line
    assert "time" in line.lower(), line


def test_a_bad_timeout_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_TIMEOUT", "2.5")
    assert timeout_from_env() == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv("CAIRN_TIMEOUT", bad)
        with pytest.raises(UsageError, match="CAIRN_TIMEOUT must be a number of seconds"):
            open_storage("s3:http://127.0.0.1:9/bucket")
