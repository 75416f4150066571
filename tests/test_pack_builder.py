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

from cairn.repo.blob import BlobType, open_blob
from cairn.repo.pack import PackBuilder, object_name
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


def test_packs_sealed_in_place_in_a_reused_buffer_are_exactly_the_documented_format(tmp_path: Path) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "repo"), b"pw", FAST_KDF)
    rng = random.Random(5)
    first = [rng.randbytes(3 << 20), b"text " * 100_000, b""]  # incompressible, compressible, empty
    second = [rng.randbytes(1000)]  # far smaller: the reused buffer's old bytes must not show
    builder = PackBuilder()
    stored = []
    for contents in (first, second):
        for data in contents:
            repo.seal_into(builder, BlobType.DATA, repo.blob_id(data), data)
        repo.store_pack(builder)
        stored.append((builder.pack_id, contents))
        builder = PackBuilder(reuse=builder)

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
