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
from cairn.files.pipeline import Pipeline, _buffer_cutter
from cairn.repo.config import ChunkerParams
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend

KiB, MiB = 1 << 10, 1 << 20
PARAMS = ChunkerParams(min_size=16 * KiB, avg_size=64 * KiB, max_size=256 * KiB, seed=4242)


@pytest.mark.parametrize("size", [0, 1, 16 * KiB, 16 * KiB + 1, 300 * KiB, 512 * KiB, 512 * KiB + 1, 3 * MiB])
def test_the_buffer_cutter_cuts_where_the_chunker_does(size: int) -> None:
    data = random.Random(size).randbytes(size)
    streamed = list(Chunker(PARAMS).chunks(io.BytesIO(data)))
    in_place = [bytes(c.data) for c in _buffer_cutter(PARAMS).cut_buf(data)]
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
