"""The storage contract: named objects, nothing more.

A backend knows nothing of the repository format. Names are ASCII, lower-case, made of
``[a-z0-9._-]`` segments joined by ``/`` (for example ``data/ab/ab12...``), so they are safe on
case-insensitive and FAT filesystems and as S3 keys. The contract every backend keeps, checked by
``cairn.testing.conformance`` on each of them:

* ``store`` is atomic: after it returns the object is complete and durable; if it fails or the
  process dies, the object is either absent or still holds its previous content, never a prefix.
* ``load`` returns exactly the bytes asked for; a range past the end or a short read raises
  ``StorageError`` (never returns fewer bytes silently). A missing object raises ``ObjectMissing``.
* ``list`` yields every object under a prefix (``"data/"``), in no particular order, and never
  objects that are half-written (temporary files are invisible).
* ``delete`` of a missing object raises ``ObjectMissing``.
* Permanent failures (missing, full, read-only, permission) raise the matching ``StorageError``
  subclass; ``StorageError.transient`` tells a retry wrapper whether trying again can help.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cairn.errors import CairnError, StorageError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")

# A FAT32 file cannot be larger than 4 GiB - 1; every backend refuses bigger objects so a
# repository can always be moved to such a drive.
MAX_OBJECT_SIZE = 4 * 1024**3 - 1


@dataclass(frozen=True)
class ObjectInfo:
    """What `stat` and `list` tell about an object."""

    name: str
    size: int


@dataclass(frozen=True)
class BackendProperties:
    """Facts about a backend that the layers above plan with."""

    location: str
    """The location as a user would type it (`/path`, `sftp:host:/path`, ...)."""
    connections: int = 2
    """How many requests may usefully run at once."""
    atomic_replace: bool = True
    """Whether `store` over an existing name replaces it atomically."""
    shared_with_forks: bool = False
    """Whether a forked copy of this backend object stores into the very same storage on its
    own: a local folder does; a network connection cannot be shared, and an in-memory store or a
    test wrapper's counters would be the fork's own copy."""


def check_name(name: str) -> str:
    """Refuse a name outside the portable alphabet before it reaches a backend."""
    if not NAME_RE.match(name) or len(name) > 255:
        raise ValueError(f"invalid object name {name!r}")
    return name


def check_size(name: str, size: int, limit: int = MAX_OBJECT_SIZE) -> None:
    """Refuse an oversize object before any byte is written, so no backend holds one."""
    if size > limit:
        raise StorageError(
            f"cannot store {name}: {size} bytes is more than the {limit} bytes an object may hold"
        )


def check_range(name: str, offset: int, length: int | None, size: int) -> int:
    """Validate a read range against the object's size and return its end.

    Shared by every backend so that "past the end" means the same everywhere: a range must lie
    inside the object (a zero-length read at the very end is fine), otherwise `StorageError`.
    """
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"negative offset or length reading {name}")
    end = size if length is None else offset + length
    if offset > size or end > size:
        shown = "to the end" if length is None else f"{length} bytes"
        raise StorageError(
            f"cannot read {shown} at offset {offset} of {name}: it holds only {size} bytes"
        )
    return end


@runtime_checkable
class Backend(Protocol):
    """A store of named, immutable-in-practice objects. See the module docstring for the contract."""

    @property
    def properties(self) -> BackendProperties: ...

    def store(self, name: str, data: bytes | memoryview) -> None:
        """Write the whole object atomically and durably (replacing any previous one)."""

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return `length` bytes from `offset` (to the end when `length` is None)."""

    def stat(self, name: str) -> ObjectInfo:
        """Return the size of an object; `ObjectMissing` if there is none."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every complete object whose name starts with `prefix`."""

    def delete(self, name: str) -> None:
        """Remove an object; `ObjectMissing` if there is none."""

    def close(self) -> None:
        """Release connections and file handles; the backend is unusable afterwards."""


def describe(exc: BaseException) -> str:
    """A short reason for a low-level error, for one-line messages."""
    if isinstance(exc, CairnError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
