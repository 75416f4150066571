"""Prune's middle: how used each pack is, and carrying out a repack plan (steps 5 of
`cairn.ops.prune`): copy used blobs out of the packs to repack, then write index objects that
leave out every removed pack. Only the index objects naming a removed pack are rewritten; the
rest stay as they are, so forgetting one snapshot of fifty rewrites little.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cairn.policy.repack import PackUsage, RepackPlan
from cairn.repo import maintenance as mnt
from cairn.repo.pack import object_name
from cairn.repo.repository import Repository
from cairn.repo.table import IndexTable

_PACK_NAME = re.compile(r"^data/([0-9a-f]{2})/([0-9a-f]{64})$")


def stored_packs(repo: Repository) -> dict[bytes, int]:
    """Every pack in storage and its size."""
    packs = {}
    for info in repo.backend.list("data/"):
        match = _PACK_NAME.match(info.name)
        if match and match[1] == match[2][:2]:
            packs[bytes.fromhex(match[2])] = info.size
    return packs


@dataclass
class Usage:
    packs: list[PackUsage]
    unused_bytes: int


def pack_usage(table: IndexTable, state: np.ndarray, stored: dict[bytes, int]) -> Usage:
    """Per pack: used and unused blobs and bytes (a blob's bytes being its sealed length)."""
    n = len(table.pack_ids)
    used = state > 0
    length = table.length.astype(np.float64)
    used_bytes = np.bincount(table.pack, weights=length * used, minlength=n)
    all_bytes = np.bincount(table.pack, weights=length, minlength=n)
    used_blobs = np.bincount(table.pack, weights=used, minlength=n)
    all_blobs = np.bincount(table.pack, minlength=n)
    packs = [
        PackUsage(
            number=p, size=stored.get(table.pack_ids[p], 0), used_bytes=int(used_bytes[p]),
            unused_bytes=int(all_bytes[p] - used_bytes[p]), used_blobs=int(used_blobs[p]),
            unused_blobs=int(all_blobs[p] - used_blobs[p]),
        )
        for p in range(n)
    ]
    unused = sum(p.unused_bytes for p in packs) + sum(p.size for p in packs if p.used_blobs == 0) - sum(
        p.unused_bytes for p in packs if p.used_blobs == 0
    )
    return Usage(packs, unused)


@dataclass
class Applied:
    removed_packs: list[bytes] = field(default_factory=list)
    replaced_indexes: list[bytes] = field(default_factory=list)
    new_index_ids: list[bytes] = field(default_factory=list)
    written_bytes: int = 0


def apply_plan(
    repo: Repository, table: IndexTable, state: np.ndarray, chosen: RepackPlan,
    progress: Callable[[str, int, int], None], checkpoint: Callable[[str], None],
) -> Applied:
    order, starts = table.rows_by_pack()
    writer = mnt.PackWriter(repo)
    for done, number in enumerate(chosen.repack, 1):
        rows = order[starts[number] : starts[number + 1]]
        rows = rows[state[rows] > 0]
        data = repo.backend.load(object_name(table.pack_ids[number]))
        for row in rows:
            start = int(table.offset[row])
            writer.add(int(table.type[row]), table.blob_id(row), memoryview(data)[start : start + int(table.length[row])], int(table.raw[row]))
        progress("repack", done, len(chosen.repack))
        if done == 1:
            checkpoint("repacking")
    writer.flush()
    checkpoint("repacked")
    removed = np.zeros(len(table.pack_ids), dtype=bool)
    removed[chosen.drop] = True
    removed[chosen.repack] = True
    replaced = [index_id for index_id, packs in table.live.items() if removed[packs].any()]
    applied = Applied(
        removed_packs=[table.pack_ids[p] for p in np.nonzero(removed)[0]], replaced_indexes=replaced,
    )
    def kept_packs() -> Iterator[tuple[bytes, bytes]]:
        yield from writer.packs
        emitted = np.zeros(len(table.pack_ids), dtype=bool)
        for index_id in replaced:
            for number in table.live[index_id]:
                if not removed[number] and not emitted[number]:
                    emitted[number] = True
                    yield table.pack_ids[number], table.records(order[starts[number] : starts[number + 1]])

    if writer.packs or replaced:
        applied.new_index_ids = mnt.write_index(repo, kept_packs(), replaced)
    sizes = [repo.backend.stat(f"index/{i.hex()}").size for i in applied.new_index_ids]
    applied.written_bytes = writer.bytes_written + sum(sizes)
    return applied
