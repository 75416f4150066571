"""The SFTP backend against a real OpenSSH server on 127.0.0.1, set up as a user's ~/.ssh would be."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import ObjectMissing, StorageAccessDenied, StorageError, StorageFull, StorageReadOnly
from cairn.storage.retry import RetryPolicy
from cairn.storage.sftp import SftpBackend
from cairn.storage.stack import open_storage
from cairn.testing.conformance import BackendConformance, names, pattern
from servers import Sshd, free_ports


@pytest.fixture
def ssh_home(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Sshd:
    """HOME is the server's private home (its ~/.ssh/config has the alias cairn-test)."""
    for name, value in sshd.env.items():
        monkeypatch.setenv(name, value)
    sshd.write_config()
    return sshd


def raw_backend(location: str, **kwargs: object) -> SftpBackend:
    backend = open_storage(location, cache=False, **kwargs)  # type: ignore[arg-type]
    return backend.inner.inner  # type: ignore[attr-defined,no-any-return]


class TestSftpConformance(BackendConformance):
    @pytest.fixture
    def backend(self, ssh_home: Sshd, tmp_path: Path) -> Iterator[SftpBackend]:
        (tmp_path / "repo").mkdir()
        backend = raw_backend(f"sftp:cairn-test:{tmp_path}/repo")
        yield backend
        backend.close()


def expect_error(location: str, kind: type[StorageError] = StorageError) -> StorageError:
    """Open the location and read from it; return the one error that must come out."""
    backend = open_storage(location, retry=RetryPolicy(attempts=1))
    try:
        with pytest.raises(kind) as caught:
            backend.load("config")
    finally:
        backend.close()
    assert "\n" not in str(caught.value)
    return caught.value


def key_fingerprint(public_key: Path) -> str:
    """`ssh-keygen -l`'s SHA256 fingerprint, the independent reference for our messages."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def test_url_form_with_default_keys_and_explicit_port(ssh_home: Sshd, tmp_path: Path) -> None:
    # No config entry for 127.0.0.1: user and port come from the URL, the key from ~/.ssh/id_ed25519.
    (ssh_home.home / ".ssh" / "config").write_text("")
    shutil.copy(ssh_home.client_key, ssh_home.home / ".ssh" / "id_ed25519")
    try:
        backend = open_storage(f"sftp://{ssh_home.user}@127.0.0.1:{ssh_home.port}{tmp_path}/repo")
        backend.store("data/ab/x", b"hello")
        assert (tmp_path / "repo" / "data" / "ab" / "x").read_bytes() == b"hello"
        backend.close()
    finally:
        (ssh_home.home / ".ssh" / "id_ed25519").unlink()


def test_login_through_the_ssh_agent(ssh_home: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ssh_home.write_config(identity=tmp_path / "no-such-key")  # the agent is the only way in
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", "-q", str(ssh_home.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        backend = open_storage(f"sftp:cairn-test:{tmp_path}/repo")
        backend.store("config", b"via agent")
        assert backend.load("config") == b"via agent"
        backend.close()
    finally:
        agent.terminate()
        agent.wait()


def test_unknown_host_is_refused_and_never_added(ssh_home: Sshd, tmp_path: Path) -> None:
    known = ssh_home.home / ".ssh" / "known_hosts"
    saved = known.read_text()
    known.write_text("")
    try:
        error = expect_error(f"sftp:cairn-test:{tmp_path}")
    finally:
        assert known.read_text() == ""
        known.write_text(saved)
    fingerprint = key_fingerprint(ssh_home.base / "host_key.pub")
    assert str(error) == (
        f"the SSH host [127.0.0.1]:{ssh_home.port} is not in known_hosts (it offers ssh-ed25519 {fingerprint}); "
        f"if that fingerprint is right, add it with 'ssh-keyscan -p {ssh_home.port} 127.0.0.1 >> ~/.ssh/known_hosts' "
        "or by running 'ssh' once"
    )
    assert not error.transient


def test_host_key_mismatch_is_refused(ssh_home: Sshd, tmp_path: Path) -> None:
    known = ssh_home.home / ".ssh" / "known_hosts"
    saved = known.read_text()
    impostor = (ssh_home.base / "other_key.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{ssh_home.port} {' '.join(impostor)}\n")
    try:
        error = expect_error(f"sftp:cairn-test:{tmp_path}")
    finally:
        known.write_text(saved)
    assert str(error).startswith(f"HOST KEY MISMATCH for [127.0.0.1]:{ssh_home.port}: it offers ssh-ed25519 "
                                 f"{key_fingerprint(ssh_home.base / 'host_key.pub')} but known_hosts has ssh-ed25519 "
                                 f"{key_fingerprint(ssh_home.base / 'other_key.pub')}")
    assert f"ssh-keygen -R '[127.0.0.1]:{ssh_home.port}'" in str(error)


def test_a_key_the_server_does_not_accept(ssh_home: Sshd, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    ssh_home.write_config(identity=stranger)
    error = expect_error(f"sftp:cairn-test:{tmp_path}", StorageAccessDenied)
    assert str(error).startswith(f"{ssh_home.user}@127.0.0.1:{ssh_home.port} refused the login: it accepted none of")
    assert str(stranger) in str(error)


def test_nothing_listening(ssh_home: Sshd, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    error = expect_error(f"sftp://{ssh_home.user}@127.0.0.1:{port}{tmp_path}")
    assert str(error) == (f"cannot connect to the SSH server {ssh_home.user}@127.0.0.1:{port}: connection refused "
                          "(gave up after 1 tries in 0 s)")


def test_unknown_host_name(ssh_home: Sshd, tmp_path: Path) -> None:
    error = expect_error("sftp:no-such-host.invalid:/srv")
    assert str(error).startswith("cannot find the SSH host no-such-host.invalid")


def test_a_missing_folder_is_an_error_except_for_init(ssh_home: Sshd, tmp_path: Path) -> None:
    error = expect_error(f"sftp:cairn-test:{tmp_path}/absent")
    assert str(error) == (f"the folder {tmp_path}/absent does not exist on {ssh_home.user}@127.0.0.1:{ssh_home.port} "
                          f"(sftp:cairn-test:{tmp_path}/absent)")
    created = open_storage(f"sftp:cairn-test:{tmp_path}/absent/repo", create=True)
    with pytest.raises(ObjectMissing):
        created.load("config")
    created.store("config", b"x")
    assert (tmp_path / "absent" / "repo" / "config").read_bytes() == b"x"
    created.close()


def test_read_only_login_raises_storage_read_only(ssh_home: Sshd, tmp_path: Path) -> None:
    (tmp_path / "repo" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "data" / "kept").write_bytes(b"kept")
    ssh_home.write_config(identity=ssh_home.other_key)  # logs in with internal-sftp -R
    backend = open_storage(f"sftp:cairn-test:{tmp_path}/repo")
    try:
        assert backend.load("data/kept") == b"kept"
        for call in (lambda: backend.store("data/new", b"x"), lambda: backend.delete("data/kept")):
            with pytest.raises(StorageReadOnly, match="is read-only: permission denied"):
                call()
    finally:
        backend.close()
    assert sorted(p.name for p in (tmp_path / "repo" / "data").iterdir()) == ["kept"]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_a_full_server_disk_raises_storage_full(ssh_home: Sshd, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        backend = open_storage(f"sftp:cairn-test:{mount}")
        backend.store("config", b"small")
        with pytest.raises(StorageFull) as caught:
            backend.store("data/big", pattern(3 * 1024 * 1024))
        assert str(caught.value) == f"no space left on sftp:cairn-test:{mount} while writing data/big: {StorageFull.AFTERMATH}"
        assert names(backend.list()) == {"config"}
        assert [p.name for p in mount.rglob(".tmp-*")] == []
        backend.close()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_reconnects_after_the_server_restarts(ssh_home: Sshd, tmp_path: Path) -> None:
    backend = open_storage(f"sftp:cairn-test:{tmp_path}", retry=RetryPolicy(base_delay=0.1, budget=30))
    backend.store("config", b"before")
    ssh_home.stop()
    restart = threading.Timer(1.0, ssh_home.start)
    restart.start()
    try:
        backend.store("data/after", b"after")  # fails while the server is down, then goes through
        assert backend.load("config") == b"before"
    finally:
        restart.join()
        backend.close()
