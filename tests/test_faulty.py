"""Each fault FaultyBackend injects does what a test relying on it expects."""

from __future__ import annotations

import pytest

from cairn.errors import ObjectMissing, StorageError, StorageFull
from cairn.testing.faulty import FaultyBackend, SimulatedCrash
from cairn.testing.memory import MemoryBackend


@pytest.fixture
def faulty() -> FaultyBackend:
    return FaultyBackend(MemoryBackend())


def test_fails_only_the_nth_matching_store(faulty: FaultyBackend) -> None:
    faulty.fail("store", StorageFull, prefix="data/", nth=3)
    faulty.store("data/1", b"a")
    faulty.store("index/1", b"not counted: other prefix")
    faulty.store("data/2", b"b")
    with pytest.raises(StorageFull, match="injected fault: store data/3"):
        faulty.store("data/3", b"c")
    faulty.store("data/4", b"d")
    assert {i.name for i in faulty.inner.list()} == {"data/1", "index/1", "data/2", "data/4"}


def test_fails_every_store_under_a_prefix(faulty: FaultyBackend) -> None:
    faulty.fail("store", StorageError("disk on fire"), prefix="snapshots/", times=None)
    for _ in range(3):
        with pytest.raises(StorageError, match="disk on fire"):
            faulty.store("snapshots/s", b"x")
    faulty.store("data/ok", b"x")
    assert [i.name for i in faulty.list()] == ["data/ok"]


def test_fails_other_methods(faulty: FaultyBackend) -> None:
    faulty.store("data/x", b"x")
    faulty.fail("load", ObjectMissing, prefix="data/x")
    faulty.fail("list", StorageError, prefix="data/")
    with pytest.raises(ObjectMissing):
        faulty.load("data/x")
    with pytest.raises(StorageError):
        list(faulty.list("data/"))
    assert faulty.load("data/x") == b"x"  # times=1 by default: the next call goes through


def test_truncates_loaded_data(faulty: FaultyBackend) -> None:
    faulty.store("index/i", b"0123456789")
    faulty.corrupt("index/", truncate=3)
    assert faulty.load("index/i") == b"0123456"
    assert faulty.load("index/i", 2, 4) == b"2"
    assert faulty.inner.load("index/i") == b"0123456789"  # the stored object is untouched


def test_flips_a_bit_of_the_object(faulty: FaultyBackend) -> None:
    faulty.store("data/p", bytes(16))
    faulty.corrupt("data/p", flip_bit=8 * 10 + 2)  # byte 10, bit 2
    whole = faulty.load("data/p")
    assert whole[10] == 0b100 and whole[:10] + whole[11:] == bytes(15)
    assert faulty.load("data/p", 8, 4) == bytes([0, 0, 0b100, 0])  # seen through a range too
    assert faulty.load("data/p", 0, 8) == bytes(8)  # a range not covering it reads clean


def test_corruption_can_be_limited(faulty: FaultyBackend) -> None:
    faulty.store("data/p", bytes(4))
    faulty.corrupt("data/p", flip_bit=0, nth=2, times=1)
    assert faulty.load("data/p") == bytes(4)
    assert faulty.load("data/p") == b"\x01\0\0\0"
    assert faulty.load("data/p") == bytes(4)


def test_crash_during_store_leaves_the_object_absent_and_stops_everything(
    faulty: FaultyBackend,
) -> None:
    faulty.store("snapshots/old", b"old")
    faulty.crash("store", prefix="snapshots/")
    with pytest.raises(SimulatedCrash):
        faulty.store("snapshots/old", b"new")
    with pytest.raises(SimulatedCrash):
        faulty.load("snapshots/old")  # nothing runs after a crash
    assert faulty.crashed
    assert faulty.inner.load("snapshots/old") == b"old"  # what the next process finds


def test_crash_after_store_leaves_the_object_written(faulty: FaultyBackend) -> None:
    faulty.crash("store", nth=2, after=True)
    faulty.store("data/1", b"one")
    with pytest.raises(SimulatedCrash):
        faulty.store("data/2", b"two")
    assert faulty.inner.load("data/2") == b"two"


def test_a_crash_is_not_an_ordinary_exception(faulty: FaultyBackend) -> None:
    faulty.crash("delete")
    faulty.store("data/x", b"x")
    with pytest.raises(SimulatedCrash):
        try:
            faulty.delete("data/x")
        except Exception:  # noqa: BLE001 - code under test must not be able to swallow it
            pytest.fail("SimulatedCrash was caught by `except Exception`")


def test_counts_and_logs_calls(faulty: FaultyBackend) -> None:
    faulty.fail("stat", StorageError)
    faulty.store("data/x", b"x")
    faulty.load("data/x", 0, 1)
    with pytest.raises(StorageError):
        faulty.stat("data/x")
    list(faulty.list("data/"))
    faulty.delete("data/x")
    faulty.close()
    assert faulty.calls == {"store": 1, "load": 1, "stat": 1, "list": 1, "delete": 1, "close": 1}
    assert faulty.log == [
        ("store", "data/x"), ("load", "data/x"), ("stat", "data/x"),
        ("list", "data/"), ("delete", "data/x"),
    ]  # fmt: skip


def test_clear_removes_faults_and_revives(faulty: FaultyBackend) -> None:
    faulty.fail("store", StorageError, times=None)
    faulty.crash("load")
    with pytest.raises(StorageError):
        faulty.store("data/x", b"x")
    with pytest.raises(SimulatedCrash):
        faulty.load("data/x")
    faulty.clear()
    faulty.store("data/x", b"x")
    assert faulty.load("data/x") == b"x"


def test_rejects_nonsense_rules(faulty: FaultyBackend) -> None:
    with pytest.raises(ValueError):
        faulty.fail("upload", StorageError)
    with pytest.raises(ValueError):
        faulty.fail("store", StorageError, nth=0)
    with pytest.raises(ValueError):
        faulty.corrupt(flip_bit=-1)
