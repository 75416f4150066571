"""Storage backends: the shared conformance suite, then what only a real disk can show."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import cairn.storage.local
from cairn.errors import ObjectMissing, StorageError, StorageFull, StorageReadOnly
from cairn.storage.local import TEMP_PREFIX, LocalBackend
from cairn.testing.conformance import BackendConformance, names, pattern
from cairn.testing.faulty import FaultyBackend
from cairn.testing.memory import MemoryBackend

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounts tmpfs and loop ext4 filesystems: needs root"
)


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    def backend(self) -> Iterator[MemoryBackend]:
        yield MemoryBackend()


class TestLocalBackend(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[LocalBackend]:
        (tmp_path / "repo").mkdir()  # an empty repository folder; a missing one is an error
        yield LocalBackend(tmp_path / "repo")


class TestFaultyBackendWithoutFaults(BackendConformance):
    @pytest.fixture
    def backend(self) -> Iterator[FaultyBackend]:
        yield FaultyBackend(MemoryBackend())


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# -- local folder specifics ---------------------------------------------------------------------


def test_object_names_are_file_paths(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.store("data/ab/ab12", b"payload")
    assert (tmp_path / "repo" / "data" / "ab" / "ab12").read_bytes() == b"payload"
    assert backend.properties.location == str(tmp_path / "repo")
    assert temporaries(tmp_path) == []


def test_list_ignores_foreign_and_hidden_files(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.store("data/00/obj", b"x")
    (tmp_path / ".DS_Store").write_bytes(b"finder")
    (tmp_path / "Thumbs.db").write_bytes(b"windows")
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "lost+found" / "#1234").write_bytes(b"fsck")
    (tmp_path / "data" / "00" / f"{TEMP_PREFIX}abcdef").write_bytes(b"half")
    assert names(backend.list()) == {"data/00/obj"}


def test_list_scans_only_the_prefix_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(tmp_path)
    for name in ("keys/k1", "data/ab/x", "data/cd/y", "snapshots/s"):
        backend.store(name, b"x")
    scanned: list[str] = []
    real_scandir = os.scandir

    def recording_scandir(path):  # type: ignore[no-untyped-def]
        scanned.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    assert names(backend.list("data/")) == {"data/ab/x", "data/cd/y"}
    assert sorted(scanned) == ["data", "data/ab", "data/cd"]


def test_missing_root_is_not_an_empty_repository(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "unmounted-drive")
    with pytest.raises(ObjectMissing):
        backend.load("config")
    with pytest.raises(StorageError, match="unmounted-drive does not exist"):
        list(backend.list("snapshots/"))


CRASH_BEFORE_RENAME = """
import os, sys
from cairn.storage.local import LocalBackend

class DiesBeforeRename(LocalBackend):
    def _commit(self, temp, path):
        os._exit(9)  # the process is killed once the new content is durable but not yet visible

DiesBeforeRename(sys.argv[1]).store("config", b"new content" * 1000)
"""


def test_killed_writer_leaves_old_content_and_a_cleanable_temporary(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.store("config", b"old content")
    source_root = str(Path(cairn.storage.local.__file__).parents[2])  # the child imports this cairn
    env = dict(os.environ, PYTHONPATH=source_root)
    done = subprocess.run([sys.executable, "-c", CRASH_BEFORE_RENAME, str(tmp_path)], env=env)
    assert done.returncode == 9
    assert backend.load("config") == b"old content"
    assert names(backend.list()) == {"config"}
    assert len(temporaries(tmp_path)) == 1  # the killed writer's leftover, invisible to list
    assert backend.remove_stale_temporaries(older_than_seconds=3600) == 0  # could be a live writer
    assert backend.remove_stale_temporaries(older_than_seconds=0) == 1
    assert temporaries(tmp_path) == []
    assert backend.load("config") == b"old content"


def test_failed_rename_cleans_up_and_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend(tmp_path)
    backend.store("data/00/obj", b"old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError) as caught:
        backend.store("data/00/obj", b"new")
    assert str(caught.value) == f"cannot write data/00/obj in {tmp_path}: Input/output error"
    assert isinstance(caught.value.__cause__, OSError)
    monkeypatch.undo()
    assert backend.load("data/00/obj") == b"old"
    assert temporaries(tmp_path) == []


# -- real filesystems that run out of space or refuse writes (root only) ------------------------


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


class Mounted:
    """A small filesystem mounted for one test, unmounted (and its loop device freed) after."""

    def __init__(self, kind: str, base: Path) -> None:
        self.kind = kind
        self.path = base / "mnt"
        self.image = base / "fs.img"
        self.path.mkdir()
        if kind == "tmpfs":
            run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", self.path)
        else:
            run("truncate", "-s", "8M", self.image)
            run("mkfs.ext4", "-q", "-F", self.image)
            run("mount", "-o", "loop", self.image, self.path)

    def make_read_only(self) -> None:
        if self.kind == "tmpfs":
            run("mount", "-o", "remount,ro", self.path)
        else:  # a fresh read-only mount of the image, as when a drive is attached read-only
            run("umount", self.path)
            run("mount", "-o", "loop,ro", self.image, self.path)

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mounted]:
    mounted = Mounted(request.param, tmp_path)
    try:
        yield mounted
    finally:
        mounted.unmount()


@pytest.mark.root
@needs_root
def test_full_disk_raises_storage_full_and_keeps_what_was_stored(small_fs: Mounted) -> None:
    root = small_fs.path / "repo"
    backend = LocalBackend(root)
    stored: dict[str, bytes] = {}
    with pytest.raises(StorageFull) as caught:
        for i in range(1000):  # far more than fits: 100 MB into at most 8 MiB
            name = f"data/{i:02x}/obj{i}"
            data = pattern(100_000, seed=i)
            backend.store(name, data)
            stored[name] = data
    failed = f"data/{len(stored):02x}/obj{len(stored)}"
    assert str(caught.value) == f"no space left on {root} while writing {failed}"
    assert len(stored) >= 5
    for name, data in stored.items():
        assert backend.load(name) == data
    assert names(backend.list()) == set(stored)
    assert temporaries(small_fs.path) == []
    # Freeing space is enough to write again: nothing half-done stands in the way.
    for name in list(stored)[:3]:
        backend.delete(name)
    backend.store("config", pattern(100_000))
    assert backend.load("config") == pattern(100_000)


@pytest.mark.root
@needs_root
def test_object_larger_than_the_free_space(small_fs: Mounted) -> None:
    backend = LocalBackend(small_fs.path)
    backend.store("config", b"small")
    with pytest.raises(StorageFull) as caught:
        backend.store("data/big", pattern(9 * 1024 * 1024))
    assert str(caught.value) == f"no space left on {small_fs.path} while writing data/big"
    assert names(backend.list()) == {"config"}
    assert temporaries(small_fs.path) == []


@pytest.mark.root
@needs_root
def test_read_only_mount_raises_storage_read_only(small_fs: Mounted) -> None:
    backend = LocalBackend(small_fs.path)
    backend.store("data/00/obj", b"kept")
    small_fs.make_read_only()
    for name in ("data/00/obj", "data/00/new", "data/01/new"):
        with pytest.raises(StorageReadOnly) as caught:
            backend.store(name, b"x")
        assert str(caught.value) == f"{small_fs.path} is read-only: cannot write {name}"
    with pytest.raises(StorageReadOnly):
        backend.delete("data/00/obj")
    assert backend.load("data/00/obj") == b"kept"
    assert names(backend.list()) == {"data/00/obj"}

