"""Restores through writer processes (files/restore_procs), which `cairn restore` uses on a local
repository: the same result as writer threads, a resumable interruption, and a clear error
when a writer process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cairn.errors import CairnError
from cairn.files import restore_procs
from cairn.files.restore_state import RestoreSettings, Tally
from cairn.files.restorer import RestoreProgress, load_tree
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from conftest import FAST_KDF, SRC
from test_restore_support import (
    FOLDERS, PER_FOLDER, children, count_forks, folder_tree, make_every_kind, many_files, rsync_differences, times,
)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)


def snapshot_of(repo: Repository, src: Path) -> str:
    result = backup(repo, BackupOptions([str(src)]))
    assert result.snapshot_id is not None
    return f"{result.snapshot_id.hex()}:{src}"


def test_every_kind_of_entry_comes_back_through_writer_processes(repo: Repository, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    make_every_kind(src, sparse_size=64 * 1024 * 1024)
    many_files(src / "many")
    before = times(src)
    snap = snapshot_of(repo, src)
    forks = count_forks(monkeypatch)
    others = children()
    target = tmp_path / "out"
    done = restore(repo, RestoreOptions(snap, str(target)))
    assert len(forks) == restore_procs.writer_processes() >= 2
    assert times(target) == before  # before rsync reads the files
    assert rsync_differences(src, target) == []
    assert done.errors == [] and done.files > FOLDERS * PER_FOLDER
    assert children() == others  # every writer was reaped


def test_an_interrupted_restore_through_processes_resumes(repo: Repository, tmp_path: Path) -> None:
    src = many_files(tmp_path / "src")
    snap = snapshot_of(repo, src)
    target = tmp_path / "out"
    others = children()

    def interrupt(p: RestoreProgress) -> None:
        if p.files >= 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore(repo, RestoreOptions(snap, str(target)), progress=interrupt)
    assert children() == others
    # The writers hold at most a few batches when the walk stops, so most files are not there yet.
    complete = sum(1 for p in target.rglob("f*") if p.is_file())
    assert 100 <= complete < FOLDERS * PER_FOLDER // 2
    done = restore(repo, RestoreOptions(snap, str(target), overwrite="if-changed"))
    assert done.unchanged >= 100 and done.files + done.unchanged == FOLDERS * PER_FOLDER
    assert rsync_differences(src, target) == []


def test_a_killed_writer_process_fails_the_restore_in_one_line(repo: Repository, tmp_path: Path) -> None:
    src = many_files(tmp_path / "src")
    snap = snapshot_of(repo, src)
    target = tmp_path / "out"
    killed: list[int] = []
    others = children()

    def kill_one(p: RestoreProgress) -> None:
        if p.files and not killed:
            killed.append(min(children() - others))
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(CairnError) as caught:
        restore(repo, RestoreOptions(snap, str(target)), progress=kill_one)
    assert str(caught.value) == (f"restore writer process {killed[0]} ended unexpectedly (killed by signal 9); "
                                 "run the restore again to finish it")
    assert children() == others
    restore(repo, RestoreOptions(snap, str(target)))
    assert rsync_differences(src, target) == []


def test_ctrl_c_in_a_terminal_stops_the_command_and_its_writers(repo: Repository, tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole process group: the walk and the writers."""
    src = many_files(tmp_path / "src")
    for d in range(FOLDERS):  # more, so the restore is still running when the signal comes
        many_files(tmp_path / "src" / f"more{d:02d}")
    snap = snapshot_of(repo, src)
    target = tmp_path / "out"
    env = {**os.environ, "CAIRN_PASSWORD": "pw", "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "cairn", "-r", str(tmp_path / "repo"), "restore", snap, "--target", str(target)]

    def as_in_a_terminal() -> None:  # a shell without job control may have left SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=as_in_a_terminal)
    deadline = time.monotonic() + 60
    while not any(target.rglob("f*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "cairn: interrupted; the repository is left consistent, run the command again to continue"
    assert no_process_left_in_group(process.pid)  # no writer is left behind
    assert list((tmp_path / "repo" / "locks").iterdir()) == []
    again = subprocess.run([*command, "--overwrite", "if-changed"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert rsync_differences(src, target) == []


def no_process_left_in_group(group: int, wait: float = 5.0) -> bool:
    """Whether the process group empties within `wait` seconds (a writer that ends on its own
    a moment after the command is not left behind); says which processes stayed if not."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    left = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,cmd", "-g", str(group)], capture_output=True, text=True)
    print(f"left in process group {group}:\n{left.stdout}", file=sys.stderr)
    return False


def test_one_batch_carries_files_of_several_folders_each_into_its_own(repo: Repository, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch gathers files across folders (one batch per folder made 6,999 batches for the
    `linux` tree, 2,877 across folders): each file still lands in its own folder, though they
    share a name."""
    src = tmp_path / "src"
    folders = ["a", "b", "c"]
    for name in folders:
        (src / name).mkdir(parents=True)
        (src / name / "same-name").write_bytes(f"the file in folder {name}\n".encode() * 100)
    backup(repo, BackupOptions([str(src)]))
    subtrees = {n.name.decode(): n.subtree for n in load_tree(repo, folder_tree(repo, src))}
    sent: list[int] = []
    real_send = restore_procs.send

    def counting_send(sock: Any, message: Any, fds: Any = ()) -> None:
        sent.append(len(fds))
        real_send(sock, message, fds)

    monkeypatch.setattr(restore_procs, "send", counting_send)
    target = tmp_path / "out"
    fds = []
    writer = restore_procs.ProcessFileWriter(repo, RestoreSettings(), Tally(None), owner=False, processes=2)
    try:
        jobs = []
        for name in folders:
            (target / name).mkdir(parents=True)
            fds.append(os.open(target / name, os.O_RDONLY | os.O_DIRECTORY))
            (node,) = load_tree(repo, subtrees[name])
            jobs.append(writer.start(fds[-1], node, f"{name}/same-name".encode()))
        assert all(job.result() for job in jobs)
    finally:
        writer.close()
        for fd in fds:
            os.close(fd)
    assert sent == [3]  # one batch, with the three folders' descriptors
    for name in folders:
        assert (target / name / "same-name").read_bytes() == (src / name / "same-name").read_bytes()
