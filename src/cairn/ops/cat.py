"""Show one repository object decrypted and decoded, for debugging and for the curious.

Every structure comes back JSON-able (bytes as hex) so the CLI prints it as JSON unchanged;
a data or tree blob comes back raw, since its bytes are the content. `cat` takes no lock: it
is the tool for looking inside a repository that something else has locked, and an object that
vanishes meanwhile just raises `ObjectMissing`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cairn.errors import NotFound, UsageError
from cairn.repo import index as index_mod
from cairn.repo import keys as keys_mod
from cairn.repo import lock as lock_mod
from cairn.repo.pack import object_name
from cairn.repo.repository import Repository

KINDS = ("config", "index", "snapshot", "blob", "key", "pack", "lock")


@dataclass(frozen=True)
class CatOptions:
    """What to show: `kind` is one of KINDS; `ref` an id or unique prefix (not for config)."""

    kind: str
    ref: str | None = None


@dataclass(frozen=True)
class CatResult:
    """Either `data` (JSON-able) or, for a blob, `raw` (its plaintext bytes)."""

    kind: str
    data: Any = None
    raw: bytes | None = None


def jsonable(value: Any) -> Any:
    """Turn decoded objects into JSON types: bytes become hex, dataclasses dicts."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value


def _check_hex(ref: str | None, what: str, minimum: int = 4) -> str:
    if ref is None:
        raise UsageError(f"'cat {what}' needs an id")
    ref = ref.lower()
    if len(ref) < minimum or len(ref) > 64 or any(c not in "0123456789abcdef" for c in ref):
        raise UsageError(f"{ref!r} is not a {what} id: give at least {minimum} hex digits")
    return ref


def _resolve(repo: Repository, folder: str, ref: str | None, what: str) -> str:
    """The full id of the one object under `folder` whose id starts with `ref`."""
    ref = _check_hex(ref, what)
    listing = f"{folder}/{ref[:2]}/" if folder == "data" else f"{folder}/"
    ids = [o.name.rsplit("/", 1)[-1] for o in repo.backend.list(listing)]
    matches = [i for i in ids if i.startswith(ref)]
    if not matches:
        raise NotFound(f"no {what} {ref}")
    if len(matches) > 1:
        raise NotFound(f"{what} id {ref} is ambiguous: {len(matches)} start with it")
    return matches[0]


def _index(repo: Repository, ref: str | None) -> dict[str, Any]:
    index_id = _resolve(repo, "index", ref, "index")
    packs, supersedes = index_mod.decode_index(repo.load_object("index", index_id), f"index {index_id[:8]}")
    return {
        "id": index_id,
        "packs": [
            {"id": pack_id.hex(), "blobs": [_entry(e) for e in index_mod.iter_records(records)]}
            for pack_id, records in packs
        ],
        "supersedes": [s.hex() for s in supersedes],
    }


def _entry(entry: Any) -> dict[str, Any]:
    return {
        "type": entry.blob_type, "id": entry.blob_id.hex(), "offset": entry.offset,
        "length": entry.length, "raw_length": entry.raw_length,
    }


def _snapshot(repo: Repository, ref: str | None) -> dict[str, Any]:
    if ref is None:
        raise UsageError("'cat snapshot' needs an id or 'latest'")
    snap = repo.find_snapshot(ref)
    data: dict[str, Any] = jsonable(snap)
    data["paths"] = snap.display_paths  # paths are names a person typed: show them as text
    return data


def _blob(repo: Repository, ref: str | None) -> bytes:
    ref = _check_hex(ref, "blob", minimum=64)
    return repo.load_blob(bytes.fromhex(ref))


def _key(repo: Repository, ref: str | None) -> dict[str, Any]:
    key_id = _resolve(repo, "keys", ref, "key")
    data = jsonable(keys_mod.body(repo.backend.load(f"keys/{key_id}"), key_id))
    return {"id": key_id, **data}


def _pack(repo: Repository, ref: str | None) -> dict[str, Any]:
    pack_hex = _resolve(repo, "data", ref, "pack")
    pack_id = bytes.fromhex(pack_hex)
    size = repo.backend.stat(object_name(pack_id)).size
    entries = repo.read_pack_header(pack_id, size)
    return {"id": pack_hex, "size": size, "blobs": [_entry(e) for e in entries]}


def _lock(repo: Repository, ref: str | None) -> dict[str, Any]:
    lock_id = _resolve(repo, "locks", ref, "lock")
    info = lock_mod.decode(repo.load_object("locks", lock_id), lock_id)
    return {**jsonable(info), "stale": info.is_stale()}


def cat(repo: Repository, options: CatOptions) -> CatResult:
    kind = options.kind
    if kind == "config":
        return CatResult(kind, data=jsonable(repo.config))
    if kind == "blob":
        return CatResult(kind, raw=_blob(repo, options.ref))
    readers = {"index": _index, "snapshot": _snapshot, "key": _key, "pack": _pack, "lock": _lock}
    if kind not in readers:
        raise UsageError(f"cannot cat {kind!r}: choose one of {', '.join(KINDS)}")
    return CatResult(kind, data=readers[kind](repo, options.ref))
