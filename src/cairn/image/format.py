"""The disk description: what an image snapshot's `root` names, byte for byte.

An image snapshot (`kind` = ``image``) has as `root` the id of a **disk description** blob
(blob type 2). Both the description and its **extent pages** are blobs of type 2; their
plaintext is MessagePack (docs/FORMAT.md §3: string keys, *bin* for bytes, *str* for text).

Disk description
----------------

A map:

=============== ============ ==================================================================
key             type         meaning
=============== ============ ==================================================================
``v``           int          1
``kind``        str          ``disk`` (a whole disk) or ``partition`` (one partition or volume)
``size``        int          bytes of the source; a restore target MUST hold at least this many
``sector``      int          logical sector size: 512, 1024, 2048 or 4096
``table``       str          ``gpt``, ``mbr`` or ``none``
``disk_id``     str          GPT disk GUID or MBR signature as text, ``""`` if none
``chunk``       int          extent size C in bytes: a power of two, 256 KiB ≤ C ≤ 64 MiB
``page_chunks`` int          chunks per extent page P, 1 ≤ P ≤ 65536
``tables``      array        ``[offset: int, bytes: bin]`` pairs: the partition-table sectors
``regions``     array        region maps (below), sorted by ``start``
=============== ============ ==================================================================

``tables`` holds the raw bytes of the partition-table areas: LBA 0 (MBR or protective MBR,
with its boot code), the GPT primary header and entry array, the GPT backup entry array and
backup header at the end of the disk, and each EBR sector of an MBR extended partition. At most
4096 pairs, each 1 byte to 1 MiB, sorted, not overlapping each other or any region, and inside
``[0, size)``.

Writers make ``regions`` cover every other byte of the source: each partition is one region,
and every stretch outside partitions and tables (the gap before the first partition where boot
loaders live, space between and after partitions, the extended partition's unused space) is a
``gap`` region, read whole. A ``partition`` kind description has one region at offset 0. A
region map:

=========== ============ ======================================================================
key         type         meaning
=========== ============ ======================================================================
``role``    str          ``partition`` or ``gap``
``n``       int          partition number as the OS names it (1–4 primary, 5… logical, GPT
                         entry index + 1); 0 for a gap
``start``   int          first byte on the disk
``length``  int          bytes, ≥ 1; ``start + length ≤ size``
``fs``      str          filesystem read by its allocation map (``ext2``, ``ext3``, ``ext4``,
                         ``fat12``, ``fat16``, ``fat32``, ``ntfs``) or ``raw`` (read whole)
``block``   int          mask granularity B in bytes: a power of two, 512 ≤ B ≤ C / 8
``used``    int          bytes in use per the allocation map, the whole region if raw
                         (informational: progress and summaries)
``type``    str          GPT type GUID, or MBR type as ``0x83``; ``""`` for gaps
``uuid``    str          GPT unique partition GUID; ``""`` if none
``label``   str          GPT partition name or filesystem label
``pages``   array of bin ids of the extent pages, in order
=========== ============ ======================================================================

Text fields are at most 256 characters. Readers MUST reject regions that overlap each other or
a table, or that end past ``size``; there are at most 65536 regions.

Extents and pages
-----------------

A region of length L is cut into N = ceil(L / C) chunks; chunk i covers bytes
``[i·C, min((i+1)·C, L))`` of the region (offsets relative to ``start``, so filesystem blocks
align with chunks and a changed block changes one chunk). Chunks are grouped P to a page:
there are ceil(N / P) pages, and page j covers chunks ``j·P`` to ``min((j+1)·P, N) − 1``. So a
2 TiB disk at C = 1 MiB (P = 65536, 64 GiB a page) needs 32 page ids, never one giant list.

A page's plaintext is a map ``{"v": 1, "chunks": int, "runs": bin}``; ``chunks`` MUST equal
the number of chunks the page covers. ``runs`` is a concatenation of runs, big-endian::

    run     = u8 kind || u32 count (≥ 1) || payload
    kind 0  ZERO     no payload     count chunks that read as zeros
    kind 1  UNUSED   no payload     count chunks holding no block the filesystem uses
    kind 2  DATA     count × id(32) each chunk is the data blob (type 0) with that id
    kind 3  PARTIAL  count × (id(32) || mask(M))

The counts of a page add up to ``chunks`` exactly, with no trailing bytes. A DATA or PARTIAL
blob's plaintext MUST be exactly as long as its chunk. PARTIAL marks a chunk only partly used by
its filesystem: ``mask`` has M = C / B / 8 bytes, and bit k (byte k // 8, bit k mod 8, least
significant first) says whether bytes ``[k·B, (k+1)·B)`` of the chunk are in use; bits past the
end of the region MUST be zero. Bytes of unused blocks are stored as zeros, so free space never
changes a chunk's id. Writers merge neighbouring runs of one kind; ZERO and UNUSED runs are run
lengths, so empty terabytes cost a few bytes.

Restoring writes, for every chunk: DATA and PARTIAL blobs at ``start + i·C``; zeros for ZERO
(a hole in a sparse file); nothing for UNUSED (the filesystem does not care). Then the table
bytes. A delta restore or a verification compares a target chunk with a PARTIAL blob after
setting the target's unused blocks to zero, exactly as the imager stored it. A reader MUST check every blob's length and every offset against ``size`` before writing,
so a hostile description cannot write outside the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cairn.errors import DamagedObject
from cairn.repo import encoding

DISK_FORMAT = 1
KINDS = ("disk", "partition")
TABLES = ("gpt", "mbr", "none")
ROLES = ("partition", "gap")
SECTOR_SIZES = (512, 1024, 2048, 4096)
MIN_CHUNK = 256 << 10
MAX_CHUNK = 64 << 20
MAX_PAGE_CHUNKS = 65536
MAX_TABLES = 4096
MAX_TABLE_BYTES = 1 << 20
MAX_REGIONS = 65536
MAX_TEXT = 256
MAX_SIZE = 1 << 62


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass
class Region:
    """One stretch of the disk: a partition, or a gap between partitions."""

    role: str
    start: int
    length: int
    fs: str = "raw"
    block: int = 512
    used: int = 0
    number: int = 0
    type: str = ""
    uuid: str = ""
    label: str = ""
    pages: list[bytes] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + self.length

    def chunk_count(self, chunk: int) -> int:
        return -(-self.length // chunk)


@dataclass
class Disk:
    """A decoded disk description; `validate` has checked every field against every other."""

    kind: str
    size: int
    sector: int
    table: str
    chunk: int
    page_chunks: int
    tables: list[tuple[int, bytes]] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    disk_id: str = ""

    def partition(self, number: int) -> Region:
        for region in self.regions:
            if region.role == "partition" and region.number == number:
                return region
        numbers = [r.number for r in self.regions if r.role == "partition"]
        raise LookupError(f"the image has no partition {number} (it has {numbers or 'none'})")

    def page_count(self, region: Region) -> int:
        return -(-region.chunk_count(self.chunk) // self.page_chunks)

    def page_span(self, region: Region, page: int) -> tuple[int, int]:
        """First chunk index and number of chunks of one page of a region."""
        first = page * self.page_chunks
        return first, min(self.page_chunks, region.chunk_count(self.chunk) - first)


def encode(disk: Disk) -> bytes:
    validate(disk, "disk description")
    return encoding.pack(
        {
            "v": DISK_FORMAT,
            "kind": disk.kind,
            "size": disk.size,
            "sector": disk.sector,
            "table": disk.table,
            "disk_id": disk.disk_id,
            "chunk": disk.chunk,
            "page_chunks": disk.page_chunks,
            "tables": [[offset, data] for offset, data in disk.tables],
            "regions": [
                {
                    "role": r.role, "n": r.number, "start": r.start, "length": r.length,
                    "fs": r.fs, "block": r.block, "used": r.used, "type": r.type,
                    "uuid": r.uuid, "label": r.label, "pages": r.pages,
                }
                for r in disk.regions
            ],
        }
    )


def _text(obj: dict[str, Any], key: str, what: str) -> str:
    value = encoding.field(obj, key, str, what)
    if len(value) > MAX_TEXT:
        raise DamagedObject(f"{what} is damaged: {key} is too long")
    return str(value)


def _decode_region(obj: Any, what: str) -> Region:
    if not isinstance(obj, dict):
        raise DamagedObject(f"{what} is damaged: a region is not a map")
    pages = encoding.field(obj, "pages", list, what)
    if not all(isinstance(p, bytes) and len(p) == 32 for p in pages):
        raise DamagedObject(f"{what} is damaged: a page id is malformed")
    return Region(
        role=_text(obj, "role", what),
        number=encoding.field(obj, "n", int, what),
        start=encoding.field(obj, "start", int, what),
        length=encoding.field(obj, "length", int, what),
        fs=_text(obj, "fs", what),
        block=encoding.field(obj, "block", int, what),
        used=encoding.field(obj, "used", int, what),
        type=_text(obj, "type", what),
        uuid=_text(obj, "uuid", what),
        label=_text(obj, "label", what),
        pages=pages,
    )


def decode(plaintext: bytes, what: str = "disk description") -> Disk:
    """Decode and validate a description read from the (untrusted) repository."""
    obj = encoding.unpack_map(plaintext, what)
    if encoding.field(obj, "v", int, what) != DISK_FORMAT:
        raise DamagedObject(f"{what} has an unknown format version")
    tables = encoding.field(obj, "tables", list, what)
    regions = encoding.field(obj, "regions", list, what)
    if len(tables) > MAX_TABLES or len(regions) > MAX_REGIONS:
        raise DamagedObject(f"{what} is damaged: too many tables or regions")
    pairs = []
    for item in tables:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], bytes)):
            raise DamagedObject(f"{what} is damaged: a table entry is malformed")
        pairs.append((item[0], item[1]))
    disk = Disk(
        kind=_text(obj, "kind", what),
        size=encoding.field(obj, "size", int, what),
        sector=encoding.field(obj, "sector", int, what),
        table=_text(obj, "table", what),
        disk_id=_text(obj, "disk_id", what),
        chunk=encoding.field(obj, "chunk", int, what),
        page_chunks=encoding.field(obj, "page_chunks", int, what),
        tables=pairs,
        regions=[_decode_region(r, what) for r in regions],
    )
    validate(disk, what)
    return disk


def validate(disk: Disk, what: str) -> None:
    """Every rule of the module docstring; a restore relies on them to stay inside the target."""

    def bad(reason: str) -> DamagedObject:
        return DamagedObject(f"{what} is damaged: {reason}")

    if disk.kind not in KINDS or disk.table not in TABLES or disk.sector not in SECTOR_SIZES:
        raise bad("unknown kind, table or sector size")
    if not 0 < disk.size <= MAX_SIZE:
        raise bad("impossible disk size")
    if not (is_power_of_two(disk.chunk) and MIN_CHUNK <= disk.chunk <= MAX_CHUNK):
        raise bad("impossible chunk size")
    if not 1 <= disk.page_chunks <= MAX_PAGE_CHUNKS:
        raise bad("impossible page size")
    spans: list[tuple[int, int]] = []
    offsets = [offset for offset, _ in disk.tables]
    if offsets != sorted(offsets):
        raise bad("table areas are not in order")
    for offset, data in disk.tables:
        if not (0 <= offset and 1 <= len(data) <= MAX_TABLE_BYTES and offset + len(data) <= disk.size):
            raise bad("a table area lies outside the disk")
        spans.append((offset, offset + len(data)))
    for r in disk.regions:
        if r.role not in ROLES or r.number < 0 or r.used < 0 or r.used > r.length:
            raise bad("a region has an unknown role or impossible numbers")
        if not (0 <= r.start and 1 <= r.length and r.start + r.length <= disk.size):
            raise bad("a region lies outside the disk")
        if not (is_power_of_two(r.block) and 512 <= r.block <= disk.chunk // 8):
            raise bad("a region has an impossible block size")
        if len(r.pages) != disk.page_count(r):
            raise bad("a region has the wrong number of extent pages")
        spans.append((r.start, r.end))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        if start < end:
            raise bad("regions or tables overlap")
    starts = [r.start for r in disk.regions]
    if starts != sorted(starts):
        raise bad("regions are not in order")
