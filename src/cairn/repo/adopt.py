"""Adopting the packs of an interrupted writer, so the next run does not upload them again.

A writer names its packs in index objects every INDEX_EVERY_PACKS packs (or INDEX_MAX_BLOBS
blobs) and at each checkpoint; a kill -9 between two such writes leaves packs in storage that
no index names. They are garbage to prune (its "leftover packs"), and the proof that prune
never deletes what a snapshot needs assumes nobody deduplicates against garbage. A writer may
still adopt them, by rule W4 of docs/FORMAT.md §12, which this module follows step by step:

1. its own lock exists (the caller holds it);
2. it lists `locks/` and finds no maintenance lock (prune, repair) but released ones and those
   of this host whose process is gone. A prune running now might already have judged the packs deletable; one
   that starts later lists locks after ours exists, so ours is in its barrier;
3. it reads every pending object and leaves out each pack one of them names (a pending object
   that does not open might name any: then nothing is adopted). A pending object written by a
   prune that ended before step 2 is in this listing, or was deleted after its packs were;
4. it reads each remaining pack's header from storage (a pack gone is left out);
5. it writes an index object naming them, and only then deduplicates against them.

Which packs to try comes from a local journal (`cairn.files.checkpoint.PackJournal`): the
interrupted run on this machine noted the packs it had stored but not yet indexed. The journal
is only a hint; the rule above makes any leftover pack safe to adopt, whoever wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cairn.errors import DamagedObject, ObjectMissing
from cairn.repo import lock as lock_mod
from cairn.repo import maintenance as mnt
from cairn.repo.pack import PackEntry, object_name
from cairn.repo.repository import Repository


@dataclass
class Adopted:
    packs: int = 0
    bytes: int = 0
    """Stored bytes of the adopted packs (what the run did not upload again)."""
    refused: str = ""
    """Why nothing was adopted though there were candidates, or ""."""

    def warnings(self) -> list[tuple[str, str]]:
        """("", message) pairs, as a backup reports warnings."""
        return [("", f"the packs of an interrupted run are uploaded again: {self.refused}")] if self.refused else []


def adopt(repo: Repository, candidates: Iterable[bytes]) -> Adopted:
    """Adopt those of `candidates` that no index names and rule W4 allows. Call with the
    repository locked, before the backup deduplicates anything."""
    wanted = [p for p in dict.fromkeys(candidates) if not repo.knows_pack(p)]
    result = Adopted()
    if not wanted:
        return result
    blocker = _maintenance_running(repo)
    if blocker:
        result.refused = blocker
        return result
    named: set[bytes] = set()
    for pending in mnt.load_pendings(repo):
        if isinstance(pending, bytes):
            result.refused = f"pending object {pending.hex()[:8]} does not open"
            return result
        named.update(pending.packs)
    found: list[tuple[bytes, list[PackEntry]]] = []
    for pack_id in wanted:
        if pack_id in named:
            continue
        try:
            size = repo.backend.stat(object_name(pack_id)).size
            found.append((pack_id, repo.read_pack_header(pack_id, size)))
        except (ObjectMissing, DamagedObject):
            continue  # deleted meanwhile, or not a whole pack: its data is uploaded again
        result.bytes += size
    repo.adopt_packs(found)
    result.packs = len(found)
    return result


def _maintenance_running(repo: Repository) -> str:
    """Why adoption must wait: a maintenance lock that may still act, or one that cannot be read."""
    for info in repo.backend.list("locks/"):
        lock_id = info.name.rsplit("/", 1)[-1]
        try:
            held = lock_mod.decode(repo.load_object("locks", lock_id), lock_id)
        except ObjectMissing:
            continue  # released while we listed
        except DamagedObject:
            return f"lock {lock_id[:8]} does not open"
        # A lock stale by age is not enough: a prune on a machine that slept may wake up and
        # delete; only a process known gone, or one that released its lock (§11), acts no more.
        if held.command in mnt.MAINTENANCE_COMMANDS and not (held.released or held.process_gone()):
            return f"a maintenance run holds the repository ({held.describe()})"
    return ""
