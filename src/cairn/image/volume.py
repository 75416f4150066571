"""One region of an image snapshot as a random-access byte source, read from the repository
on demand: what a filesystem parser needs to read files out of an image without restoring it.

A read touches the chunks under it; each chunk's blob is loaded, checked (a data blob exactly
as long as its chunk) and kept in a small LRU cache, as is each decoded extent page. Memory is
therefore bounded by `cache_bytes` of chunks plus `PAGES_KEPT` pages, whatever the disk size,
and a parser that re-reads its metadata (inode tables, the MFT, a FAT) mostly hits the cache.

ZERO chunks read as zeros. UNUSED chunks, and the unused blocks of a PARTIAL chunk, also read
as zeros: the image never held their bytes, and the filesystem does not use them (a parser
that walks allocated files never looks there; deleted files are not recoverable from an image).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from cairn.image import chunks as chunks_mod
from cairn.image.format import Disk, Region
from cairn.image.pages import DATA, PARTIAL, ChunkRef, load_chunk, page_refs
from cairn.repo.repository import Repository

DEFAULT_CACHE_BYTES = 32 << 20
PAGES_KEPT = 2


class RegionReader:
    """Bytes `[0, size)` of one region (a partition, usually) of a stored image.

    Thread-safe (one lock around the caches); loads happen outside it only in the sense that
    two threads may load the same chunk once each.
    """

    def __init__(self, repo: Repository, disk: Disk, region: Region, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.repo, self.disk, self.region = repo, disk, region
        self.size = region.length
        self.cache_bytes = max(cache_bytes, disk.chunk)
        self._chunks: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self._pages: OrderedDict[int, list[ChunkRef]] = OrderedDict()
        self._lock = threading.Lock()
        self.chunks_loaded = 0
        """Blobs loaded from the repository so far (tests and curious users: the cache works)."""

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`; shorter only at the end of the region."""
        if offset < 0 or size < 0:
            raise ValueError(f"read of {size} bytes at {offset}")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        chunk = self.disk.chunk
        out = bytearray()
        at = offset
        while at < end:
            index, within = divmod(at, chunk)
            data = self._chunk(index)
            take = min(end - at, len(data) - within)
            out += data[within : within + take]
            at += take
        return bytes(out)

    def _ref(self, index: int) -> ChunkRef:
        page_no, i = divmod(index, self.disk.page_chunks)
        with self._lock:
            refs = self._pages.get(page_no)
            if refs is not None:
                self._pages.move_to_end(page_no)
                return refs[i]
        refs = page_refs(self.repo, self.disk, self.region, page_no)
        with self._lock:
            self._pages[page_no] = refs
            while len(self._pages) > PAGES_KEPT:
                self._pages.popitem(last=False)
        return refs[i]

    def _chunk(self, index: int) -> bytes:
        with self._lock:
            data = self._chunks.get(index)
            if data is not None:
                self._chunks.move_to_end(index)
                return data
        ref = self._ref(index)
        if ref.kind not in (DATA, PARTIAL):
            return chunks_mod.zeros(ref.length)  # ZERO or UNUSED: nothing to load or cache
        data = load_chunk(self.repo, ref)
        with self._lock:
            self.chunks_loaded += 1
            if index not in self._chunks:
                self._chunks[index] = data
                self._cached += len(data)
            while self._cached > self.cache_bytes:
                _, dropped = self._chunks.popitem(last=False)
                self._cached -= len(dropped)
        return data
