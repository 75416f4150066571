"""SSH connections for the SFTP backend: ~/.ssh/config, known_hosts, keys, and what failed.

cairn behaves like the ``ssh`` command a user already set up, so that a location that works
with ``sftp host`` works with cairn: ``Host`` aliases, ``HostName``, ``Port``, ``User``,
``IdentityFile``, ``IdentitiesOnly``, ``UserKnownHostsFile``, ``HostKeyAlias`` and
``ConnectTimeout`` are read from ``~/.ssh/config``; keys come from the ssh-agent and the
identity files (or ``~/.ssh/id_*`` when none is named).

Host keys are always checked against ``~/.ssh/known_hosts`` (and the files the config names,
and ``/etc/ssh/ssh_known_hosts``). An unknown host is refused, never added silently: a backup
tool that trusts the first key it sees hands the repository's encrypted data and its access to
whoever answers first. The message says how to add the key after checking its fingerprint.

Every failure to connect becomes one `StorageError` line that says what to do about it.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import paramiko

from cairn.errors import StorageAccessDenied, StorageError
from cairn.storage.location import SftpLocation

DEFAULT_TIMEOUT = 15.0
# paramiko logs a failed handshake with its traceback at ERROR level; without a handler, Python
# would print that on stderr next to our one-line message. --debug still shows it (root handler).
logging.getLogger("paramiko").addHandler(logging.NullHandler())
# What paramiko says when the connection broke during the handshake (worth another try), as
# opposed to a disagreement (no common cipher, a bad key file) that trying again cannot fix.
_DROPPED = re.compile(r"banner|EOF|reset|closed|timed? ?out|connection|socket", re.IGNORECASE)
# What paramiko raises when the server accepted the TCP connection and then said nothing in time:
# no banner, or a handshake still unfinished when the connect timeout passed.
_HANDSHAKE_TIMEOUTS = ("Error reading SSH protocol banner", "No existing session")
KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
SYSTEM_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


def fingerprint(key: paramiko.PKey) -> str:
    """The SHA256 fingerprint exactly as ``ssh-keygen -l`` prints it."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def _transient(message: str) -> StorageError:
    error = StorageError(message)
    error.transient = True
    return error


@dataclass
class SshTarget:
    """Where and how to connect, after ~/.ssh/config has been applied to a location."""

    alias: str
    hostname: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    identity_files: list[str] = field(default_factory=list)
    identities_only: bool = False
    known_hosts: list[str] = field(default_factory=list)
    host_key_alias: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def shown(self) -> str:
        """The endpoint as messages show it: ``user@host:port``."""
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts files use: ``host``, ``[host]:port``, or a HostKeyAlias as is."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def resolve_target(
    location: SftpLocation, config_path: str = "~/.ssh/config", connect_timeout: float = DEFAULT_TIMEOUT
) -> SshTarget:
    """Apply ~/.ssh/config to a location; what the location says explicitly wins.

    `connect_timeout` applies unless the config sets ``ConnectTimeout`` for the host, as ``ssh``'s
    own option would.
    """
    settings: dict[str, object] = {}
    path = os.path.expanduser(config_path)
    if os.path.exists(path):
        try:
            settings = dict(paramiko.SSHConfig.from_path(path).lookup(location.host))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise StorageError(f"cannot read {config_path}: {exc}") from exc
    target = SshTarget(alias=location.host, hostname=str(settings.get("hostname", location.host)))
    try:
        target.port = location.port or int(str(settings.get("port", 22)))
        target.timeout = float(str(settings.get("connecttimeout", connect_timeout)))
    except ValueError as exc:
        raise StorageError(f"bad Port or ConnectTimeout for {location.host} in {config_path}") from exc
    target.user = location.user or str(settings.get("user") or target.user)
    target.identity_files = [os.path.expanduser(str(f)) for f in settings.get("identityfile", [])]  # type: ignore[attr-defined]
    target.identities_only = str(settings.get("identitiesonly", "no")).lower() == "yes"
    files = str(settings.get("userknownhostsfile", " ".join(KNOWN_HOSTS))).split()
    files += str(settings.get("globalknownhostsfile", " ".join(SYSTEM_KNOWN_HOSTS))).split()
    target.known_hosts = [os.path.expanduser(f) for f in files]
    alias = settings.get("hostkeyalias")
    target.host_key_alias = str(alias) if alias else None
    return target


class _UnknownHost(Exception):
    def __init__(self, name: str, key: paramiko.PKey) -> None:
        super().__init__(name)
        self.name = name
        self.key = key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Never trust a key that no known_hosts file vouches for."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHost(hostname, key)


def connect(target: SshTarget) -> paramiko.Transport:
    """An authenticated SSH transport to `target`, or a `StorageError` saying what failed."""
    client = paramiko.SSHClient()
    for path in target.known_hosts:
        if os.path.isfile(path):
            try:
                client.load_system_host_keys(path)
            except (OSError, paramiko.SSHException) as exc:
                raise StorageError(f"cannot read the known hosts file {path}: {exc}") from exc
    client.set_missing_host_key_policy(_RefuseUnknown())
    keys = [f for f in target.identity_files if _usable_key(f)]
    try:
        client.connect(  # the name and port only pick the known_hosts entry: `sock` is dialled
            target.host_key_alias or target.hostname,
            port=22 if target.host_key_alias else target.port,
            username=target.user,
            key_filename=keys or None,
            allow_agent=not target.identities_only,
            look_for_keys=not target.identity_files,
            timeout=target.timeout,
            banner_timeout=target.timeout,
            auth_timeout=target.timeout,
            channel_timeout=target.timeout,
            sock=_open_socket(target),
        )
    except BaseException as exc:
        client.close()
        if isinstance(exc, Exception):
            raise connect_error(target, exc) from exc
        raise
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(30)
    return transport


def _usable_key(path: str) -> bool:
    """Whether an identity file holds a private key we can use without asking for a passphrase.

    Like ``ssh``, skip the others (a public key named by mistake, an encrypted key: the agent may
    hold it) instead of failing, so the remaining ways to log in are still tried.
    """
    try:
        paramiko.PKey.from_path(path)
        return True
    except (OSError, paramiko.SSHException, ValueError):
        return False


def _open_socket(target: SshTarget) -> socket.socket:
    """Connect TCP ourselves, so a host-key alias never changes which address is dialled."""
    try:
        return socket.create_connection((target.hostname, target.port), timeout=target.timeout)
    except socket.gaierror as exc:
        raise StorageError(f"cannot find the SSH host {target.hostname}: {exc.strerror}") from exc
    except OSError as exc:
        raise connect_error(target, exc) from exc


def connect_error(target: SshTarget, exc: BaseException) -> StorageError:
    """One line per kind of failure, each saying what the user can do."""
    if isinstance(exc, StorageError):
        return exc
    where = target.shown
    if isinstance(exc, _UnknownHost):
        keyscan = f"ssh-keyscan -p {target.port} {target.hostname}" if target.port != 22 else f"ssh-keyscan {target.hostname}"
        return StorageError(
            f"the SSH host {exc.name} is not in known_hosts (it offers {fingerprint(exc.key)}); if that "
            f"fingerprint is right, add it with '{keyscan} >> ~/.ssh/known_hosts' or by running 'ssh' once"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return StorageError(
            f"HOST KEY MISMATCH for {target.known_hosts_name}: it offers {fingerprint(exc.key)} but known_hosts "
            f"has {fingerprint(exc.expected_key)}; someone may be intercepting the connection. If the server "
            f"was reinstalled, remove the old key with \"ssh-keygen -R '{target.known_hosts_name}'\""
        )
    if isinstance(exc, paramiko.AuthenticationException) or "authentication methods" in str(exc):
        tried = ", ".join(target.identity_files) or "~/.ssh/id_*"
        agent = "" if target.identities_only else "the ssh-agent's keys and "
        return StorageAccessDenied(
            f"{where} refused the login: it accepted none of {agent}{tried}; put your public key in the "
            "server's ~/.ssh/authorized_keys, or name the right one with IdentityFile in ~/.ssh/config"
        )
    if isinstance(exc, (socket.timeout, TimeoutError)) or str(exc) in _HANDSHAKE_TIMEOUTS:
        return _transient(f"timed out connecting to the SSH server {where} (no answer in {target.timeout:g} s)")
    if isinstance(exc, ConnectionRefusedError):
        return _transient(f"cannot connect to the SSH server {where}: connection refused")
    reason = getattr(exc, "strerror", None) or str(exc)
    if not reason:
        reason = "the connection closed during the handshake" if isinstance(exc, EOFError) else type(exc).__name__
    if isinstance(exc, (EOFError, OSError)) or (isinstance(exc, paramiko.SSHException) and _DROPPED.search(reason)):
        return _transient(f"cannot connect to the SSH server {where}: {reason}")
    return StorageError(f"cannot connect to the SSH server {where}: {reason}")


Connector = Callable[[], paramiko.Transport]
"""Opens a fresh, authenticated transport; the SFTP backend calls it again after a drop."""


def connector_for(location: SftpLocation, connect_timeout: float = DEFAULT_TIMEOUT) -> tuple[Connector, str]:
    """A connector for a location and the endpoint it reaches (for messages)."""
    target = resolve_target(location, connect_timeout=connect_timeout)
    return (lambda: connect(target)), target.shown
