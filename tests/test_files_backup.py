"""File backup and restore end to end, on a real folder and a LocalBackend repository."""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
from pathlib import Path

import pytest

from cairn.errors import DamagedObject, NotFound, UsageError
from cairn.files.archiver import BackupStatus
from cairn.files.chunker import Chunker
from cairn.files.tree import Node, encode_tree
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo import encoding
from cairn.repo.blob import BlobType
from cairn.repo.config import ChunkerParams
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend

MiB = 1024 * 1024
T0 = 1_600_000_000_123_456_789  # a time with every nanosecond digit set
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", KdfParams(iterations=1, memory_kib=8, lanes=1))


def write(path: Path, data: bytes, mode: int = 0o644, mtime: int = T0) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime - 999, mtime))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Nested folders, an empty folder and file, a 20 MiB file, odd names, modes and times."""
    src = tmp_path / "src"
    (src / "docs" / "sub" / "deep").mkdir(parents=True)
    (src / "empty-folder").mkdir()
    rng = random.Random(42)
    write(src / "big.bin", rng.randbytes(20 * MiB), 0o644, T0 + 1)
    write(src / "docs" / "notes.txt", b"private notes\n", 0o600, T0 + 2)
    write(src / "docs" / "sub" / "deep" / "leaf.dat", rng.randbytes(300_000), 0o640, T0 + 3)
    write(src / "run.sh", b"#!/bin/sh\necho hi\n", 0o755, T0 + 4)
    write(src / "empty", b"", 0o644, T0 + 5)
    write(Path(os.fsdecode(bytes(src) + b"/caf\xe9")), b"non-UTF-8 name", 0o644, T0 + 6)
    write(src / ("n" * 255), b"longest name Linux allows", 0o444, T0 + 7)
    # folders last, deepest first, since adding entries changes a folder's mtime
    for folder, mode, mtime in [
        (src / "docs" / "sub" / "deep", 0o700, T0 + 10),
        (src / "docs" / "sub", 0o750, T0 + 11),
        (src / "docs", 0o755, T0 + 12),
        (src / "empty-folder", 0o711, T0 + 13),
        (src, 0o755, T0 + 14),
    ]:
        os.chmod(folder, mode)
        os.utime(folder, ns=(mtime, mtime))
    return src


def differences(expected: Path, actual: Path, check_top: bool = True) -> list[str]:
    """What a user would check: same names, types, bytes, modes, mtimes (and owners as root).

    `check_top=False` compares only what is inside two folders, for a restore target whose own
    metadata is not part of the snapshot.
    """
    found: list[str] = []

    def digest(path: bytes) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(MiB), b""):
                h.update(block)
        return h.hexdigest()

    def compare(a: bytes, b: bytes, top: bool = False) -> None:
        sa, sb = os.lstat(a), os.lstat(b)
        checks = [] if top and not check_top else [("type", stat.S_IFMT(sa.st_mode), stat.S_IFMT(sb.st_mode)),
                  ("mode", stat.S_IMODE(sa.st_mode), stat.S_IMODE(sb.st_mode)),
                  ("mtime_ns", sa.st_mtime_ns, sb.st_mtime_ns)]
        if AS_ROOT and checks:
            checks.append(("owner", (sa.st_uid, sa.st_gid), (sb.st_uid, sb.st_gid)))
        found.extend(f"{b!r}: {what} {x!r} != {y!r}" for what, x, y in checks if x != y)
        if stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode) and digest(a) != digest(b):
            found.append(f"{b!r}: content differs")
        if stat.S_ISDIR(sa.st_mode) and stat.S_ISDIR(sb.st_mode):
            names_a, names_b = sorted(os.listdir(a)), sorted(os.listdir(b))
            if names_a != names_b:
                found.append(f"{b!r}: entries {names_a} != {names_b}")
            for name in set(names_a) & set(names_b):
                compare(a + b"/" + name, b + b"/" + name)

    compare(bytes(expected), bytes(actual), top=True)
    return found


def restored(target: Path, source: Path) -> Path:
    """Where a full restore puts `source`: its absolute path recreated under the target."""
    return target / str(source).lstrip("/")


def test_backup_then_restore_gives_back_every_byte_mode_and_time(repo: Repository, source: Path, tmp_path: Path) -> None:
    result = backup(repo, BackupOptions([str(source)], host="testhost", tags=["t1"]))
    assert result.skipped == []
    assert (result.files, result.dirs) == (7, 5)
    assert result.bytes_read == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    snap = repo.find_snapshot("latest")
    assert (snap.kind, snap.host, snap.tags, snap.paths) == ("files", "testhost", ["t1"], [bytes(source)])
    assert snap.summary["files"] == 7 and snap.summary["skipped"] == []

    target = tmp_path / "out"
    done = restore(repo, RestoreOptions(snap.short_id, str(target)))
    assert done.files == 7 and done.bytes_written == result.bytes_read
    assert differences(source, restored(target, source)) == []
    # the folders above the backed-up path are recreated with their real owner and mode
    for above in source.parents[:-1]:
        expected, actual = above.stat(), restored(target, above).stat()
        assert (actual.st_mode, actual.st_uid) == (expected.st_mode, expected.st_uid), above


def test_restore_overwrites_changed_files_in_the_target(repo: Repository, source: Path, tmp_path: Path) -> None:
    backup(repo, BackupOptions([str(source)]))
    target = tmp_path / "out"
    restore(repo, RestoreOptions("latest", str(target)))
    notes = restored(target, source) / "docs" / "notes.txt"
    write(notes, b"changed after the restore, and longer than before", 0o666)
    restore(repo, RestoreOptions("latest", str(target)))
    assert differences(source, restored(target, source)) == []


def test_restore_of_a_subpath_puts_its_content_in_the_target(repo: Repository, source: Path, tmp_path: Path) -> None:
    backup(repo, BackupOptions([str(source)]))
    folder = restore(repo, RestoreOptions(f"latest:{source}/docs", str(tmp_path / "docs")))
    assert (folder.files, folder.dirs) == (2, 2)
    assert (tmp_path / "docs" / "notes.txt").read_bytes() == b"private notes\n"
    assert differences(source / "docs", tmp_path / "docs", check_top=False) == []

    one = restore(repo, RestoreOptions(f"latest:{source}/big.bin", str(tmp_path / "one")))
    assert one.files == 1 and os.listdir(tmp_path / "one") == ["big.bin"]
    assert differences(source / "big.bin", tmp_path / "one" / "big.bin") == []

    with pytest.raises(NotFound, match="no .*/docs/missing"):
        restore(repo, RestoreOptions(f"latest:{source}/docs/missing", str(tmp_path / "x")))
    with pytest.raises(NotFound, match="not a folder"):
        restore(repo, RestoreOptions(f"latest:{source}/run.sh/below", str(tmp_path / "x")))


def new_data_blobs(repo: Repository, source: Path) -> int:
    """New blobs of the latest snapshot minus the trees that must change with any file below
    `source`: one per folder from the root down to it."""
    snap = repo.find_snapshot("latest")
    trees_on_path = len(source.parts)  # "/" (the root tree) plus each component
    return snap.summary["blobs_new"] - trees_on_path


def test_unchanged_data_is_stored_once_and_one_byte_costs_about_one_chunk(
    repo: Repository, source: Path
) -> None:
    first = backup(repo, BackupOptions([str(source)]))
    again = backup(repo, BackupOptions([str(source)], force=True))  # --force: read everything again
    assert again.bytes_read == first.bytes_read
    assert again.bytes_added < 64 * 1024, "a second backup of unchanged files re-stored data"

    big = source / "big.bin"
    with open(big, "r+b") as f:
        f.seek(10 * MiB)
        byte = f.read(1)
        f.seek(10 * MiB)
        f.write(bytes([byte[0] ^ 0xFF]))
    changed = backup(repo, BackupOptions([str(source)]))
    params = repo.config.chunker
    assert 1 <= new_data_blobs(repo, source) <= 2
    assert 0 < changed.bytes_added <= 2 * params.max_size + 64 * 1024
    assert changed.bytes_added < first.bytes_added / 4


def test_dry_run_counts_what_a_backup_would_add_and_writes_nothing(repo: Repository, source: Path) -> None:
    def objects() -> list[str]:
        return sorted(o.name for o in repo.backend.list("") if not o.name.startswith("locks/"))

    before = objects()
    dry = backup(repo, BackupOptions([str(source)], dry_run=True))
    assert dry.snapshot_id is None and objects() == before
    real = backup(repo, BackupOptions([str(source)]))
    assert (dry.files, dry.bytes_read, dry.bytes_added) == (real.files, real.bytes_read, real.bytes_added)


def test_missing_path_is_a_usage_error_before_anything_is_written(repo: Repository, source: Path) -> None:
    with pytest.raises(UsageError, match="no-such: no such file or directory"):
        backup(repo, BackupOptions([str(source), str(source / "no-such")]))
    assert repo.snapshot_ids() == []


def test_files_that_vanish_during_the_backup_are_skipped_and_listed(
    repo: Repository, source: Path, tmp_path: Path
) -> None:
    """A real race: entries deleted after their folder was listed, before they were read."""
    doomed_file, doomed_folder = source / "run.sh", source / "docs" / "sub"

    def progress(p: BackupStatus) -> None:
        if p.path == str(source / "big.bin") and doomed_file.exists():
            doomed_file.unlink()
        if p.path == str(source / "docs" / "notes.txt") and doomed_folder.exists():
            (doomed_folder / "deep" / "leaf.dat").unlink()
            (doomed_folder / "deep").rmdir()
            doomed_folder.rmdir()

    result = backup(repo, BackupOptions([str(source)]), progress)
    assert sorted(result.skipped) == [
        (str(doomed_folder), "vanished during the backup"),
        (str(doomed_file), "vanished during the backup"),
    ]
    snap = repo.find_snapshot("latest")
    assert snap.id == result.snapshot_id and snap.summary["skipped_count"] == 2
    restore(repo, RestoreOptions(f"latest:{source}", str(tmp_path / "out")))
    # the snapshot holds everything else, and the folders that lost an entry as they were
    os.utime(source / "docs", ns=(T0 + 12, T0 + 12))
    os.utime(source, ns=(T0 + 14, T0 + 14))
    assert differences(source, tmp_path / "out", check_top=False) == []


def test_a_file_that_fails_to_read_is_skipped(repo: Repository, source: Path) -> None:
    """chmod 000 where that stops reading; where it does not (root), /proc/self/mem, a regular
    file whose first page fails with EIO for everyone, stands in as a real unreadable file."""
    locked = source / "docs" / "notes.txt"
    os.chmod(locked, 0)
    try:
        locked.read_bytes()
        unreadable, extra = "/proc/self/mem", ["/proc/self/mem"]
    except PermissionError:
        unreadable, extra = str(locked), []
    result = backup(repo, BackupOptions([str(source), *extra]))
    assert result.skipped == [(unreadable, os.strerror(5 if extra else 13))]
    assert result.files == 7 - len(result.skipped) + len(extra)
    snap = repo.find_snapshot("latest")
    assert snap.id == result.snapshot_id
    assert snap.summary["skipped"] == [[os.fsencode(unreadable), result.skipped[0][1]]]


def test_restore_never_follows_a_symlink_already_in_the_target(
    repo: Repository, source: Path, tmp_path: Path
) -> None:
    backup(repo, BackupOptions([str(source)]))
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"must survive")
    target = tmp_path / "out"
    target.mkdir()
    (target / "docs").symlink_to(outside)  # where a folder will be restored
    (target / "run.sh").symlink_to(victim)  # where a file will be restored
    os.link(victim, target / "empty")  # a hard link where a file will be restored

    restore(repo, RestoreOptions(f"latest:{source}", str(target)))
    assert sorted(os.listdir(outside)) == ["victim"] and victim.read_bytes() == b"must survive"
    assert not (target / "docs").is_symlink() and not (target / "run.sh").is_symlink()
    assert differences(source, target, check_top=False) == []


def test_a_malicious_snapshot_cannot_write_outside_the_target(repo: Repository, tmp_path: Path) -> None:
    content, _ = repo.save_blob(BlobType.DATA, b"owned")
    entry = {"name": b"../escaped", "type": "file", "mode": 0o644, "uid": 0, "gid": 0, "user": "",
             "group": "", "mtime": 0, "atime": 0, "ctime": 0, "size": 5, "content": [content]}
    root, _ = repo.save_blob(BlobType.TREE, encoding.pack({"v": 1, "entries": [entry]}))
    repo.flush()
    repo.save_snapshot(Snapshot(kind="files", root=root, paths=[b"/x"], host="h", user="u"))
    target = tmp_path / "out"
    with pytest.raises(DamagedObject, match="contains ./."):
        restore(repo, RestoreOptions("latest", str(target)))
    assert not (tmp_path / "escaped").exists()


def test_trees_with_a_wrong_size_are_refused(repo: Repository, tmp_path: Path) -> None:
    content, _ = repo.save_blob(BlobType.DATA, b"12345")
    root, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"f", "file", size=99, content=[content])]))
    repo.flush()
    repo.save_snapshot(Snapshot(kind="files", root=root, paths=[b"/x"], host="h", user="u"))
    with pytest.raises(DamagedObject, match="99 bytes"):
        restore(repo, RestoreOptions("latest", str(tmp_path / "out")))


def test_chunks_are_content_defined_seeded_and_within_bounds() -> None:
    params = ChunkerParams(min_size=64 * 1024, avg_size=256 * 1024, max_size=1 * MiB, seed=12345)
    data = random.Random(7).randbytes(8 * MiB)
    chunks = list(Chunker(params).chunks(io.BytesIO(data)))
    assert b"".join(chunks) == data
    assert all(params.min_size <= len(c) <= params.max_size for c in chunks[:-1])
    # an insertion near the start shifts every offset, yet the later chunks come out the same
    shifted = list(Chunker(params).chunks(io.BytesIO(b"inserted" + data)))
    assert len(set(chunks) & set(shifted)) >= len(chunks) - 2
    # another seed cuts elsewhere, so chunk sizes do not reveal a known file
    other = list(Chunker(ChunkerParams(params.min_size, params.avg_size, params.max_size, seed=999)).chunks(io.BytesIO(data)))
    assert [len(c) for c in other] != [len(c) for c in chunks]
    assert list(Chunker(params).chunks(io.BytesIO(b"small"))) == [b"small"]
    assert list(Chunker(params).chunks(io.BytesIO(b""))) == []


def test_more_folders_waiting_than_may_stay_open_are_all_backed_up(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders stay open until their files are read (the readers open the files in them); past
    the bound the walk waits for the oldest. Every file still comes back, and none is left open."""
    from cairn.files import archiver

    monkeypatch.setattr(archiver, "MAX_WAITING_FOLDERS", 2)
    src = tmp_path / "many"
    for d in range(40):
        (src / f"d{d:02d}" / "sub").mkdir(parents=True)
        write(src / f"d{d:02d}" / "a.txt", f"folder {d}\n".encode(), 0o640, T0 + d)
        write(src / f"d{d:02d}" / "sub" / "b.bin", random.Random(d).randbytes(300_000), 0o600, T0 + d)
    open_before = len(os.listdir("/proc/self/fd"))
    result = backup(repo, BackupOptions([str(src)], host="h"))
    assert (result.skipped, result.files) == ([], 80)
    assert len(os.listdir("/proc/self/fd")) <= open_before
    target = tmp_path / "out"
    restore(repo, RestoreOptions("latest", str(target)))
    assert differences(src, restored(target, src)) == []
