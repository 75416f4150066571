"""msgpack for every structured object, with the strictness untrusted input needs."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import msgpack

from cairn.errors import DamagedObject


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def array_header(length: int) -> bytes:
    """The header of an array of `length` items, for items packed on their own and joined."""
    return msgpack.Packer().pack_array_header(length)


def unpack_map(data: bytes, what: str) -> dict[str, Any]:
    """Decode a msgpack map; anything else (or trailing bytes) means a damaged object."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise DamagedObject(f"{what} does not decode: {exc}") from None
    if not isinstance(value, dict):
        raise DamagedObject(f"{what} does not decode: not a map")
    return value


class Reader:
    """One msgpack object read piece by piece (a long array an item at a time), with
    `unpack_map`'s strictness: any malformation raises DamagedObject naming `what`.

    Why: a folder of 100,000 files decoded whole holds all its entries at once, when a walk
    that looks at one entry at a time needs only one (files/tree.iter_tree)."""

    def __init__(self, data: bytes, what: str) -> None:
        # Read through a file view of `data` (no copy), not fed whole: the unpacker would copy
        # it into its own buffer.
        size = max(len(data), 1)
        self._unpacker = msgpack.Unpacker(io.BytesIO(data), read_size=min(size, 64 * 1024), max_buffer_size=size,
                                          raw=False, strict_map_key=True)
        self._size = len(data)
        self.what = what

    def _read(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise DamagedObject(f"{self.what} does not decode: {exc or type(exc).__name__}") from None

    def map_header(self) -> int:
        length: int = self._read(self._unpacker.read_map_header)
        return length

    def array_header(self) -> int:
        length: int = self._read(self._unpacker.read_array_header)
        return length

    def value(self) -> Any:
        return self._read(self._unpacker.unpack)

    def end(self) -> None:
        """Refuse bytes after the object, as unpacking it whole does."""
        if self._unpacker.tell() != self._size:
            raise DamagedObject(f"{self.what} does not decode: extra bytes after it")


def field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """Fetch a required, typed field, so a malicious object cannot smuggle a wrong type in."""
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DamagedObject(f"{what} is damaged: field {key!r} missing or of the wrong type")
    return value
