"""Create a repository: a config object and one key wrapping a fresh master key."""

from __future__ import annotations

from dataclasses import dataclass, field

from cairn.errors import UsageError
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from cairn.storage.base import Backend


@dataclass(frozen=True)
class InitOptions:
    """How to create the repository.

    `kdf` is the Argon2id cost of the first key. The defaults are the right choice for real
    repositories; lower values exist for tests and very small machines and weaken the password.
    """

    kdf: KdfParams = field(default_factory=KdfParams)
    append_only: bool = False
    """Clients refuse forget, prune, tag and key removal (docs/RETENTION.md has the storage-side
    recipe that makes this hold against a compromised client too)."""


@dataclass(frozen=True)
class InitResult:
    """The new repository, opened with the key just created."""

    location: str
    repository_id: str
    key_id: str
    repository: Repository = field(repr=False, compare=False)

    def to_json(self) -> dict[str, str]:
        return {"location": self.location, "repository_id": self.repository_id, "key_id": self.key_id}


def init(backend: Backend, password: bytes, options: InitOptions | None = None) -> InitResult:
    """Create a repository on `backend`; `UsageError` if one is already there."""
    options = options or InitOptions()
    if not password:
        raise UsageError("an empty password protects nothing: choose one")
    repo = Repository.init(backend, password, options.kdf, append_only=options.append_only)
    return InitResult(backend.properties.location, repo.config.id.hex(), repo.key_id, repo)
