"""A pass-through backend that counts what is downloaded, for tests and benchmarks that show
what a cache or a read path saves (objects and bytes, by the object's first folder)."""

from __future__ import annotations

import dataclasses

from collections import Counter
from collections.abc import Iterator

from cairn.storage.base import Backend, BackendProperties, ObjectInfo


class CountingBackend:
    """Counts loads and loaded bytes by the object's first folder (``index``, ``data``, ...)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.loads: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    @property
    def properties(self) -> BackendProperties:
        # Its counts are per process: a forked copy would keep its own.
        return dataclasses.replace(self.inner.properties, shared_with_forks=False)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.load(name, offset, length)
        kind = name.split("/", 1)[0]
        self.loads[kind] += 1
        self.bytes[kind] += len(data)
        return data

    def store(self, name: str, data: bytes | memoryview) -> None:
        self.inner.store(name, data)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def close(self) -> None:
        self.inner.close()
