"""A backend that keeps objects in a dict, for fast tests of the layers above storage.

It keeps the same contract as the real backends (checked by the same conformance suite), so a
test that passes on it does not rely on behaviour a disk or S3 would not give.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from cairn.errors import ObjectMissing
from cairn.storage.base import BackendProperties, ObjectInfo, check_name, check_range, check_size

_instances = itertools.count(1)


class MemoryBackend:
    """Objects in memory, guarded by one lock so threads see each store whole or not at all."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._properties = BackendProperties(location=f"memory:{next(_instances)}", connections=8)

    @property
    def properties(self) -> BackendProperties:
        return self._properties

    def store(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        with memoryview(data) as view:  # released at once: a view kept alive pins the buffer
            check_size(name, view.nbytes)
            copy = view.tobytes()  # the caller may reuse its buffer once we return
        with self._lock:
            self._objects[name] = copy

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._get(name)
        end = check_range(name, offset, length, len(data))
        return data[offset:end]

    def stat(self, name: str) -> ObjectInfo:
        return ObjectInfo(name, len(self._get(name)))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Snapshot under the lock, yield outside it: a caller may store or delete while iterating.
        with self._lock:
            found = [
                ObjectInfo(n, len(d)) for n, d in self._objects.items() if n.startswith(prefix)
            ]
        yield from found

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            if self._objects.pop(name, None) is None:
                raise self._missing(name)

    def close(self) -> None:
        """Nothing to release; the objects stay so a test can inspect them after closing."""

    def _get(self, name: str) -> bytes:
        check_name(name)
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise self._missing(name)
        return data

    def _missing(self, name: str) -> ObjectMissing:
        return ObjectMissing(f"object {name} does not exist in {self._properties.location}")
