"""`cairn repair index` and `cairn repair snapshots`: for the day something went wrong.

**repair index** rebuilds the index from the packs alone: every pack header in storage is read
and one new set of index objects is written, the last superseding every index object that
existed; those are then deleted (the exclusive lock guarantees no reader is between listing and
loading them; an append-only repository keeps them, superseded). A pack whose header does not
open is named and left out.

**repair snapshots** writes, for each snapshot referencing blobs no index names (or trees that
do not open), a new snapshot without them: a file that lost content blobs keeps what is left and
is renamed ``<name>.damaged`` (so a restore shows it); a folder whose tree is lost becomes an
empty folder of the same name. The new snapshot carries the tag ``repaired``, the damaged paths
in its summary, and `original` pointing at the damaged one, which stays unless `forget`.
Image snapshots are checked and reported, not rewritten.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import CairnError
from cairn.files.tree import DIR, FILE, Node, decode_tree, encode_tree
from cairn.image.checker import image_problems
from cairn.ops.prune_plan import stored_packs
from cairn.repo import maintenance as mnt
from cairn.repo.blob import BlobType
from cairn.repo.index import pack_records
from cairn.repo.repository import Repository
from cairn.repo.table import list_ids

MAX_LISTED = 1000
DAMAGED_SUFFIX = b".damaged"


@dataclass
class RepairIndexResult:
    packs: int = 0
    blobs: int = 0
    damaged_packs: list[str] = field(default_factory=list)
    removed_indexes: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def repair_index(repo: Repository) -> RepairIndexResult:
    result = RepairIndexResult()
    with repo.lock(exclusive=True, command="repair index"):
        old = list_ids(repo, "index/")
        found: list[tuple[bytes, bytes]] = []
        for pack_id, size in sorted(stored_packs(repo).items()):
            try:
                entries = repo.read_pack_header(pack_id, size)
            except CairnError as exc:
                result.damaged_packs.append(f"pack {pack_id.hex()[:12]}: {exc}")
                continue
            found.append((pack_id, pack_records(entries)))
            result.blobs += len(entries)
        result.packs = len(found)
        mnt.write_index(repo, found, old)
        if not repo.config.append_only:
            for index_id in old:
                result.removed_indexes += mnt.delete_quietly(repo, f"index/{index_id.hex()}")
    return result


@dataclass(frozen=True)
class RepairSnapshotsOptions:
    snapshots: tuple[str, ...] = ()
    forget: bool = False
    """Delete each damaged snapshot once its repaired copy is written."""
    dry_run: bool = False


@dataclass
class Repaired:
    old_id: str
    new_id: str | None
    damaged: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RepairSnapshotsResult:
    repaired: list[Repaired] = field(default_factory=list)
    intact: int = 0
    images: list[str] = field(default_factory=list)
    """Problems of image snapshots (not rewritten)."""

    def to_json(self) -> dict[str, Any]:
        return {"repaired": [r.to_json() for r in self.repaired], "intact": self.intact, "images": self.images}


class _Rewriter:
    def __init__(self, repo: Repository, dry_run: bool) -> None:
        self.repo, self.dry_run = repo, dry_run
        self.memo: dict[bytes, tuple[bytes, list[str]]] = {}

    def save_tree(self, nodes: list[Node]) -> bytes:
        data = encode_tree(nodes)
        if self.dry_run:
            return self.repo.blob_id(data)
        return self.repo.save_blob(BlobType.TREE, data)[0]

    def tree(self, tree_id: bytes, path: str) -> tuple[bytes, list[str]]:
        """(id of the repaired tree, damaged paths below); the same id when nothing is lost."""
        if tree_id in self.memo:
            return self.memo[tree_id]
        try:
            nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
        except CairnError:
            result = (self.save_tree([]), [path or "/"])
            self.memo[tree_id] = result
            return result
        damaged: list[str] = []
        names = {n.name for n in nodes}
        out: list[Node] = []
        for node in nodes:
            where = f"{path}/{os.fsdecode(node.name)}"
            if node.type == DIR and node.subtree is not None:
                new_id, below = self.tree(node.subtree, where)
                damaged += below
                node = dataclasses.replace(node, subtree=new_id) if new_id != node.subtree else node
            elif node.type == FILE and node.content:
                kept = [b for b in node.content if self.repo.has_blob(b)]
                if len(kept) != len(node.content):
                    name = node.name + DAMAGED_SUFFIX
                    while name in names:
                        name += b"_"
                    names.add(name)
                    size = sum(self.repo.lookup(b).raw_length for b in kept)
                    node = dataclasses.replace(node, name=name, content=kept, size=size)
                    damaged.append(where)
            out.append(node)
        new_id = self.save_tree(out) if damaged else tree_id
        self.memo[tree_id] = (new_id, damaged)
        return new_id, damaged


def repair_snapshots(repo: Repository, options: RepairSnapshotsOptions | None = None) -> RepairSnapshotsResult:
    options = options or RepairSnapshotsOptions()
    if options.forget and not options.dry_run:
        mnt.refuse_if_append_only(repo, "repair snapshots --forget")
    result = RepairSnapshotsResult()
    with mnt.maintenance_lock(repo, "repair snapshots"):
        repo.load_index()
        if options.snapshots:
            snaps = [repo.find_snapshot(ref) for ref in options.snapshots]
        else:
            snaps = repo.list_snapshots()
        rewriter = _Rewriter(repo, options.dry_run)
        for snap in snaps:
            if snap.kind != "files":
                problems = list(image_problems(repo, snap.root, _indexed_as(repo), f"snapshot {snap.short_id}"))
                result.images += problems
                result.intact += not problems
                continue
            new_root, damaged = rewriter.tree(snap.root, "")
            if not damaged:
                result.intact += 1
                continue
            new_id = None
            if not options.dry_run:
                repo.flush()
                new = dataclasses.replace(
                    snap, root=new_root, id=b"", tags=[*snap.tags, *(["repaired"] if "repaired" not in snap.tags else [])],
                    summary={**snap.summary, "damaged_count": len(damaged), "damaged": damaged[:MAX_LISTED]},
                    original=snap.original or snap.id,
                )
                new_id = repo.save_snapshot(new).hex()
                if options.forget:
                    mnt.delete_quietly(repo, f"snapshots/{snap.id.hex()}")
            result.repaired.append(Repaired(snap.id.hex(), new_id, damaged))
    return result


def _indexed_as(repo: Repository) -> Callable[[bytes, int], bool]:
    def check(blob_id: bytes, blob_type: int) -> bool:
        entry = repo.index.lookup(blob_id)
        return entry is not None and entry.blob_type == blob_type

    return check

