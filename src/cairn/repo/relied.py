"""A writer's half of prune beside running backups: before its snapshot, make sure every pack
it relied on is still named by a live index object.

A writer deduplicates against the index it read after taking its lock, and references the
packs it wrote itself. A prune that commits meanwhile may leave some of those packs out of the
live index (it keeps them in storage: this writer's lock is in its barrier, docs/FORMAT.md §12).
So before the snapshot is written, `keep_indexed` reads the index objects that appeared since
the writer's own listing; only when one of them supersedes something (a prune committed) does
it compute which relied-on packs are no longer named, read their headers and write an index
object naming them again. The snapshot then never references a blob the live index lacks
(INV-2 holds at every moment, not only after the next prune).

Memory: a set of pack ids (tens of bytes per pack, a few per blob).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from cairn.errors import ObjectMissing
from cairn.repo import index as index_mod
from cairn.repo.pack import PackEntry, object_name
from cairn.storage.base import Backend

LoadObject = Callable[[str, str], bytes]
StoreIndex = Callable[[list[tuple[bytes, list[PackEntry]]]], None]
ReadHeader = Callable[[bytes, int], list[PackEntry]]


class ReliedPacks:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.relied: set[bytes] = set()
        self.known: dict[bytes, list[bytes]] = {}
        """Index objects seen (read or written by us) -> the packs each names."""
        self.superseded: set[bytes] = set()

    def note_index(self, index_id: bytes, pack_ids: Iterable[bytes], supersedes: Iterable[bytes] = ()) -> None:
        with self._lock:
            self.known[index_id] = list(pack_ids)
            self.superseded.update(supersedes)

    def rely(self, pack_id: bytes) -> None:
        self.relied.add(pack_id)  # a single set.add is atomic: callable from any thread

    def keep_indexed(self, backend: Backend, load: LoadObject, read_header: ReadHeader, store: StoreIndex) -> int:
        """Index again relied-on packs a concurrent prune left out; returns how many."""
        listed = set()
        for info in backend.list("index/"):
            try:
                listed.add(bytes.fromhex(info.name.rsplit("/", 1)[-1]))
            except ValueError:
                continue
        pruned = False
        for index_id in listed - self.known.keys():
            try:
                packs, supersedes = index_mod.decode_index(load("index", index_id.hex()), f"index {index_id.hex()[:8]}")
            except ObjectMissing:
                continue
            self.note_index(index_id, (p for p, _ in packs), supersedes)
            pruned = pruned or bool(supersedes)
        if not pruned:
            return 0
        live: set[bytes] = set()
        for index_id, named in self.known.items():
            if index_id in listed and index_id not in self.superseded:
                live.update(named)
        needed = sorted(self.relied - live)
        if not needed:
            return 0
        # Still in storage: our lock is in the barrier of the prune that left them out.
        found = [(pack_id, read_header(pack_id, backend.stat(object_name(pack_id)).size)) for pack_id in needed]
        store(found)
        return len(found)

