"""Restore options on a real backup: --overwrite modes, --delete, --verify, resuming after an
interruption, damaged data, and the restore command's JSON and exit codes."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest

from cairn.errors import DamagedObject, UsageError
from cairn.files import restore_content
from cairn.files.restore_content import ZeroBlobs
from cairn.files.restorer import RestoreProgress
from cairn.ops import restore as restore_op
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.restore import RestoreOptions, find_node, restore
from cairn.repo.blob import BlobType
from cairn.repo.pack import object_name
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from conftest import FAST_KDF, PASSWORD, CliRun
from test_restore_support import MiB, T0, rsync_differences

FILES = 40


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Folders of files of a few sizes (several chunks for the big one), fixed times."""
    rng = random.Random(1)
    root = tmp_path / "src"
    for i in range(FILES):
        folder = root / f"d{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:02d}.txt").write_bytes(rng.randbytes(1000 + i))
    (root / "big.bin").write_bytes(rng.randbytes(9 * MiB))
    (root / "empty").write_bytes(b"")
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        os.utime(path, ns=(T0, T0))
    return root


@pytest.fixture
def snap(repo: Repository, src: Path) -> str:
    result = backup(repo, BackupOptions([str(src)]))
    assert result.snapshot_id is not None
    return f"{result.snapshot_id.hex()}:{src}"


def restored_once(repo: Repository, snap: str, target: Path) -> None:
    restore(repo, RestoreOptions(snap, str(target)))


def change(path: Path, data: bytes, mtime: int | None = None) -> None:
    """Rewrite a file in place, keeping its inode, with a given (or the old) mtime."""
    old = path.stat()
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns if mtime is None else mtime))


def test_always_rewrites_only_what_differs_and_resets_metadata(repo: Repository, snap: str, src: Path,
                                                               tmp_path: Path) -> None:
    target = tmp_path / "out"
    restored_once(repo, snap, target)
    same_size = target / "d0" / "f00.txt"
    change(same_size, b"X" * 1000)  # same size and mtime, other bytes: only a comparison sees it
    other = target / "d1" / "f01.txt"
    change(other, b"short", mtime=T0 + 5)
    os.chmod(target / "d2" / "f02.txt", 0o777)
    inode = (target / "big.bin").stat().st_ino
    done = restore(repo, RestoreOptions(snap, str(target)))
    assert (done.files, done.unchanged) == (2, FILES)  # two rewritten; 38 + big + empty kept
    assert (target / "big.bin").stat().st_ino == inode  # compared, not rewritten
    assert rsync_differences(src, target) == []


def test_if_changed_trusts_size_and_mtime(repo: Repository, snap: str, src: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    restored_once(repo, snap, target)
    sneaky = target / "d0" / "f00.txt"
    change(sneaky, b"X" * 1000)  # same size and mtime: left alone, by definition of the mode
    touched = target / "d1" / "f01.txt"
    os.utime(touched, ns=(T0, T0 + 1))  # other mtime, same bytes: compared, kept, mtime reset
    inode = touched.stat().st_ino
    done = restore(repo, RestoreOptions(snap, str(target), overwrite="if-changed"))
    assert (done.files, done.unchanged) == (0, FILES + 2)
    assert sneaky.read_bytes() == b"X" * 1000
    assert touched.stat().st_ino == inode and touched.stat().st_mtime_ns == T0


def test_if_newer_keeps_files_changed_after_the_snapshot(repo: Repository, snap: str, src: Path,
                                                        tmp_path: Path) -> None:
    target = tmp_path / "out"
    restored_once(repo, snap, target)
    newer, older = target / "d0" / "f00.txt", target / "d1" / "f01.txt"
    change(newer, b"edited later", mtime=T0 + 10**9)
    change(older, b"older than the snapshot", mtime=T0 - 10**9)
    done = restore(repo, RestoreOptions(snap, str(target), overwrite="if-newer"))
    assert newer.read_bytes() == b"edited later"
    assert older.read_bytes() == (src / "d1" / "f01.txt").read_bytes()
    assert done.files == 1


def test_never_only_adds_what_is_missing(repo: Repository, snap: str, src: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    restored_once(repo, snap, target)
    change(target / "d0" / "f00.txt", b"mine")
    (target / "d1" / "f01.txt").unlink()
    done = restore(repo, RestoreOptions(snap, str(target), overwrite="never"))
    assert (target / "d0" / "f00.txt").read_bytes() == b"mine"
    assert (target / "d1" / "f01.txt").read_bytes() == (src / "d1" / "f01.txt").read_bytes()
    assert done.files == 1


def test_delete_removes_what_the_snapshot_lacks_inside_the_restored_part_only(
    repo: Repository, snap: str, src: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    restored_once(repo, snap, target)
    (target / "stray.txt").write_bytes(b"")
    (target / "d0" / "stray-folder" / "deeper").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"")
    (target / "d1" / "stray-link").symlink_to(outside)  # removed as a link, never followed
    (target / "big.bin").unlink()
    (target / "big.bin").mkdir()  # a folder where a file goes: replaced only with --delete
    (target / "big.bin" / "inside").write_bytes(b"")

    done = restore(repo, RestoreOptions(snap, str(target), include=["*.txt"], delete=True))
    assert not (target / "stray.txt").exists() and (target / "d0" / "stray-folder").exists()
    assert (target / "big.bin").is_dir()  # not named by the include: left alone
    done = restore(repo, RestoreOptions(snap, str(target), delete=True))
    assert done.deleted == 2 and not (target / "d0" / "stray-folder").exists()
    assert os.listdir(outside) == ["keep"]
    assert rsync_differences(src, target) == []

    single = tmp_path / "single"
    single.mkdir()
    (single / "unrelated").write_bytes(b"")
    restore(repo, RestoreOptions(f"{snap}/big.bin", str(single), delete=True))
    assert sorted(os.listdir(single)) == ["big.bin", "unrelated"]


def test_a_folder_in_the_way_of_a_file_is_named_without_delete(repo: Repository, snap: str, tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "empty" / "mine").mkdir(parents=True)
    done = restore(repo, RestoreOptions(snap, str(target)))
    assert done.skipped == [("empty", "a folder in the target is in the way (add --delete to replace it)")]
    assert (target / "empty" / "mine").is_dir()


def test_verify_reads_back_every_file_and_the_comparison_sees_one_changed_byte(
    repo: Repository, snap: str, src: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    done = restore(repo, RestoreOptions(snap, str(target), verify=True))
    assert done.verified == done.files == FILES + 2
    # the comparison --verify runs, on a file changed by one byte behind restore's back
    ref, _, sub = snap.partition(":")
    node = find_node(repo, repo.find_snapshot(ref).root, f"{sub}/big.bin", ref)
    with open(target / "big.bin", "r+b") as f:
        lengths = restore_content.blob_lengths(repo, node, ZeroBlobs())
        assert len(lengths) > 1
        assert restore_content.first_difference(repo, f.fileno(), node, lengths, ZeroBlobs()) is None
        f.seek(sum(lengths[:-1]) + 7)
        f.write(b"\0" if f.read(1) != b"\0" else b"\1")
        f.flush()
        assert restore_content.first_difference(repo, f.fileno(), node, lengths, ZeroBlobs()) == sum(lengths[:-1])


def test_a_damaged_pack_fails_the_files_it_holds_and_names_them(repo: Repository, snap: str, tmp_path: Path) -> None:
    ref, _, sub = snap.partition(":")
    node = find_node(repo, repo.find_snapshot(ref).root, f"{sub}/big.bin", ref)
    entry = repo.lookup(node.content[1])
    pack = next(p for p in (tmp_path / "repo" / "data").rglob("*") if p.name == entry.pack_id.hex())
    os.chmod(pack, 0o644)
    with open(pack, "r+b") as f:
        f.seek(entry.offset + 100)
        byte = f.read(1)
        f.seek(entry.offset + 100)
        f.write(bytes([byte[0] ^ 1]))
    target = tmp_path / "out"
    with pytest.raises(DamagedObject, match=f"big.bin: pack {entry.pack_id.hex()[:12]}") as caught:
        restore(repo, RestoreOptions(snap, str(target), verify=True))
    result = caught.value.result  # type: ignore[attr-defined]
    assert result.files == FILES + 1 and result.errors[0][0] == "big.bin"
    assert (target / "big.bin").stat().st_mtime_ns != T0  # unfinished: a later run rewrites it


def test_an_interrupted_restore_resumes_without_rewriting_complete_files(
    repo: Repository, snap: str, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writer threads, which start each file as the walk reaches it; writer processes get files
    # in batches, and their interruption is tested with more files in test_restore_procs.
    monkeypatch.setattr(restore_op, "writer_processes", lambda: 0)
    target = tmp_path / "out"
    seen: list[str] = []

    def interrupt(p: RestoreProgress) -> None:
        seen.append(p.path)
        if len(seen) == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore(repo, RestoreOptions(snap, str(target)), progress=interrupt)
    written = {p for p in target.rglob("*") if p.is_file() and p.stat().st_mtime_ns == T0}
    assert 0 < len(written) < FILES + 2
    for mode in ("if-changed", "always"):
        done = restore(repo, RestoreOptions(snap, str(target), overwrite=mode))
        if mode == "if-changed":
            assert done.unchanged >= len(written) and done.files == FILES + 2 - done.unchanged
        else:
            assert (done.files, done.unchanged) == (0, FILES + 2)
    assert rsync_differences(src, target) == []


def test_bad_options_are_usage_errors(repo: Repository, snap: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--overwrite must be one of"):
        restore(repo, RestoreOptions(snap, str(tmp_path / "x"), overwrite="sometimes"))
    with pytest.raises(UsageError, match="without a closing"):
        restore(repo, RestoreOptions(snap, str(tmp_path / "x"), include=["[abc"]))
    assert not (tmp_path / "x").exists()


def test_the_command_prints_json_and_exits_by_what_happened(cli: CliRun, repo_dir: Path, src: Path,
                                                           tmp_path: Path) -> None:
    assert cli("-r", str(repo_dir), "backup", str(src)).exit_code == 0
    target = tmp_path / "out"
    result = cli("-r", str(repo_dir), "--json", "restore", f"latest:{src}", "--target", str(target),
                 "--verify", "--exclude", "d3")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["files"], summary["verified"], summary["dirs"]) == (FILES // 4 * 3 + 2, FILES // 4 * 3 + 2, 3)
    assert summary["bytes_written"] == sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    assert summary["errors"] == summary["skipped"] == []

    again = cli("-r", str(repo_dir), "restore", f"latest:{src}", "--target", str(target), "--delete",
                "--overwrite", "if-changed")
    assert again.exit_code == 0, again.stderr
    assert "unchanged" in again.stdout and "restored" in again.stdout

    (target / "x").mkdir()
    os.rename(target / "empty", target / "x" / "moved")
    (target / "empty").mkdir()
    blocked = cli("-r", str(repo_dir), "restore", f"latest:{src}", "--target", str(target))
    assert blocked.exit_code == 3
    assert "not restored empty: a folder in the target is in the way" in blocked.stderr

    bad = cli("-r", str(repo_dir), "restore", "latest", "--target", str(target), "--overwrite", "maybe")
    assert bad.exit_code == 2


def test_restore_of_a_read_only_folder_and_unreadable_file_as_root_or_not(
    repo: Repository, src: Path, tmp_path: Path
) -> None:
    """Folders' modes are applied last, so a read-only folder is still filled."""
    os.chmod(src / "d0" / "f00.txt", 0)
    os.chmod(src / "d0", 0o555)
    os.utime(src / "d0", ns=(T0, T0))
    try:
        result = backup(repo, BackupOptions([str(src)]))
    finally:
        os.chmod(src / "d0", 0o755)
    if result.skipped:
        pytest.skip("this user cannot read a mode-000 file to back it up")
    target = tmp_path / "out"
    restore(repo, RestoreOptions(f"latest:{src}", str(target)))
    assert stat.S_IMODE((target / "d0").stat().st_mode) == 0o555
    assert stat.S_IMODE((target / "d0" / "f00.txt").stat().st_mode) == 0
    os.chmod(target / "d0", 0o755)
    os.chmod(src / "d0", 0o555)
    done = restore(repo, RestoreOptions(f"latest:{src}", str(target)))  # an unreadable existing file
    assert done.errors == [] and stat.S_IMODE((target / "d0").stat().st_mode) == 0o555
    os.chmod(src / "d0", 0o755)


def test_the_command_names_each_damaged_file_and_exits_13(cli: CliRun, repo_dir: Path, src: Path,
                                                          tmp_path: Path) -> None:
    assert cli("-r", str(repo_dir), "backup", str(src)).exit_code == 0
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    repo.load_index()
    data_blobs = [e for e in repo.index if e.blob_type == BlobType.DATA]
    for entry in data_blobs:  # every file's content is damaged; the trees are intact
        path = repo_dir / object_name(entry.pack_id)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(entry.offset + entry.length // 2)
            byte = f.read(1)
            f.seek(entry.offset + entry.length // 2)
            f.write(bytes([byte[0] ^ 1]))
    result = cli("-r", str(repo_dir), "restore", f"latest:{src}", "--target", str(tmp_path / "out"))
    assert result.exit_code == 13
    failed = [line for line in result.stderr.splitlines() if line.startswith("cairn: warning: failed ")]
    assert failed and all("does not" in line or "damaged" in line for line in failed), result.stderr
    assert result.stderr.splitlines()[-1].startswith("cairn: ") and "more file(s) not restored" in result.stderr
