"""Pack objects: many sealed blobs in one object, with a sealed header at the end.

Layout (docs/FORMAT.md, "Packs"): ``blob_0 || ... || blob_n-1 || sealed header || u32 length``.
The header lists every blob (type, id, sealed length, plaintext length) in order, so a lost index
can be rebuilt from the packs alone, and since the blobs' lengths must add up to the header's
offset, every byte of a pack is covered by some authentication tag.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cairn.errors import DamagedObject
from cairn.repo.crypto import OVERHEAD, Sealer

PACK_FORMAT = 1
HEADER_START = struct.Struct(">BI")  # format, count
RECORD = struct.Struct(">B32sII")  # type, id, sealed length, plaintext length
TRAILER = struct.Struct(">I")  # sealed header length
MAX_HEADER = HEADER_START.size + RECORD.size * 1_000_000 + OVERHEAD


def new_pack_id() -> bytes:
    """Random, not content-derived: writers on many hosts never collide and need no lock."""
    return os.urandom(32)


def object_name(pack_id: bytes) -> str:
    hex_id = pack_id.hex()
    return f"data/{hex_id[:2]}/{hex_id}"


def header_aad(pack_id: bytes) -> bytes:
    return f"data/{pack_id.hex()}".encode()


@dataclass(frozen=True)
class PackEntry:
    """One blob as a pack header and the index record it: where, how long, what."""

    blob_type: int
    blob_id: bytes
    offset: int
    length: int
    raw_length: int


class PackSink(Protocol):
    """Where a streamed pack's bytes go as it fills (storage.local.ObjectWriter)."""

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


SINK_BYTES = 1 << 20
"""A streamed pack hands its bytes to its sink in pieces of about this size: a write per
megabyte rather than per blob, and a megabyte held rather than the whole pack."""


class PackBuilder:
    """Collects sealed blobs until the pack is full enough to upload: in memory, or, with a
    `sink` (a backup worker's pack on a local folder), given to it a megabyte at a time so
    the pack is never held whole.

    A writer that fills one pack after another hands each one's buffer on to the next
    (`reuse`): a buffer grown afresh per pack had every page faulted in again, with the sealed
    copies added to it a third of a backup worker's page faults (perf). Blobs can be sealed
    straight into it (`add_filled`).
    """

    def __init__(self, reuse: PackBuilder | None = None) -> None:
        self.pack_id = new_pack_id()
        self._buffer: bytearray = bytearray() if reuse is None else reuse._buffer
        self._size = 0  # bytes of the pack so far: where the next blob starts
        self._held = 0  # the last of them, still in the buffer (all, without a sink)
        self.entries: list[PackEntry] = []
        self.sink: PackSink | None = None  # set by Repository.streamed_pack, which names it after pack_id

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, blob_type: int, blob_id: bytes, sealed: bytes | memoryview, raw_length: int) -> PackEntry:
        entry = PackEntry(blob_type, blob_id, self._size, len(sealed), raw_length)
        self._append(sealed)
        self.entries.append(entry)
        return entry

    def add_filled(self, blob_type: int, blob_id: bytes, length: int, raw_length: int,
                   fill: Callable[[memoryview], None]) -> PackEntry:
        """Add a blob of `length` sealed bytes that `fill` writes into the pack's next bytes
        itself; if it raises, nothing is added."""
        entry = PackEntry(blob_type, blob_id, self._size, length, raw_length)
        with self._next(length) as out:
            fill(out)
        self._added(length)
        self.entries.append(entry)
        return entry

    def _next(self, length: int) -> memoryview:
        end = self._held + length
        if end > len(self._buffer):
            self._buffer += bytes(end - len(self._buffer))
        return memoryview(self._buffer)[self._held:end]

    def _append(self, data: bytes | memoryview, hand_on: bool = True) -> None:
        with self._next(len(data)) as out:
            out[:] = data
        self._added(len(data), hand_on)

    def _added(self, length: int, hand_on: bool = True) -> None:
        self._size += length
        self._held += length
        if hand_on and self.sink is not None and self._held >= SINK_BYTES:
            with memoryview(self._buffer) as whole, whole[:self._held] as held:
                self.sink.write(held)
            self._held = 0

    def finish(self, sealer: Sealer) -> memoryview:
        """The header and trailer added, the pack's bytes not given to the sink yet: all of
        them without one (a view of the builder's buffer: no 16 MiB copy)."""
        header = bytearray(HEADER_START.pack(PACK_FORMAT, len(self.entries)))
        for e in self.entries:
            header += RECORD.pack(e.blob_type, e.blob_id, e.length, e.raw_length)
        sealed = sealer.seal(header, header_aad(self.pack_id))
        self._append(sealed, hand_on=False)  # the tail is returned whole
        self._append(TRAILER.pack(len(sealed)), hand_on=False)
        return memoryview(self._buffer)[:self._held]


def header_tail_size(pack_size: int) -> int:
    """How many bytes to read from a pack's end to most likely get the whole header in one go."""
    return min(pack_size, 64 * 1024)


def parse_header(pack_id: bytes, tail: bytes, pack_size: int, sealer: Sealer) -> list[PackEntry] | int:
    """Parse the header from the last bytes of a pack.

    Returns the entries, or, when `tail` is too short to hold the header, the number of
    trailing bytes needed. Any inconsistency raises DamagedObject naming the pack.
    """
    what = f"pack {pack_id.hex()[:12]}"
    if pack_size < TRAILER.size or len(tail) < TRAILER.size:
        raise DamagedObject(f"{what} is damaged: too short")
    (sealed_len,) = TRAILER.unpack_from(tail, len(tail) - TRAILER.size)
    if sealed_len > MAX_HEADER or sealed_len + TRAILER.size > pack_size:
        raise DamagedObject(f"{what} is damaged: header length {sealed_len} is impossible")
    if sealed_len + TRAILER.size > len(tail):
        return sealed_len + TRAILER.size
    start = len(tail) - TRAILER.size - sealed_len
    header = sealer.open(tail[start : len(tail) - TRAILER.size], header_aad(pack_id), f"{what} header")
    if len(header) < HEADER_START.size:
        raise DamagedObject(f"{what} header is damaged: too short")
    version, count = HEADER_START.unpack_from(header)
    if version != PACK_FORMAT or len(header) != HEADER_START.size + count * RECORD.size:
        raise DamagedObject(f"{what} header is damaged: unknown format or wrong length")
    entries: list[PackEntry] = []
    offset = 0
    for i in range(count):
        blob_type, blob_id, length, raw_length = RECORD.unpack_from(header, HEADER_START.size + i * RECORD.size)
        entries.append(PackEntry(blob_type, blob_id, offset, length, raw_length))
        offset += length
    if offset + sealed_len + TRAILER.size != pack_size:
        raise DamagedObject(f"{what} is damaged: its blobs do not fill it exactly")
    return entries
