"""Extent pages: the run-length encoded list of chunks of one region (format in format.py).

Pages keep a terabyte disk's extent list out of memory and out of one giant blob: the imager
fills one page at a time and stores it; a restore loads one page at a time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cairn.errors import DamagedObject
from cairn.image.format import Disk, Region
from cairn.repo import encoding
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository

PAGE_FORMAT = 1
ZERO, UNUSED, DATA, PARTIAL = 0, 1, 2, 3
KIND_NAMES = {ZERO: "zero", UNUSED: "unused", DATA: "data", PARTIAL: "partial"}
RUN_HEAD = struct.Struct(">BI")
ID_SIZE = 32


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a region: where it lies (region-relative) and what restores it."""

    index: int
    offset: int
    length: int
    kind: int
    blob_id: bytes = b""
    mask: bytes = b""

    def used_spans(self, block: int) -> Iterator[tuple[int, int]]:
        """Byte spans of the chunk in use: the whole chunk unless a PARTIAL mask says less."""
        if self.kind != PARTIAL:
            yield 0, self.length
            return
        bits = int.from_bytes(self.mask, "little")
        position = 0
        while bits:
            low = (bits & -bits).bit_length() - 1  # first set bit
            run = (~(bits >> low) & ((bits >> low) + 1)).bit_length() - 1  # set bits from there
            yield (position + low) * block, min((position + low + run) * block, self.length)
            bits >>= low + run
            position += low + run


def mask_length(chunk: int, block: int) -> int:
    return chunk // block // 8


class PageBuilder:
    """Collects the chunks of one page in order and encodes them as merged runs."""

    def __init__(self, mask_size: int) -> None:
        self.mask_size = mask_size
        self.chunks = 0
        self._runs = bytearray()
        self._kind = -1
        self._count = 0
        self._payload = bytearray()

    def add(self, kind: int, blob_id: bytes = b"", mask: bytes = b"") -> None:
        if kind != self._kind:
            self._close_run()
            self._kind = kind
        self._count += 1
        self.chunks += 1
        if kind in (DATA, PARTIAL):
            assert len(blob_id) == ID_SIZE
            self._payload += blob_id
        if kind == PARTIAL:
            assert len(mask) == self.mask_size
            self._payload += mask

    def _close_run(self) -> None:
        if self._count:
            self._runs += RUN_HEAD.pack(self._kind, self._count) + self._payload
        self._count = 0
        self._payload = bytearray()

    def encode(self) -> bytes:
        self._close_run()
        return encoding.pack({"v": PAGE_FORMAT, "chunks": self.chunks, "runs": bytes(self._runs)})


def decode_runs(plaintext: bytes, chunks: int, mask_size: int, what: str) -> Iterator[tuple[int, int, bytes, int, int]]:
    """A page's runs as (kind, count, runs, where the run's entries start in `runs`, the size of
    one entry: 0 for ZERO and UNUSED), checked against the count of chunks the description
    expects."""
    obj = encoding.unpack_map(plaintext, what)
    if encoding.field(obj, "v", int, what) != PAGE_FORMAT:
        raise DamagedObject(f"{what} has an unknown format version")
    if encoding.field(obj, "chunks", int, what) != chunks:
        raise DamagedObject(f"{what} is damaged: it covers the wrong number of chunks")
    runs = encoding.field(obj, "runs", bytes, what)
    covered = 0
    pos = 0
    while pos < len(runs):
        if pos + RUN_HEAD.size > len(runs):
            raise DamagedObject(f"{what} is damaged: truncated run")
        kind, count = RUN_HEAD.unpack_from(runs, pos)
        pos += RUN_HEAD.size
        if kind not in KIND_NAMES or count < 1 or covered + count > chunks:
            raise DamagedObject(f"{what} is damaged: bad run")
        entry = 0 if kind in (ZERO, UNUSED) else ID_SIZE + (mask_size if kind == PARTIAL else 0)
        if pos + count * entry > len(runs):
            raise DamagedObject(f"{what} is damaged: truncated run")
        yield kind, count, runs, pos, entry
        covered += count
        pos += count * entry
    if covered != chunks:
        raise DamagedObject(f"{what} is damaged: runs do not cover the page")


def decode_page(plaintext: bytes, chunks: int, mask_size: int, what: str) -> list[tuple[int, bytes, bytes]]:
    """A page's chunks as (kind, id, mask), checked against the count the description expects."""
    out: list[tuple[int, bytes, bytes]] = []
    for kind, count, runs, pos, entry in decode_runs(plaintext, chunks, mask_size, what):
        if not entry:
            out.extend([(kind, b"", b"")] * count)
            continue
        for at in range(pos, pos + count * entry, entry):
            out.append((kind, runs[at : at + ID_SIZE], runs[at + ID_SIZE : at + entry]))
    return out


def load_page(repo: Repository, blob_id: bytes, what: str) -> bytes:
    """Load a blob that must be a disk-description blob (type 2), never another kind."""
    if repo.lookup(blob_id).blob_type != BlobType.DISK:
        raise DamagedObject(f"{what} is damaged: {blob_id.hex()[:12]} is not a disk blob")
    return repo.load_blob(blob_id)


def page_refs(repo: Repository, disk: Disk, region: Region, page_no: int) -> list[ChunkRef]:
    """The chunks of one page of a region, each mask checked to stay inside the region."""
    mask_size = mask_length(disk.chunk, region.block)
    page_id = region.pages[page_no]
    first, count = disk.page_span(region, page_no)
    what = f"extent page {page_id.hex()[:12]}"
    refs = []
    for i, (kind, blob_id, mask) in enumerate(decode_page(load_page(repo, page_id, what), count, mask_size, what)):
        index = first + i
        offset = index * disk.chunk
        length = min(disk.chunk, region.length - offset)
        if kind == PARTIAL:
            valid_blocks = -(-length // region.block)
            if int.from_bytes(mask, "little") >> valid_blocks:
                raise DamagedObject(f"{what} is damaged: a mask reaches past its region")
        refs.append(ChunkRef(index, offset, length, kind, blob_id, mask))
    return refs


def iter_chunks(repo: Repository, disk: Disk, region: Region) -> Iterator[ChunkRef]:
    """Every chunk of a region in order, loading one page at a time."""
    for page_no in range(len(region.pages)):
        yield from page_refs(repo, disk, region, page_no)


def used_length(repo: Repository, disk: Disk, region: Region) -> int:
    """The bytes of a region's chunks that are not UNUSED, counted by runs: a restore's total
    for its progress, without making an object per chunk (a delta restore's pass over the
    pages took 4-8 ms of its 165 so)."""
    mask_size = mask_length(disk.chunk, region.block)
    total = 0
    for page_no, page_id in enumerate(region.pages):
        first, count = disk.page_span(region, page_no)
        what = f"extent page {page_id.hex()[:12]}"
        for kind, run, _, _, _ in decode_runs(load_page(repo, page_id, what), count, mask_size, what):
            end = (first + run) * disk.chunk
            if kind != UNUSED:  # only the region's last chunk may be shorter than the others
                total += run * disk.chunk - max(0, end - region.length)
            first += run
    return total


def load_chunk(repo: Repository, ref: ChunkRef) -> bytes:
    """The stored bytes of a DATA or PARTIAL chunk, checked to be a data blob exactly as long
    as its chunk: a hostile description cannot make a reader return or write more."""
    if repo.lookup(ref.blob_id).blob_type != BlobType.DATA:
        raise DamagedObject(f"blob {ref.blob_id.hex()[:12]} named as disk data is not a data blob")
    data = repo.load_blob(ref.blob_id)
    if len(data) != ref.length:
        raise DamagedObject(f"blob {ref.blob_id.hex()[:12]} is not as long as its chunk")
    return data


def referenced_blobs(repo: Repository, disk: Disk) -> Iterator[tuple[int, bytes]]:
    """(blob type, id) of every blob an image needs besides its description, for `check`."""
    for region in disk.regions:
        for page_id in region.pages:
            yield BlobType.DISK, page_id
        for ref in iter_chunks(repo, disk, region):
            if ref.kind in (DATA, PARTIAL):
                yield BlobType.DATA, ref.blob_id
