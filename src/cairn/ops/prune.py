"""`cairn prune`: give back the space of blobs no snapshot needs, beside running backups.

The protocol is docs/FORMAT.md §12, in this order (each step's reason is there):

1. Take the maintenance lock (shared: backups, restores and checks go on).
2. Read the pending objects; one is *ripe* when none of its barrier locks still holds.
3. Load the index, list the packs, walk every snapshot (after step 2, so that every snapshot a
   barrier writer saved is seen). Blobs a snapshot needs that no live index names are looked
   for in pending and unindexed packs, which are indexed again when they hold one.
4. Delete what ripe pending objects name, except packs a live index names; then the objects.
5. Plan: drop unused packs, repack partly used ones worth it (`cairn.policy.repack`), copy the
   used blobs of those into new packs, and write index objects that leave the old packs out,
   the last one superseding the index objects it replaces.
6. List the other locks (the barrier) and write a ``pending/<id>`` object naming the removed
   packs, the replaced index objects and leftover packs no index names.
7. With no other lock in the barrier, finish at once: walk snapshots saved meanwhile and read
   index objects written meanwhile; if none of them needs a removed pack, delete.

A kill at any point leaves a repository that `check` passes and the next prune completes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cairn.errors import DamagedObject, ObjectMissing, UsageError
from cairn.ops.prune_plan import Usage, apply_plan, pack_usage, stored_packs
from cairn.ops.reachable import Reachability
from cairn.policy.repack import PruneOptions, RepackOptions, plan
from cairn.repo import maintenance as mnt
from cairn.repo.index import iter_records, pack_records
from cairn.repo.pack import PackEntry, object_name
from cairn.repo.repository import Repository
from cairn.repo.table import IndexTable, list_ids, read_index_objects, try_load_table
from cairn.storage.local import LocalBackend

Progress = Callable[[str, int, int], None]
KILL_ENV = "CAIRN_TEST_PRUNE_KILL_AT"
"""Test hook: the name of a step after which the process kills itself with SIGKILL."""
PAUSE_ENV = "CAIRN_TEST_PRUNE_PAUSE_AT"
"""Test hook: ``step=seconds``, a pause after that step (to run other processes beside it)."""
KILL_AFTER_ENV = "CAIRN_TEST_PRUNE_KILL_AFTER_WRITES"
"""Test hook: N, to SIGKILL the process once the N-th store or delete of this prune returned
(its lock's first write is the first): a kill between any two changes to the storage."""


@dataclass
class PruneResult:
    dry_run: bool = False
    snapshots: int = 0
    packs: int = 0
    blobs: int = 0
    used_blobs: int = 0
    stored_bytes: int = 0
    """Bytes of all packs in storage before this run."""
    unused_bytes: int = 0
    """Bytes in packs that no snapshot needs (unused blobs, leftover packs)."""
    packs_dropped: int = 0
    packs_repacked: int = 0
    leftover_packs: int = 0
    """Packs no index names (an interrupted backup's), scheduled for deletion."""
    repacked_bytes: int = 0
    """Used bytes copied into new packs."""
    written_bytes: int = 0
    """New packs and index objects written."""
    unused_left: int = 0
    deleted_packs: int = 0
    deleted_bytes: int = 0
    deleted_indexes: int = 0
    reindexed_packs: int = 0
    temporaries_removed: int = 0
    """Temporary files of writes killed half-way (over a day old) removed from a local folder."""
    pending: int = 0
    """Pending objects left for a later prune (other processes held locks)."""
    waiting_for: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _checkpoint(step: str) -> None:
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    pause_step, _, seconds = os.environ.get(PAUSE_ENV, "").partition("=")
    if pause_step == step:
        time.sleep(float(seconds or 1))


def prune(repo: Repository, options: PruneOptions | None = None, progress: Progress | None = None) -> PruneResult:
    options = options or PruneOptions()
    if os.environ.get(KILL_AFTER_ENV):
        repo.backend = _KillAfterWrites(repo.backend, int(os.environ[KILL_AFTER_ENV]))
    if not options.dry_run:
        if options.ignore_snapshots:
            raise UsageError("prune may ignore snapshots only in a dry run")
        mnt.refuse_if_append_only(repo, "prune")
    with mnt.maintenance_lock(repo, "prune") as held:
        return _Prune(repo, options, held.id, progress or (lambda phase, done, total: None)).run()


class _KillAfterWrites:
    """The test hook of KILL_AFTER_ENV: passes every call through, counting stores and deletes."""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._left = limit
        self._mutex = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _count(self) -> None:
        with self._mutex:
            self._left -= 1
            if self._left <= 0:
                os.kill(os.getpid(), signal.SIGKILL)

    def store(self, name: str, data: bytes | memoryview) -> None:
        self._inner.store(name, data)
        self._count()

    def delete(self, name: str) -> None:
        self._inner.delete(name)
        self._count()


class _Prune:
    def __init__(self, repo: Repository, options: PruneOptions, lock_id: str, progress: Progress) -> None:
        self.repo = repo
        self.options = options
        self.lock_id = lock_id
        self.progress = progress
        self.result = PruneResult(dry_run=options.dry_run)
        self.pendings: list[mnt.Pending] = []
        self.unreadable_pendings: list[bytes] = []

    def run(self) -> PruneResult:
        for item in mnt.load_pendings(self.repo):
            if isinstance(item, bytes):
                self.unreadable_pendings.append(item)
            else:
                self.pendings.append(item)
        ripe = [p for p in self.pendings if not mnt.blocking_locks(self.repo, p.locks)]
        handled = {pid for p in self.pendings for pid in p.packs}
        _checkpoint("locks")
        if not self.options.dry_run and isinstance(self.repo.backend, LocalBackend):
            # A killed backup's half-written pack is no object, so nothing else ever removes it.
            self.result.temporaries_removed = self.repo.backend.remove_stale_temporaries()
        table, stored, reach = self.survey()
        _checkpoint("walked")
        if not self.options.dry_run:
            self.finish_pendings(ripe, table, stored)
        waiting = [p for p in self.pendings if p not in ripe]
        usage = pack_usage(table, reach.state, stored)
        self.describe(table, stored, reach, usage)
        leftovers = [pid for pid in stored if pid not in table.pack_numbers and pid not in handled]
        chosen = plan(usage.packs, RepackOptions(self.options.max_unused, self.options.max_repack_size))
        self.result.packs_dropped, self.result.packs_repacked = len(chosen.drop), len(chosen.repack)
        self.result.repacked_bytes, self.result.unused_left = chosen.repack_bytes, chosen.unused_left
        self.result.leftover_packs = len(leftovers)
        self.result.unused_bytes += sum(stored[p] for p in leftovers)
        if self.options.dry_run:
            return self.result
        pended_indexes = {i for p in waiting for i in p.indexes}
        garbage = [i for i in table.superseded if i not in pended_indexes]
        if not (chosen.drop or chosen.repack or leftovers or garbage or self.unreadable_pendings):
            self.result.pending = len(waiting)
            return self.result
        applied = apply_plan(self.repo, table, reach.state, chosen, self.progress, _checkpoint)
        self.result.written_bytes = applied.written_bytes
        _checkpoint("indexed")
        barrier = mnt.other_locks(self.repo, self.lock_id)
        pending = mnt.Pending(
            time_ns=time.time_ns(), packs=applied.removed_packs + leftovers,
            indexes=applied.replaced_indexes + garbage, locks=barrier,
        )
        mnt.save_pending(self.repo, pending)
        _checkpoint("pending")
        for pending_id in self.unreadable_pendings:
            mnt.delete_quietly(self.repo, f"pending/{pending_id.hex()}")
        keep = self.recheck(table, reach, applied.new_index_ids, pending)
        holding = mnt.blocking_locks(self.repo, barrier)
        if keep is None or holding:
            waiting.append(pending)
            self.result.waiting_for = [lock.describe() for lock in holding]
        else:
            self.delete(pending, stored, keep)
        self.result.pending = len(waiting)
        return self.result

    # -- step 3 ------------------------------------------------------------------------------

    def survey(self) -> tuple[IndexTable, dict[bytes, int], Reachability]:
        """Load the index, list packs, walk every snapshot. Blobs a snapshot needs that no live
        index names are looked for in the packs no index names (pending or leftover), and
        those holding one are indexed again; this repeats (a re-indexed tree may name more)
        until nothing more is found, and then any such blob is lost."""
        headers: dict[bytes, list[PackEntry] | None] = {}
        while True:
            table = try_load_table(self.repo)
            stored = stored_packs(self.repo)
            lost = [table.pack_ids[p] for p in np.unique(table.pack) if table.pack_ids[p] not in stored]
            if lost:
                raise DamagedObject(
                    f"the index names {len(lost)} packs that are not in storage (first: {lost[0].hex()[:12]}): "
                    "run 'cairn repair index', then prune again"
                )
            reach = Reachability(self.repo, table)
            self.walk_all(reach)
            self.result.snapshots = len(reach.walked)
            if not reach.missing - self.indexed_since(table):  # a backup that ended meanwhile
                return table, stored, reach
            if self.options.dry_run or not self.reindex(table, stored, reach.missing, headers):
                raise DamagedObject(
                    f"{len(reach.missing)} blobs that snapshots need are in no pack (first: "
                    f"{next(iter(reach.missing)).hex()[:12]}): run 'cairn check', then 'cairn repair snapshots'"
                )

    def indexed_since(self, table: IndexTable, ours: list[bytes] | None = None) -> set[bytes]:
        """Blobs of the index objects written since `table` was loaded (by writers that ran
        meanwhile; their packs are newer than the pack listing, so none is a candidate)."""
        known = set(table.live) | set(table.superseded) | set(ours or ())
        fresh_ids = [i for i in list_ids(self.repo, "index/") if i not in known]
        self.fresh_packs: set[bytes] = set()
        blobs: set[bytes] = set()
        for _, packs, _ in read_index_objects(self.repo, fresh_ids):
            for pack_id, records in packs:
                self.fresh_packs.add(pack_id)
                blobs.update(e.blob_id for e in iter_records(records))
        return blobs

    def walk_all(self, reach: Reachability) -> None:
        """Walk every snapshot not walked yet. One that vanished since the listing was
        forgotten, or replaced (`tag` writes the new object before deleting the old): list
        again until a listing holds no unwalked snapshot that vanished."""
        while True:
            ignored = self.options.ignore_snapshots
            ids = [i for i in list_ids(self.repo, "snapshots/") if i not in reach.walked and i not in ignored]
            vanished = False
            for done, snapshot_id in enumerate(ids, 1):
                try:
                    reach.walk(self.repo.load_snapshot(snapshot_id))
                except ObjectMissing:
                    vanished = True
                self.progress("snapshots", done, len(ids))
            if not vanished:
                return

    def reindex(
        self, table: IndexTable, stored: dict[bytes, int], missing: set[bytes], headers: dict[bytes, list[PackEntry] | None]
    ) -> bool:
        """Index again the packs no index names that hold `missing` blobs: a backup that ran
        beside an earlier prune deduplicated against them (FORMAT §12)."""
        found: list[tuple[bytes, bytes]] = []
        for pack_id in stored:
            if pack_id in table.pack_numbers:
                continue
            if pack_id not in headers:
                try:
                    headers[pack_id] = self.repo.read_pack_header(pack_id, stored[pack_id])
                except (DamagedObject, ObjectMissing):
                    headers[pack_id] = None
            entries = headers[pack_id]
            if entries and any(e.blob_id in missing for e in entries):
                found.append((pack_id, pack_records(entries)))
        if found:
            mnt.write_index(self.repo, found)
            self.result.reindexed_packs += len(found)
        return bool(found)

    # -- steps 4 and 7 ---------------------------------------------------------------------------

    def finish_pendings(self, ripe: list[mnt.Pending], table: IndexTable, stored: dict[bytes, int]) -> None:
        live_packs = set(table.pack_numbers)
        for pending in ripe:
            self.delete(pending, stored, live_packs, table)
            self.pendings.remove(pending)

    def delete(
        self, pending: mnt.Pending, stored: dict[bytes, int], keep: set[bytes], table: IndexTable | None = None
    ) -> None:
        """Delete what `pending` names but packs in `keep` (named by a live index), then it."""
        for n, pack_id in enumerate(pending.packs):
            if pack_id in keep:
                continue
            if mnt.delete_quietly(self.repo, object_name(pack_id)):
                self.result.deleted_packs += 1
                self.result.deleted_bytes += stored.get(pack_id, 0)
            if n == 0:
                _checkpoint("deleting")
            self.progress("delete", n + 1, len(pending.packs))
        live = table.live if table is not None else {}
        for index_id in pending.indexes:
            if index_id not in live and mnt.delete_quietly(self.repo, f"index/{index_id.hex()}"):
                self.result.deleted_indexes += 1
        mnt.delete_quietly(self.repo, f"pending/{pending.id.hex()}")
        _checkpoint("deleted")

    def recheck(self, table: IndexTable, reach: Reachability, ours: list[bytes], pending: mnt.Pending) -> set[bytes] | None:
        """After the new index landed (step 7): walk the snapshots saved since the survey; a
        removed pack one of them needs is indexed again at once (its writer deduplicated
        against it before the new index existed). Then read the index objects written since
        the load: their packs stay. Returns every pack to keep, or None when a new snapshot
        needs a blob found nowhere (then nothing is deleted now; the next prune looks again)."""
        before = reach.state.copy()
        missing_before = set(reach.missing)
        self.walk_all(reach)
        fresh_blobs = self.indexed_since(table, ours)
        keep = set(self.fresh_packs)
        if not (reach.missing - missing_before) <= fresh_blobs:
            return None
        newly = np.nonzero(reach.state != before)[0]
        removed = np.zeros(len(table.pack_ids), dtype=bool)
        removed[[table.pack_numbers[p] for p in pending.packs if p in table.pack_numbers]] = True
        needed = {
            table.pack_ids[int(table.pack[row])] for row in newly
            if removed[table.pack[row]] and table.blob_id(int(row)) not in fresh_blobs
        }
        if needed:
            stored = stored_packs(self.repo)
            records = []
            for pack_id in sorted(needed):
                records.append((pack_id, pack_records(self.repo.read_pack_header(pack_id, stored[pack_id]))))
            mnt.write_index(self.repo, records)
            self.result.reindexed_packs += len(needed)
            keep |= needed
        return keep

    def describe(self, table: IndexTable, stored: dict[bytes, int], reach: Reachability, usage: Usage) -> None:
        r = self.result
        r.packs = len(stored)
        r.blobs = len(table)
        r.used_blobs = int(np.count_nonzero(reach.state))
        r.stored_bytes = sum(stored.values())
        r.unused_bytes = usage.unused_bytes
