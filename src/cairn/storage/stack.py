"""`open_storage`: from a location string to a ready backend, wrapped in one documented order.

The order, outermost first::

    CacheBackend          local copies of index and snapshot objects (cairn.storage.cache)
      RetryBackend        retries transient failures with backoff (cairn.storage.retry)
        ConnectionLimit   at most N calls in flight (cairn.storage.limit)
          SftpBackend | S3Backend | RcloneBackend

Why this order: a call waiting out its backoff must not hold one of the N connection slots, or
a server that is briefly down would also starve every other thread's healthy requests; so the
limit sits inside the retry. The cache is outermost, since a hit needs neither a slot nor a
retry, and a miss is downloaded with both. It stays inactive until the repository, once open,
tells it its id (`cairn.storage.cache.attach`); ``cache=False`` (``--no-cache``) leaves it out.

Local folders are returned bare: a local error is never transient, and the kernel already
schedules the disk, so the retry and the limit would only add cost; a cache would copy one local
file to another (docs/STORAGE.md has the measurement).

``N`` is ``connections`` when given (``--connections``), else ``$CAIRN_CONNECTIONS``, else the
backend's own default (`BackendProperties.connections`).

Timeouts: a request that gets no answer for ``timeout`` seconds (``$CAIRN_TIMEOUT``, default
`DEFAULT_TIMEOUT`) fails as transient, so the retry wrapper tries again on a fresh connection;
connecting gives up after ``min(timeout, CONNECT_TIMEOUT)`` (for SFTP, ``ConnectTimeout`` in
~/.ssh/config wins). A short timeout finds a hung server sooner; a long one suits a link that
can stall for a while under load and then recover.
"""

from __future__ import annotations

import os

from cairn.errors import UsageError
from cairn.storage.base import Backend
from cairn.storage.cache import CacheBackend
from cairn.storage.limit import ConnectionLimit
from cairn.storage.local import LocalBackend
from cairn.storage.location import LocalLocation, RcloneLocation, S3Location, SftpLocation, parse_location
from cairn.storage.retry import RetryBackend, RetryPolicy

ENV_CONNECTIONS = "CAIRN_CONNECTIONS"
MAX_CONNECTIONS = 64
ENV_TIMEOUT = "CAIRN_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
CONNECT_TIMEOUT = 15.0
MAX_TIMEOUT = 3600.0


def parse_connections(raw: str, source: str = ENV_CONNECTIONS) -> int:
    """A connection count from text (an option or the environment); `UsageError` names `source`."""
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_CONNECTIONS:
        raise UsageError(f"{source} must be a number from 1 to {MAX_CONNECTIONS}, not {raw!r}")
    return int(text)


def connections_from_env() -> int | None:
    raw = os.environ.get(ENV_CONNECTIONS)
    return parse_connections(raw) if raw else None


def timeout_from_env() -> float:
    """Seconds a request may wait for an answer: ``$CAIRN_TIMEOUT``, else `DEFAULT_TIMEOUT`."""
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= MAX_TIMEOUT:  # also refuses nan and inf
        raise UsageError(f"{ENV_TIMEOUT} must be a number of seconds from 0.1 to {MAX_TIMEOUT:.0f}, not {raw!r}")
    return value


def is_remote(location: str) -> bool:
    """Whether `location` names storage reached over a network (wrapped, see the module docstring).

    False for a local folder and for anything that is no location at all (a test's memory
    backend), so callers can plan for a disk by default.
    """
    try:
        return not isinstance(parse_location(location), LocalLocation)
    except UsageError:
        return False


def open_storage(
    location: str,
    *,
    create: bool = False,
    connections: int | None = None,
    retry: RetryPolicy | None = None,
    cache: bool = True,
    timeout: float | None = None,
) -> Backend:
    """The backend for `location`, wrapped as the module docstring says. Makes no request.

    `create` is for ``cairn init``: a missing S3 bucket is then created by the first write, and
    a missing folder on an SFTP server reads as an empty repository instead of an error.
    `cache=False` opens a remote location without the local cache.
    """
    parsed = parse_location(location)
    if isinstance(parsed, LocalLocation):
        return LocalBackend(parsed.path)
    limit = connections or connections_from_env()
    wait = timeout or timeout_from_env()
    backend: Backend
    if isinstance(parsed, SftpLocation):
        from cairn.storage.sftp import SftpBackend
        from cairn.storage.ssh import connector_for

        connector, endpoint = connector_for(parsed, connect_timeout=min(wait, CONNECT_TIMEOUT))
        root = parsed.path[2:] if parsed.path.startswith("~/") else parsed.path
        backend = SftpBackend(connector, root, location, endpoint, create=create, connections=limit or 4, timeout=wait)
    elif isinstance(parsed, S3Location):
        from cairn.storage.s3 import S3Backend

        backend = S3Backend(parsed, create=create, connections=limit or 8, timeout=wait)
    elif isinstance(parsed, RcloneLocation):
        from cairn.storage.rclone import RcloneBackend

        backend = RcloneBackend(parsed, create=create, connections=limit or 4, timeout=wait)
    else:  # pragma: no cover - parse_location returns one of the above
        raise UsageError(f"unsupported location {location!r}")
    wrapped: Backend = RetryBackend(ConnectionLimit(backend, backend.properties.connections), retry)
    return CacheBackend(wrapped) if cache else wrapped
