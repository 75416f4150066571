"""Key objects: the master secret wrapped under password-derived keys (Argon2id).

Several key objects may exist, one per password; adding, changing or removing a password
rewrites one small object and never the data.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

import blake3
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from cairn.errors import DamagedObject
from cairn.repo import encoding, identity
from cairn.repo.crypto import MASTER_SIZE, MasterKey, Sealer, derive_subkey

SALT_SIZE = 16
KEY_FORMAT = 1
MAC_SIZE = 32
MAC_KEY_CONTEXT = "cairn 2026-11 v1 key object mac"
CHECK_CONTEXT = b"cairn 2026-12 v1 key object check"
CHECK_SIZE = 16


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost of a new key (a key object records its own, so older keys keep theirs).

    32 MiB and 6 passes: restic's scrypt (N=2^15, r=8) takes 32 MiB too, and a password
    tried costs the same memory x passes as RFC 9106's 64 MiB and 3 passes (cairn's default
    until 2026-12-06), in 0.12 s rather than 0.15 here. The 64 MiB were most of what every
    light command (snapshots, an unchanged backup, a single-file restore) peaked at, above
    restic's whole peak: 94 MB against 55 for `snapshots` of an empty repository, 61 with
    32 MiB. Within OWASP's Argon2id recommendations (which start at 19 MiB and 2 passes).
    """

    iterations: int = 6
    memory_kib: int = 32 * 1024
    lanes: int = 4

    def derive(self, password: bytes, salt: bytes) -> bytes:
        return Argon2id(
            salt=salt,
            length=32,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        ).derive(password)


@dataclass(frozen=True)
class KeyInfo:
    """What `key list` shows; never the secret."""

    id: str
    created_ns: int
    host: str
    user: str
    kdf: KdfParams


def _aad(key_id: str) -> bytes:
    return f"keys/{key_id}".encode()


def _mac(master: MasterKey, key_id: str, body: bytes) -> bytes:
    return blake3.blake3(_aad(key_id) + body, key=derive_subkey(master.secret, MAC_KEY_CONTEXT)).digest()


def _check(kdf: KdfParams, salt: bytes, sealed: bytes) -> bytes:
    """An unkeyed checksum of what unwrapping depends on.

    AES-GCM cannot tell a wrong password from a changed ciphertext, and the MAC needs the master
    key that only a right password gives; without this, a bit flipped in the only key object read
    as "wrong password". It proves nothing against an attacker (the MAC does that), it only lets
    damage be named as damage.
    """
    params = struct.pack("<III", kdf.iterations, kdf.memory_kib, kdf.lanes)
    return blake3.blake3(CHECK_CONTEXT + params + salt + sealed).digest(CHECK_SIZE)


def wrap(master: MasterKey, password: bytes, key_id: str, kdf: KdfParams) -> bytes:
    """Build the key object: its msgpack body, then a MAC under the master key.

    The MAC covers the public fields too (host, user, KDF parameters), so any change to a key
    object is detected by whoever holds the master key, including `check` for keys whose
    password it does not know.
    """
    salt = os.urandom(SALT_SIZE)
    sealer = Sealer(kdf.derive(password, salt))
    sealed = sealer.seal(master.secret, _aad(key_id))
    body = encoding.pack(
        {
            "v": KEY_FORMAT,
            "kdf": "argon2id",
            "iterations": kdf.iterations,
            "memory_kib": kdf.memory_kib,
            "lanes": kdf.lanes,
            "salt": salt,
            "created": time.time_ns(),
            "host": identity.hostname(),
            "user": identity.username(),
            "master": sealed,
            "check": _check(kdf, salt, sealed),
        }
    )
    return body + _mac(master, key_id, body)


def body(data: bytes, key_id: str) -> dict[str, object]:
    """The key object's map, without its MAC (unverified: the MAC needs the master key)."""
    if len(data) <= MAC_SIZE:
        raise DamagedObject(f"key {key_id[:8]} is damaged: too short")
    return encoding.unpack_map(data[:-MAC_SIZE], f"key {key_id[:8]}")


def parse(data: bytes, key_id: str) -> tuple[KeyInfo, bytes, bytes]:
    """Return the key's public facts, its salt and its sealed master secret."""
    what = f"key {key_id[:8]}"
    obj = body(data, key_id)
    if encoding.field(obj, "v", int, what) != KEY_FORMAT or obj.get("kdf") != "argon2id":
        raise DamagedObject(f"{what} has an unknown format or key derivation")
    kdf = KdfParams(
        iterations=encoding.field(obj, "iterations", int, what),
        memory_kib=encoding.field(obj, "memory_kib", int, what),
        lanes=encoding.field(obj, "lanes", int, what),
    )
    if not (1 <= kdf.iterations <= 100 and 1 <= kdf.lanes <= 64 and 8 * kdf.lanes <= kdf.memory_kib <= 16 * 1024 * 1024):
        raise DamagedObject(f"{what} asks for Argon2id parameters out of range")
    info = KeyInfo(
        id=key_id,
        created_ns=encoding.field(obj, "created", int, what),
        host=encoding.field(obj, "host", str, what),
        user=encoding.field(obj, "user", str, what),
        kdf=kdf,
    )
    salt = encoding.field(obj, "salt", bytes, what)
    sealed = encoding.field(obj, "master", bytes, what)
    if "check" in obj and encoding.field(obj, "check", bytes, what) != _check(kdf, salt, sealed):
        raise DamagedObject(f"{what} is damaged: its checksum does not match (changed bytes, not a wrong password)")
    return info, salt, sealed


def unwrap(data: bytes, key_id: str, password: bytes) -> MasterKey | None:
    """The master key if `password` opens this key object, else None."""
    info, salt, sealed = parse(data, key_id)
    sealer = Sealer(info.kdf.derive(password, salt))
    try:
        secret = sealer.open(sealed, _aad(key_id), f"key {key_id[:8]}")
    except DamagedObject:
        return None
    if len(secret) != MASTER_SIZE:
        raise DamagedObject(f"key {key_id[:8]} holds a master key of the wrong size")
    master = MasterKey(secret)
    verify(data, key_id, master)
    return master


def verify(data: bytes, key_id: str, master: MasterKey) -> None:
    """Check a key object's MAC with the master key; DamagedObject if anything in it changed."""
    if len(data) <= MAC_SIZE or _mac(master, key_id, data[:-MAC_SIZE]) != data[-MAC_SIZE:]:
        raise DamagedObject(f"key {key_id[:8]} is damaged or was changed: its MAC does not match")
