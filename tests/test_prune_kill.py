"""A prune killed with SIGKILL at any step leaves a repository that checks clean and restores
everything, and the next prune finishes the work (docs/FORMAT.md §12).

The kill comes from the prune process itself (CAIRN_TEST_PRUNE_KILL_AT names the step, or
CAIRN_TEST_PRUNE_KILL_AFTER_WRITES counts the stores and deletes), so each point is hit
exactly, in a real process, with no chance to clean up.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, SRC
from cairn.files.tree import Node, decode_tree, encode_tree
from cairn.ops.check import CheckOptions, check
from cairn.policy.repack import Limit
from cairn.ops.prune import KILL_AFTER_ENV, KILL_ENV, PruneOptions, prune
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.repo.table import load_table
from cairn.storage.local import LocalBackend
from cairn.testing.faulty import FaultyBackend

STEPS = ["locks", "walked", "repacking", "repacked", "indexed", "pending", "deleting", "deleted"]


def build(path: Path) -> dict[bytes, list[bytes]]:
    """Twelve snapshots of 4 KiB blobs in 32 KiB packs, so that forgetting every third leaves
    packs wholly unused (dropped) and partly used (repacked at --max-unused 0%)."""
    repo = Repository.init(LocalBackend(path), PASSWORD.encode(), FAST_KDF, pack_size=32 * 1024)
    rng = random.Random(11)
    shared = [rng.randbytes(4096) for _ in range(4)]
    contents: dict[bytes, list[bytes]] = {}
    with repo.lock():
        for n in range(12):
            blobs = shared[: n % 4] + [rng.randbytes(4096) for _ in range(6)]
            ids = [repo.save_blob(BlobType.DATA, b)[0] for b in blobs]
            root, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"f", "file", size=4096 * len(ids), content=ids)]))
            repo.flush()
            contents[repo.save_snapshot(Snapshot("files", root, [b"/f"], "h", "u", time_ns=n + 1))] = blobs
    for snap_id in list(contents)[::3]:
        repo.backend.delete(f"snapshots/{snap_id.hex()}")
        del contents[snap_id]
    return contents


def verify(path: Path, contents: dict[bytes, list[bytes]]) -> list[str]:
    repo = Repository.open(LocalBackend(path), PASSWORD.encode())
    result = check(repo, CheckOptions(read_data=True))
    assert result.errors == [], result.errors
    for snap_id, blobs in contents.items():
        node = decode_tree(repo.load_blob(repo.load_snapshot(snap_id).root), "root")[0]
        assert [repo.load_blob(b) for b in node.content] == blobs
    return result.warnings


def run_prune(path: Path, kill_at: str | None = None, kill_after_writes: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAIRN_PASSWORD": PASSWORD, "PYTHONPATH": str(SRC)}
    env.pop(KILL_ENV, None)
    env.pop(KILL_AFTER_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    if kill_after_writes:
        env[KILL_AFTER_ENV] = str(kill_after_writes)
    return subprocess.run(
        [sys.executable, "-m", "cairn", "-r", str(path), "prune", "--max-unused", "0%"],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_the_steps_are_all_reached(tmp_path: Path) -> None:
    """Guard for the parametrised test: an uninterrupted prune passes every named step."""
    build(tmp_path / "repo")
    seen: list[str] = []
    import cairn.ops.prune as prune_mod

    original = prune_mod._checkpoint
    prune_mod._checkpoint = seen.append  # type: ignore[assignment]
    try:
        result = prune(Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD.encode()), PruneOptions(max_unused=Limit(percent=0)))
    finally:
        prune_mod._checkpoint = original  # type: ignore[assignment]
    assert result.packs_dropped and result.packs_repacked
    assert [s for s in STEPS if s in seen] == STEPS


def finishes(path: Path, contents: dict[bytes, list[bytes]]) -> None:
    """After a kill: consistent at once; the next prune succeeds and leaves nothing to do."""
    verify(path, contents)  # consistent right after the kill
    finished = run_prune(path)
    assert finished.returncode == 0, finished.stderr
    warnings = verify(path, contents)
    assert not any("unindexed" in w for w in warnings), warnings
    assert not (path / "pending").exists() or not any((path / "pending").iterdir())
    repo = Repository.open(LocalBackend(path), PASSWORD.encode())
    left = prune(repo, PruneOptions(dry_run=True))
    assert left.unused_bytes == 0 and left.leftover_packs == 0
    assert load_table(repo).superseded == []  # no replaced index object is left behind


@pytest.mark.parametrize("step", STEPS)
def test_a_prune_killed_at_any_step_leaves_a_consistent_repository(tmp_path: Path, step: str) -> None:
    path = tmp_path / "repo"
    contents = build(path)
    killed = run_prune(path, step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finishes(path, contents)


def test_a_prune_killed_after_the_kth_write_or_delete(tmp_path: Path) -> None:
    """Between the named steps too: a kill after the k-th change to the storage, at the points
    the steps do not reach (amid the pack deletions, between packs and index objects, amid the
    index deletions, before the pending object goes), found from an uninterrupted run's log."""
    pristine = tmp_path / "pristine"
    contents = build(pristine)
    counting = tmp_path / "counting"
    shutil.copytree(pristine, counting)
    faulty = FaultyBackend(LocalBackend(counting))
    prune(Repository.open(faulty, PASSWORD.encode()), PruneOptions(max_unused=Limit(percent=0)))
    # Every store and delete, numbered from 1 as the hook counts them (the lock's write first).
    changes = [(method, name.split("/")[0]) for method, name in faulty.log if method in ("store", "delete")]
    assert changes[0] == ("store", "locks") and changes[-1] == ("delete", "locks")
    deletes = {kind: [k for k, change in enumerate(changes, 1) if change == ("delete", kind)] for kind in ("data", "index")}
    assert len(deletes["data"]) >= 2 and len(deletes["index"]) >= 2, changes
    ks = [deletes["data"][0] + 1, deletes["data"][-1], deletes["index"][0], deletes["index"][-1]]
    assert changes[ks[-1]] == ("delete", "pending")  # the next change would be the pending object's deletion
    for k in ks:
        path = tmp_path / f"k{k}"
        shutil.copytree(pristine, path)
        killed = run_prune(path, kill_after_writes=k)
        assert killed.returncode == -signal.SIGKILL, (k, killed.stderr)
        finishes(path, contents)
