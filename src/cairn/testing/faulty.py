"""A wrapper that makes a backend fail on cue, to test how the layers above cope.

Faults are rules matched against each call by method and name prefix (for `list`, the prefix
argument). A rule fires from its ``nth`` matching call on, ``times`` times (None: forever)::

    faulty = FaultyBackend(MemoryBackend())
    faulty.fail("store", StorageFull, prefix="data/", nth=3)    # the 3rd pack upload fails
    faulty.corrupt("index/", flip_bit=100)                      # bit 100 of index objects flips
    faulty.crash("store", prefix="snapshots/")                  # the process "dies" mid-store

A crash raises `SimulatedCrash`, a BaseException so that no ``except Exception`` in the code under
test can swallow it, and leaves the wrapper dead: every later call raises it too, as nothing runs
after a real crash. The next "process" opens ``faulty.inner`` to see what survived.
"""

from __future__ import annotations

import builtins
import dataclasses

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from cairn.errors import StorageError
from cairn.storage.base import Backend, BackendProperties, ObjectInfo

METHODS = ("store", "load", "stat", "list", "delete")


class SimulatedCrash(BaseException):
    """The process died here (raised by `FaultyBackend.crash`)."""


@dataclass
class _Rule:
    method: str
    prefix: str
    nth: int
    times: int | None
    error: BaseException | type[BaseException] | None = None
    crash_after: bool | None = None
    truncate: int = 0
    flip_bit: int | None = None
    seen: int = 0
    fired: int = 0

    def fires(self, method: str, name: str) -> bool:
        if method != self.method or not name.startswith(self.prefix):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


class FaultyBackend:
    """Wraps any `Backend`, passes calls through, and injects the faults it was told to."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        """How many times each method was called (faulty calls included)."""
        self.log: list[tuple[str, str]] = []
        """Every call as (method, name or prefix), in order."""
        self.crashed = False
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()

    # -- telling it what to break ----------------------------------------------------------

    def fail(
        self,
        method: str,
        error: BaseException | type[BaseException] = StorageError,
        *,
        prefix: str = "",
        nth: int = 1,
        times: int | None = 1,
    ) -> None:
        """Raise `error` instead of calling the inner backend (a class gets a fresh message)."""
        self._add(_Rule(method, prefix, nth, times, error=error))

    def crash(
        self, method: str = "store", *, prefix: str = "", nth: int = 1, after: bool = False
    ) -> None:
        """Die during a call: before it reaches the backend (a store leaves the object absent
        or unchanged), or with ``after=True`` once it completed but before the caller learns so."""
        self._add(_Rule(method, prefix, nth, 1, crash_after=after))

    def corrupt(
        self,
        prefix: str = "",
        *,
        truncate: int = 0,
        flip_bit: int | None = None,
        nth: int = 1,
        times: int | None = None,
    ) -> None:
        """Damage what `load` returns: drop the last `truncate` bytes, and/or flip bit `flip_bit`
        of the object (counted from the object's start, so it shows only in ranges covering it).

        Dropping bytes breaks the short-read rule on purpose: it stands for a buggy backend."""
        if flip_bit is not None and flip_bit < 0:
            raise ValueError("flip_bit counts from the start of the object")
        self._add(_Rule("load", prefix, nth, times, truncate=truncate, flip_bit=flip_bit))

    def clear(self) -> None:
        """Remove every fault and revive a crashed wrapper; counters are kept."""
        with self._lock:
            self._rules.clear()
            self.crashed = False

    def _add(self, rule: _Rule) -> None:
        if rule.method not in METHODS:
            raise ValueError(f"unknown method {rule.method!r}; expected one of {METHODS}")
        if rule.nth < 1:
            raise ValueError("nth counts matching calls from 1")
        with self._lock:
            self._rules.append(rule)

    # -- the Backend protocol --------------------------------------------------------------

    @property
    def properties(self) -> BackendProperties:
        # Its faults and counts are per process: a forked copy would keep its own.
        return dataclasses.replace(self.inner.properties, shared_with_forks=False)

    def store(self, name: str, data: bytes | memoryview) -> None:
        rules = self._enter("store", name)
        self.inner.store(name, data)
        self._leave(rules)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        rules = self._enter("load", name)
        data = self.inner.load(name, offset, length)
        self._leave(rules)
        for rule in rules:
            data = _damage(data, offset, rule)
        return data

    def stat(self, name: str) -> ObjectInfo:
        rules = self._enter("stat", name)
        info = self.inner.stat(name)
        self._leave(rules)
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # A generator like the real backends: faults strike when iteration starts.
        rules = self._enter("list", prefix)
        found = list(self.inner.list(prefix))
        self._leave(rules)
        yield from found

    def delete(self, name: str) -> None:
        rules = self._enter("delete", name)
        self.inner.delete(name)
        self._leave(rules)

    def close(self) -> None:
        self.calls["close"] += 1
        self.inner.close()

    # -- machinery -------------------------------------------------------------------------

    def _enter(self, method: str, name: str) -> builtins.list[_Rule]:
        """Count the call and raise any fault that strikes before the inner backend runs."""
        with self._lock:
            self.calls[method] += 1
            self.log.append((method, name))
            if self.crashed:
                raise SimulatedCrash(f"{method} {name} after a simulated crash")
            rules = [rule for rule in self._rules if rule.fires(method, name)]
            for rule in rules:
                if rule.crash_after is False:
                    self.crashed = True
                    raise SimulatedCrash(f"simulated crash during {method} {name}")
        for rule in rules:
            if rule.error is not None:
                error = rule.error
                if isinstance(error, type):
                    error = error(f"injected fault: {method} {name}")
                raise error
        return rules

    def _leave(self, rules: builtins.list[_Rule]) -> None:
        if any(rule.crash_after for rule in rules):
            with self._lock:
                self.crashed = True
            raise SimulatedCrash("simulated crash after the call completed")


def _damage(data: bytes, offset: int, rule: _Rule) -> bytes:
    if rule.flip_bit is not None:
        index = rule.flip_bit // 8 - offset
        if 0 <= index < len(data):
            damaged = bytearray(data)
            damaged[index] ^= 1 << (rule.flip_bit % 8)
            data = bytes(damaged)
    if rule.truncate:
        data = data[: max(0, len(data) - rule.truncate)]
    return data
