"""From a filesystem's used byte ranges to per-chunk read plans and PARTIAL masks."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

Span = tuple[int, int]


def chunk_plans(ranges: Iterable[Span], length: int, chunk: int, block: int) -> Iterator[list[Span]]:
    """For each chunk of a region, the used spans inside it (chunk-relative), widened to
    whole mask blocks and merged. An empty list is an UNUSED chunk; one span covering the
    chunk is a fully used one. Streams: `ranges` is read once, in order."""
    it = iter(ranges)
    cur = next(it, None)
    for c0 in range(0, length, chunk):
        c1 = min(c0 + chunk, length)
        spans: list[Span] = []
        while cur is not None and cur[0] < c1:
            a = (max(cur[0], c0) - c0) // block * block
            b = min(-(-(min(cur[1], c1) - c0) // block) * block, c1 - c0)
            if spans and a <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], b))
            else:
                spans.append((a, b))
            if cur[1] > c1:
                break
            cur = next(it, None)
        yield spans


def is_full(spans: list[Span], length: int) -> bool:
    return len(spans) == 1 and spans[0] == (0, length)


def mask_of(spans: list[Span], block: int, mask_size: int) -> bytes:
    """Bit k set when block k of the chunk is used (least significant bit first)."""
    bits = 0
    for a, b in spans:
        first, end = a // block, -(-b // block)
        bits |= ((1 << (end - first)) - 1) << first
    return bits.to_bytes(mask_size, "little")


@functools.lru_cache(maxsize=8)
def zeros(length: int) -> bytes:
    return bytes(length)


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """A memcmp against a cached zero buffer: gigabytes per second. (`startswith` of an equally
    long buffer is equality; unlike ``memoryview == bytes``, which compares item by item at
    about 1 GB/s, it takes the memcmp path for a memoryview too.)"""
    return zeros(len(data)).startswith(data)
