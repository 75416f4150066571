"""SFTP channels over one SSH connection, shared by threads, rebuilt after a drop.

One SSH connection multiplexes many SFTP channels, so N parallel transfers cost one handshake
and one login. Each call borrows a channel; a channel whose call failed for a connection reason
(a transient `StorageError`) is thrown away, one that only got an SFTP status answer ("no such
file") goes back to the pool. When the connection itself is dead, the next borrower connects
again. At most `MAX_CHANNELS` channels are open (OpenSSH's default MaxSessions is 10).

A call that gets no answer within `timeout` seconds fails (transient). A server that went silent
without closing the connection looks alive to TCP and to paramiko, so after such a timeout the
whole connection is closed: the retry then connects afresh instead of opening a new channel on
the hung one. Opening a channel has the same deadline (paramiko waits for the server's answer to
a subsystem request without one), enforced by closing the connection when it passes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko

from cairn.errors import StorageError
from cairn.storage.base import describe
from cairn.storage.ssh import Connector

MAX_CHANNELS = 8
OP_TIMEOUT = 60.0
"""Default seconds a channel waits for an answer before the call fails (transient): a hung server."""


class ChannelPool:
    def __init__(self, connector: Connector, endpoint: str, location: str, timeout: float = OP_TIMEOUT) -> None:
        self._connect = connector
        self.timeout = timeout
        self._endpoint = endpoint
        self._location = location
        self._lock = threading.Condition()
        self._transport: paramiko.Transport | None = None
        self._idle: list[paramiko.SFTPClient] = []
        self._open = 0
        self._closed = False

    def lost(self, exc: BaseException, action: str) -> StorageError:
        """The transient error for a connection that broke while doing `action`."""
        error = StorageError(f"lost the connection to {self._endpoint} while trying to {action}: {describe(exc)}")
        error.transient = True
        return error

    @contextmanager
    def channel(self) -> Iterator[paramiko.SFTPClient]:
        sftp = self._take()
        healthy = False
        try:
            yield sftp
            healthy = True
        except StorageError as exc:
            healthy = not exc.transient
            if _timed_out(exc):
                _close_transport(sftp)
            raise
        finally:
            with self._lock:
                if healthy and not self._closed:
                    self._idle.append(sftp)
                else:
                    self._open -= 1
                    sftp.close()
                self._lock.notify()

    def _take(self) -> paramiko.SFTPClient:
        with self._lock:
            while not self._idle and self._open >= MAX_CHANNELS and not self._closed:
                self._lock.wait()
            if self._closed:
                raise StorageError(f"{self._location} is closed")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return self._new_channel()
        except BaseException:
            with self._lock:
                self._open -= 1
                self._lock.notify()
            raise

    def _new_channel(self) -> paramiko.SFTPClient:
        with self._lock:  # one thread connects; the others wait for its connection
            transport = self._transport
            if transport is None or not transport.is_active():
                transport = self._transport = self._connect()
        watchdog = threading.Timer(self.timeout, transport.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if not watchdog.is_alive():
                exc = TimeoutError(f"no answer in {self.timeout:g} s")
            raise self.lost(exc, "open a channel to") from exc
        finally:
            watchdog.cancel()
        assert sftp is not None
        sftp.get_channel().settimeout(self.timeout)
        return sftp

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            transport, self._transport = self._transport, None
            self._lock.notify_all()
        for sftp in idle:
            sftp.close()
        if transport is not None:
            transport.close()


def _timed_out(exc: BaseException) -> bool:
    """Whether a timeout (a socket's, paramiko's) is among the causes of `exc`."""
    pending: list[BaseException] = [exc]
    visited: set[int] = set()
    while pending:  # a chain may loop back on itself: visit each exception once
        seen = pending.pop()
        if id(seen) in visited:
            continue
        visited.add(id(seen))
        if isinstance(seen, TimeoutError):
            return True
        pending.extend(e for e in (seen.__cause__, seen.__context__) if e is not None)
    return False


def _close_transport(sftp: paramiko.SFTPClient) -> None:
    """Close the connection under a channel that timed out; its other channels fail and retry."""
    channel = sftp.get_channel()
    transport = channel.get_transport() if channel is not None else None
    if transport is not None:
        transport.close()


def connection_gone(sftp: paramiko.SFTPClient, exc: BaseException) -> bool:
    """Whether `exc` came from the connection rather than from an SFTP status answer."""
    if isinstance(exc, (EOFError, paramiko.SSHException, TimeoutError, ConnectionError)):
        return True
    channel = sftp.get_channel()
    return channel is None or channel.closed or not channel.get_transport().is_active()
