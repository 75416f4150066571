"""Passwords of a repository: list, add, change and remove the keys that wrap its master key.

Changing a password never rewrites data: a key object is the master key sealed under one
password, so `change_password` adds a key for the new password, then removes the one in use.
Two refusals protect the user from locking themselves out: the key in use is never removed
(open the repository with another password to remove it), nor is the last key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cairn.errors import NotFound, UsageError
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository


@dataclass(frozen=True)
class KeyEntry:
    """One key as `key list` shows it: who made it, when, and at what cost; never the secret."""

    id: str
    current: bool
    created_ns: int
    host: str
    user: str
    kdf: KdfParams

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "current": self.current,
            "created_ns": self.created_ns,
            "host": self.host,
            "user": self.user,
            "kdf": {
                "algorithm": "argon2id",
                "iterations": self.kdf.iterations,
                "memory_kib": self.kdf.memory_kib,
                "lanes": self.kdf.lanes,
            },
        }


@dataclass(frozen=True)
class AddKeyOptions:
    """The new password and the Argon2id cost of its key (the defaults unless testing)."""

    password: bytes = field(repr=False)
    kdf: KdfParams = field(default_factory=KdfParams)


@dataclass(frozen=True)
class PasswordChange:
    """Which key now opens the repository with the new password, and which one was removed."""

    new_key_id: str
    removed_key_id: str


def list_keys(repo: Repository) -> list[KeyEntry]:
    return [
        KeyEntry(k.id, k.id == repo.key_id, k.created_ns, k.host, k.user, k.kdf) for k in repo.list_keys()
    ]


def find_key(repo: Repository, ref: str) -> str:
    """A key's full id from a unique prefix (at least 4 hex digits), as `key list` shows 8."""
    ref = ref.lower()
    if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
        raise UsageError(f"{ref!r} is not a key id: give at least 4 hex digits")
    matches = [k.id for k in repo.list_keys() if k.id.startswith(ref)]
    if not matches:
        raise NotFound(f"no key {ref}")
    if len(matches) > 1:
        raise NotFound(f"key id {ref} is ambiguous: {len(matches)} keys start with it")
    return matches[0]


def add_key(repo: Repository, options: AddKeyOptions) -> str:
    """Add a password; returns the new key's id."""
    if not options.password:
        raise UsageError("an empty password protects nothing: choose one")
    with repo.lock(exclusive=False, command="key add"):
        return repo.add_key(options.password, options.kdf)


def change_password(repo: Repository, options: AddKeyOptions) -> PasswordChange:
    """Replace the password in use: the new key is written before the old one goes."""
    if not options.password:
        raise UsageError("an empty password protects nothing: choose one")
    with repo.lock(exclusive=False, command="key passwd"):
        new, old = repo.change_password(options.password, options.kdf)
    return PasswordChange(new, old)


def remove_key(repo: Repository, ref: str) -> str:
    """Remove the key named by `ref` (id or prefix); returns its full id."""
    with repo.lock(exclusive=False, command="key remove"):
        key_id = find_key(repo, ref)
        if len(repo.list_keys()) == 1:
            raise UsageError("refusing to remove the last key: nothing could ever open the repository again")
        if key_id == repo.key_id:
            raise UsageError(
                f"refusing to remove key {key_id[:8]}: it is the one in use; "
                "open the repository with another password to remove it"
            )
        repo.remove_key(key_id)
    return key_id
