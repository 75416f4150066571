"""Keys and the one authenticated-encryption envelope every stored byte goes through.

Format (docs/FORMAT.md, "Encryption"): ``nonce(12) || AES-256-GCM ciphertext || tag(16)``, with
associated data that binds the ciphertext to where it belongs (an object's logical name, or a
blob's type and id), so that an object moved or swapped by an attacker fails to open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cairn.errors import DamagedObject

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
MASTER_SIZE = 32

DATA_KEY_CONTEXT = "cairn 2026-11 v1 data encryption key"
ID_KEY_CONTEXT = "cairn 2026-11 v1 blob id key"


def derive_subkey(master: bytes, context: str) -> bytes:
    """Derive an independent 32-byte key, so one master secret serves several jobs safely."""
    return blake3.blake3(master, derive_key_context=context).digest()


@dataclass(frozen=True)
class MasterKey:
    """The repository's secret, and the subkeys derived from it."""

    secret: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(MASTER_SIZE))

    @property
    def data_key(self) -> bytes:
        return derive_subkey(self.secret, DATA_KEY_CONTEXT)

    @property
    def id_key(self) -> bytes:
        return derive_subkey(self.secret, ID_KEY_CONTEXT)


class Sealer:
    """Encrypts and authenticates with one key; thread-safe (AESGCM objects are stateless)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_into(self, plaintext: bytes | memoryview, aad: bytes, out: memoryview) -> None:
        """`seal` written into `out`, exactly OVERHEAD + len(plaintext) bytes (a pack's next
        bytes): no sealed copy is made, to be copied into the pack again."""
        nonce = os.urandom(NONCE_SIZE)
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plaintext, aad, out[NONCE_SIZE:])

    def seal_parts_into(self, head: bytes, body: bytes | memoryview, aad: bytes, out: memoryview) -> None:
        """`seal_into` of `head` + `body` without joining them (AES-GCM's streaming interface):
        the same envelope, for a long `body` (its objects cost ~10 µs a call: blob.STREAM_FROM)."""
        nonce = os.urandom(NONCE_SIZE)
        out[:NONCE_SIZE] = nonce
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        at = NONCE_SIZE + encryptor.update_into(head, out[NONCE_SIZE:])
        at += encryptor.update_into(body, out[at:])
        encryptor.finalize()
        out[at:] = encryptor.tag  # `out` ends exactly with the tag: a wrong length raises here

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """Decrypt and authenticate; `what` names the object in the error a user sees."""
        view = _sealed_view(sealed, what)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
        except InvalidTag:
            raise _forged(what) from None

    def open_into(self, sealed: bytes | memoryview, aad: bytes, what: str, into: bytearray) -> memoryview:
        """`open` into `into` (at least len(sealed) - OVERHEAD bytes), returning a view of the
        plaintext there: for a check that drops the plaintext at once, a reused buffer needs no
        fresh memory."""
        view = _sealed_view(sealed, what)
        out = memoryview(into)[:len(view) - OVERHEAD]
        try:
            self._aead.decrypt_into(view[:NONCE_SIZE], view[NONCE_SIZE:], aad, out)
        except InvalidTag:
            out.release()
            raise _forged(what) from None
        return out


def _sealed_view(sealed: bytes | memoryview, what: str) -> memoryview:
    if len(sealed) < OVERHEAD:
        raise DamagedObject(f"{what} is damaged: {len(sealed)} bytes is too short")
    return memoryview(sealed)  # slices of a view copy nothing: a 4 MiB blob is not copied first


def _forged(what: str) -> DamagedObject:
    return DamagedObject(f"{what} is damaged or was changed: authentication failed")


class BlobHasher:
    """Blob ids: keyed BLAKE3 of the plaintext, so ids reveal nothing without the key."""

    def __init__(self, id_key: bytes) -> None:
        self._key = id_key

    def __call__(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._key).digest()
