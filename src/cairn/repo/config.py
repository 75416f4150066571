"""The `config` object: format version in clear, everything else sealed with the master key.

The version is readable without a password so that an older cairn can say "written by a newer
version" rather than "wrong password".
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field

from cairn.errors import DamagedObject, RepositoryNotFound, UnsupportedVersion
from cairn.repo import encoding
from cairn.repo.crypto import Sealer

MAGIC = b"CAIRNREP"
FORMAT_VERSION = 1
HEADER = struct.Struct(">8sH")  # magic, format version


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC (2020) sizes and the secret seed that keeps chunk boundaries private.

    `avg_size` is the power of two the cut mask is built from (pyfastcdc rounds any other value
    to one, so only powers of two are allowed, to keep the stored value exact). Measured real
    average on random data with the defaults: 1.19 MiB.
    """

    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024
    normalization: int = 1
    seed: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "big") >> 1)

    def __post_init__(self) -> None:
        ok = (
            64 <= self.min_size <= self.avg_size <= self.max_size <= 16 * 1024 * 1024
            and self.avg_size & (self.avg_size - 1) == 0
            and self.min_size <= 1024 * 1024
            and 0 <= self.normalization <= 3
            and 0 <= self.seed < 2**63
        )
        if not ok:
            raise DamagedObject(f"unusable chunker parameters: {self}")


@dataclass(frozen=True)
class RepoConfig:
    id: bytes
    created_ns: int
    chunker: ChunkerParams
    compression_level: int = 3
    pack_size: int = 16 * 1024 * 1024
    append_only: bool = False
    version: int = FORMAT_VERSION

    @classmethod
    def new(cls, **overrides: object) -> RepoConfig:
        base = {"id": os.urandom(32), "created_ns": time.time_ns(), "chunker": ChunkerParams()}
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


def read_version(data: bytes) -> int:
    """Check the clear header; refuse foreign objects and newer formats before any decryption."""
    if len(data) < HEADER.size:
        raise RepositoryNotFound("not a cairn repository: the config object is too short")
    magic, version = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RepositoryNotFound("not a cairn repository: the config object has no cairn header")
    if version > FORMAT_VERSION:
        raise UnsupportedVersion(
            f"this repository uses format version {version}; this cairn reads up to "
            f"version {FORMAT_VERSION}: upgrade cairn"
        )
    if version < 1:
        raise DamagedObject(f"the config object names an impossible format version {version}")
    return version


def encode(config: RepoConfig, sealer: Sealer) -> bytes:
    header = HEADER.pack(MAGIC, config.version)
    body = encoding.pack(
        {
            "id": config.id,
            "created": config.created_ns,
            "chunker": {
                "algorithm": "fastcdc2020",
                "min": config.chunker.min_size,
                "avg": config.chunker.avg_size,
                "max": config.chunker.max_size,
                "normalization": config.chunker.normalization,
                "seed": config.chunker.seed,
            },
            "compression": {"algorithm": "zstd", "level": config.compression_level},
            "pack_size": config.pack_size,
            "append_only": config.append_only,
        }
    )
    return header + sealer.seal(body, b"config" + header)


def decode(data: bytes, sealer: Sealer) -> RepoConfig:
    version = read_version(data)
    header = data[: HEADER.size]
    what = "the config object"
    obj = encoding.unpack_map(sealer.open(data[HEADER.size :], b"config" + header, what), what)
    chunker = encoding.field(obj, "chunker", dict, what)
    compression = encoding.field(obj, "compression", dict, what)
    if chunker.get("algorithm") != "fastcdc2020" or compression.get("algorithm") != "zstd":
        raise DamagedObject("the config object names an unknown chunker or compression")
    params = ChunkerParams(
        min_size=encoding.field(chunker, "min", int, what),
        avg_size=encoding.field(chunker, "avg", int, what),
        max_size=encoding.field(chunker, "max", int, what),
        normalization=encoding.field(chunker, "normalization", int, what),
        seed=encoding.field(chunker, "seed", int, what),
    )
    return RepoConfig(
        id=encoding.field(obj, "id", bytes, what),
        created_ns=encoding.field(obj, "created", int, what),
        chunker=params,
        compression_level=encoding.field(compression, "level", int, what),
        pack_size=encoding.field(obj, "pack_size", int, what),
        append_only=encoding.field(obj, "append_only", bool, what),
        version=version,
    )
