"""msgpack for every structured object, with the strictness untrusted input needs."""

from __future__ import annotations

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


def field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """Fetch a required, typed field, so a malicious object cannot smuggle a wrong type in."""
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DamagedObject(f"{what} is damaged: field {key!r} missing or of the wrong type")
    return value
