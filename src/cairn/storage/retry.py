"""Try again when the storage failed for a reason that may pass: exponential backoff with jitter.

Backends mark what may pass with ``StorageError.transient`` (a timeout, a dropped connection, an
HTTP 5xx or a throttling answer); everything else — a missing object, a full disk, refused
credentials — is raised at once, since waiting cannot fix it.

Why retrying every method is safe here: ``store`` is atomic and idempotent (the same bytes under
the same name), ``load``/``stat``/``list`` only read. ``delete`` is the one call whose first try
may have succeeded before its answer was lost, so a retried delete that finds the object gone
counts as done. A ``list`` that breaks half-way is started again and skips the names it already
yielded, so the caller sees each object once.

Delays grow as ``base * 2**n`` up to ``max_delay``; each is drawn from its upper half ("equal
jitter"), so many hosts that lost the same server do not come back in lockstep, while a retry
never comes so soon that it is wasted. A call gives up after `RetryPolicy.attempts` tries or once
`RetryPolicy.budget` seconds have passed since its first failure, whichever comes first, and
raises the last error with how long it tried.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from cairn.errors import ObjectMissing, StorageError
from cairn.storage.base import Backend, BackendProperties, ObjectInfo

log = logging.getLogger(__name__)
T = TypeVar("T")
ENV_RETRY_TIME = "CAIRN_RETRY_TIME"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 10
    """Tries per call, the first included."""
    base_delay: float = 0.5
    max_delay: float = 30.0
    budget: float = 300.0
    """Seconds after a call's first failure past which it is not tried again."""

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, with the budget from ``CAIRN_RETRY_TIME`` (seconds) if set.

        A short budget suits interactive use and tests; a long one an unattended nightly job.
        """
        raw = os.environ.get(ENV_RETRY_TIME)
        if not raw:
            return cls()
        try:
            budget = float(raw)
        except ValueError:
            return cls()
        return cls(budget=max(0.0, budget), max_delay=min(cls.max_delay, max(budget / 4, 0.05)))


class _Attempts:
    """The backoff state of one call: decides, after each transient failure, to wait or give up."""

    def __init__(self, owner: RetryBackend, what: str) -> None:
        self.owner = owner
        self.what = what
        self.count = 0
        self.first_failure: float | None = None

    def failed(self, exc: StorageError) -> None:
        """Sleep before the next try, or raise: at once if `exc` is permanent, else when spent."""
        if not exc.transient:
            raise exc
        policy = self.owner.policy
        now = self.owner.clock()
        if self.first_failure is None:
            self.first_failure = now
        self.count += 1
        cap = min(policy.max_delay, policy.base_delay * 2 ** (self.count - 1))
        delay = cap / 2 + self.owner.rng.uniform(0, cap / 2)
        spent = now - self.first_failure
        if self.count >= policy.attempts or spent + delay > policy.budget:
            given_up = type(exc)(f"{exc.message} (gave up after {self.count} tries in {spent:.0f} s)")
            raise given_up from exc
        log.info("%s failed (%s); try %d in %.1f s", self.what, exc.message, self.count + 1, delay)
        self.owner.sleep(delay)


class RetryBackend:
    """Wraps a `Backend` and retries its transient failures (see the module docstring)."""

    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy.from_env()
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()

    @property
    def properties(self) -> BackendProperties:
        return self.inner.properties

    def _call(self, what: str, call: Callable[[], T]) -> T:
        attempts = _Attempts(self, what)
        while True:
            try:
                return call()
            except StorageError as exc:
                attempts.failed(exc)

    def store(self, name: str, data: bytes | memoryview) -> None:
        self._call(f"store {name}", lambda: self.inner.store(name, data))

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"load {name}", lambda: self.inner.load(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._call(f"stat {name}", lambda: self.inner.stat(name))

    def delete(self, name: str) -> None:
        attempts = _Attempts(self, f"delete {name}")
        while True:
            try:
                self.inner.delete(name)
                return
            except ObjectMissing:
                if attempts.count == 0:
                    raise
                return  # an earlier try deleted it; only its answer was lost
            except StorageError as exc:
                attempts.failed(exc)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        attempts = _Attempts(self, f"list {prefix or '(everything)'}")
        yielded: set[str] = set()
        while True:
            try:
                for info in self.inner.list(prefix):
                    if info.name not in yielded:
                        yielded.add(info.name)
                        yield info
                return
            except StorageError as exc:
                attempts.failed(exc)

    def close(self) -> None:
        self.inner.close()
