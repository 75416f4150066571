"""Backups through worker processes (files/pipeline_procs), which `cairn backup` uses for a local
repository: everything comes back as it was, a blob two workers meet is stored once, a killed
worker fails the backup in one line, and Ctrl-C leaves a checkpoint the next run resumes from.
A full disk met by a worker is in test_full_disk.py (the real CLI, so worker processes too)."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cairn.errors import CairnError
from cairn.files import pipeline_procs, procs
from cairn.files.archiver import BackupStatus
from cairn.files.chunker import Chunker
from cairn.files.pipeline import FileReader
from cairn.files.procs import SharedSlots
from cairn.ops import backup as backup_op
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.check import CheckOptions, check
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from conftest import FAST_KDF, SRC
from test_restore_support import (FOLDERS, PER_FOLDER, children, count_forks, folder_tree, make_every_kind, many_files,
                                  rsync_differences)

MiB = 1 << 20


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)


def reopened(repo: Repository) -> Repository:
    """The repository as another process sees it: only what was written."""
    return Repository.open(LocalBackend(Path(repo.backend.properties.location)), b"pw")


def pieces_sent(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None] = lambda: None) -> list[int]:
    """From now on, the number of chunks in each piece of a big file this process sends to a
    worker; `then` runs after the first one is sent."""
    pieces: list[int] = []
    real_send = pipeline_procs.send

    def counted_send(sock: socket.socket, message: Any, fds: Any = ()) -> None:
        real_send(sock, message, fds)
        if message[0] == "slot":
            pieces.append(len(message[1][1]))
            if len(pieces) == 1:
                then()

    monkeypatch.setattr(pipeline_procs, "send", counted_send)
    return pieces


def restored(repo: Repository, snapshot_id: bytes, src: Path, target: Path) -> list[str]:
    restore(repo, RestoreOptions(f"{snapshot_id.hex()}:{src}", str(target)))
    return rsync_differences(src, target)


def nothing_saved_and_a_rerun_completes(repo: Repository, src: Path, target: Path) -> None:
    """After a failed backup: no snapshot, and the same backup run again stores it all."""
    again = reopened(repo)
    assert again.list_snapshots() == []
    result = backup(again, BackupOptions([str(src)]))
    assert result.snapshot_id is not None
    assert check(reopened(repo), CheckOptions(read_data=True)).ok
    assert restored(again, result.snapshot_id, src, target) == []


def test_every_kind_of_entry_is_saved_through_worker_processes(repo: Repository, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    make_every_kind(src, sparse_size=64 * 1024 * 1024)
    many_files(src / "many")
    big = random.Random(1).randbytes(20 * 1024 * 1024)  # cut by the walk's big-file reader, sealed by the workers
    (src / "big.bin").write_bytes(big)
    forks = count_forks(monkeypatch)
    pieces = pieces_sent(monkeypatch)
    monkeypatch.setattr(pipeline_procs, "START_FILES", 0)  # every file through the workers
    others = children()
    result = backup(repo, BackupOptions([str(src)]))
    assert len(forks) == pipeline_procs.worker_processes() >= 2
    assert len(pieces) >= 5 and sum(pieces) >= 20 * 1024 * 1024 // repo.config.chunker.max_size
    assert children() == others  # every worker was reaped
    assert result.snapshot_id is not None and result.skipped == []
    inodes = {(st.st_ino, st.st_size) for p in src.rglob("*") if p.is_file() and not p.is_symlink() for st in [p.stat()]}
    assert result.bytes_read == sum(size for _, size in inodes)  # a hard link's file is read once
    monkeypatch.undo()  # the restore below forks its own writers
    again = reopened(repo)
    assert check(again, CheckOptions(read_data=True)).ok
    assert restored(again, result.snapshot_id, src, tmp_path / "out") == []


def test_the_workers_packed_entries_make_the_trees_the_walk_encodes(repo: Repository, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker packs the tree entry of each file it reads and the walk joins those bytes into
    the folder's tree: the trees must be the very ones the walk encodes from nodes (a backup
    read by threads, every file read again)."""
    src = tmp_path / "src"
    make_every_kind(src, sparse_size=1024 * 1024)
    many_files(src / "many")
    monkeypatch.setattr(pipeline_procs, "START_FILES", 0)
    forks = count_forks(monkeypatch)
    backup(repo, BackupOptions([str(src)]))  # reading the symlinks sets their atime once
    by_workers = backup(repo, BackupOptions([str(src)], force=True))
    assert len(forks) >= 4 and by_workers.files_new > 2000
    forked = len(forks)
    monkeypatch.setattr(backup_op, "worker_processes", lambda: 0)
    by_threads = backup(repo, BackupOptions([str(src)], force=True))
    assert len(forks) == forked and by_threads.files_new == by_workers.files_new  # read by threads
    assert by_workers.snapshot_id is not None and by_threads.snapshot_id is not None
    assert folder_tree(repo, src, by_threads.snapshot_id.hex()) == folder_tree(repo, src, by_workers.snapshot_id.hex())


@pytest.mark.parametrize("slots", ["per worker", "fewest"])
def test_a_big_file_is_cut_through_the_shared_slots_where_a_stream_is_cut(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slots: str
) -> None:
    """The walk cuts a big file a slot at a time, carrying each slot's unfinished last chunk
    into the next: the blobs must be those of the repository's Chunker on the whole stream, or
    the file would not deduplicate against the same bytes read another way. With the fewest
    slots that work (one more than there are readers, each of which holds two while it carries
    a chunk over), readers wait for slots to come back."""
    rng = random.Random(11)
    # random runs between zeros (cut at the largest size) and a tail that is no slot's multiple
    data = rng.randbytes(13 * MiB + 5) + bytes(9 * MiB) + rng.randbytes(17 * MiB + 12345)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(data)
    monkeypatch.setattr(pipeline_procs, "START_FILES", 0)
    if slots == "fewest":
        fewest = pipeline_procs.BIG_READERS + 1
        monkeypatch.setattr(pipeline_procs, "SharedSlots", lambda count, size: SharedSlots(fewest, size))
    pieces = pieces_sent(monkeypatch)
    result = backup(repo, BackupOptions([str(src)]))
    assert result.snapshot_id is not None
    assert len(pieces) >= len(data) // pipeline_procs.slot_bytes(repo.config.chunker.max_size)
    expected = {repo.blob_id(chunk) for chunk in Chunker(repo.config.chunker).chunks(io.BytesIO(data))}
    monkeypatch.undo()
    again = reopened(repo)
    again.load_index()
    assert {e.blob_id for e in again.index if e.blob_type == BlobType.DATA} == expected
    assert restored(again, result.snapshot_id, src, tmp_path / "out") == []


def test_big_files_are_cut_two_at_a_time_each_as_its_stream_is(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two big-file readers cut two files at once into the same shared slots (the fewest that
    work, so that they wait for each other's): each file's blobs must be its stream's chunks,
    and no reader may fill a slot whose carried-over chunk another has not moved out yet (the
    restored bytes would be another file's)."""
    rng = random.Random(23)
    files = {f"big{i}.bin": rng.randbytes((9 + 4 * i) * MiB + 77 * i) for i in range(3)}
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    monkeypatch.setattr(pipeline_procs, "START_FILES", 0)
    fewest = pipeline_procs.BIG_READERS + 1
    monkeypatch.setattr(pipeline_procs, "SharedSlots", lambda count, size: SharedSlots(fewest, size))
    both_in = threading.Barrier(2, timeout=20)  # broken, and the backup failed, if one waits alone
    real_cut = pipeline_procs.ProcessPipeline._cut_in_slots
    cuts_begun: list[str] = []

    def met_cut(self: pipeline_procs.ProcessPipeline, rest: Any, head: bytes) -> Any:
        cuts_begun.append(threading.current_thread().name)
        if len(cuts_begun) <= 2:
            both_in.wait()
        return real_cut(self, rest, head)

    monkeypatch.setattr(pipeline_procs.ProcessPipeline, "_cut_in_slots", met_cut)
    result = backup(repo, BackupOptions([str(src)]))
    assert result.snapshot_id is not None and len(set(cuts_begun[:2])) == 2
    chunker = Chunker(repo.config.chunker)
    expected = {repo.blob_id(chunk) for data in files.values() for chunk in chunker.chunks(io.BytesIO(data))}
    monkeypatch.undo()
    again = reopened(repo)
    again.load_index()
    assert {e.blob_id for e in again.index if e.blob_type == BlobType.DATA} == expected
    assert restored(again, result.snapshot_id, src, tmp_path / "out") == []


def test_a_big_file_changed_while_cut_in_the_shared_slots_is_read_again(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big file appended to while the walk cuts it through the slots: the first pass's chunks
    are dropped, the file is read again from the start, and the snapshot holds what it became."""
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(random.Random(5).randbytes(12 * MiB + 3))
    monkeypatch.setattr(pipeline_procs, "START_FILES", 0)
    real_content = FileReader._content
    appended: list[int] = []

    def read_then_append(self: FileReader, fd: int, size_hint: int) -> Any:
        result = real_content(self, fd, size_hint)
        if not appended and os.readlink(f"/proc/self/fd/{fd}") == str(big):
            appended.append(fd)
            with open(big, "ab") as f:
                f.write(b"appended while the walk cut the file\n")
        return result

    monkeypatch.setattr(FileReader, "_content", read_then_append)
    pieces = pieces_sent(monkeypatch)
    result = backup(repo, BackupOptions([str(src)]))
    assert appended and pieces  # it went through the slots
    assert result.snapshot_id is not None and result.skipped == []
    assert result.warnings == [(str(big), "changed while it was read; read again")]
    monkeypatch.undo()
    assert restored(reopened(repo), result.snapshot_id, src, tmp_path / "out") == []


def test_an_aborted_backup_stops_a_worker_mid_write_without_leaving_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An aborted backup ends its workers with `stop` (SIGTERM, SIGKILL only after a grace): one
    caught writing a pack removes its temporary file on the way out, as on any error, instead of
    leaving it in the repository (a SIGKILL did, 1 run in 8 of test_full_disk)."""
    backend = LocalBackend(tmp_path / "repo")
    writing = tmp_path / "writing"

    def slow_commit(self: LocalBackend, temp: str, path: str) -> None:
        writing.touch()
        time.sleep(60)

    monkeypatch.setattr(LocalBackend, "_commit", slow_commit)

    def serve(sock: socket.socket) -> None:
        procs.stoppable()
        try:
            backend.store("data/ab/abcdef", b"a pack" * 1000)
        except procs.Stopped:
            return

    stop_once_writing(serve, writing, tmp_path / "repo")
    assert list((tmp_path / "repo").rglob(".tmp-*")) == []


def stop_once_writing(serve: Callable[[socket.socket], None], writing: Path, repo_dir: Path) -> None:
    """Fork a child running `serve`, wait until it touches `writing` with a temporary file in
    `repo_dir`, stop it as an aborted backup does, and check it left by itself, in time."""
    [(pid, sock)] = procs.fork_children(1, serve)
    try:
        deadline = time.monotonic() + 30
        while not writing.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(repo_dir.rglob(".tmp-*"))  # caught in the middle of the write
        started = time.monotonic()
        procs.stop([pid], grace=20)
        assert time.monotonic() - started < 10
        assert procs.how_it_ended(pid) == "exit status 0"  # left by itself, not killed
    finally:
        procs.kill(pid)
        os.waitpid(pid, 0)
        sock.close()


def test_ctrl_c_right_after_a_fork_leaves_no_child_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands between a fork and the recording of its child: every child forked so
    far is still ended and reaped, and the Ctrl-C still stops the caller."""
    real_fork = os.fork
    forked: list[int] = []

    def fork_then_ctrl_c() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
            signal.raise_signal(signal.SIGINT)  # the key pressed the instant fork returned
        return pid

    def serve(sock: socket.socket) -> None:
        sock.recv(1)  # until the parent's end closes

    monkeypatch.setattr(os, "fork", fork_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            procs.fork_children(2, serve)
        monkeypatch.undo()
        assert len(forked) == 2  # the Ctrl-C waited for the forking to finish
        for pid in forked:
            with pytest.raises(ChildProcessError):  # ended and reaped
                os.waitpid(pid, os.WNOHANG)
    finally:
        for pid in forked:
            procs.kill(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def test_a_worker_stopped_while_its_pack_fills_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo: Repository
) -> None:
    """A worker streams its pack into a temporary file as it fills; stopped (an aborted
    backup) or failing before the pack is stored, it removes that file on the way out."""
    filling = tmp_path / "filling"

    def serve(self: pipeline_procs._Worker) -> None:
        data = os.urandom(3 << 20)
        self.repo.seal_into(self.builder, BlobType.DATA, self.repo.blob_id(data), data)
        filling.touch()
        time.sleep(60)

    monkeypatch.setattr(pipeline_procs._Worker, "serve", serve)
    shared = SharedSlots(1, 1 << 20)
    stop_once_writing(lambda sock: pipeline_procs._run_worker(repo, sock, shared), filling, tmp_path / "repo")
    assert list((tmp_path / "repo").rglob(".tmp-*")) == []
    assert list(repo.backend.list("data/")) == []


def shared_memory_mapped() -> int:
    """Bytes of shared memory this process has in RAM (RssShmem)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssShmem:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def test_the_shared_slots_give_their_memory_back_once_no_file_is_cut() -> None:
    """A big file's slots are memory of the backup only while it is cut and sealed; a slot's
    carried tail must survive a worker giving the slot back in the middle of a file."""
    slots = SharedSlots(2, 4 * MiB)
    before = shared_memory_mapped()
    with slots.filling():
        first = slots.take()
        slots.view(first)[:] = b"t" * 4 * MiB
        slots.give(first)  # sealed by a worker, while the walk still needs its tail
        assert bytes(slots.view(first)[-4:]) == b"tttt"
        assert shared_memory_mapped() - before >= 4 * MiB
    assert shared_memory_mapped() - before < MiB
    assert bytes(slots.view(first)[-4:]) == bytes(4)


def test_a_blob_met_by_several_workers_is_stored_once(repo: Repository, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    rng = random.Random(7)
    contents = [rng.randbytes(1000), rng.randbytes(1024 * 1024), rng.randbytes(9 * 1024 * 1024)]
    monkeypatch.setattr(pipeline_procs, "START_FILES", 0)
    for d in range(8):  # the same three files in 8 folders, read by whichever worker is free
        folder = src / f"copy{d:02d}"
        folder.mkdir(parents=True)
        for i, content in enumerate(contents):
            (folder / f"file{i}").write_bytes(content)
    result = backup(repo, BackupOptions([str(src)]))
    assert result.snapshot_id is not None
    again = reopened(repo)
    again.load_index()
    data = [e for e in again.index if e.blob_type == BlobType.DATA]
    assert sum(e.raw_length for e in data) == sum(len(c) for c in contents)
    assert len({e.blob_id for e in data}) == len(data)
    assert result.bytes_added - sum(len(c) for c in contents) < 64 * 1024  # the rest is trees
    assert restored(again, result.snapshot_id, src, tmp_path / "out") == []


def test_a_killed_worker_fails_the_backup_in_one_line(repo: Repository, tmp_path: Path) -> None:
    src = many_files(tmp_path / "src")
    killed: list[int] = []
    others = children()

    def kill_one(status: BackupStatus) -> None:
        if status.files >= 1500 and not killed:  # the workers start after 1,000
            killed.append(min(children() - others))
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(CairnError) as caught:
        backup(repo, BackupOptions([str(src)]), progress=kill_one)
    assert str(caught.value) == (f"backup worker process {killed[0]} ended unexpectedly (killed by signal 9); "
                                 "nothing of this run was saved as a snapshot: run the backup again")
    assert children() == others
    nothing_saved_and_a_rerun_completes(repo, src, tmp_path / "out")


def test_workers_killed_while_sealing_a_big_file_fail_the_backup_in_one_line(repo: Repository, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(3).randbytes(64 * 1024 * 1024))
    monkeypatch.setattr(pipeline_procs, "START_FILES", 0)
    others = children()
    killed: list[int] = []

    def kill_the_workers() -> None:
        killed.extend(children() - others)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

    pieces = pieces_sent(monkeypatch, then=kill_the_workers)
    read: list[int] = []  # by the walk: it stops reading a file nobody is left to seal
    real_count = pipeline_procs.ProcessPipeline._count

    def counted(self: pipeline_procs.ProcessPipeline, n: int) -> None:
        read.append(n)
        real_count(self, n)

    monkeypatch.setattr(pipeline_procs.ProcessPipeline, "_count", counted)
    with pytest.raises(CairnError) as caught:
        backup(repo, BackupOptions([str(src)]))
    assert pieces and len(killed) == pipeline_procs.worker_processes()
    assert sum(read) < 32 * 1024 * 1024
    assert re.fullmatch(r"backup worker process (\d+) ended unexpectedly \(killed by signal 9\); "
                        r"nothing of this run was saved as a snapshot: run the backup again", str(caught.value))
    assert int(str(caught.value).split()[3]) in killed
    assert children() == others
    monkeypatch.undo()
    nothing_saved_and_a_rerun_completes(repo, src, tmp_path / "out")


def test_ctrl_c_checkpoints_stops_the_workers_and_the_next_run_resumes(repo: Repository, tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole process group: the walk and the workers."""
    src = tmp_path / "src"
    for d in range(10):  # enough that the backup is still running when the signal comes
        many_files(src / f"part{d}", seed=d)
    env = {**os.environ, "CAIRN_PASSWORD": "pw", "PYTHONPATH": str(SRC), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "CAIRN_PROGRESS_FPS": "50"}
    command = [sys.executable, "-m", "cairn", "-r", str(tmp_path / "repo"), "backup", "--json", str(src)]

    def as_in_a_terminal() -> None:  # a shell without job control may have left SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=as_in_a_terminal)
    assert process.stdout is not None
    for line in process.stdout:  # Ctrl-C once a tenth of the files were visited
        status = json.loads(line)
        if status["message_type"] == "status" and status["files_done"] >= FOLDERS * PER_FOLDER:
            break
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "cairn: interrupted; the repository is left consistent, run the command again to continue"
    with pytest.raises(ProcessLookupError):  # no worker is left behind
        os.killpg(process.pid, 0)
    assert list((tmp_path / "repo" / "locks").iterdir()) == []
    assert check(reopened(repo), CheckOptions(read_data=True)).ok
    again = subprocess.run(command, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.splitlines()[-1])
    assert summary["resumed"] is True
    assert 0 < summary["files_unmodified"] < 10 * FOLDERS * PER_FOLDER
    assert restored(reopened(repo), bytes.fromhex(summary["snapshot_id"]), src, tmp_path / "out") == []
