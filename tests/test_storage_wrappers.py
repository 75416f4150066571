"""Locations, the retry and connection-limit wrappers, and the order `open_storage` stacks them in."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from cairn.errors import ObjectMissing, StorageError, StorageFull, UsageError
from cairn.storage.base import Backend, ObjectInfo
from cairn.storage.cache import CacheBackend
from cairn.storage.limit import ConnectionLimit
from cairn.storage.local import LocalBackend
from cairn.storage.location import LocalLocation, RcloneLocation, S3Location, SftpLocation, parse_location
from cairn.storage.retry import RetryBackend, RetryPolicy
from cairn.storage.stack import open_storage
from cairn.testing.conformance import BackendConformance
from cairn.testing.faulty import FaultyBackend
from cairn.testing.memory import MemoryBackend


def transient(message: str = "connection reset") -> StorageError:
    error = StorageError(message)
    error.transient = True
    return error


# -- locations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("/srv/repo", LocalLocation("/srv/repo")),
        ("local:/srv/repo", LocalLocation("/srv/repo")),
        ("relative/repo", LocalLocation("relative/repo")),
        ("sftp:nas:/srv/repo", SftpLocation("nas", "/srv/repo")),
        ("sftp:backup@nas:/srv/repo", SftpLocation("nas", "/srv/repo", "backup")),
        ("sftp:backup@nas:repo", SftpLocation("nas", "repo", "backup")),
        ("sftp:[::1]:/srv", SftpLocation("::1", "/srv")),
        ("sftp://backup@nas:2222/srv/repo", SftpLocation("nas", "/srv/repo", "backup", 2222)),
        ("sftp://nas/srv/repo", SftpLocation("nas", "/srv/repo")),
        ("s3:https://s3.example.com/bucket/a/b", S3Location("https://s3.example.com", "bucket", "a/b/")),
        ("s3:http://127.0.0.1:9000/bucket", S3Location("http://127.0.0.1:9000", "bucket", "")),
        ("s3:s3.amazonaws.com/bucket/x/", S3Location("https://s3.amazonaws.com", "bucket", "x/")),
        ("s3:http://h/b/p?region=eu-west-1&addressing=virtual", S3Location("http://h", "b", "p/", "eu-west-1", "virtual")),
        ("rclone:b2:bucket/repo", RcloneLocation("b2:bucket/repo")),
        ("rclone::local:/srv/repo", RcloneLocation(":local:/srv/repo")),
    ],
)
def test_locations_parse(text: str, expected: object) -> None:
    assert parse_location(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("local:", "names no folder"),
        ("ftp://host/x", "unknown repository location scheme ftp:"),
        ("sftp:nas", "expected sftp:"),
        ("sftp://nas", "expected sftp://"),
        ("sftp://nas:99999/x", "port"),
        ("s3:https://endpoint/", "names no bucket"),
        ("s3:http://h/b?colour=red", "unknown option 'colour'"),
        ("s3:http://h/b?addressing=dns", "addressing must be one of"),
        ("rclone:remote", "expected rclone:REMOTE:PATH"),
    ],
)
def test_bad_locations_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_location(text)


def test_a_windows_drive_letter_is_not_a_scheme() -> None:
    assert parse_location("C:\\backup") == LocalLocation("C:\\backup")


# -- retry ----------------------------------------------------------------------------------------


class Clock:
    """Fake time: sleeping advances it, so backoff tests take no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def retrying(inner: Backend, policy: RetryPolicy | None = None) -> tuple[RetryBackend, Clock]:
    clock = Clock()
    return RetryBackend(inner, policy or RetryPolicy(), sleep=clock.sleep, clock=clock, rng=random.Random(1)), clock


class TestRetryAndLimitConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        yield RetryBackend(ConnectionLimit(MemoryBackend(), 3))


def test_transient_failures_are_retried_with_growing_jittered_delays() -> None:
    faulty = FaultyBackend(MemoryBackend())
    faulty.fail("store", transient(), times=5)
    backend, clock = retrying(faulty, RetryPolicy(attempts=10, base_delay=1, max_delay=8))
    backend.store("config", b"x")
    assert faulty.inner.load("config") == b"x"
    assert faulty.calls["store"] == 6
    caps = [1, 2, 4, 8, 8]
    assert len(clock.sleeps) == 5
    for delay, cap in zip(clock.sleeps, caps):
        assert cap / 2 <= delay <= cap  # "equal jitter": the upper half of the exponential step
    assert len(set(clock.sleeps)) == 5


def test_permanent_failures_are_raised_at_once() -> None:
    faulty = FaultyBackend(MemoryBackend())
    faulty.fail("store", StorageFull, times=None)
    backend, clock = retrying(faulty)
    with pytest.raises(StorageFull):
        backend.store("config", b"x")
    with pytest.raises(ObjectMissing):
        backend.load("absent")
    assert faulty.calls["store"] == 1 and clock.sleeps == []


def test_gives_up_after_the_attempts_with_the_last_error() -> None:
    faulty = FaultyBackend(MemoryBackend())
    faulty.fail("load", transient("timed out"), times=None)
    backend, clock = retrying(faulty, RetryPolicy(attempts=4, base_delay=1, max_delay=100, budget=1000))
    with pytest.raises(StorageError, match=r"^timed out \(gave up after 4 tries in \d+ s\)$") as caught:
        backend.load("config")
    assert isinstance(caught.value.__cause__, StorageError)
    assert faulty.calls["load"] == 4 and len(clock.sleeps) == 3


def test_gives_up_when_the_time_budget_is_spent() -> None:
    faulty = FaultyBackend(MemoryBackend())
    faulty.fail("stat", transient(), times=None)
    backend, clock = retrying(faulty, RetryPolicy(attempts=100, base_delay=1, max_delay=4, budget=10))
    with pytest.raises(StorageError, match="gave up"):
        backend.stat("config")
    assert clock.now <= 10
    assert 3 <= faulty.calls["stat"] <= 8


def test_retry_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_RETRY_TIME", "2")
    policy = RetryPolicy.from_env()
    assert policy.budget == 2 and policy.max_delay == 0.5
    monkeypatch.setenv("CAIRN_RETRY_TIME", "soon")
    assert RetryPolicy.from_env() == RetryPolicy()


class LosesAnswers(MemoryBackend):
    """Deletes, then loses the answer, as when a connection drops right after the request."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def delete(self, name: str) -> None:
        super().delete(name)
        if self.lost == 0:
            self.lost += 1
            raise transient("connection reset after the request was sent")


def test_a_retried_delete_whose_first_try_worked_succeeds() -> None:
    inner = LosesAnswers()
    inner.store("locks/a", b"x")
    backend, _ = retrying(inner)
    backend.delete("locks/a")
    assert list(backend.list()) == []
    with pytest.raises(ObjectMissing):  # a delete of something never there still says so
        backend.delete("locks/a")


class BreaksMidList(MemoryBackend):
    def __init__(self, breaks: int) -> None:
        super().__init__()
        self.breaks = breaks

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for count, info in enumerate(super().list(prefix)):
            if count == 2 and self.breaks:
                self.breaks -= 1
                raise transient("connection reset while listing")
            yield info


def test_a_list_broken_half_way_restarts_without_repeating_names() -> None:
    inner = BreaksMidList(breaks=2)
    for i in range(6):
        inner.store(f"data/{i}", b"x")
    backend, clock = retrying(inner)
    seen = [info.name for info in backend.list("data/")]
    assert sorted(seen) == [f"data/{i}" for i in range(6)]
    assert len(clock.sleeps) == 2


# -- connection limit -------------------------------------------------------------------------


class Slow(MemoryBackend):
    """Counts how many calls run at once; each call waits (up to a second) for `crowd` to be running,
    so the peak reaches the limit however slowly a loaded machine starts the threads."""

    def __init__(self, crowd: int = 3) -> None:
        super().__init__()
        self.crowd = crowd
        self.running = 0
        self.peak = 0
        self.guard = threading.Condition()

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self.guard:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.guard.notify_all()
            self.guard.wait_for(lambda: self.running >= self.crowd, timeout=1.0)
        time.sleep(0.01)
        with self.guard:
            self.running -= 1
        return super().load(name, offset, length)


def test_connection_limit_bounds_parallel_calls() -> None:
    inner = Slow()
    inner.store("config", b"x")
    backend = ConnectionLimit(inner, 3)
    assert backend.properties.connections == 3
    threads = [threading.Thread(target=backend.load, args=("config",)) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert inner.peak == 3


def test_a_caller_may_load_while_listing_with_one_connection() -> None:
    inner = MemoryBackend()
    for i in range(3):
        inner.store(f"index/{i}", b"%d" % i)
    backend = ConnectionLimit(inner, 1)
    assert sorted(backend.load(info.name) for info in backend.list("index/")) == [b"0", b"1", b"2"]


# -- the stack -----------------------------------------------------------------------------------


def test_open_storage_stacks_cache_over_retry_over_limit_over_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = open_storage("s3:http://127.0.0.1:9/bucket/prefix")
    assert isinstance(cached, CacheBackend)
    assert isinstance(open_storage("s3:http://127.0.0.1:9/bucket/prefix", cache=False), RetryBackend)
    backend = cached.inner
    assert isinstance(backend, RetryBackend)
    assert isinstance(backend.inner, ConnectionLimit)
    assert type(backend.inner.inner).__name__ == "S3Backend"
    assert backend.properties.connections == 8
    assert backend.properties.location == "s3:http://127.0.0.1:9/bucket/prefix"
    monkeypatch.setenv("CAIRN_CONNECTIONS", "3")
    assert open_storage("s3:http://127.0.0.1:9/bucket").properties.connections == 3
    assert open_storage("s3:http://127.0.0.1:9/bucket", connections=5).properties.connections == 5
    monkeypatch.setenv("CAIRN_CONNECTIONS", "0")
    with pytest.raises(UsageError, match="CAIRN_CONNECTIONS"):
        open_storage("s3:http://127.0.0.1:9/bucket")


def test_local_folders_are_not_wrapped(tmp_path: object) -> None:
    assert isinstance(open_storage(f"local:{tmp_path}"), LocalBackend)
