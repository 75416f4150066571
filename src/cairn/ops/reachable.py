"""Which blobs the snapshots still need: a walk of every tree and every disk description,
marking rows of an `IndexTable` in one byte per blob.

`state[row]` is 0 (not reached), 1 (reached) or 2 (reached, and its own references walked:
trees, disk descriptions and extent pages). Each tree is therefore read once however many
snapshots share it, and the memory is the table's plus one byte per blob: no set of ids, which
at millions of blobs would cost more than the index itself. Ids not in the table at all go to
`missing` (normally empty: a blob a snapshot needs but no live index names).

A snapshot whose trees or description cannot be read is an error, never skipped: prune must
not remove what it could not see referenced.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cairn.errors import DamagedObject
from cairn.files.tree import DIR, FILE, iter_tree
from cairn.image import format as disk_format
from cairn.image.pages import DATA, PARTIAL, decode_page, mask_length
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.repo.table import IndexTable, ids_array

REACHED = 1
WALKED = 2


class Reachability:
    """Marks what snapshots reach; call `walk` for each snapshot, in any order."""

    def __init__(self, repo: Repository, table: IndexTable) -> None:
        self.repo = repo
        self.table = table
        self.state = np.zeros(len(table), dtype=np.uint8)
        self.missing: set[bytes] = set()
        self.walked: set[bytes] = set()
        """Ids of the snapshots walked so far."""

    def _row(self, blob_id: bytes) -> int:
        return int(self.table.locate(ids_array([blob_id]))[0])

    def mark(self, ids: Iterable[bytes]) -> None:
        """Mark blobs that have no references of their own (file and disk data)."""
        batch = list(ids)
        if not batch:
            return
        rows = self.table.locate(ids_array(batch))
        found = rows[rows >= 0]
        fresh = found[self.state[found] == 0]
        self.state[fresh] = REACHED
        if len(found) != len(batch):
            self.missing.update(b for b, r in zip(batch, rows) if r < 0)

    def _enter(self, blob_id: bytes) -> int:
        """The row of a blob whose references we are about to walk, or -1 to skip it."""
        row = self._row(blob_id)
        if row < 0:
            self.missing.add(blob_id)
            return -1
        if self.state[row] == WALKED:
            return -1
        self.state[row] = WALKED
        return row

    def walk(self, snap: Snapshot) -> None:
        if snap.id in self.walked:
            return
        if snap.kind == "files":
            self._walk_trees(snap.root)
        elif snap.kind == "image":
            self._walk_image(snap.root)
        else:  # decode refuses other kinds; should one slip through, nothing may be removed
            raise DamagedObject(f"snapshot {snap.short_id} has kind {snap.kind!r}, which this cairn cannot walk")
        self.walked.add(snap.id)

    def _walk_trees(self, root: bytes) -> None:
        stack = [root]
        while stack:
            tree_id = stack.pop()
            row = self._enter(tree_id)
            if row < 0:
                continue
            content: list[bytes] = []
            # Entry by entry: a folder of 100,000 files is never held decoded whole.
            for node in iter_tree(self.table.load_blob(self.repo, row), f"tree {tree_id.hex()[:12]}"):
                if node.type == FILE:
                    content.extend(node.content)
                elif node.type == DIR and node.subtree is not None:
                    stack.append(node.subtree)
            self.mark(content)

    def _walk_image(self, root: bytes) -> None:
        row = self._enter(root)
        if row < 0:
            return
        what = f"disk description {root.hex()[:12]}"
        disk = disk_format.decode(self.table.load_blob(self.repo, row), what)
        for region in disk.regions:
            mask_size = mask_length(disk.chunk, region.block)
            for page_no, page_id in enumerate(region.pages):
                page_row = self._enter(page_id)
                if page_row < 0:
                    continue
                _, count = disk.page_span(region, page_no)
                page_what = f"extent page {page_id.hex()[:12]}"
                entries = decode_page(self.table.load_blob(self.repo, page_row), count, mask_size, page_what)
                self.mark(blob_id for kind, blob_id, _ in entries if kind in (DATA, PARTIAL))

    def reached_rows(self) -> np.ndarray:
        return np.nonzero(self.state)[0]
