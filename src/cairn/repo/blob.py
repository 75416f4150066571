"""A blob's journey into and out of its sealed form: compress (or not), seal, and back.

Plaintext inside the seal: one flag byte (0 = stored raw, 1 = zstd frame) and the payload. The
associated data is the blob's type byte and id, so a blob cannot be passed off as another.
"""

from __future__ import annotations

import sys
import threading
from enum import IntEnum
from typing import TypeVar

import zstandard

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

from cairn.errors import DamagedObject
from cairn.repo.crypto import BlobHasher, Sealer

RAW = 0
ZSTD = 1
# Keep the compressed form only when it saves at least 1/32 of the bytes: below that the
# decompression on every restore is not worth it.
MIN_SAVING_SHIFT = 5
# A blob this big is compressed only if a probe of it compresses (`_worth_compressing`).
PROBE_FROM = 128 * 1024
PROBES = 4
PROBE_BYTES = 4096
STREAM_FROM = 256 * 1024
"""A blob's flag and bytes (or frame) this long or longer are sealed without being joined
(`Sealer.seal_parts_into`): joining copies them once more (1 MiB: 154 µs sealed unjoined,
266 joined). Shorter ones are joined in a reused buffer, which costs less than the streaming
interface's objects (64 KiB: 13 µs joined into a new object, 21 unjoined)."""
# Bound a decompressed blob, so a malicious frame cannot exhaust memory.
MAX_BLOB_SIZE = 1 << 30


class BlobType(IntEnum):
    DATA = 0
    TREE = 1
    DISK = 2


def blob_aad(blob_type: int, blob_id: bytes) -> bytes:
    return bytes([blob_type]) + blob_id


_local = threading.local()


def _compressor(level: int) -> zstd.ZstdCompressor:
    """One compressor per thread and level: making a fresh one costs ~10 µs, which is most of
    the compression time of a small file's blob (reused: ~1.5 µs). Each call ends its frame, so
    a reused compressor's frames are independent."""
    cached = getattr(_local, "compressors", None)
    if cached is None:
        cached = _local.compressors = {}
    compressor = cached.get(level)
    if compressor is None:
        compressor = cached[level] = zstd.ZstdCompressor(level=level)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    """One reusable decompression context per thread. python-zstandard, not `zstd` above: its
    one-shot decompress reuses the context (a new `zstd.ZstdDecompressor` costs ~10 us, most of
    a small blob's time), sizes its output from the frame header instead of growing it (1 MiB:
    1.5 ms against 2.7 ms), and lets go of the GIL while it works, so a restore's writers and a
    backup's verifications use both cores."""
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def _decompress(frame: memoryview) -> bytes:
    """Exactly one zstd frame (FORMAT.md §6) of at most MAX_BLOB_SIZE bytes, or ZstdError."""
    declared = zstandard.frame_content_size(frame)
    if declared > MAX_BLOB_SIZE:  # the header's size is trusted for the output buffer: bound it first
        raise zstandard.ZstdError(f"its frame declares {declared} bytes")
    return _decompressor().decompress(frame, max_output_size=MAX_BLOB_SIZE, allow_extra_data=False)


def _pays(original: int, compressed: int) -> bool:
    return compressed <= original - (original >> MIN_SAVING_SHIFT)


def _worth_compressing(data: bytes | memoryview, level: int) -> bool:
    """Whether PROBES slices from across a big chunk, compressed together, save MIN_SAVING.

    zstd-3 spends 1.1 s of CPU per GiB on data it cannot shrink (media, archives, encrypted
    files): most of what a backup of such files costs after reading. The probe costs 1 % of
    that. Data compressible only where no slice falls is stored as it is: it costs space, never
    correctness (the flag says which form was sealed)."""
    step = (len(data) - PROBE_BYTES) // (PROBES - 1)
    probe = b"".join([data[i * step : i * step + PROBE_BYTES] for i in range(PROBES)])
    return _pays(len(probe), len(_compressor(level).compress(probe, mode=zstd.ZstdCompressor.FLUSH_FRAME)))


_FLAGS = {RAW: bytes([RAW]), ZSTD: bytes([ZSTD])}


def blob_parts(data: bytes | memoryview, level: int) -> tuple[bytes, bytes | memoryview]:
    """What is sealed for `data`, as its flag byte and the rest: the zstd frame when
    compressing pays, else `data` itself."""
    if len(data) >= 64 and (len(data) < PROBE_FROM or _worth_compressing(data, level)):
        compressed = _compressor(level).compress(data, mode=zstd.ZstdCompressor.FLUSH_FRAME)
        if _pays(len(data), len(compressed)):
            return _FLAGS[ZSTD], compressed
    return _FLAGS[RAW], data


def blob_plaintext(data: bytes | memoryview, level: int) -> memoryview:
    """`blob_parts` joined in this thread's buffer (valid until the thread's next call: it is
    sealed at once). A new bytes object for each big incompressible chunk cost a backup worker
    more than sealing it (fresh memory: a page fault per 4 KiB)."""
    return _joined(*blob_parts(data, level))


def _joined(flag: bytes, rest: bytes | memoryview) -> memoryview:
    plain = memoryview(_buffer("plain", len(rest) + 1))[: len(rest) + 1]
    plain[:1] = flag
    plain[1:] = rest  # through a memoryview: a bytearray's slice copies a non-bytearray first
    return plain


def seal_blob(
    sealer: Sealer, blob_type: int, blob_id: bytes, data: bytes | memoryview, level: int
) -> bytes:
    """Compress when it pays, seal, then open the result again and compare (`verify_sealed`)."""
    sealed = sealer.seal(blob_plaintext(data, level), blob_aad(blob_type, blob_id))
    verify_sealed(sealer, blob_type, blob_id, sealed, data)
    return sealed


def seal_blob_into(sealer: Sealer, blob_type: int, blob_id: bytes, data: bytes | memoryview,
                   parts: tuple[bytes, bytes | memoryview], out: memoryview) -> None:
    """`seal_blob` written into `out`, a pack's next OVERHEAD + len(flag) + len(rest) bytes,
    `parts` being `blob_parts(data)`: (flag, rest)."""
    flag, rest = parts
    if len(rest) >= STREAM_FROM:
        sealer.seal_parts_into(flag, rest, blob_aad(blob_type, blob_id), out)
    else:
        sealer.seal_into(_joined(flag, rest), blob_aad(blob_type, blob_id), out)
    verify_sealed(sealer, blob_type, blob_id, out, data)


def verify_sealed(sealer: Sealer, blob_type: int, blob_id: bytes, sealed: bytes | memoryview,
                  data: bytes | memoryview) -> None:
    """Open a blob just sealed and compare it with its bytes (verify before upload).

    The check costs one decryption and decompression per blob; it turns a bug in a compression
    or crypto library into an error now rather than a silently unrestorable backup later. It
    compares bytes rather than hashing them again, at a sixth of the cost: that proves the blob
    opens to `data`, though not that `data` still has the id it was hashed to (bytes changed in
    memory in between would show at restore, as a blob failing its id check). It is a quarter
    of a first backup's CPU on small compressible files (docs/PERFORMANCE.md). The
    plaintext goes into this thread's scratch buffer, dropped at once: fresh memory for it
    was a tenth of a backup worker's page faults (perf).
    """
    short = blob_id.hex()[:12]
    scratch = _buffer("scratch", len(sealed))
    try:
        with sealer.open_into(sealed, blob_aad(blob_type, blob_id), f"blob {short}", scratch) as plaintext:
            check, start = _content(plaintext, f"blob {short}")
            if len(check) - start != len(data):
                raise DamagedObject(f"blob {short} has {len(check) - start} bytes, not {len(data)}")
            # A memcmp (comparing memoryviews goes byte by byte): a stored blob's is the scratch's.
            if not (scratch if isinstance(check, memoryview) else check).startswith(data, start):
                raise DamagedObject(f"blob {short} differs from the bytes it was made from")
            del check
    except DamagedObject as exc:
        # Not damage in the repository: nothing holding this blob was written. Say so, so the
        # user does not go looking for a bad disk.
        raise DamagedObject(
            f"blob {short} did not verify before upload ({exc.message.removeprefix(f'blob {short} ')}): "
            "its compression or encryption produced wrong bytes; nothing holding it was written"
        ) from None


SCRATCH_MAX = 8 << 20
"""A thread keeps each of its buffers up to this size (twice the largest chunk); a larger tree's
check gets one of its own."""


def _buffer(name: str, size: int) -> bytearray:
    """At least `size` bytes: this thread's buffer of that name, replaced (never resized: a
    view of it may outlive a failed check) when too small."""
    if size > SCRATCH_MAX:
        return bytearray(size)
    buffer: bytearray | None = getattr(_local, name, None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray(size)
        setattr(_local, name, buffer)
    return buffer


def open_blob(
    sealer: Sealer, hasher: BlobHasher, blob_type: int, blob_id: bytes, sealed: bytes | memoryview
) -> bytes:
    """Authenticate, decompress and check the id: any damage raises DamagedObject."""
    content, start = _unseal(sealer, blob_type, blob_id, sealed)
    data = memoryview(content)[start:] if start else content
    if hasher(data) != blob_id:
        raise DamagedObject(f"blob {blob_id.hex()[:12]} does not match its id")
    return content[start:] if start else content


def _unseal(sealer: Sealer, blob_type: int, blob_id: bytes, sealed: bytes | memoryview) -> tuple[bytes, int]:
    """Authenticate and decompress, without the id check: the content is `bytes[start:]`
    (a stored blob is returned as its plaintext and 1, so that nothing is copied before the
    caller knows it needs a copy)."""
    what = f"blob {blob_id.hex()[:12]}"
    return _content(sealer.open(sealed, blob_aad(blob_type, blob_id), what), what)


_Plain = TypeVar("_Plain", bytes, memoryview)


def _content(plaintext: _Plain, what: str) -> tuple[_Plain | bytes, int]:
    """A blob's content from its plaintext: (the plaintext itself and 1, or the decompressed
    bytes and 0)."""
    if not plaintext:
        raise DamagedObject(f"{what} is damaged: empty plaintext")
    flag = plaintext[0]
    if flag == RAW:
        return plaintext, 1
    if flag == ZSTD:
        try:
            return _decompress(memoryview(plaintext)[1:]), 0
        except zstandard.ZstdError as exc:
            raise DamagedObject(f"{what} does not decompress: {exc}") from None
    raise DamagedObject(f"{what} has an unknown compression flag {flag}")
