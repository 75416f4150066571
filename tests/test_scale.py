"""Small, fast versions of the scale checks of bench/scale.py (issue 7).

A million synthetic ids loaded the way `Repository.load_index` loads them: at most 64 bytes of
memory per blob, every id found where it is, no absent id found, and building the index peaks
well below three copies of its columns (it is built in place, not by concatenation).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from cairn.repo.index import BlobIndex, record_dtype

BLOBS = 1_000_000
PER_PACK = 2000
BUDGET = 64


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 256, size=(BLOBS, 32), dtype=np.uint8)
    ids[1::1000, :8] = ids[0::1000, :8]  # some ids share their 8-byte search key
    return ids


def records_of(ids: np.ndarray) -> list[tuple[bytes, bytes]]:
    rows = np.zeros(len(ids), dtype=record_dtype())
    rows["id"] = ids
    rows["type"] = np.arange(len(ids)) % 2
    rows["offset"] = np.arange(len(ids)) % PER_PACK * 100
    rows["length"] = 100
    rows["raw"] = np.arange(len(ids), dtype=np.uint32)
    data = rows.tobytes()
    size = record_dtype().itemsize * PER_PACK
    return [(p.to_bytes(32, "big"), data[p * size:(p + 1) * size]) for p in range(len(ids) // PER_PACK)]


@pytest.fixture(scope="module")
def loaded(ids: np.ndarray) -> tuple[BlobIndex, int]:
    packs = records_of(ids)
    tracemalloc.start()
    try:
        index = BlobIndex()
        for pack_id, records in packs:
            index.add_records(pack_id, records)
        index.compact()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return index, peak


def test_a_million_blobs_fit_in_64_bytes_each(loaded: tuple[BlobIndex, int]) -> None:
    index, _ = loaded
    assert len(index) == BLOBS
    assert index.memory_bytes() / BLOBS <= BUDGET


def test_loading_peaks_below_two_copies_of_the_columns(loaded: tuple[BlobIndex, int]) -> None:
    index, peak = loaded
    assert peak <= 2 * index.memory_bytes(), peak / BLOBS


def test_every_id_is_found_where_it_is(loaded: tuple[BlobIndex, int], ids: np.ndarray) -> None:
    index, _ = loaded
    for n in range(BLOBS):
        entry = index.lookup(ids[n].tobytes())
        assert entry is not None and entry.raw_length == n, n
        assert entry.pack_id == (n // PER_PACK).to_bytes(32, "big") and entry.blob_type == n % 2


def test_absent_ids_are_not_found(loaded: tuple[BlobIndex, int], ids: np.ndarray) -> None:
    index, _ = loaded
    near = ids[:20_000].copy()
    near[:, 31] ^= 0x5A  # same search key, other remainder
    random_ids = np.random.default_rng(12).integers(0, 256, size=(20_000, 32), dtype=np.uint8)
    assert not any(index.lookup(row.tobytes()) is not None for row in (*near, *random_ids))


def test_lookups_between_add_records_see_the_records(ids: np.ndarray) -> None:
    """A lookup before compact() builds the pending records; later ones still work."""
    index = BlobIndex()
    packs = records_of(ids[:2 * PER_PACK])
    index.add_records(*packs[0])
    assert index.lookup(ids[5].tobytes()) is not None
    index.add_records(*packs[1])
    assert len(index) == 2 * PER_PACK
    assert index.lookup(ids[PER_PACK + 5].tobytes()) is not None
    assert index.lookup(ids[5].tobytes()) is not None


def test_blobs_added_one_by_one_are_found_while_the_filter_grows(ids: np.ndarray) -> None:
    """The write path of a backup: look up, then add, one blob at a time, past several rebuilds
    of the Bloom filter that answers misses; every added id is then found, no other one is."""
    from cairn.repo.pack import PackEntry

    index = BlobIndex()
    count = 150_000  # the filter starts with room for 131,072 entries: one rebuild at least
    for n in range(count):
        blob_id = ids[n].tobytes()
        assert index.lookup(blob_id) is None
        index.add(b"p" * 32, PackEntry(0, blob_id, n, 1, 1))
    assert all(index.lookup(ids[n].tobytes()) is not None for n in range(0, count, 7))
    assert not any(index.lookup(ids[n].tobytes()) is not None for n in range(count, count + 20_000))


def test_lookup_many_answers_as_lookup_does(loaded: tuple[BlobIndex, int], ids: np.ndarray) -> None:
    """The restore's batched lookup: every id that lookup() finds, at the same place, including
    ids that share their search key with another; None for absent ids and malformed ones."""
    index, _ = loaded
    present = [ids[n].tobytes() for n in (*range(0, 3000), *range(BLOBS - 2000, BLOBS))]  # both of many key-sharing pairs
    near = ids[:500].copy()
    near[:, 31] ^= 0x5A
    wanted = [*present, *(row.tobytes() for row in near), b"short", present[7]]
    assert index.lookup_many(wanted) == [index.lookup(b) if len(b) == 32 else None for b in wanted]
    assert all(entry is not None for entry in index.lookup_many(present))
    assert index.lookup_many([]) == []


def test_lookup_many_sees_blobs_added_since_the_load(ids: np.ndarray) -> None:
    """Pending entries (a dict) and several segments: the newest copy of nothing is missed."""
    from cairn.repo.pack import PackEntry

    index = BlobIndex()
    index.add_records(*records_of(ids[:PER_PACK])[0])
    index.compact()
    for n in range(PER_PACK, PER_PACK + 40_000):  # past PENDING_LIMIT: a second segment and a pending dict
        index.add(b"q" * 32, PackEntry(1, ids[n].tobytes(), n, 7, n))
    wanted = [ids[n].tobytes() for n in range(0, PER_PACK + 40_000, 13)]
    entries = index.lookup_many(wanted)
    assert entries == [index.lookup(b) for b in wanted]
    assert all(e is not None and e.blob_id == b for e, b in zip(entries, wanted))
