"""Packs a backup worker writes: blobs sealed straight into the pack's buffer, and that buffer
handed on to the next pack. Each stored pack must be exactly docs/FORMAT.md §7 — read here
with struct and AES-GCM directly, not through cairn's pack parser — with nothing left over
from the larger pack the buffer held before."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import pytest

from cairn.repo.blob import BlobType, open_blob
from cairn.repo.pack import SINK_BYTES, PackBuilder, object_name
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend
from conftest import FAST_KDF


def read_pack_as_format_md_says(data: bytes, pack_id: bytes, data_key: bytes) -> list[tuple[int, bytes, int, int]]:
    """The header's records (type, id, sealed length, plaintext length), after checking that
    the sealed lengths add up to exactly where the sealed header starts."""
    (header_length,) = struct.unpack(">I", data[-4:])
    start = len(data) - 4 - header_length
    sealed = data[start:-4]
    header = AESGCM(data_key).decrypt(sealed[:12], sealed[12:], f"data/{pack_id.hex()}".encode())
    version, count = struct.unpack(">BI", header[:5])
    assert version == 1
    records = [struct.unpack(">B32sII", header[5 + 41 * i:5 + 41 * (i + 1)]) for i in range(count)]
    assert len(header) == 5 + 41 * count
    assert sum(r[2] for r in records) == start
    return records


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_packs_sealed_in_place_in_a_reused_buffer_are_exactly_the_documented_format(tmp_path: Path, streamed: bool) -> None:
    """Also for a pack streamed to its local folder as it fills (`Repository.streamed_pack`)."""
    repo = Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)
    new_pack = repo.streamed_pack if streamed else PackBuilder
    rng = random.Random(5)
    first = [rng.randbytes(3 << 20), b"text " * 100_000, b""]  # incompressible, compressible, empty
    second = [rng.randbytes(1000)]  # far smaller: the reused buffer's old bytes must not show
    builder = new_pack()
    stored = []
    for contents in (first, second):
        for data in contents:
            repo.seal_into(builder, BlobType.DATA, repo.blob_id(data), data)
        repo.store_pack(builder)
        stored.append((builder.pack_id, contents))
        builder = new_pack(reuse=builder)

    for pack_id, contents in stored:
        raw = repo.backend.load(object_name(pack_id))
        records = read_pack_as_format_md_says(raw, pack_id, repo.master.data_key)
        assert [(t, blob_id, plain) for t, blob_id, _, plain in records] == [
            (BlobType.DATA, repo.blob_id(d), len(d)) for d in contents]
        offset = 0
        for (blob_type, blob_id, length, _), content in zip(records, contents):
            sealed = raw[offset:offset + length]
            assert open_blob(repo.sealer, repo.hasher, blob_type, blob_id, sealed) == content
            offset += length
    assert os.path.getsize(tmp_path / "repo" / object_name(stored[1][0])) < 2000


def test_a_streamed_pack_is_written_as_it_fills_and_is_no_object_until_stored(tmp_path: Path) -> None:
    """A backup worker's pack on a local folder goes into a temporary file a megabyte at a
    time, so the worker holds about that much of it rather than the whole pack; nothing lists
    it until it is stored, and an abandoned one (a failed or stopped backup) leaves nothing."""
    repo = Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)
    rng = random.Random(6)
    contents = [rng.randbytes(700_000) for _ in range(12)]  # 8.4 MB, incompressible
    builder = repo.streamed_pack()
    for data in contents:
        repo.seal_into(builder, BlobType.DATA, repo.blob_id(data), data)
    [temporary] = list((tmp_path / "repo").rglob(".tmp-*"))
    assert builder.size - temporary.stat().st_size < SINK_BYTES + 700_100  # the rest is on disk
    assert list(repo.backend.list("data/")) == []
    repo.store_pack(builder)
    assert list((tmp_path / "repo").rglob(".tmp-*")) == []
    raw = repo.backend.load(object_name(builder.pack_id))
    records = read_pack_as_format_md_says(raw, builder.pack_id, repo.master.data_key)
    assert [blob_id for _, blob_id, _, _ in records] == [repo.blob_id(d) for d in contents]

    abandoned = repo.streamed_pack(reuse=builder)
    for data in contents:
        repo.seal_into(abandoned, BlobType.DATA, repo.blob_id(data), data)
    assert list((tmp_path / "repo").rglob(".tmp-*"))
    assert abandoned.sink is not None
    abandoned.sink.discard()
    assert list((tmp_path / "repo").rglob(".tmp-*")) == []
    assert [info.name for info in repo.backend.list("data/")] == [object_name(builder.pack_id)]
