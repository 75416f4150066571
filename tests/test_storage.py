"""Storage backends: the shared conformance suite, then what only a real disk can show."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import cairn.storage.local
from cairn.errors import ObjectMissing, StorageError, StorageFull, StorageReadOnly
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.check import CheckOptions, check
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo.repository import Repository
from cairn.storage.local import TEMP_PREFIX, LocalBackend
from cairn.testing.conformance import BackendConformance, names, pattern
from cairn.testing.faulty import FaultyBackend
from cairn.testing.memory import MemoryBackend
from conftest import FAST_KDF, PASSWORD
from servers import missing

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


# -- the local backend on the filesystems of external drives and servers (root only) ------------


class LoopFilesystem:
    """A filesystem of `kind` in an image file, mounted at ``base/mnt`` for one test class.

    XFS through the kernel's driver; FAT32 and exFAT through FUSE (Debian's fusefat and
    exfat-fuse), as these kernels have no vfat or exfat driver. The drivers differ from the
    kernel's, but what the backend relies on (rename over a file, fsync, names, sizes) is the
    filesystem's format, which is the same.
    """

    TOOLS = {
        "xfs": ("mkfs.xfs", "xfsprogs"),
        "fat32": ("fusefat", "fusefat"),
        "exfat": ("mount.exfat-fuse", "exfat-fuse"),
    }
    MOUNT_TYPE = {"xfs": "xfs", "fat32": "fuse.fusefat", "exfat": "fuseblk"}

    def __init__(self, kind: str, base: Path) -> None:
        self.kind = kind
        self.path = base / "mnt"
        self.image = base / "fs.img"
        self.log = base / "mount.log"
        self.loop: str | None = None
        self.path.mkdir()
        if kind == "xfs":
            run("truncate", "-s", "300M", self.image)  # the smallest XFS mkfs.xfs makes; sparse
            run("mkfs.xfs", "-q", "-f", self.image)
            run("mount", "-o", "loop", self.image, self.path)
        elif kind == "fat32":
            run("truncate", "-s", "96M", self.image)
            run("mkfs.vfat", "-F", "32", self.image)
            self._daemon("fusefat", "-o", "rw+", self.image, self.path)  # rw+: fusefat's write mode
        else:
            run("truncate", "-s", "96M", self.image)
            run("mkfs.exfat", self.image)
            self.loop = subprocess.run(
                ["losetup", "-f", "--show", str(self.image)], check=True, capture_output=True, text=True
            ).stdout.strip()  # exfat-fuse mounts block devices only
            self._daemon("mount.exfat-fuse", self.loop, self.path)
        mounted = [line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()
                   if line.split()[1] == str(self.path)]
        assert mounted == [self.MOUNT_TYPE[kind]], f"{self.path} is mounted as {mounted}"

    def _daemon(self, *args: str | Path) -> None:
        """Start a FUSE driver; it forks into the background, so its output goes to a file
        (a pipe would stay open as long as the daemon lives)."""
        with open(self.log, "ab") as log:
            done = subprocess.run([str(a) for a in args], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {self.log.read_text(errors='replace')[-2000:]}")

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        if self.loop is not None:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)


@pytest.fixture(scope="class")
def loop_filesystem(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopFilesystem]:
    kind = request.param
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {kind} filesystem needs root")
    tool, package = LoopFilesystem.TOOLS[kind]
    if shutil.which(tool) is None:
        missing(f"{tool} not installed (Debian: {package})")
    mounted = LoopFilesystem(kind, tmp_path_factory.mktemp(kind))
    try:
        yield mounted
    finally:
        mounted.unmount()


class OnLoopFilesystem(BackendConformance):
    """The conformance suite in a fresh folder of one mounted filesystem per class."""

    @pytest.fixture
    def backend(self, loop_filesystem: LoopFilesystem) -> Iterator[LocalBackend]:
        root = loop_filesystem.path / f"repo-{secrets.token_hex(4)}"
        root.mkdir()
        yield LocalBackend(root)
        shutil.rmtree(root)  # the next test's room
        assert temporaries(loop_filesystem.path) == []

    def test_a_repository_on_it_backs_up_checks_and_restores(
        self, backend: LocalBackend, tmp_path: Path, data: Path
    ) -> None:
        repo = Repository.init(backend, PASSWORD.encode(), FAST_KDF, pack_size=512 * 1024)
        saved = backup(repo, BackupOptions(paths=[str(data)]))
        reopened = Repository.open(LocalBackend(backend.location), PASSWORD.encode())
        assert check(reopened, CheckOptions(read_data=True)).errors == []
        restore(reopened, RestoreOptions(snapshot=saved.snapshot_id.hex(), target=str(tmp_path / "out")))
        restored = tmp_path / "out" / str(data).lstrip("/")
        assert (restored / "photo.raw").read_bytes() == (data / "photo.raw").read_bytes()
        assert (restored / "docs" / "letter.txt").read_text() == "Dear reader,\n" * 50


@pytest.mark.root
@pytest.mark.parametrize("loop_filesystem", ["xfs"], indirect=True, scope="class")
class TestLocalBackendOnXfs(OnLoopFilesystem):
    pass


@pytest.mark.root
@pytest.mark.parametrize("loop_filesystem", ["fat32"], indirect=True, scope="class")
class TestLocalBackendOnFat32(OnLoopFilesystem):
    pass


@pytest.mark.root
@pytest.mark.parametrize("loop_filesystem", ["exfat"], indirect=True, scope="class")
class TestLocalBackendOnExfat(OnLoopFilesystem):
    pass


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
    assert str(caught.value) == f"no space left on {root} while writing {failed}: {StorageFull.AFTERMATH}"
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
    assert str(caught.value) == f"no space left on {small_fs.path} while writing data/big: {StorageFull.AFTERMATH}"
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

