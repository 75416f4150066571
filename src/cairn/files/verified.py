"""The local half of the files cache: which snapshots are known to have all their blobs indexed.

Reusing a parent's content ids is safe only if each id is still in the index (see filescache).
Asking the index once per id costs about 5 µs (a NumPy search per id), a quarter of an
unchanged re-backup. This record lets a backup ask once per snapshot instead:

    <cache>/<repository id>/verified/<snapshot id>  =  u32 n || the ids of the n index objects
                                                        present when the snapshot was saved
                                                        || the ids of the packs it relies on

A snapshot is saved only once every blob it references is in the index (stored by this run, or
checked). Index objects are never modified; a blob leaves the index only when the object naming
it is deleted or superseded by a newer one (prune, `repair index`). So if every recorded object
still exists and none of the objects written since supersedes anything, every blob of the
snapshot is still in the index, and the per-id check would answer yes for each: it is skipped.
Any doubt (a recorded object gone, a superseding object, more new objects than are worth
reading, an unreadable record) falls back to checking each id. Like any cache it can only make
a backup slower, never wrong, as long as the repository's objects are immutable.

The packs matter for prune running beside the backup: a writer declares every pack its
snapshot relies on (`Repository.relied`, noted by each index lookup), so that a prune
committing meanwhile cannot leave them out of the live index. Skipping the lookups would skip
those declarations; the record keeps the packs the snapshot relied on, and a backup that trusts
the record declares them all at once instead.
"""

from __future__ import annotations

import struct
from pathlib import Path

from cairn.errors import CairnError
from cairn.repo import index as index_mod
from cairn.repo.repository import Repository
from cairn.storage.local import replace_file

ID_SIZE = 32
# Reading more new index objects than this to look for `supersedes` costs more than it saves.
MAX_NEW_INDEX_OBJECTS = 32


def index_ids(repo: Repository) -> set[bytes]:
    ids = set()
    for obj in repo.backend.list("index/"):
        try:
            ids.add(bytes.fromhex(obj.name.rsplit("/", 1)[-1]))
        except ValueError:
            continue
    return ids


class VerifiedSnapshots:
    def __init__(self, repo: Repository, root: Path) -> None:
        self.repo = repo
        self.folder = root / repo.config.id.hex() / "verified"

    def _path(self, snapshot_id: bytes) -> Path:
        return self.folder / snapshot_id.hex()

    def record(self, snapshot_id: bytes, packs: set[bytes], previous: bytes | None = None) -> None:
        """Note that every blob of `snapshot_id` is indexed now, in `packs` (a superset will
        do); drop the record of the snapshot it replaces as the next parent. Failures are
        ignored: it is only a cache."""
        try:
            indexes = sorted(index_ids(self.repo))
            data = struct.pack(">I", len(indexes)) + b"".join(indexes) + b"".join(sorted(packs))
            self.folder.mkdir(parents=True, exist_ok=True)
            replace_file(self._path(snapshot_id), data)
            if previous is not None and previous != snapshot_id:
                self._path(previous).unlink(missing_ok=True)
        except (OSError, CairnError):
            pass

    def still_indexed(self, snapshot_id: bytes) -> set[bytes] | None:
        """The packs `snapshot_id` relies on if every blob of it is certainly still in the
        index (see above), else None."""
        try:
            data = self._path(snapshot_id).read_bytes()
        except OSError:
            return None
        if len(data) < 4 or (len(data) - 4) % ID_SIZE:
            return None
        (count,) = struct.unpack_from(">I", data)
        ids = [data[i : i + ID_SIZE] for i in range(4, len(data), ID_SIZE)]
        if count > len(ids):
            return None
        recorded, packs = set(ids[:count]), set(ids[count:])
        try:
            current = index_ids(self.repo)
            new = current - recorded
            if not recorded <= current or len(new) > MAX_NEW_INDEX_OBJECTS:
                return None
            for index_id in new:
                plaintext = self.repo.load_object("index", index_id.hex())
                _, supersedes = index_mod.decode_index(plaintext, f"index {index_id.hex()[:8]}")
                if supersedes:
                    return None
        except CairnError:
            return None
        return packs
