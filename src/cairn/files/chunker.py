"""Content-defined chunking: cut a byte stream where its content says, so that an insertion
near the start of a file moves only the chunks around it and the rest still deduplicate.

FastCDC (2020) with the repository's secret seed mixed into the gear table: without the seed
an observer of chunk sizes could test whether a known file is in the repository. The cut points
are part of the format (they decide which blobs exist): all parameters, normalization included,
come from the repository's config, whose average size is always a power of two (pyfastcdc
would round any other value).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol, cast

from pyfastcdc import FastCDC

from cairn.errors import DamagedObject
from cairn.repo.config import ChunkerParams


class RawReader(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Replay:
    """A reader that first returns `head`, then continues with `rest`."""

    def __init__(self, head: bytes, rest: RawReader) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readinto(self, buffer: memoryview) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(buffer) or 0


def fastcdc(params: ChunkerParams) -> FastCDC:
    """pyfastcdc's cutter with exactly the repository's parameters: `Chunker` cuts streams
    with it, a backup's big-file readers cut buffers in place (tests/test_backup_pipeline.py
    checks both cut alike)."""
    try:
        return FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size,
                       normalized_chunking=cast(Literal[0, 1, 2, 3], params.normalization), seed=params.seed)
    except ValueError as exc:
        raise DamagedObject(f"the repository's chunker parameters are unusable: {exc}") from None


class Chunker:
    """Splits streams into chunks with one repository's parameters; reusable, thread-unsafe."""

    def __init__(self, params: ChunkerParams) -> None:
        self._cdc = fastcdc(params)
        self.min_size = params.min_size
        self.max_size = params.max_size

    def chunks(self, stream: RawReader) -> Iterator[bytes]:
        """Yield the chunks of `stream` as independent bytes objects, holding at most two
        maximum-size chunks of the stream in memory.

        A stream no longer than `min_size` is one chunk whatever the cut algorithm says, so
        small files are read directly: pyfastcdc would allocate and zero a buffer of twice the
        maximum chunk size for each of them.
        """
        head = _read_up_to(stream, self.min_size + 1)
        if len(head) <= self.min_size:
            if head:
                yield head
            return
        for chunk in self._cdc.cut_stream(Replay(head, stream)):
            yield bytes(chunk.data)  # pyfastcdc reuses its buffer for the next chunk


def _read_up_to(stream: RawReader, limit: int) -> bytes:
    buffer = bytearray(limit)
    view = memoryview(buffer)
    filled = 0
    while filled < limit:
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    view.release()
    del buffer[filled:]
    return bytes(buffer)
