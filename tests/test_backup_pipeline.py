"""The read/store pipeline: every file size path (small, read whole, streamed) gives the same
blobs as the repository's Chunker, and what is stored reads back byte for byte."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from conftest import FAST_KDF
from cairn.files.chunker import Chunker
from cairn.files.chunker import fastcdc
from cairn.files.pipeline import Pipeline
from cairn.repo.config import ChunkerParams
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend

KiB, MiB = 1 << 10, 1 << 20
PARAMS = ChunkerParams(min_size=16 * KiB, avg_size=64 * KiB, max_size=256 * KiB, seed=4242)


@pytest.mark.parametrize("size", [0, 1, 16 * KiB, 16 * KiB + 1, 300 * KiB, 512 * KiB, 512 * KiB + 1, 3 * MiB])
def test_the_buffer_cutter_cuts_where_the_chunker_does(size: int) -> None:
    data = random.Random(size).randbytes(size)
    streamed = list(Chunker(PARAMS).chunks(io.BytesIO(data)))
    in_place = [bytes(c.data) for c in fastcdc(PARAMS).cut_buf(data)]
    assert in_place == streamed


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)


@pytest.mark.parametrize("size", [0, 5, 256 * KiB, 256 * KiB + 1, 3 * MiB, 8 * MiB, 8 * MiB + 1, 11 * MiB])
def test_every_size_path_stores_what_the_chunker_cuts(repo: Repository, tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    repo.load_index()
    pipeline = Pipeline(repo, dry_run=False)
    try:
        folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            result = pipeline.result(pipeline.read_at(folder, b"f", os.lstat(path)))
        finally:
            os.close(folder)
    finally:
        pipeline.close()
    expected = [repo.blob_id(c) for c in Chunker(repo.config.chunker).chunks(io.BytesIO(data))]
    assert (result.error, result.size, result.content) == (None, size, expected)
    assert pipeline.bytes_read == size
    repo.flush()
    assert b"".join(repo.load_blob(b) for b in result.content) == data


@pytest.mark.parametrize("kind", ["fifo", "folder", "file"])
def test_a_worker_reads_by_its_own_fstat_and_refuses_what_is_no_longer_a_file(
    repo: Repository, tmp_path: Path, kind: str
) -> None:
    """A backup worker gets no lstat from the walk: what it opened decides (a FIFO swapped in
    must neither block the open nor be read as a file)."""
    folder = tmp_path / "src"
    folder.mkdir()
    entry = folder / "swapped"
    if kind == "fifo":
        os.mkfifo(entry)
    elif kind == "folder":
        entry.mkdir()
    else:
        entry.write_bytes(b"what the worker found" * 100)
    repo.load_index()
    pipeline = Pipeline(repo, dry_run=False)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        result = pipeline.read_file_at(dir_fd, b"swapped", None, os.getuid())
    finally:
        os.close(dir_fd)
        pipeline.close()
    if kind == "file":
        assert result.error is None and result.node is not None
        assert (result.size, result.node.size, result.node.ctime) == (2100, 2100, entry.stat().st_ctime_ns)
        repo.flush()
        assert repo.load_blob(result.content[0]) == entry.read_bytes()
    else:
        assert (result.error, result.node) == ("changed into something other than a file during the backup", None)
