"""`cairn copy`: copy snapshots from another repository (the 3-2-1 rule's offsite copy).

The two repositories have different master keys, so a blob's id differs between them (ids are
keyed hashes): every blob is read from the source, its id computed with the destination's key,
and uploaded (compressed and sealed with the destination's key) only when the destination
lacks it. Trees, disk descriptions and extent pages are re-encoded with the destination's ids.

What is read from the source is kept small the way a backup keeps it small: the newest
snapshot already copied with the same host and paths is the *parent*; a subtree whose source id
equals the parent's at the same place is taken over whole (its destination id is known), and a
file whose content ids equal the parent's keeps the parent's destination ids. Copying one more
snapshot of a large, mostly unchanged tree reads only what changed.

Each copy records the source snapshot's `original` (or its id) as its own `original`, so
copying again copies nothing twice, even after the source snapshot was retagged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from cairn.files.tree import DIR, FILE, Node, decode_tree, encode_tree
from cairn.image import format as disk_format
from cairn.image.pages import DATA, PARTIAL, PageBuilder, decode_page, mask_length
from cairn.ops.access import read_lock
from cairn.ops.snapshots import SnapshotFilter
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot


@dataclass(frozen=True)
class CopyOptions:
    snapshots: tuple[str, ...] = ()
    filter: SnapshotFilter = SnapshotFilter()


@dataclass
class CopyResult:
    copied: list[tuple[str, str]] = field(default_factory=list)
    """(source id, destination id) of each snapshot copied."""
    skipped: int = 0
    """Snapshots already in the destination."""
    blobs_read: int = 0
    blobs_new: int = 0
    bytes_new: int = 0

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["copied"] = [{"source": s, "destination": d} for s, d in self.copied]
        return data


def lineage(snap: Snapshot) -> bytes:
    return snap.original or snap.id


class _Copier:
    def __init__(self, src: Repository, dst: Repository, result: CopyResult) -> None:
        self.src, self.dst, self.result = src, dst, result
        self.data: dict[bytes, bytes] = {}
        self.trees: dict[bytes, bytes] = {}

    def blob(self, blob_type: int, plaintext: bytes) -> bytes:
        blob_id, new = self.dst.save_blob(blob_type, plaintext)
        if new:
            self.result.blobs_new += 1
            self.result.bytes_new += len(plaintext)
        return blob_id

    def data_blob(self, src_id: bytes) -> bytes:
        dst_id = self.data.get(src_id)
        if dst_id is None:
            self.result.blobs_read += 1
            dst_id = self.data[src_id] = self.blob(BlobType.DATA, self.src.load_blob(src_id))
        return dst_id

    def _nodes(self, repo: Repository, tree_id: bytes | None) -> dict[bytes, Node]:
        if tree_id is None:
            return {}
        return {n.name: n for n in decode_tree(repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")}

    def tree(self, src_id: bytes, parent: tuple[bytes, bytes] | None) -> bytes:
        """The destination id of source tree `src_id`; `parent` = (source id, destination id)
        of the tree at the same place in the parent copy."""
        if src_id in self.trees:
            return self.trees[src_id]
        if parent is not None and parent[0] == src_id and self.dst.has_blob(parent[1]):
            self.trees[src_id] = parent[1]
            return parent[1]
        self.result.blobs_read += 1
        nodes = decode_tree(self.src.load_blob(src_id), f"tree {src_id.hex()[:12]}")
        old_src = self._nodes(self.src, parent[0]) if parent else {}
        old_dst = self._nodes(self.dst, parent[1]) if parent else {}
        out = []
        for node in nodes:
            before, after = old_src.get(node.name), old_dst.get(node.name)
            if node.type == DIR and node.subtree is not None:
                sub_parent = None
                if before is not None and after is not None and before.subtree and after.subtree:
                    sub_parent = (before.subtree, after.subtree)
                node = dataclasses.replace(node, subtree=self.tree(node.subtree, sub_parent))
            elif node.type == FILE:
                if (before is not None and after is not None and before.content == node.content
                        and len(after.content) == len(node.content) and all(self.dst.has_blob(b) for b in after.content)):
                    content = list(after.content)
                else:
                    content = [self.data_blob(b) for b in node.content]
                node = dataclasses.replace(node, content=content)
            out.append(node)
        dst_id = self.trees[src_id] = self.blob(BlobType.TREE, encode_tree(out))
        return dst_id

    def image(self, src_root: bytes) -> bytes:
        self.result.blobs_read += 1
        disk = disk_format.decode(self.src.load_blob(src_root), f"disk description {src_root.hex()[:12]}")
        regions = []
        for region in disk.regions:
            mask_size = mask_length(disk.chunk, region.block)
            pages = []
            for page_no, page_id in enumerate(region.pages):
                _, count = disk.page_span(region, page_no)
                self.result.blobs_read += 1
                entries = decode_page(self.src.load_blob(page_id), count, mask_size, f"extent page {page_id.hex()[:12]}")
                builder = PageBuilder(mask_size)
                for kind, blob_id, mask in entries:
                    builder.add(kind, self.data_blob(blob_id) if kind in (DATA, PARTIAL) else b"", mask)
                pages.append(self.blob(BlobType.DISK, builder.encode()))
            regions.append(dataclasses.replace(region, pages=pages))
        return self.blob(BlobType.DISK, disk_format.encode(dataclasses.replace(disk, regions=regions)))


def _parent(snap: Snapshot, copies: dict[bytes, Snapshot], src_snaps: list[Snapshot]) -> tuple[bytes, bytes] | None:
    """(source root, destination root) of the newest copied snapshot with the same host and paths."""
    for other in sorted(src_snaps, key=lambda s: s.time_ns, reverse=True):
        copy = copies.get(lineage(other))
        if copy is not None and other.kind == "files" and other.host == snap.host and other.paths == snap.paths:
            return other.root, copy.root
    return None


def _selected(src: Repository, options: CopyOptions) -> Iterator[Snapshot]:
    if options.snapshots:
        yield from (src.find_snapshot(ref) for ref in options.snapshots)
    else:
        yield from (s for s in src.list_snapshots() if options.filter.matches(s))


def copy(src: Repository, dst: Repository, options: CopyOptions | None = None) -> CopyResult:
    options = options or CopyOptions()
    result = CopyResult()
    with ExitStack() as stack:
        stack.enter_context(read_lock(src, "copy (source)"))
        stack.enter_context(dst.lock(command="copy"))
        src_snaps = src.list_snapshots()
        copies = {lineage(s): s for s in dst.list_snapshots()}
        copier = _Copier(src, dst, result)
        for snap in sorted(_selected(src, options), key=lambda s: s.time_ns):
            if lineage(snap) in copies:
                result.skipped += 1
                continue
            if snap.kind == "image":
                root = copier.image(snap.root)
            else:
                root = copier.tree(snap.root, _parent(snap, copies, src_snaps))
            dst.flush()
            new = dataclasses.replace(snap, root=root, parent=None, id=b"", original=lineage(snap))
            dst.save_snapshot(new)
            copies[lineage(snap)] = new
            result.copied.append((snap.id.hex(), new.id.hex()))
    return result
