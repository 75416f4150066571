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

``N`` is ``connections`` when given, else ``$CAIRN_CONNECTIONS``, else the backend's own
default (`BackendProperties.connections`).
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


def connections_from_env() -> int | None:
    raw = os.environ.get(ENV_CONNECTIONS)
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_CONNECTIONS:
        raise UsageError(f"{ENV_CONNECTIONS} must be a number from 1 to {MAX_CONNECTIONS}, not {raw!r}")
    return int(raw)


def open_storage(
    location: str,
    *,
    create: bool = False,
    connections: int | None = None,
    retry: RetryPolicy | None = None,
    cache: bool = True,
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
    backend: Backend
    if isinstance(parsed, SftpLocation):
        from cairn.storage.sftp import SftpBackend
        from cairn.storage.ssh import connector_for

        connector, endpoint = connector_for(parsed)
        root = parsed.path[2:] if parsed.path.startswith("~/") else parsed.path
        backend = SftpBackend(connector, root, location, endpoint, create=create, connections=limit or 4)
    elif isinstance(parsed, S3Location):
        from cairn.storage.s3 import S3Backend

        backend = S3Backend(parsed, create=create, connections=limit or 8)
    elif isinstance(parsed, RcloneLocation):
        from cairn.storage.rclone import RcloneBackend

        backend = RcloneBackend(parsed, create=create, connections=limit or 4)
    else:  # pragma: no cover - parse_location returns one of the above
        raise UsageError(f"unsupported location {location!r}")
    wrapped: Backend = RetryBackend(ConnectionLimit(backend, backend.properties.connections), retry)
    return CacheBackend(wrapped) if cache else wrapped
