"""Interrupted backups: kill -9 or Ctrl-C half-way leaves a consistent repository, and the next
run reads only what the interrupted one had not saved by its last checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST_KDF, FAST_KDF_ARGS, PASSWORD, SRC
from cairn.files.checkpoint import Checkpoint, CheckpointStore
from cairn.ops.backup import BackupOptions, BackupResult, backup
from cairn.ops.check import CheckOptions, check
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend

MiB = 1 << 20


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    """~192 MiB in 96 files of 2 MiB, compressible (hex text), so a backup takes a few seconds."""
    root = tmp_path / "big"
    rng = random.Random(11)
    for i in range(96):
        folder = root / f"part{i // 12:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i:03d}.txt").write_bytes(rng.randbytes(MiB).hex().encode())
    return root


def cairn(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cairn", "-r", str(tmp_path / "repo"), *args]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "CAIRN_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(SRC)}
    subprocess.run(cairn(tmp_path, "init", *FAST_KDF_ARGS), env=env, check=True, capture_output=True)
    return env


def checkpoint_file(tmp_path: Path, repo: Repository, host: str, tree: Path) -> Path:
    return CheckpointStore(repo.config.id, host, [bytes(tree)], tmp_path / "cache" / "cairn").path


def wait_for(predicate: object, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert process.poll() is None, f"the backup ended before it could be interrupted: {process.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)


def resume_and_compare(tmp_path: Path, env: dict[str, str], big_tree: Path) -> dict[str, object]:
    """Run the backup again; it must read exactly the files the checkpoint did not have."""
    done = subprocess.run(cairn(tmp_path, "--json", "backup", "--host", "box", str(big_tree)), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    total = sum(p.stat().st_size for p in big_tree.rglob("*") if p.is_file())
    unchanged_bytes = summary["files_unmodified"] * 2 * MiB
    assert summary["resumed"] is True
    assert 0 < summary["files_unmodified"] < 96
    assert summary["bytes_read"] == total - unchanged_bytes  # only the rest, nothing twice
    repo = Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD.encode())
    assert not checkpoint_file(tmp_path, repo, "box", big_tree).exists()  # cleared once saved
    assert check(repo, CheckOptions(read_data=True)).ok
    restore(repo, RestoreOptions(f"latest:{big_tree}", str(tmp_path / "out")))
    for path in big_tree.rglob("*.txt"):
        assert (tmp_path / "out" / path.relative_to(big_tree)).read_bytes() == path.read_bytes()
    return summary


def test_kill_9_after_a_checkpoint_then_the_next_run_reads_only_the_rest(
    tmp_path: Path, env: dict[str, str], big_tree: Path
) -> None:
    repo = Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD.encode())
    marker = checkpoint_file(tmp_path, repo, "box", big_tree)
    process = subprocess.Popen(
        cairn(tmp_path, "backup", "--host", "box", "--checkpoint-interval", "0.3", str(big_tree)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for(marker.exists, process)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert repo.snapshot_ids() == []  # no snapshot, and what is there is consistent
    assert check(repo, CheckOptions(read_data=True)).ok
    resume_and_compare(tmp_path, env, big_tree)


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path: Path, env: dict[str, str], big_tree: Path) -> None:
    """With periodic checkpoints off, the first Ctrl-C still saves one before stopping."""
    repo = Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD.encode())
    process = subprocess.Popen(
        cairn(tmp_path, "backup", "--host", "box", "--checkpoint-interval", "0", str(big_tree)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for(lambda: any((tmp_path / "repo" / "data").rglob("*")), process)  # a first pack is written
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == [
        "cairn: stopping after a checkpoint; press Ctrl-C again to stop at once",
        "cairn: interrupted; the repository is left consistent, run the command again to continue",
    ]
    assert checkpoint_file(tmp_path, repo, "box", big_tree).exists()
    assert repo.snapshot_ids() == []
    resume_and_compare(tmp_path, env, big_tree)


def test_checkpoints_in_process_cover_open_folders(tmp_path: Path, big_tree: Path) -> None:
    """A checkpoint taken at every entry holds each open folder with the entries done so far,
    so even one taken in the middle of a folder saves what it read there."""
    repo = Repository.init(LocalBackend(tmp_path / "r"), b"pw", FAST_KDF)
    seen: list[bytes] = []
    store = CheckpointStore(repo.config.id, "h", [bytes(big_tree)], tmp_path / "c")
    calls = 0

    class Stop(Exception):
        pass

    def progress(status: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 40:  # part05 of part00..part07: folders open, others done
            loaded = store.load()
            assert loaded is not None
            seen.append(loaded.tree)
            raise Stop

    with pytest.raises(Stop):
        backup(repo, BackupOptions([str(big_tree)], host="h", checkpoint_interval=1e-9, cache_dir=tmp_path / "c"),
               progress)
    assert seen
    result = backup(repo, BackupOptions([str(big_tree)], host="h", cache_dir=tmp_path / "c"))
    assert result.resumed and result.files_unchanged >= 30 and result.files == 96
    assert result.bytes_read == (96 - result.files_unchanged) * 2 * MiB
    assert store.load() is None


# -- packs stored after the last index write ----------------------------------------------------


def stored_objects(root: Path) -> dict[str, int]:
    """Every object of a local repository (not locks, not a killed writer's temporaries) -> size."""
    return {
        str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.relative_to(root).parts[0] != "locks"
    }


def indexed_copies(repo: Repository) -> dict[bytes, int]:
    """blob id -> how many indexed packs hold it (more than 1: the data was uploaded twice)."""
    from cairn.repo.index import decode_index, iter_records

    copies: dict[bytes, int] = {}
    for obj in repo.backend.list("index/"):
        index_id = obj.name.rsplit("/", 1)[-1]
        packs, _ = decode_index(repo.load_object("index", index_id), index_id)
        for _, records in packs:
            for entry in iter_records(records):
                copies[entry.blob_id] = copies.get(entry.blob_id, 0) + 1
    return copies


def test_kill_9_between_index_writes_then_the_next_run_uploads_nothing_again(
    tmp_path: Path, env: dict[str, str], big_tree: Path
) -> None:
    """Packs stored after the last index object (here: no checkpoint at all) are adopted by the
    next run instead of uploaded again (docs/FORMAT.md §12, W4)."""
    killed = subprocess.run(
        cairn(tmp_path, "backup", "--host", "box", "--checkpoint-interval", "0", str(big_tree)),
        env={**env, "CAIRN_TEST_BACKUP_KILL_AFTER_PACKS": "3"}, capture_output=True, text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = stored_objects(tmp_path / "repo")
    left = {name: size for name, size in before.items() if name.startswith("data/")}
    assert len(left) >= 3 and not any(n.startswith(("index/", "snapshots/")) for n in before)

    done = subprocess.run(cairn(tmp_path, "--json", "backup", "--host", "box", str(big_tree)), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "uploaded again" not in done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["adopted_packs"] >= 3 and summary["adopted_bytes"] >= 3 * MiB
    after = stored_objects(tmp_path / "repo")
    written = sum(size for name, size in after.items() if name not in before)
    stored_data = sum(size for name, size in after.items() if name.startswith("data/"))
    repo = Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD.encode())
    copies = indexed_copies(repo)
    assert max(copies.values()) == 1  # no blob of the killed run was stored a second time
    adopted = sum(size for name, size in left.items() if repo.knows_pack(bytes.fromhex(name.rsplit("/", 1)[-1])))
    assert adopted >= 3 * repo.config.pack_size
    # What the run wrote is what the killed one had not: the data minus the adopted packs, and
    # at most one pack the killed run was storing when it died (finished, but not journaled).
    assert written <= stored_data - adopted + MiB
    total = sum(p.stat().st_size for p in big_tree.rglob("*") if p.is_file())
    assert summary["bytes_read"] == total and summary["bytes_added"] < total - 3 * repo.config.pack_size
    assert check(repo, CheckOptions(read_data=True)).ok
    restore(repo, RestoreOptions(f"latest:{big_tree}", str(tmp_path / "out")))
    for path in big_tree.rglob("*.txt"):
        assert (tmp_path / "out" / path.relative_to(big_tree)).read_bytes() == path.read_bytes()
    print(f"killed run left {sum(left.values()):,} B in {len(left)} packs; adopted {adopted:,} B; "
          f"next run wrote {written:,} B of {stored_data:,} B of packs")


# -- adoption refused or limited (docs/FORMAT.md §12, W4), in process --------------------------

KiB = 1 << 10


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(repository, tree of 8 incompressible 100 KiB files, cache folder); 256 KiB packs."""
    tree = tmp_path / "small"
    tree.mkdir()
    rng = random.Random(5)
    for i in range(8):
        (tree / f"f{i}").write_bytes(rng.randbytes(100 * KiB))
    Repository.init(LocalBackend(tmp_path / "r"), b"pw", FAST_KDF, pack_size=256 * KiB)
    return tmp_path / "r", tree, tmp_path / "c"


def leave_unindexed_packs(root: Path, tree: Path, cache: Path) -> list[bytes]:
    """What a backup killed between two index writes leaves: packs and its journal naming them.
    (Each file is under the minimum chunk size, so it is one blob, as a backup stores it.)"""
    repo = Repository.open(LocalBackend(root), b"pw")
    journal = CheckpointStore(repo.config.id, "h", [bytes(tree)], cache).journal()
    with repo.lock(command="backup"):
        repo.pack_listener = journal.save
        for path in sorted(tree.iterdir()):
            repo.save_blob(BlobType.DATA, path.read_bytes())
    packs = journal.load()
    assert len(packs) == 2 and not (root / "index").exists()
    return packs


def back_up_again(root: Path, tree: Path, cache: Path) -> tuple[Repository, BackupResult, int]:
    """Run the backup; returns the repository, the result and the bytes of packs it wrote."""
    before = stored_objects(root)
    repo = Repository.open(LocalBackend(root), b"pw")
    result = backup(repo, BackupOptions([str(tree)], host="h", cache_dir=cache))
    after = stored_objects(root)
    written = sum(size for name, size in after.items() if name.startswith("data/") and name not in before)
    assert check(repo, CheckOptions(read_data=True)).ok
    out = root.parent / f"out{len(list(root.parent.glob('out*')))}"
    restore(repo, RestoreOptions(f"latest:{tree}", str(out)))
    for path in tree.iterdir():
        assert (out / path.relative_to(tree)).read_bytes() == path.read_bytes()
    return repo, result, written


def test_adopted_packs_are_not_uploaded_again(small: tuple[Path, Path, Path]) -> None:
    root, tree, cache = small
    packs = leave_unindexed_packs(root, tree, cache)
    repo, result, written = back_up_again(root, tree, cache)
    assert (result.adopted_packs, result.warnings) == (2, [])
    assert all(repo.knows_pack(p) for p in packs)
    assert result.bytes_added // (100 * KiB) == 2  # (and trees): the 6 files in the packs are not stored again
    assert written < 3 * 100 * KiB


def test_a_pack_named_by_a_pending_object_is_not_adopted(small: tuple[Path, Path, Path]) -> None:
    """A prune decided to delete it: relying on it could lose data, so its blobs are stored again."""
    from cairn.ops.prune import prune
    from cairn.repo import maintenance as mnt

    root, tree, cache = small
    first, second = leave_unindexed_packs(root, tree, cache)
    repo = Repository.open(LocalBackend(root), b"pw")
    mnt.save_pending(repo, mnt.Pending(time_ns=time.time_ns(), packs=[first], indexes=[], locks=[]))
    repo, result, _ = back_up_again(root, tree, cache)
    assert result.adopted_packs == 1 and repo.knows_pack(second) and not repo.knows_pack(first)
    assert result.bytes_added // (100 * KiB) == 5
    assert prune(repo).deleted_packs >= 1  # the pending object is carried out; nothing is lost
    assert not (root / "data" / first.hex()[:2] / first.hex()).exists()
    assert check(repo, CheckOptions(read_data=True)).ok


def test_no_adoption_beside_a_maintenance_run(small: tuple[Path, Path, Path]) -> None:
    """A running prune may have judged the packs deletable already: they are uploaded again,
    with a warning saying why."""
    from cairn.repo import lock as lock_mod

    root, tree, cache = small
    leave_unindexed_packs(root, tree, cache)
    repo = Repository.open(LocalBackend(root), b"pw")
    pruning = lock_mod.new_lock(os.urandom(32).hex(), False, "prune")  # this process: alive
    repo.store_object("locks", pruning.id, lock_mod.encode(pruning))
    try:
        _, result, _ = back_up_again(root, tree, cache)
    finally:
        repo.locks.release(pruning)
    assert result.adopted_packs == 0 and result.bytes_added // (100 * KiB) == 8
    assert result.warnings == [("", "the packs of an interrupted run are uploaded again: a maintenance run "
                                     f"holds the repository ({pruning.describe()})")]


@pytest.mark.parametrize("how", ["its process is gone", "it was released"])
def test_a_finished_prune_does_not_stop_adoption(small: tuple[Path, Path, Path], how: str) -> None:
    """A maintenance lock whose run is over (its process gone on this host, or released by
    overwriting where the storage refuses deletes, §11) cannot delete anything any more."""
    from dataclasses import replace

    from cairn.repo import lock as lock_mod

    root, tree, cache = small
    leave_unindexed_packs(root, tree, cache)
    repo = Repository.open(LocalBackend(root), b"pw")
    lock = lock_mod.new_lock(os.urandom(32).hex(), False, "prune")
    if how == "its process is gone":
        gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
        lock = replace(lock, pid=int(gone.stdout))
        assert lock.process_gone()
    else:
        lock = replace(lock, host="elsewhere", refreshed_ns=lock_mod.RELEASED)
    repo.store_object("locks", lock.id, lock_mod.encode(lock))
    _, result, _ = back_up_again(root, tree, cache)
    assert result.adopted_packs == 2


def test_packs_a_prune_deleted_before_the_next_run_are_uploaded_again(small: tuple[Path, Path, Path]) -> None:
    from cairn.ops.prune import prune

    root, tree, cache = small
    leave_unindexed_packs(root, tree, cache)
    assert prune(Repository.open(LocalBackend(root), b"pw")).deleted_packs == 2  # leftovers, no lock holds
    _, result, _ = back_up_again(root, tree, cache)
    assert result.adopted_packs == 0 and result.warnings == [] and result.bytes_added // (100 * KiB) == 8


def test_the_checkpoint_pointer_is_made_durable_before_and_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power loss the pointer must name the checkpoint or the one before, not vanish:
    the file is fsynced before the rename, and its folder after it (as the local backend does)."""
    store = CheckpointStore(b"\1" * 32, "h", [b"/data"], tmp_path)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.save(Checkpoint(b"\2" * 32, "cairn test", 5))
    assert len(synced) == 2
    assert synced[0].startswith(str(store.path.parent / ".tmp-"))  # the temporary file, before its rename
    assert synced[1] == str(store.path.parent)
    assert store.load() == Checkpoint(b"\2" * 32, "cairn test", 5)
    assert [p.name for p in store.path.parent.iterdir()] == [store.path.name]
