"""The whole index as one table, for maintenance (prune, stats, repair): which index object
names which pack, and every blob in sorted NumPy columns.

`Repository.index` answers "where is this blob" for backups and restores. Maintenance needs more:
which *index objects* are live or superseded and which packs each names (so that prune rewrites
only the index objects that name a pack it removes), and a row number per blob to mark in a
compact used-blob array (one byte per blob, not a Python set of ids). Rows are sorted by the
first 8 bytes of the id, so a batch of ids is found with one `searchsorted`.

Memory: 49 bytes per blob for the columns, 4 per pack per index object naming it; loading
holds the encoded records (45 bytes per blob) once more, briefly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cairn.errors import CairnError, DamagedObject, ObjectMissing
from cairn.repo import index as index_mod
from cairn.repo.blob import open_blob
from cairn.repo.pack import object_name
from cairn.repo.repository import Repository

RECORD_DTYPE = index_mod.record_dtype()


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32) uint8 ids -> (uint64 search keys, (n, 24) remainders)."""
    keys = np.ascontiguousarray(ids[:, :8]).view(">u8").reshape(-1).astype(np.uint64)
    return keys, np.ascontiguousarray(ids[:, 8:])


def ids_array(ids: Iterable[bytes]) -> np.ndarray:
    joined = b"".join(ids)
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, 32)


@dataclass
class IndexTable:
    """Every live index record once, sorted by id; packs numbered 0..n-1."""

    pack_ids: list[bytes]
    pack_numbers: dict[bytes, int]
    key: np.ndarray
    rest: np.ndarray
    pack: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    raw: np.ndarray
    type: np.ndarray
    live: dict[bytes, np.ndarray] = field(default_factory=dict)
    """Live index object id -> the pack numbers it names."""
    superseded: list[bytes] = field(default_factory=list)
    """Index objects in storage that a live one supersedes (garbage, for prune to delete)."""

    def __len__(self) -> int:
        return len(self.key)

    def blob_id(self, row: int) -> bytes:
        return int(self.key[row]).to_bytes(8, "big") + self.rest[row].tobytes()

    def locate(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in an (n, 32) array, or -1; the first row when a blob is in two packs."""
        if len(ids) == 0 or len(self.key) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        keys, rest = split_ids(ids)
        pos = np.searchsorted(self.key, keys)
        clipped = np.minimum(pos, len(self.key) - 1)
        same_key = self.key[clipped] == keys
        found = same_key & (self.rest[clipped] == rest).all(axis=1)
        rows = np.where(found, clipped, -1).astype(np.int64)
        for i in np.nonzero(same_key & ~found)[0]:  # two ids sharing their first 8 bytes
            rows[i] = self._scan(int(clipped[i]), int(keys[i]), rest[i].tobytes())
        return rows

    def _scan(self, row: int, key: int, rest: bytes) -> int:
        while row < len(self.key) and int(self.key[row]) == key:
            if self.rest[row].tobytes() == rest:
                return row
            row += 1
        return -1

    def copies(self, row: int) -> Iterator[int]:
        """Every row holding the same blob as `row` (a blob stored in several packs)."""
        key, rest = int(self.key[row]), self.rest[row].tobytes()
        start = int(np.searchsorted(self.key, np.uint64(key)))
        for r in range(start, len(self.key)):
            if int(self.key[r]) != key:
                break
            if self.rest[r].tobytes() == rest:
                yield r

    def records(self, rows: np.ndarray) -> bytes:
        """The 45-byte index records (docs/FORMAT.md §8) of these rows, in their order."""
        out = np.zeros(len(rows), dtype=RECORD_DTYPE)
        out["type"] = self.type[rows]
        ids = out["id"]
        ids[:, :8] = self.key[rows].astype(">u8").view(np.uint8).reshape(-1, 8)
        ids[:, 8:] = self.rest[rows]
        out["id"] = ids
        out["offset"] = self.offset[rows]
        out["length"] = self.length[rows]
        out["raw"] = self.raw[rows]
        return out.tobytes()

    def rows_by_pack(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows ordered by pack, start of each pack's run in it): rows of pack p are
        ``order[starts[p]:starts[p+1]]``, in offset order."""
        order = np.lexsort((self.offset, self.pack))
        counts = np.bincount(self.pack, minlength=len(self.pack_ids))
        starts = np.zeros(len(self.pack_ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        return order, starts

    def load_blob(self, repo: Repository, row: int) -> bytes:
        """A blob's plaintext, authenticated, read with this table's location for it."""
        blob_id = self.blob_id(row)
        pack_id = self.pack_ids[int(self.pack[row])]
        sealed = repo.backend.load(object_name(pack_id), int(self.offset[row]), int(self.length[row]))
        try:
            return open_blob(repo.sealer, repo.hasher, int(self.type[row]), blob_id, sealed)
        except DamagedObject as exc:
            raise DamagedObject(f"pack {pack_id.hex()[:12]}: {exc.message}") from None


def read_index_objects(repo: Repository, index_ids: Iterable[bytes]) -> Iterator[tuple[bytes, list[tuple[bytes, bytes]], list[bytes]]]:
    """(id, packs, supersedes) of each index object; ones deleted meanwhile are skipped."""
    for index_id in index_ids:
        hex_id = index_id.hex()
        try:
            plaintext = repo.load_object("index", hex_id)
        except ObjectMissing:
            continue  # superseded and deleted by a prune since we listed
        packs, supersedes = index_mod.decode_index(plaintext, f"index {hex_id[:8]}")
        yield index_id, packs, supersedes


def list_ids(repo: Repository, prefix: str) -> list[bytes]:
    out = []
    for info in repo.backend.list(prefix):
        name = info.name.rsplit("/", 1)[-1]
        if len(name) == 64:
            try:
                out.append(bytes.fromhex(name))
            except ValueError:
                continue
    return out


COLUMNS = ("key", "rest", "pack", "offset", "length", "raw", "type")


def _columns(records: bytes, number: int) -> dict[str, np.ndarray]:
    rows = np.frombuffer(records, dtype=RECORD_DTYPE)
    keys, rest = split_ids(rows["id"])
    return {
        "key": keys, "rest": rest, "pack": np.full(len(rows), number, dtype=np.uint32),
        "offset": rows["offset"].astype(np.uint32), "length": rows["length"].astype(np.uint32),
        "raw": rows["raw"].astype(np.uint32), "type": rows["type"].astype(np.uint8),
    }


def load_table(repo: Repository) -> IndexTable:
    """Read every index object; the live ones become the table. Damage raises: maintenance
    must not act on an index it could only partly read.

    Each object's records become columns as soon as it is taken up, and its encoded bytes are
    dropped, so the peak stays near the table's own size (columns, then one sort order and
    one column being reordered), not the encoded index plus the table.
    """
    loaded: dict[bytes, list[tuple[bytes, bytes]]] = {}
    superseded: set[bytes] = set()
    for index_id, packs, supersedes in read_index_objects(repo, list_ids(repo, "index/")):
        loaded[index_id] = packs
        superseded.update(supersedes)
    garbage = sorted(i for i in loaded if i in superseded)
    pack_ids: list[bytes] = []
    numbers: dict[bytes, int] = {}
    live: dict[bytes, np.ndarray] = {}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}
    for index_id in list(loaded):
        packs = loaded.pop(index_id)
        if index_id in superseded:
            continue
        named = []
        while packs:
            pack_id, records = packs.pop()
            number = numbers.get(pack_id)
            if number is None:
                number = numbers[pack_id] = len(pack_ids)
                pack_ids.append(pack_id)
                for name, column in _columns(records, number).items():
                    parts[name].append(column)
            named.append(number)
        live[index_id] = np.array(named[::-1], dtype=np.uint32)
    columns: dict[str, np.ndarray] = {}
    empty = _columns(b"", 0)
    for name in COLUMNS:
        chunks = parts.pop(name)
        columns[name] = np.concatenate(chunks) if chunks else empty[name]
        del chunks
    order = np.argsort(columns["key"], kind="stable")
    for name in COLUMNS:
        columns[name] = columns[name][order]  # one column at a time is reordered
    del order
    return IndexTable(pack_ids=pack_ids, pack_numbers=numbers, live=live, superseded=garbage, **columns)


def try_load_table(repo: Repository) -> IndexTable:
    try:
        return load_table(repo)
    except CairnError as exc:
        raise DamagedObject(f"{exc.message}: run 'cairn check', then 'cairn repair index'") from None
