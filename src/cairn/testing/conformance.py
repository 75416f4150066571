"""The one test suite every storage backend must pass.

Subclass it in a test module and provide a ``backend`` fixture that yields an empty backend::

    class TestLocal(BackendConformance):
        @pytest.fixture
        def backend(self, tmp_path):
            yield LocalBackend(tmp_path / "repo")

Each test states a clause of the contract in `cairn.storage.base` from the caller's side, so a
new backend (SFTP, S3, rclone) is done when this suite is green on it.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import ObjectMissing, StorageError
from cairn.storage.base import MAX_OBJECT_SIZE, Backend, ObjectInfo

MiB = 1024 * 1024

INVALID_NAMES = [
    "", "/", "/data/x", "data/", "data//x", "Data/x", "../x", "data/../x", ".tmp-x",
    "data/.hidden", "a b", "caf\u00e9", "x\\y", "x" * 256,
]  # fmt: skip

TREE = {
    "config": b"config",
    "keys/k1": b"key one",
    "data/ab/ab01": b"1" * 10,
    "data/ab/ab02": b"2" * 20,
    "data/cd/cd01": b"3" * 30,
    "index/i1": b"index",
    "snapshots/s1": b"",
}


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes where every position differs from its neighbours, so an offset bug shows."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


def names(infos: Iterator[ObjectInfo]) -> set[str]:
    return {info.name for info in infos}


class BackendConformance:
    """The storage contract as tests; subclasses provide an empty ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        raise NotImplementedError("a subclass must provide a `backend` fixture")

    def fill(self, backend: Backend) -> None:
        for name, data in TREE.items():
            backend.store(name, data)

    def test_is_a_backend(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert backend.properties.location
        assert backend.properties.connections >= 1

    @pytest.mark.parametrize("size", [0, 1, 1000, 3 * MiB + 7])
    def test_round_trip(self, backend: Backend, size: int) -> None:
        data = pattern(size)
        backend.store("data/00/obj", data)
        assert backend.load("data/00/obj") == data
        assert backend.stat("data/00/obj") == ObjectInfo("data/00/obj", size)

    def test_memoryview_is_accepted_and_copied(self, backend: Backend) -> None:
        buffer = bytearray(pattern(5000))
        backend.store("data/mv", memoryview(buffer)[1000:3000])
        expected = bytes(buffer[1000:3000])
        buffer[:] = b"\0" * len(buffer)  # the caller reuses its buffer after store returns
        assert backend.load("data/mv") == expected

    def test_load_range(self, backend: Backend) -> None:
        data = pattern(10_000)
        backend.store("data/r", data)
        assert backend.load("data/r", 0, 10) == data[:10]
        assert backend.load("data/r", 1234, 4321) == data[1234:5555]
        assert backend.load("data/r", 9990, 10) == data[9990:]
        assert backend.load("data/r", 9990) == data[9990:]
        assert backend.load("data/r", 500, 0) == b""
        assert backend.load("data/r", 10_000, 0) == b""
        assert backend.load("data/r", 10_000) == b""

    @pytest.mark.parametrize("offset,length", [(9999, 2), (0, 10_001), (10_001, 0), (10_005, None)])
    def test_range_past_the_end_raises(
        self, backend: Backend, offset: int, length: int | None
    ) -> None:
        backend.store("data/r", pattern(10_000))
        with pytest.raises(StorageError) as caught:
            backend.load("data/r", offset, length)
        assert not isinstance(caught.value, ObjectMissing)
        assert "data/r" in str(caught.value)

    def test_range_of_empty_object(self, backend: Backend) -> None:
        backend.store("data/empty", b"")
        assert backend.load("data/empty", 0, 0) == b""
        with pytest.raises(StorageError):
            backend.load("data/empty", 0, 1)

    def test_missing_object(self, backend: Backend) -> None:
        backend.store("data/other", b"x")
        for call in (backend.load, backend.stat, backend.delete):
            with pytest.raises(ObjectMissing) as caught:
                call("data/absent")
            assert "data/absent" in str(caught.value)
        with pytest.raises(ObjectMissing):
            backend.load("nothing/here/at/all", 0, 1)

    def test_overwrite_replaces(self, backend: Backend) -> None:
        backend.store("config", pattern(5000, seed=1))
        backend.store("config", b"short")
        assert backend.load("config") == b"short"
        assert backend.stat("config").size == 5
        assert [info.name for info in backend.list("config")] == ["config"]

    def test_list_everything(self, backend: Backend) -> None:
        assert list(backend.list()) == []
        self.fill(backend)
        assert sorted(backend.list(""), key=lambda i: i.name) == sorted(
            (ObjectInfo(n, len(d)) for n, d in TREE.items()), key=lambda i: i.name
        )

    def test_list_prefix_selects_its_subtree(self, backend: Backend) -> None:
        self.fill(backend)
        assert names(backend.list("data/")) == {"data/ab/ab01", "data/ab/ab02", "data/cd/cd01"}
        assert names(backend.list("data/ab/")) == {"data/ab/ab01", "data/ab/ab02"}
        assert names(backend.list("data/c")) == {"data/cd/cd01"}
        assert names(backend.list("data/ab/ab02")) == {"data/ab/ab02"}
        assert names(backend.list("dat")) == names(backend.list("data/"))
        assert names(backend.list("keys/")) == {"keys/k1"}
        assert list(backend.list("locks/")) == []
        assert list(backend.list("data/zz/")) == []
        assert list(backend.list("../")) == []

    def test_delete(self, backend: Backend) -> None:
        self.fill(backend)
        backend.delete("data/ab/ab01")
        with pytest.raises(ObjectMissing):
            backend.stat("data/ab/ab01")
        assert names(backend.list("data/")) == {"data/ab/ab02", "data/cd/cd01"}
        assert backend.load("data/ab/ab02") == TREE["data/ab/ab02"]
        backend.store("data/ab/ab01", b"again")  # a deleted name can be written again
        assert backend.load("data/ab/ab01") == b"again"

    @pytest.mark.parametrize("bad", INVALID_NAMES)
    def test_invalid_names_are_refused(self, backend: Backend, bad: str) -> None:
        with pytest.raises(ValueError):
            backend.store(bad, b"x")
        for call in (backend.load, backend.stat, backend.delete):
            with pytest.raises(ValueError):
                call(bad)
        assert list(backend.list()) == []

    def test_concurrent_stores(self, backend: Backend) -> None:
        errors: list[BaseException] = []

        def writer(worker: int) -> None:
            try:
                for i in range(10):
                    backend.store(f"data/{worker:02x}/{i:04x}", pattern(1000 + i, seed=worker))
                    backend.store("data/shared", pattern(50_000, seed=worker))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], [repr(error) for error in errors]
        for worker in range(8):
            for i in range(10):
                data = backend.load(f"data/{worker:02x}/{i:04x}")
                assert data == pattern(1000 + i, seed=worker)
        assert backend.load("data/shared") in {pattern(50_000, seed=w) for w in range(8)}
        assert len(list(backend.list("data/"))) == 81

    def test_list_never_shows_half_written_objects(self, backend: Backend) -> None:
        size = 4 * MiB
        expected = {f"data/big/{i}" for i in range(6)}
        done = threading.Event()

        def writer() -> None:
            try:
                for name in sorted(expected):
                    backend.store(name, pattern(size))
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        seen: list[ObjectInfo] = []
        while not done.is_set():
            seen.extend(backend.list("data/"))
        thread.join()
        seen.extend(backend.list("data/"))
        assert {info.name for info in seen} <= expected
        assert {info.size for info in seen} == {size}
        assert names(backend.list("")) == expected

    def test_oversize_object_is_refused(self, backend: Backend, tmp_path: Path) -> None:
        # A sparse file mapped into memory has the size without costing the memory or disk.
        sparse = tmp_path / "sparse"
        with open(sparse, "wb") as handle:
            handle.truncate(MAX_OBJECT_SIZE + 1)
        message = ""
        with open(sparse, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        with mapping:
            view = memoryview(mapping)
            try:
                backend.store("data/huge", view)
            except StorageError as exc:
                message = str(exc)  # keep no traceback: its frames would pin the mapping
            finally:
                view.release()
        assert "data/huge" in message, "an oversize object must raise StorageError"
        with pytest.raises(ObjectMissing):
            backend.stat("data/huge")
        assert list(backend.list()) == []

    def test_close(self, backend: Backend) -> None:
        backend.store("config", b"x")
        backend.close()


__all__ = ["BackendConformance", "INVALID_NAMES", "pattern"]
