"""A blob's journey into and out of its sealed form: compress (or not), seal, and back.

Plaintext inside the seal: one flag byte (0 = stored raw, 1 = zstd frame) and the payload. The
associated data is the blob's type byte and id, so a blob cannot be passed off as another.
"""

from __future__ import annotations

import sys
import threading
from enum import IntEnum

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


def seal_blob(
    sealer: Sealer, hasher: BlobHasher, blob_type: int, blob_id: bytes, data: bytes | memoryview, level: int
) -> bytes:
    """Compress when it pays, seal, then open the result again and compare (verify before upload).

    The check costs one decryption and decompression per blob; it turns a bug in a compression
    or crypto library into an error now rather than a silently unrestorable backup later.
    """
    compressed = _compressor(level).compress(data, mode=zstd.ZstdCompressor.FLUSH_FRAME) if len(data) >= 64 else b""
    if compressed and len(compressed) <= len(data) - (len(data) >> MIN_SAVING_SHIFT):
        plaintext = bytes([ZSTD]) + compressed
    else:
        plaintext = b"".join((bytes([RAW]), data))  # one copy, also when `data` is a view
    sealed = sealer.seal(plaintext, blob_aad(blob_type, blob_id))
    short = blob_id.hex()[:12]
    try:
        check = _open(sealer, hasher, blob_type, blob_id, sealed)  # also checks the content's id
        if len(check) != len(data):
            raise DamagedObject(f"blob {short} has {len(check)} bytes, not {len(data)}")
    except DamagedObject as exc:
        # Not damage in the repository: nothing holding this blob was written. Say so, so the
        # user does not go looking for a bad disk.
        raise DamagedObject(
            f"blob {short} did not verify before upload ({exc.message.removeprefix(f'blob {short} ')}): "
            "its compression or encryption produced wrong bytes; nothing holding it was written"
        ) from None
    return sealed


def open_blob(
    sealer: Sealer, hasher: BlobHasher, blob_type: int, blob_id: bytes, sealed: bytes | memoryview
) -> bytes:
    """Authenticate, decompress and check the id: any damage raises DamagedObject."""
    data = _open(sealer, hasher, blob_type, blob_id, sealed)
    return data if isinstance(data, bytes) else bytes(data)


def _open(
    sealer: Sealer, hasher: BlobHasher, blob_type: int, blob_id: bytes, sealed: bytes | memoryview
) -> bytes | memoryview:
    """open_blob, but an uncompressed blob comes back as a view of the plaintext (no copy: the
    verify before upload only needs its length, after the id check)."""
    what = f"blob {blob_id.hex()[:12]}"
    plaintext = sealer.open(sealed, blob_aad(blob_type, blob_id), what)
    if not plaintext:
        raise DamagedObject(f"{what} is damaged: empty plaintext")
    flag = plaintext[0]
    data: bytes | memoryview
    if flag == RAW:
        data = memoryview(plaintext)[1:]
    elif flag == ZSTD:
        try:
            decompressor = zstd.ZstdDecompressor()
            data = decompressor.decompress(memoryview(plaintext)[1:], max_length=MAX_BLOB_SIZE)
            if not decompressor.eof:
                raise zstd.ZstdError("truncated or oversized frame")
            if decompressor.unused_data:
                raise zstd.ZstdError("bytes after the frame")  # exactly one frame (FORMAT.md §6)
        except zstd.ZstdError as exc:
            raise DamagedObject(f"{what} does not decompress: {exc}") from None
    else:
        raise DamagedObject(f"{what} has an unknown compression flag {flag}")
    if hasher(data) != blob_id:
        raise DamagedObject(f"{what} does not match its id")
    return data
