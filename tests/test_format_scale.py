"""The in-memory blob index keeps its memory budget (FORMAT.md §14) and stays exact at scale.

Memory is the limit that decides how large a repository a small machine can back up: at 64 bytes
per blob, 10 million blobs fit in about 0.6 GiB. The index splits each id into a sorted 8-byte
search key and a 24-byte remainder, so ids that share a search key are the case to get right.
"""

from __future__ import annotations

import numpy as np
import pytest

from cairn.repo.index import RECORD, BlobIndex
from cairn.repo.pack import PackEntry

BLOBS = 300_000
PER_PACK = 1000
BUDGET = 64  # bytes per blob


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    """Distinct random ids, with every 100th sharing its first 8 bytes with its neighbour."""
    rng = np.random.default_rng(20261125)
    ids = rng.integers(0, 256, size=(BLOBS, 32), dtype=np.uint8)
    ids[1::100, :8] = ids[0::100, :8]
    assert len(np.unique(ids, axis=0)) == BLOBS
    return ids


def pack_id(n: int) -> bytes:
    return n.to_bytes(32, "big")


@pytest.fixture(scope="module")
def loaded(ids: np.ndarray) -> BlobIndex:
    """Built the way `Repository.load_index` builds it: packed records per pack, then compacted."""
    index = BlobIndex()
    for p in range(BLOBS // PER_PACK):
        records = b"".join(
            RECORD.pack(i % 2, ids[p * PER_PACK + i].tobytes(), i * 1000, 1000, 2000 + i) for i in range(PER_PACK)
        )
        index.add_records(pack_id(p), records)
    index.compact()
    return index


def absent_ids(ids: np.ndarray) -> list[bytes]:
    """Ids not in the index: random ones, and near misses that share a search key or a remainder."""
    rng = np.random.default_rng(7)
    random_ids = rng.integers(0, 256, size=(20_000, 32), dtype=np.uint8)
    same_key = ids[:10_000].copy()
    same_key[:, 31] ^= 0xFF  # the same first 8 bytes, another remainder
    same_rest = ids[:10_000].copy()
    same_rest[:, 0] ^= 0xFF  # the same remainder under another search key
    known = {row.tobytes() for row in ids}
    candidates = [row.tobytes() for block in (random_ids, same_key, same_rest) for row in block]
    return [c for c in candidates if c not in known]


def test_loaded_index_stays_within_64_bytes_per_blob(loaded: BlobIndex) -> None:
    assert len(loaded) == BLOBS
    assert loaded.memory_bytes() / len(loaded) <= BUDGET


def test_loaded_index_finds_every_blob_where_it_is(loaded: BlobIndex, ids: np.ndarray) -> None:
    for n in range(BLOBS):
        entry = loaded.lookup(ids[n].tobytes())
        assert entry is not None, n
        p, i = divmod(n, PER_PACK)
        assert (entry.pack_id, entry.offset, entry.raw_length, entry.blob_type) == (pack_id(p), i * 1000, 2000 + i, i % 2)


def test_loaded_index_never_finds_an_absent_blob(loaded: BlobIndex, ids: np.ndarray) -> None:
    absent = absent_ids(ids)
    assert len(absent) > 39_000
    assert [a.hex() for a in absent if loaded.lookup(a) is not None] == []


def test_an_index_grown_blob_by_blob_keeps_the_budget_and_finds_everything(ids: np.ndarray) -> None:
    """The path a backup takes: one `add` per new blob, frozen into segments as it grows."""
    index = BlobIndex()
    for n in range(BLOBS):
        index.add(pack_id(n // PER_PACK), PackEntry(0, ids[n].tobytes(), n % PER_PACK, 1, 1))
    index.compact()
    assert len(index) == BLOBS
    assert index.memory_bytes() / len(index) <= BUDGET
    sample = np.random.default_rng(3).choice(BLOBS, size=20_000, replace=False)
    assert all(index.lookup(ids[n].tobytes()) is not None for n in sample)
    assert all(index.lookup(a) is None for a in absent_ids(ids)[:5000])
