"""The full golden repository of format version 1 (tests/fixtures/golden-v1-full, made once by
tests/fixtures/make_golden_full.py) stays readable by the current code, the way a user reads it:
open with either password, list, restore files (every entry kind, every piece of metadata) and
the disk image (byte for byte), `check --read-data`, and let a later prune finish what the v1
prune left pending. The independent decoder of the same fixture is in test_golden.py, part (b);
its restatement of what the fixture holds is imported from there.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import CliRun
from test_golden import (
    ACL, BLOCKDEV, CHARDEV, FILE_NS, FULL, FULL_DISK, FULL_DISK_SIZE, FULL_FILES, FULL_IMAGE, FULL_SOURCE,
    FULL_TIME_NS, PASSWORDS, posix_acl, zstd,
)

from cairn.errors import WrongPassword
from cairn.ops.check import CheckOptions, check
from cairn.ops.image_restore import ImageRestoreOptions, image_restore
from cairn.ops.prune import PruneOptions, prune
from cairn.ops.restore import RestoreOptions, restore
from cairn.ops.unlock import UnlockOptions, unlock
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: device nodes and foreign owners")
PENDING_WARNING = "awaiting deletion by prune"


@pytest.fixture
def full_copy(tmp_path: Path) -> Path:
    """A copy: every command writes a lock, and the fixture must never change."""
    return Path(shutil.copytree(FULL, tmp_path / "golden-v1-full"))


def open_full(path: Path, password: bytes = PASSWORDS[0]) -> Repository:
    return Repository.open(LocalBackend(path), password)


@pytest.mark.parametrize("password", PASSWORDS)
def test_both_passwords_open_it_and_a_wrong_one_is_refused(full_copy: Path, password: bytes) -> None:
    repo = open_full(full_copy, password)
    assert repo.config.version == 1 and repo.config.pack_size == 4096
    assert (repo.config.chunker.min_size, repo.config.chunker.avg_size) == (512, 1024)
    assert [(k.host, k.user, k.kdf.iterations) for k in repo.list_keys()] == [("golden-host", "golden", 2)] * 2
    with pytest.raises(WrongPassword):
        open_full(full_copy, b"not golden")


def test_snapshots_list_with_their_fields(full_copy: Path, cli: CliRun) -> None:
    result = cli("-r", str(full_copy), "--json", "snapshots", env={"CAIRN_PASSWORD": PASSWORDS[0].decode()})
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(s["kind"], s["tags"]) for s in listed] == [("files", ["golden", "v1-full"]), ("image", ["disk"])]
    files, image = open_full(full_copy).list_snapshots()
    assert files.paths == [FULL_SOURCE] and files.time_ns == FULL_TIME_NS and files.host == "golden-host"
    assert files.original is not None and files.parent is not None  # retagged; its parent forgotten
    assert image.kind == "image" and image.paths == [FULL_IMAGE] and image.original is None
    assert image.summary["disk_size"] == FULL_DISK_SIZE and image.summary["table"] == "gpt"


def files_ref(path: Path, subpath: bytes = b"") -> str:
    """`ID:path` of the files snapshot ('latest' is the image, taken later)."""
    (snap,) = [s for s in open_full(path).list_snapshots() if s.kind == "files"]
    return f"{snap.id.hex()}:{(FULL_SOURCE + subpath).decode()}"


def lstat_all(root: Path) -> dict[bytes, os.stat_result]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, os.fsencode(root))] = os.lstat(path)
    return found


@needs_root
def test_files_restore_with_every_entry_kind_and_metadata(full_copy: Path, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    result = restore(open_full(full_copy), RestoreOptions(snapshot=files_ref(full_copy), target=str(target)))
    assert (result.errors, result.warnings, result.skipped) == ([], [], [])
    root = target  # a folder of the snapshot restores its content into the target
    found = lstat_all(root)
    assert found.keys() == FULL_FILES.keys()
    kinds = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK, "fifo": stat.S_ISFIFO,
             "chardev": stat.S_ISCHR, "blockdev": stat.S_ISBLK}
    for rel, want in FULL_FILES.items():
        st, path = found[rel], os.path.join(os.fsencode(root), rel)
        assert kinds[want["type"]](st.st_mode), rel
        assert (st.st_uid, st.st_gid) == want.get("owner", (0, 0)), rel
        assert st.st_mtime_ns == FILE_NS, rel
        if want["type"] != "symlink":  # (reading a link for the backup moved its atime)
            assert stat.S_IMODE(st.st_mode) == want["mode"] and st.st_atime_ns == FILE_NS, rel
        if want["type"] == "file":
            assert Path(os.fsdecode(path)).read_bytes() == want["content"], rel
        if want["type"] == "symlink":
            assert os.readlink(path) == want["target"]
        if "rdev" in want:
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == want["rdev"], rel
        if want["type"] not in ("symlink", "chardev", "blockdev", "fifo"):
            attrs = {os.fsencode(a): os.getxattr(path, a) for a in os.listxattr(path)}
            if "acl" in want:
                assert posix_acl(attrs.pop(b"system.posix_acl_access")) == ACL
            assert attrs == dict(want.get("xattrs", [])), rel
    a, b = found[b"pair-a"], found[b"sub/pair-b"]
    assert (a.st_dev, a.st_ino, a.st_nlink) == (b.st_dev, b.st_ino, 2)  # one file again
    assert (os.major(found[b"chardev"].st_rdev), os.minor(found[b"blockdev"].st_rdev)) == (CHARDEV[0], BLOCKDEV[1])


@pytest.mark.skipif(shutil.which("e2fsck") is None, reason="needs e2fsck")
def test_image_restores_byte_for_byte_and_its_ext4_is_clean(full_copy: Path, tmp_path: Path) -> None:
    target = tmp_path / "disk.img"
    result = image_restore(open_full(full_copy), ImageRestoreOptions(snapshot="latest", target=str(target), yes=True))
    assert result.target_size == FULL_DISK_SIZE
    # The source's free blocks were zeros, so used regions, gaps and the GPT all come back exactly.
    assert target.read_bytes() == zstd.decompress(FULL_DISK.read_bytes())
    ext = tmp_path / "ext4.img"
    ext.write_bytes(target.read_bytes()[1 << 20 : 4 << 20])
    fsck = subprocess.run(["e2fsck", "-fn", str(ext)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_check_read_data_finds_no_damage(full_copy: Path, cli: CliRun) -> None:
    result = check(open_full(full_copy), CheckOptions(read_data=True))
    assert result.errors == []
    # The packs the v1 prune left for a later one are reported as such, and only those.
    assert len(result.warnings) == 2 and all(PENDING_WARNING in w for w in result.warnings)
    assert (result.packs, result.snapshots) == (5, 2)
    run = cli("-r", str(full_copy), "check", "--read-data", env={"CAIRN_PASSWORD": PASSWORDS[1].decode()})
    assert run.exit_code == 0, run.stderr
    assert "no errors found" in run.stdout


def test_a_later_prune_finishes_what_the_v1_prune_left_pending(full_copy: Path, tmp_path: Path) -> None:
    repo = open_full(full_copy)
    # The writer whose lock held the deletion back is long gone; the user removes its lock.
    (removed,) = unlock(repo, UnlockOptions(remove_all=True)).removed
    assert (removed.host, removed.command) == ("golden-host", "backup")
    result = prune(repo, PruneOptions())
    assert (result.deleted_packs, result.deleted_indexes, result.pending) == (2, 1, 0)
    assert sorted(p.name for p in full_copy.iterdir() if p.is_dir() and any(p.iterdir())) == [
        "data", "index", "keys", "snapshots"
    ]
    after = check(open_full(full_copy), CheckOptions(read_data=True))
    assert (after.errors, after.warnings, after.packs, after.snapshots) == ([], [], 5, 2)
    target = tmp_path / "restored"
    restore(open_full(full_copy), RestoreOptions(snapshot=files_ref(full_copy, b"/hello.txt"), target=str(target)))
    assert (target / "hello.txt").read_bytes() == FULL_FILES[b"hello.txt"]["content"]


def test_files_inside_the_image_list_and_read_without_a_restore(full_copy: Path, cli: CliRun) -> None:
    pytest.importorskip("pytsk3", reason="pytsk3 (a cairn dependency) is not installed")
    env = {"CAIRN_PASSWORD": PASSWORDS[0].decode()}
    listed = cli("-r", str(full_copy), "image-ls", "latest", env=env)
    assert listed.exit_code == 0, listed.stderr
    assert {"data/", "link -> readme.txt", "lost+found/", "readme.txt"} <= set(listed.stdout.split("\n"))
    dumped = cli("-r", str(full_copy), "image-dump", "latest", "/readme.txt", env=env)
    assert dumped.exit_code == 0, dumped.stderr
    assert dumped.stdout_bytes == b"a file inside the imaged ext4 filesystem\n" * 20
