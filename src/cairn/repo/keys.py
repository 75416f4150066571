"""Key objects: the master secret wrapped under password-derived keys (Argon2id).

Several key objects may exist, one per password; adding, changing or removing a password
rewrites one small object and never the data.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from cairn.errors import DamagedObject
from cairn.repo import encoding
from cairn.repo.crypto import MASTER_SIZE, MasterKey, Sealer

SALT_SIZE = 16
KEY_FORMAT = 1


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost. The defaults take about 0.15 s and 64 MiB on the reference machine."""

    iterations: int = 3
    memory_kib: int = 64 * 1024
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


def wrap(master: MasterKey, password: bytes, key_id: str, kdf: KdfParams) -> bytes:
    """Build the plaintext key object (msgpack) holding `master` sealed under `password`."""
    salt = os.urandom(SALT_SIZE)
    sealer = Sealer(kdf.derive(password, salt))
    return encoding.pack(
        {
            "v": KEY_FORMAT,
            "kdf": "argon2id",
            "iterations": kdf.iterations,
            "memory_kib": kdf.memory_kib,
            "lanes": kdf.lanes,
            "salt": salt,
            "created": time.time_ns(),
            "host": socket.gethostname(),
            "user": getpass.getuser(),
            "master": sealer.seal(master.secret, _aad(key_id)),
        }
    )


def parse(data: bytes, key_id: str) -> tuple[KeyInfo, bytes, bytes]:
    """Return the key's public facts, its salt and its sealed master secret."""
    what = f"key {key_id[:8]}"
    obj = encoding.unpack_map(data, what)
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
    return info, salt, encoding.field(obj, "master", bytes, what)


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
    return MasterKey(secret)
