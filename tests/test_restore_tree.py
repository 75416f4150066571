"""A tree with every kind of entry, backed up and restored, then compared by rsync.

The comparator is independent of cairn: `rsync -naAXHc --itemize-changes --numeric-ids` checks
content by checksum, types, modes, owners, mtimes, ACLs, xattrs, hard-link groups and device
numbers; atime (which rsync ignores) and the 4 GiB sparse file's disk use are checked apart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cairn.ops.backup import BackupOptions, backup
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from test_restore_support import (  # noqa: F401 - world_tmp is a fixture
    AS_ROOT, DEEP, NOBODY, NOT_ROOT_REASON, GiB, MiB, as_user, inside, make_every_kind, reference_snapshot,
    rsync_differences, run, times, world_tmp,
)
from conftest import FAST_KDF

pytestmark = [pytest.mark.root, pytest.mark.skipif(not AS_ROOT, reason=NOT_ROOT_REASON)]


SOURCE_TIMES: dict[bytes, tuple[int | None, int]] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, Path, dict[str, str]]:
    """One source tree, stored once by the reference writer and once by the archiver.

    Its times are recorded before anything reads it: each rsync comparison reads the source
    too, which moves atimes."""
    base = tmp_path_factory.mktemp("every-kind")
    src = base / "src"
    make_every_kind(src)
    expected_times = times(src)
    SOURCE_TIMES.update({os.path.normpath(bytes(src) + b"/" + k): v for k, v in expected_times.items()})
    repo = Repository.init(LocalBackend(base / "repo"), b"pw", FAST_KDF)
    snaps = {"reference": reference_snapshot(repo, src).hex()}
    assert times(src) == expected_times, "storing the tree changed its times"
    result = backup(repo, BackupOptions([str(src)]))
    snaps["archiver"] = result.snapshot_id.hex() if result.snapshot_id else ""
    snaps["archiver-skipped"] = repr(result.skipped)
    assert times(src) == expected_times, "the backup changed the source's times"
    return repo, src, snaps


def check_identical(src: Path, dst: Path) -> None:
    got = times(dst)
    expected = {k: SOURCE_TIMES[os.path.normpath(bytes(src) + b"/" + k)] for k in times(src)}
    assert {k: v for k, v in got.items() if v != expected.get(k)} == {}, "atime/mtime ns differ"
    assert rsync_differences(src, dst) == []


@pytest.mark.parametrize("writer", ["reference", "archiver"])
def test_every_kind_of_entry_comes_back_identical(world: tuple[Repository, Path, dict[str, str]],
                                                  tmp_path: Path, writer: str) -> None:
    repo, src, snaps = world
    if writer == "archiver":
        assert snaps["archiver-skipped"] == "[]", "the archiver left entries out"
    target = tmp_path / "out"
    started = time.monotonic()
    done = restore(repo, RestoreOptions(snaps[writer], str(target)))
    elapsed = time.monotonic() - started
    dst = inside(target, src)
    check_identical(src, dst)
    sparse = os.stat(dst / "files" / "sparse.img")
    assert sparse.st_size == 4 * GiB and sparse.st_blocks * 512 < 8 * MiB, sparse.st_blocks
    assert (done.errors, done.skipped, done.warnings) == ([], [], [])
    assert done.links == 3 and done.specials == 8  # 5 symlinks, a FIFO, two devices
    assert os.readlink(bytes(dst) + b"/files/binary-target") == b"target-\xff\xfe\x80"
    assert elapsed < 30, f"restoring took {elapsed:.1f}s"
    print(f"\n{writer}: restore {elapsed:.2f}s, sparse file uses {sparse.st_blocks * 512} bytes on disk")


@pytest.mark.parametrize("writer", ["reference", "archiver"])
def test_a_folder_inside_the_snapshot_restores_identically(world: tuple[Repository, Path, dict[str, str]],
                                                           tmp_path: Path, writer: str) -> None:
    repo, src, snaps = world
    if writer == "archiver":
        assert snaps["archiver-skipped"] == "[]", "the archiver left entries out"
    for sub in ("links", "files", "deep/level-000"):
        target = tmp_path / sub.replace("/", "_")
        restore(repo, RestoreOptions(f"{snaps[writer]}:{src}/{sub}", str(target)))
        check_identical(src / sub, target)


def test_a_target_that_gives_new_entries_a_group_and_an_acl_still_gets_exact_copies(
    world: tuple[Repository, Path, dict[str, str]], tmp_path: Path
) -> None:
    """New files and folders in a set-group-ID folder with a default ACL get that group and an
    inherited ACL by themselves: the restore must not take them for already right (it skips a
    chown, a listing of attributes and a chmod only where the folder shows nothing to inherit)."""
    repo, src, snaps = world
    for sub in ("files", "links"):
        target = tmp_path / sub
        target.mkdir()
        os.chown(target, 4321, 8765)
        os.chmod(target, 0o2777)
        run("setfacl", "-d", "-m", "u:1234:rwx,g:5678:r", target)
        restore(repo, RestoreOptions(f"{snaps['reference']}:{src}/{sub}", str(target)))
        check_identical(src / sub, target)


def test_includes_restore_what_they_name_and_the_folders_leading_to_it(
    world: tuple[Repository, Path, dict[str, str]], tmp_path: Path
) -> None:
    repo, src, snaps = world
    target = tmp_path / "out"
    done = restore(repo, RestoreOptions(snaps["reference"], str(target), include=[f"{src}/links/**", "acl-dir"]))
    dst = inside(target, src)
    assert sorted(os.listdir(dst)) == ["acl-dir", "links"]
    check_identical(src / "links", dst / "links")
    check_identical(src / "acl-dir", dst / "acl-dir")
    assert done.links == 2  # the third name of "three" (files/three-3) was not asked for

    # a single file deep down: only its folders are created, each with its metadata
    target = tmp_path / "deep"
    restore(repo, RestoreOptions(f"{snaps['reference']}:{src}/deep", str(target), include=["bottom.txt"]))
    bottom = target.joinpath(*[f"level-{i:03d}" for i in range(DEEP)], "bottom.txt")
    check_identical(src / "deep", target)
    assert bottom.read_bytes() == b"100 folders down"


def test_excludes_leave_out_what_they_name(world: tuple[Repository, Path, dict[str, str]], tmp_path: Path) -> None:
    repo, src, snaps = world
    target = tmp_path / "out"
    restore(repo, RestoreOptions(f"{snaps['reference']}:{src}", str(target), exclude=["*.img", "/**/deep", "b"]))
    assert not (target / "files" / "sparse.img").exists() and not (target / "deep").exists()
    assert sorted(os.listdir(target / "links")) == ["a", "to-folder"]
    assert (target / "files" / "big.bin").stat().st_size == 3 * MiB + 17


def test_a_normal_user_restores_everything_but_owners_and_devices(world_tmp: Path) -> None:
    """As nobody: one note about owners, a warning per device node and root-only attribute, and
    everything else (modes with setuid, times, ACLs, user xattrs, links, holes) exact."""
    src = world_tmp / "src"
    make_every_kind(src, sparse_size=64 * MiB)
    repo_path = world_tmp / "repo"
    repo = Repository.init(LocalBackend(repo_path), b"pw", FAST_KDF)
    snap = reference_snapshot(repo, src).hex()
    run("chmod", "-R", "a+rwX", repo_path)
    target = world_tmp / "out"

    def restore_as_nobody() -> object:
        mine = Repository.open(LocalBackend(repo_path), b"pw")
        return restore(mine, RestoreOptions(f"{snap}:{src}", str(target)))

    done = as_user(restore_as_nobody)
    assert done.notes == ["not running as root: owners are not restored (files belong to you)"]
    assert sorted(done.warnings) == [
        ("files/small.txt", "extended attribute trusted.cairn not restored: Operation not permitted"),
        ("specials/loop-like", "device node not created: only root can create device nodes"),
        ("specials/null-like", "device node not created: only root can create device nodes"),
    ]
    assert (done.errors, done.skipped) == ([], [])
    assert {p.stat().st_uid for p in target.rglob("*") if not p.is_symlink()} == {NOBODY}
    differences = run("rsync", "-naAXHc", "--no-owner", "--no-group", "--itemize-changes", "--numeric-ids",
                      f"{src}/", f"{target}/").splitlines()
    assert sorted(differences) == [".f........x files/small.txt", "cD+++++++++ specials/loop-like",
                                   "cD+++++++++ specials/null-like"]
