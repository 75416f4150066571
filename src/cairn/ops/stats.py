"""`cairn stats`: how big the snapshots are, what they cost in storage, and why.

- restore size: what a restore writes (the files' sizes; an image's disk size);
- logical size: the data the snapshots reference, counted at every reference (files' sizes,
  images' stored chunks): what the same history would take without deduplication;
- unique blobs: the distinct blobs those snapshots need, their plaintext (raw) and stored
  (compressed and sealed) sizes;
- deduplication ratio = logical / unique raw data; compression ratio = unique raw / stored.

Each distinct tree is read once, however many snapshots share it (its file count and size are
remembered per tree id); unique blobs are marked in one byte per indexed blob (`Reachability`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cairn.errors import DamagedObject
from cairn.files.tree import DIR, FILE, Node, decode_tree
from cairn.image import format as disk_format
from cairn.image.pages import DATA, PARTIAL, decode_page, mask_length
from cairn.ops.access import read_lock
from cairn.ops.prune_plan import stored_packs
from cairn.ops.reachable import WALKED, Reachability
from cairn.ops.snapshots import SnapshotFilter
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.repo.table import IndexTable, ids_array, load_table


@dataclass(frozen=True)
class StatsOptions:
    snapshots: tuple[str, ...] = ()
    """Ids, prefixes or `latest`; none means every snapshot the filter passes."""
    filter: SnapshotFilter = SnapshotFilter()


@dataclass
class SnapshotStats:
    id: str
    kind: str
    files: int
    restore_size: int
    logical_size: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StatsResult:
    snapshots: list[SnapshotStats] = field(default_factory=list)
    files: int = 0
    restore_size: int = 0
    logical_size: int = 0
    blobs: int = 0
    raw_size: int = 0
    stored_size: int = 0
    data_raw_size: int = 0
    packs: int = 0
    repository_size: int = 0
    """Bytes of every pack in storage (all snapshots' data and anything not yet pruned)."""

    @property
    def dedup_ratio(self) -> float:
        return self.logical_size / self.data_raw_size if self.data_raw_size else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.raw_size / self.stored_size if self.stored_size else 1.0

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "snapshots"}
        data.update(dedup_ratio=round(self.dedup_ratio, 4), compression_ratio=round(self.compression_ratio, 4))
        data["per_snapshot"] = [s.to_json() for s in self.snapshots]
        return data


class _Counter:
    """Walks snapshots, memoising (files, bytes) per tree and marking unique blobs."""

    def __init__(self, repo: Repository, table: IndexTable) -> None:
        self.repo, self.table = repo, table
        self.reach = Reachability(repo, table)
        self.totals: dict[bytes, tuple[int, int]] = {}
        self.unreadable = 0

    def _nodes(self, tree_id: bytes) -> list[Node]:
        row = int(self.table.locate(ids_array([tree_id]))[0])
        if row < 0:
            raise DamagedObject(f"tree {tree_id.hex()[:12]} is not in the index: run 'cairn check'")
        self.reach.state[row] = WALKED
        return decode_tree(self.table.load_blob(self.repo, row), f"tree {tree_id.hex()[:12]}")

    def tree(self, root: bytes) -> tuple[int, int]:
        open_nodes: dict[bytes, list[Node]] = {}
        stack: list[tuple[bytes, bool]] = [(root, False)]
        while stack:
            tree_id, expanded = stack.pop()
            if tree_id in self.totals:
                continue
            if not expanded:
                if tree_id in open_nodes:
                    raise DamagedObject(f"tree {tree_id.hex()[:12]} contains itself")
                nodes = open_nodes[tree_id] = self._nodes(tree_id)
                self.reach.mark(b for n in nodes if n.type == FILE for b in n.content)
                stack.append((tree_id, True))
                stack.extend((n.subtree, False) for n in nodes if n.type == DIR and n.subtree and n.subtree not in self.totals)
                continue
            nodes = open_nodes.pop(tree_id)
            files = sum(1 for n in nodes if n.type == FILE)
            size = sum(n.size for n in nodes if n.type == FILE)
            for n in nodes:
                if n.type == DIR and n.subtree:
                    sub = self.totals[n.subtree]
                    files, size = files + sub[0], size + sub[1]
            self.totals[tree_id] = (files, size)
        return self.totals[root]

    def image(self, root: bytes) -> tuple[int, int]:
        """(restore size, logical size) of an image."""
        row = int(self.table.locate(ids_array([root]))[0])
        if row < 0:
            raise DamagedObject(f"disk description {root.hex()[:12]} is not in the index")
        self.reach.state[row] = WALKED
        disk = disk_format.decode(self.table.load_blob(self.repo, row), f"disk description {root.hex()[:12]}")
        logical = 0
        for region in disk.regions:
            for page_no, page_id in enumerate(region.pages):
                page_row = int(self.table.locate(ids_array([page_id]))[0])
                if page_row < 0:
                    raise DamagedObject(f"extent page {page_id.hex()[:12]} is not in the index")
                self.reach.state[page_row] = WALKED
                _, count = disk.page_span(region, page_no)
                entries = decode_page(self.table.load_blob(self.repo, page_row), count,
                                      mask_length(disk.chunk, region.block), f"extent page {page_id.hex()[:12]}")
                ids = [blob_id for kind, blob_id, _ in entries if kind in (DATA, PARTIAL)]
                rows = self.table.locate(ids_array(ids))
                logical += int(self.table.raw[rows[rows >= 0]].sum())
                self.reach.mark(ids)
        return disk.size, logical

    def snapshot(self, snap: Snapshot) -> SnapshotStats:
        if snap.kind == "image":
            restore, logical = self.image(snap.root)
            return SnapshotStats(snap.id.hex(), snap.kind, 0, restore, logical)
        files, size = self.tree(snap.root)
        return SnapshotStats(snap.id.hex(), snap.kind, files, size, size)


def stats(repo: Repository, options: StatsOptions | None = None) -> StatsResult:
    options = options or StatsOptions()
    with read_lock(repo, "stats"):
        if options.snapshots:
            snaps = [repo.find_snapshot(ref) for ref in options.snapshots]
        else:
            snaps = [s for s in repo.list_snapshots() if options.filter.matches(s)]
        table = load_table(repo)
        counter = _Counter(repo, table)
        result = StatsResult()
        for snap in snaps:
            one = counter.snapshot(snap)
            result.snapshots.append(one)
            result.files += one.files
            result.restore_size += one.restore_size
            result.logical_size += one.logical_size
        rows = counter.reach.reached_rows()
        result.blobs = len(rows)
        result.raw_size = int(table.raw[rows].sum(dtype=np.int64))
        result.stored_size = int(table.length[rows].sum(dtype=np.int64))
        data_rows = rows[table.type[rows] == BlobType.DATA]
        result.data_raw_size = int(table.raw[data_rows].sum(dtype=np.int64))
        packs = stored_packs(repo)
        result.packs, result.repository_size = len(packs), sum(packs.values())
    return result
