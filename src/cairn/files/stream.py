"""Backing up a stream (standard input, a command's output) as one file in a snapshot.

For database dumps and the like: ``pg_dump db | cairn backup --stdin --stdin-filename db.sql``
or ``cairn backup --stdin-from-command -- pg_dump db``. The snapshot's root holds the file under
the given name (a name with slashes gets folders), owned by the user running cairn, mode 0644,
all times the moment the backup started, as restic does.

A command is run without a shell; its standard error goes to ours. Its exit status is checked
after its output has been stored and before anything is flushed: a dump that failed half-way
must never be saved as a snapshot that looks complete. (Its chunks may have reached a pack by
then; without an index or snapshot naming them they are garbage that prune removes.)
"""

from __future__ import annotations

import os
import subprocess
from typing import cast

from cairn.errors import CairnError, UsageError
from cairn.files.archiver import ArchiveResult
from cairn.files.chunker import RawReader
from cairn.files.metadata import group_name, user_name
from cairn.files.pipeline import Pipeline
from cairn.files.tree import DIR, FILE, Node, encode_tree, name_error
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository


def stream_path(filename: str) -> list[bytes]:
    """The components of a --stdin-filename; refuses what could not be a path in a tree."""
    parts = [p for p in os.fsencode(filename).split(b"/") if p not in (b"", b".")]
    if not parts or any(name_error(p) for p in parts):
        raise UsageError(f"--stdin-filename {filename!r} is not a usable file name")
    return parts


def _node(name: bytes, kind: str, mode: int, time_ns: int) -> Node:
    uid, gid = os.getuid(), os.getgid()
    return Node(name=name, type=kind, mode=mode, uid=uid, gid=gid, user=user_name(uid), group=group_name(gid),
                mtime=time_ns, atime=time_ns, ctime=time_ns)


def archive_stream(
    repo: Repository, source: RawReader | list[str], filename: str, time_ns: int, dry_run: bool = False
) -> ArchiveResult:
    """Store `source` (a readable binary stream, or a command to run) as file `filename`."""
    parts = stream_path(filename)
    repo.load_index()
    pipeline = Pipeline(repo, dry_run)
    ok = False
    try:
        if isinstance(source, list):
            content, size = _run_command(pipeline, source)
        else:
            try:
                content, size = pipeline.read_stream(source)
            except OSError as exc:
                raise CairnError(f"reading standard input failed: {exc}") from None
        node = _node(parts[-1], FILE, 0o644, time_ns)
        node.size, node.content = size, content
        for name in reversed(parts[:-1]):
            subtree = pipeline.store(BlobType.TREE, encode_tree([node]))
            node = _node(name, DIR, 0o755, time_ns)
            node.subtree = subtree
        root = pipeline.store(BlobType.TREE, encode_tree([node]))
        ok = True
    finally:
        pipeline.close(abort=not ok)
    return ArchiveResult(
        root=root, files_new=1, dirs_new=len(parts) - 1, bytes_total=size, bytes_read=pipeline.bytes_read,
        bytes_added=pipeline.bytes_added, blobs_new=pipeline.blobs_new,
    )


def _run_command(pipeline: Pipeline, command: list[str]) -> tuple[list[bytes], int]:
    if not command:
        raise UsageError("--stdin-from-command needs a command to run")
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    except OSError as exc:
        raise UsageError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    assert process.stdout is not None
    try:
        with process.stdout:
            content, size = pipeline.read_stream(cast(RawReader, process.stdout))
    except BaseException:
        process.kill()
        process.wait()
        raise
    status = process.wait()
    if status != 0:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        raise CairnError(f"{command[0]} {how}; its output was not saved as a snapshot")
    return content, size
