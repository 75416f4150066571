"""The blob index: which pack holds each blob, in about 49 bytes of memory per blob.

A dict of bytes objects would cost ~250 bytes per blob (restic needs ~350); at 10 million
blobs that is gigabytes. Instead entries live in sorted NumPy columns ("segments"): the first 8
bytes of the id as a uint64 search key, the other 24 bytes, and four uint32 fields plus a type
byte. New entries collect in a small dict and are frozen into a segment when it fills; segments
of similar size are merged (log-structured), so a lookup searches a handful of sorted arrays.
A Bloom filter over the search keys (2 bits set per blob in 8-24 bits per blob, so 1-3 bytes
per blob; built once misses add up to a 32nd of the entries, rebuilt bigger when the index
outgrows it) answers most lookups of an absent id without touching the segments: a first
backup looks up every new blob three times (before sealing, again under the repository's lock,
and when indexing the uploaded pack), and each miss otherwise costs one NumPy search per
segment (~4.5 us at 500,000 blobs).
A bulk load (`add_records` per pack, then `compact`, as `Repository.load_index` does) keeps the
caller's packed records and builds them into one segment in place at the first lookup: loading
10 million blobs peaks at about 81 bytes per blob above the records, not 165 (bench/scale.py).

Index objects in storage (docs/FORMAT.md, "Index objects") list, per pack, packed 45-byte records.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from cairn.errors import DamagedObject
from cairn.repo import encoding
from cairn.repo.pack import PackEntry

if TYPE_CHECKING:
    import numpy as np

# NumPy is imported by the functions that use it, not here: it costs ~21 MiB of RSS, and a
# command that never looks a blob up (snapshots, forget, key, ...) should not pay for it. Above
# all it must not be resident while Argon2id holds its 64 MiB, since peak RSS is their sum.

INDEX_FORMAT = 1
RECORD = struct.Struct(">B32sIII")  # type, id, offset, length, plaintext length
PENDING_LIMIT = 1 << 15
BLOOM_MIN_BITS = 1 << 20  # 128 KiB
BLOOM_BITS_PER_BLOB = 12  # at least, when built; rebuilt bigger below 8 (2 bits per blob: 3-5% false hits)


@cache
def record_dtype() -> np.dtype:
    """The NumPy record type of one packed index record (RECORD), built at first use."""
    import numpy as np

    dtype = np.dtype([("type", "u1"), ("id", "u1", (32,)), ("offset", ">u4"), ("length", ">u4"), ("raw", ">u4")])
    assert dtype.itemsize == RECORD.size
    return dtype


@dataclass(frozen=True)
class IndexEntry:
    """Where one blob lives."""

    blob_id: bytes
    blob_type: int
    pack_id: bytes
    offset: int
    length: int
    raw_length: int


class _Segment:
    """Immutable sorted columns."""

    __slots__ = ("key", "rest", "pack", "offset", "length", "raw", "type")
    key: np.ndarray
    rest: np.ndarray
    pack: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    raw: np.ndarray
    type: np.ndarray

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        import numpy as np

        order = np.argsort(cols["key"], kind="stable")
        for name in self.__slots__:
            setattr(self, name, np.ascontiguousarray(cols[name][order]))

    @classmethod
    def from_records(cls, parts: list[tuple[int, bytes]]) -> _Segment:
        """One segment from (pack number, packed records) pairs, built in place: the columns
        are allocated once at their final size and filled pack by pack, then sorted one column
        at a time, so building peaks near 49 + 8 + 24 bytes per blob, not a multiple of it."""
        import numpy as np

        n = sum(len(records) // RECORD.size for _, records in parts)
        seg = cls.__new__(cls)
        seg.key = np.empty(n, dtype=np.uint64)
        seg.rest = np.empty((n, 24), dtype=np.uint8)
        seg.pack = np.empty(n, dtype=np.uint32)
        seg.offset = np.empty(n, dtype=np.uint32)
        seg.length = np.empty(n, dtype=np.uint32)
        seg.raw = np.empty(n, dtype=np.uint32)
        seg.type = np.empty(n, dtype=np.uint8)
        at = 0
        for pack, records in parts:
            rows = np.frombuffer(records, dtype=record_dtype())
            end = at + len(rows)
            ids = rows["id"]
            seg.key[at:end] = np.ascontiguousarray(ids[:, :8]).view(">u8").reshape(-1)
            seg.rest[at:end] = ids[:, 8:]
            seg.pack[at:end] = pack
            seg.offset[at:end] = rows["offset"]
            seg.length[at:end] = rows["length"]
            seg.raw[at:end] = rows["raw"]
            seg.type[at:end] = rows["type"]
            at = end
        order = np.argsort(seg.key, kind="stable")
        for name in cls.__slots__:
            setattr(seg, name, getattr(seg, name)[order])
        return seg

    def __len__(self) -> int:
        return len(self.key)

    @classmethod
    def merge(cls, older: _Segment, newer: _Segment) -> _Segment:
        """Both sorted: place each row by one `searchsorted`, no re-sort. Column by column, each
        of the inputs' columns is dropped as soon as it is copied, so a merge peaks near one
        copy of the columns plus the largest column, not three copies. For equal keys older
        rows come first, as a stable sort of older + newer would put them."""
        import numpy as np

        n = len(older) + len(newer)
        at_new = np.searchsorted(older.key, newer.key, side="right") + np.arange(len(newer))
        from_older = np.ones(n, dtype=bool)
        from_older[at_new] = False
        seg = cls.__new__(cls)
        for name in cls.__slots__:
            a, b = getattr(older, name), getattr(newer, name)
            out = np.empty((n, *a.shape[1:]), dtype=a.dtype)
            out[at_new] = b
            out[from_older] = a
            setattr(seg, name, out)
            setattr(older, name, out[:0])  # drop the input column now: older and newer are spent
            setattr(newer, name, out[:0])
            del a, b
        return seg

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.__slots__}

    def find(self, key: int, rest: bytes) -> int:
        import numpy as np

        i = int(np.searchsorted(self.key, np.uint64(key)))
        while i < len(self.key) and int(self.key[i]) == key:
            if self.rest[i].tobytes() == rest:
                return i
            i += 1
        return -1


def _split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32) uint8 ids -> (uint64 keys, (n, 24) uint8 remainders)."""
    import numpy as np

    keys = np.ascontiguousarray(ids[:, :8]).view(">u8").reshape(-1).astype(np.uint64)
    return keys, np.ascontiguousarray(ids[:, 8:])


class BlobIndex:
    """blob id -> IndexEntry. Not thread-safe: the repository serialises access."""

    def __init__(self) -> None:
        self.pack_ids: list[bytes] = []
        self._pack_numbers: dict[bytes, int] = {}
        self._segments: list[_Segment] = []
        self._pending: dict[bytes, tuple[int, int, int, int, int]] = {}
        # Packed records given to add_records, not yet columns: a bulk load builds them into
        # one segment at the first lookup or at compact(). They are the caller's bytes objects
        # (the decoded index objects), so holding them costs no copy.
        self._records: list[tuple[int, bytes]] = []
        self._record_count = 0
        # Bloom filter over every entry's search key; None until the first lookup builds it
        # (a bulk load pays nothing for it), and again whenever it must be rebuilt bigger.
        self._bloom: bytearray | None = None
        self._bloom_mask = 0
        self._bloom_room = 0  # entries it may still take before it is rebuilt
        self._misses = 0  # lookups of absent ids without a filter: it is built when they add up

    def __len__(self) -> int:
        return len(self._pending) + self._record_count + sum(len(s) for s in self._segments)

    def _build_records(self) -> None:
        if self._records:
            segment = _Segment.from_records(self._records)
            self._records, self._record_count = [], 0
            self._append_segment(segment)
            self._bloom = None  # built again, with these, when misses call for it

    def _pack_number(self, pack_id: bytes) -> int:
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = self._pack_numbers[pack_id] = len(self.pack_ids)
            self.pack_ids.append(pack_id)
        return number

    def has_pack(self, pack_id: bytes) -> bool:
        """Whether an entry of the index (loaded, or added by this writer) is in `pack_id`."""
        return pack_id in self._pack_numbers

    def add(self, pack_id: bytes, entry: PackEntry) -> None:
        if entry.blob_id in self:
            return  # a duplicate from a concurrent writer: either copy serves
        self._pending[entry.blob_id] = (
            self._pack_number(pack_id), entry.offset, entry.length, entry.raw_length, entry.blob_type,
        )
        bloom = self._bloom
        if bloom is not None:
            if self._bloom_room <= 0:
                self._bloom = None  # rebuilt bigger at the next lookup: the write path is busy
                self._misses = len(self)
            else:
                self._bloom_room -= 1
                key, mask = int.from_bytes(entry.blob_id[:8], "big"), self._bloom_mask
                low, high = key & mask, (key >> 32) & mask
                bloom[low >> 3] |= 1 << (low & 7)
                bloom[high >> 3] |= 1 << (high & 7)
        if len(self._pending) >= PENDING_LIMIT:
            self._freeze()

    def add_records(self, pack_id: bytes, records: bytes) -> None:
        """Add a pack's packed 45-byte index records at once (the fast path when loading)."""
        if len(records) % RECORD.size:
            raise DamagedObject("an index object holds a truncated record list")
        if records:
            self._records.append((self._pack_number(pack_id), bytes(records)))
            self._record_count += len(records) // RECORD.size
            self._bloom = None  # rebuilt with these at the next lookup

    def _freeze(self) -> None:
        import numpy as np

        if not self._pending:
            return
        ids = np.frombuffer(b"".join(self._pending), dtype=np.uint8).reshape(-1, 32)
        values = np.array(list(self._pending.values()), dtype=np.uint64).reshape(-1, 5)
        keys, rest = _split_ids(ids)
        self._pending = {}
        self._append_segment(
            {
                "key": keys, "rest": rest, "pack": values[:, 0].astype(np.uint32),
                "offset": values[:, 1].astype(np.uint32), "length": values[:, 2].astype(np.uint32),
                "raw": values[:, 3].astype(np.uint32), "type": values[:, 4].astype(np.uint8),
            }
        )

    def _append_segment(self, segment: _Segment | dict[str, np.ndarray]) -> None:
        self._segments.append(segment if isinstance(segment, _Segment) else _Segment(segment))
        # Merge while the newest segment is at least half the size of the one before: keeps
        # the number of segments logarithmic in the number of entries.
        while len(self._segments) > 1 and 2 * len(self._segments[-1]) >= len(self._segments[-2]):
            newer, older = self._segments.pop(), self._segments.pop()
            self._segments.append(_Segment.merge(older, newer))

    def compact(self) -> None:
        """Freeze pending entries and merge everything into one segment (after a bulk load)."""
        self._build_records()
        self._freeze()
        while len(self._segments) > 1:
            newer, older = self._segments.pop(), self._segments.pop()
            self._segments.append(_Segment.merge(older, newer))

    def _build_bloom(self) -> bytearray:
        """A Bloom filter of every entry's key, with room for as many entries again."""
        import numpy as np

        count = len(self)
        bits = BLOOM_MIN_BITS
        while bits < BLOOM_BITS_PER_BLOB * count and bits < 1 << 32:
            bits <<= 1
        mask = bits - 1
        table = np.zeros(bits >> 3, dtype=np.uint8)
        parts = [seg.key for seg in self._segments]
        if self._pending:
            parts.append(_split_ids(np.frombuffer(b"".join(self._pending), dtype=np.uint8).reshape(-1, 32))[0])
        for keys in parts:
            for shift in (0, 32):
                positions = (keys >> np.uint64(shift)) & np.uint64(mask)
                np.bitwise_or.at(table, positions >> np.uint64(3), np.left_shift(np.uint8(1), (positions & np.uint64(7)).astype(np.uint8)))
        self._bloom = bytearray(table.tobytes())
        self._bloom_mask = mask
        self._bloom_room = max(0, bits // 8 - count)
        self._misses = 0
        return self._bloom

    def _pending_entry(self, blob_id: bytes, pending: tuple[int, int, int, int, int]) -> IndexEntry:
        pack, offset, length, raw, blob_type = pending
        return IndexEntry(blob_id, blob_type, self.pack_ids[pack], offset, length, raw)

    def lookup_many(self, blob_ids: list[bytes]) -> list[IndexEntry | None]:
        """lookup() of each id, with one vectorised search per segment for all of them: a
        restore plans a folder's blobs at once, and one NumPy call per id cost more than the
        search itself (~3 us each)."""
        import numpy as np

        if self._records:
            self._build_records()
        found: list[IndexEntry | None] = [None] * len(blob_ids)
        todo = []
        for i, blob_id in enumerate(blob_ids):
            pending = self._pending.get(blob_id)
            if pending is not None:
                found[i] = self._pending_entry(blob_id, pending)
            elif len(blob_id) == 32:
                todo.append(i)
        for seg in reversed(self._segments):
            if not todo:
                break
            if not len(seg):
                continue
            ids = np.frombuffer(b"".join([blob_ids[i] for i in todo]), dtype=np.uint8).reshape(-1, 32)
            keys, rests = _split_ids(ids)
            at = np.minimum(np.searchsorted(seg.key, keys), len(seg) - 1)
            same_key = seg.key[at] == keys
            hit = same_key & (seg.rest[at] == rests).all(axis=1)
            rows = at[hit]
            for i, blob_type, pack, offset, length, raw in zip(
                [todo[j] for j in np.flatnonzero(hit).tolist()], seg.type[rows].tolist(), seg.pack[rows].tolist(),
                seg.offset[rows].tolist(), seg.length[rows].tolist(), seg.raw[rows].tolist(),
            ):
                found[i] = IndexEntry(blob_ids[i], blob_type, self.pack_ids[pack], offset, length, raw)
            # Another id may share the first 8 bytes (the key) and sit after the first match.
            for j in np.flatnonzero(same_key & ~hit).tolist():
                found[todo[j]] = self.lookup(blob_ids[todo[j]])
            todo = [todo[j] for j in np.flatnonzero(~same_key).tolist()]
        return found

    def __contains__(self, blob_id: bytes) -> bool:
        return self.lookup(blob_id) is not None

    def lookup(self, blob_id: bytes) -> IndexEntry | None:
        if self._records:
            self._build_records()
        pending = self._pending.get(blob_id)
        if pending is not None:
            return self._pending_entry(blob_id, pending)
        key, rest = int.from_bytes(blob_id[:8], "big"), blob_id[8:]
        bloom = self._bloom
        # Building costs ~80 ns per entry and saves ~2.5 us per miss: only once misses add up
        # to a 32nd of the entries (at the second miss for a new repository; an incremental
        # backup of a huge one may never pay for it). len() is a sum: asked only after a miss.
        if bloom is None and self._misses and self._misses >= len(self) >> 5:
            bloom = self._build_bloom()
        if bloom is not None:
            mask = self._bloom_mask
            low, high = key & mask, (key >> 32) & mask
            if not (bloom[low >> 3] >> (low & 7)) & 1 or not (bloom[high >> 3] >> (high & 7)) & 1:
                return None
        for seg in reversed(self._segments):
            i = seg.find(key, rest)
            if i >= 0:
                return IndexEntry(
                    blob_id, int(seg.type[i]), self.pack_ids[int(seg.pack[i])],
                    int(seg.offset[i]), int(seg.length[i]), int(seg.raw[i]),
                )
        if bloom is None:
            self._misses += 1
        return None

    def __iter__(self) -> Iterator[IndexEntry]:
        self._build_records()
        for blob_id in list(self._pending):
            entry = self.lookup(blob_id)
            assert entry is not None
            yield entry
        for seg in self._segments:
            for i in range(len(seg)):
                blob_id = int(seg.key[i]).to_bytes(8, "big") + seg.rest[i].tobytes()
                yield IndexEntry(
                    blob_id, int(seg.type[i]), self.pack_ids[int(seg.pack[i])],
                    int(seg.offset[i]), int(seg.length[i]), int(seg.raw[i]),
                )

    def memory_bytes(self) -> int:
        """Bytes held by the columns (what the scale benchmark divides by the blob count)."""
        self._build_records()
        return sum(sum(c.nbytes for c in s.columns().values()) for s in self._segments)


def pack_records(entries: Iterable[PackEntry]) -> bytes:
    """A pack's entries as an index object holds them: 45-byte records, one after another."""
    return b"".join([RECORD.pack(e.blob_type, e.blob_id, e.offset, e.length, e.raw_length) for e in entries])


def encode_index(packs: Iterable[tuple[bytes, bytes]], supersedes: Iterable[bytes] = ()) -> bytes:
    """The plaintext of an index object describing `packs`: (pack id, `pack_records`) pairs."""
    listed = [[pack_id, records] for pack_id, records in packs]
    for _, records in listed:
        assert len(records) % RECORD.size == 0
    return encoding.pack({"v": INDEX_FORMAT, "packs": listed, "supersedes": list(supersedes)})


def decode_index(plaintext: bytes, what: str) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """(pack id, packed records) pairs and the ids of index objects this one replaces."""
    obj = encoding.unpack_map(plaintext, what)
    if encoding.field(obj, "v", int, what) != INDEX_FORMAT:
        raise DamagedObject(f"{what} has an unknown index format")
    packs = []
    for item in encoding.field(obj, "packs", list, what):
        if (
            not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes)
            or len(item[0]) != 32 or not isinstance(item[1], bytes) or len(item[1]) % RECORD.size
        ):
            raise DamagedObject(f"{what} is damaged: a pack entry is malformed")
        packs.append((item[0], item[1]))
    supersedes = encoding.field(obj, "supersedes", list, what)
    if not all(isinstance(s, bytes) and len(s) == 32 for s in supersedes):
        raise DamagedObject(f"{what} is damaged: malformed 'supersedes'")
    return packs, supersedes


def iter_records(records: bytes) -> Iterator[PackEntry]:
    for i in range(0, len(records), RECORD.size):
        blob_type, blob_id, offset, length, raw = RECORD.unpack_from(records, i)
        yield PackEntry(blob_type, blob_id, offset, length, raw)


def new_index_id() -> bytes:
    return os.urandom(32)
