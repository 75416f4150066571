"""Bound how many requests run against a backend at once (``--connections``).

A remote server, an SSH session (OpenSSH allows 10 channels per connection by default) or a
home uplink serves a few parallel transfers well and many badly: past a point, more requests
only add queueing, timeouts and throttling. The bound is a semaphore held for the duration of
each call. A ``list`` holds it only while fetching the next entry, never while the caller works
on what it got, so a caller that loads objects while listing cannot deadlock itself.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

from cairn.storage.base import Backend, BackendProperties, ObjectInfo

_END = object()


class ConnectionLimit:
    """Wraps a `Backend` so that at most `connections` calls reach it at the same time."""

    def __init__(self, inner: Backend, connections: int) -> None:
        if connections < 1:
            raise ValueError("at least one connection is needed")
        self.inner = inner
        self._slots = threading.BoundedSemaphore(connections)
        self._properties = dataclasses.replace(inner.properties, connections=connections)

    @property
    def properties(self) -> BackendProperties:
        return self._properties

    def store(self, name: str, data: bytes | memoryview) -> None:
        with self._slots:
            self.inner.store(name, data)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._slots:
            return self.inner.load(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        with self._slots:
            return self.inner.stat(name)

    def delete(self, name: str) -> None:
        with self._slots:
            self.inner.delete(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._slots:
            entries = self.inner.list(prefix)
        try:
            while True:
                with self._slots:
                    info = next(entries, _END)
                if info is _END:
                    return
                assert isinstance(info, ObjectInfo)
                yield info
        finally:
            close = getattr(entries, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        self.inner.close()
