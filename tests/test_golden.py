"""The golden repository of format version 1 (tests/fixtures/golden-v1, made once by
tests/fixtures/make_golden.py) stays readable, and docs/FORMAT.md alone suffices to read it.

Part (a) opens it with the current code: a cairn that cannot read what an older cairn wrote has
lost its users' backups. Part (b) is an independent decoder written from docs/FORMAT.md with only
the primitives it names (AES-256-GCM and Argon2id from `cryptography`, `blake3`, `msgpack`,
`zstd`, `struct`) and nothing from cairn: if the document and the code ever disagree, it fails.
cairn is imported only inside part (a)'s functions, so the module's globals show at a glance
(and `test_the_decoder_imports_nothing_from_cairn` pins) that part (b) cannot lean on it.
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import msgpack
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

GOLDEN = Path(__file__).parent / "fixtures" / "golden-v1"

# What make_golden.py put in, restated here: the fixture's specification.
PASSWORDS = (b"golden", b"golden2")
TEXT = b"".join(b"line %03d: cairn golden repository, format version 1\n" % i for i in range(80))
RANDOM = random.Random(20261125).randbytes(2048)
TIME_NS = 1_795_000_000_000_000_000
FILES = {"srv/golden/hello.txt": TEXT, "srv/golden/sub/random.bin": RANDOM}


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    """A copy: opening for check or restore writes a lock, and the fixture must never change."""
    return Path(shutil.copytree(GOLDEN, tmp_path / "golden-v1"))


# -- (a) the current code reads it -------------------------------------------------------------


def open_golden(path: Path, password: bytes = PASSWORDS[0]) -> Any:
    from cairn.repo.repository import Repository
    from cairn.storage.local import LocalBackend

    return Repository.open(LocalBackend(path), password)


@pytest.mark.parametrize("password", PASSWORDS)
def test_both_passwords_open_it(golden: Path, password: bytes) -> None:
    repo = open_golden(golden, password)
    assert repo.config.version == 1
    assert repo.config.pack_size == 2048 and repo.config.compression_level == 3
    assert not repo.config.append_only
    keys = repo.list_keys()
    assert len(keys) == 2
    assert {(k.host, k.user, k.kdf.iterations, k.kdf.memory_kib, k.kdf.lanes) for k in keys} == {
        ("golden-host", "golden", 2, 64, 2)
    }


def test_a_wrong_password_is_refused(golden: Path) -> None:
    from cairn.errors import WrongPassword

    with pytest.raises(WrongPassword):
        open_golden(golden, b"not golden")


def test_the_snapshot_lists_with_its_fields(golden: Path) -> None:
    (snap,) = open_golden(golden).list_snapshots()
    assert snap.kind == "files"
    assert snap.paths == [b"/srv/golden"]
    assert (snap.host, snap.user, snap.time_ns, snap.tz_offset) == ("golden-host", "golden", TIME_NS, 3600)
    assert snap.tags == ["golden", "v1"]
    assert snap.parent is None and snap.program == "cairn 0.1.0"
    assert snap.summary["files"] == 2 and snap.summary["bytes_read"] == len(TEXT) + len(RANDOM)
    assert open_golden(golden).find_snapshot(snap.id.hex()[:4]).id == snap.id


def test_the_files_read_back_through_the_repository_api(golden: Path) -> None:
    from cairn.files.tree import decode_tree

    repo = open_golden(golden)
    (snap,) = repo.list_snapshots()
    found: dict[str, bytes] = {}
    stack = [(snap.root, "")]
    while stack:
        tree, prefix = stack.pop()
        for node in decode_tree(repo.load_blob(tree), "tree"):
            path = f"{prefix}{node.name.decode()}"
            if node.type == "dir":
                stack.append((node.subtree, path + "/"))
            else:
                found[path] = b"".join(repo.load_blob(b) for b in node.content)
                assert node.size == len(found[path]) and node.mode == 0o644
    assert found == FILES


def test_it_restores(golden: Path, tmp_path: Path) -> None:
    restore_mod = pytest.importorskip("cairn.ops.restore")
    target = tmp_path / "restored"
    restore_mod.restore(open_golden(golden), restore_mod.RestoreOptions(snapshot="latest", target=str(target)))
    assert {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()} == FILES
    assert (target / "srv/golden/hello.txt").stat().st_mode & 0o777 == 0o644


def test_it_checks_clean_reading_every_byte(golden: Path) -> None:
    from cairn.ops.check import CheckOptions, check

    result = check(open_golden(golden), CheckOptions(read_data=True))
    assert (result.errors, result.warnings) == ([], [])
    assert (result.packs, result.blobs, result.snapshots) == (2, 6, 1)


# -- (b) an independent decoder, from docs/FORMAT.md alone -----------------------------------


def test_the_decoder_imports_nothing_from_cairn() -> None:
    leaks = [
        name for name, value in globals().items()
        if (isinstance(value, types.ModuleType) and value.__name__.startswith("cairn"))
        or str(getattr(value, "__module__", "")).startswith("cairn")
    ]
    assert leaks == []


def objects(prefix: str) -> dict[str, bytes]:
    """Objects under `prefix` by name relative to it (for data/, `<xx>/<id>`)."""
    base = GOLDEN / prefix
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """§4.2: nonce (12) || AES-256-GCM ciphertext || tag (16)."""
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)


def unpack(data: bytes) -> Any:
    """§3: MessagePack, bin for bytes, str for text."""
    return msgpack.unpackb(data, raw=False)


def open_key(key_id: str, data: bytes, password: bytes) -> bytes | None:
    """§4.3: the master key, or None when this password does not open this key object."""
    body, mac = data[:-32], data[-32:]
    key = unpack(body)
    assert key["v"] == 1 and key["kdf"] == "argon2id" and len(key["salt"]) == 16
    assert 1 <= key["iterations"] <= 100 and 8 <= key["memory_kib"] and 1 <= key["lanes"] <= 64
    kek = Argon2id(
        salt=key["salt"], length=32, iterations=key["iterations"], lanes=key["lanes"], memory_cost=key["memory_kib"]
    ).derive(password)
    try:
        master = unseal(kek, key["master"], f"keys/{key_id}".encode())
    except InvalidTag:
        return None
    mac_key = blake3.blake3(master, derive_key_context="cairn 2026-11 v1 key object mac").digest()
    assert blake3.blake3(f"keys/{key_id}".encode() + body, key=mac_key).digest() == mac
    return master


@dataclass
class Keys:
    """§4.1: the two keys derived from the master key."""

    data: bytes
    id: bytes

    @classmethod
    def derive(cls, master: bytes) -> Keys:
        return cls(
            data=blake3.blake3(master, derive_key_context="cairn 2026-11 v1 data encryption key").digest(),
            id=blake3.blake3(master, derive_key_context="cairn 2026-11 v1 blob id key").digest(),
        )


def open_blob(keys: Keys, blob_type: int, blob_id: bytes, sealed: bytes) -> tuple[int, bytes]:
    """§6: (flag, plaintext) of a sealed blob, its id checked."""
    inner = unseal(keys.data, sealed, bytes([blob_type]) + blob_id)
    flag, payload = inner[0], inner[1:]
    assert flag in (0, 1)
    if flag == 1:
        decompressor = zstd.ZstdDecompressor()
        plaintext = decompressor.decompress(payload, max_length=1 << 30)
        assert decompressor.eof and not decompressor.unused_data  # exactly one complete frame
    else:
        plaintext = payload
    assert blake3.blake3(plaintext, key=keys.id).digest() == blob_id
    return flag, plaintext


def parse_pack(keys: Keys, pack_id: bytes, pack: bytes) -> list[tuple[int, bytes, int, int, int]]:
    """§7: the header's records as (type, id, offset, sealed length, plaintext length)."""
    (header_len,) = struct.unpack(">I", pack[-4:])
    start = len(pack) - 4 - header_len
    header = unseal(keys.data, pack[start:-4], f"data/{pack_id.hex()}".encode())
    version, count = struct.unpack_from(">BI", header)
    assert version == 1 and len(header) == 5 + 41 * count
    records, offset = [], 0
    for i in range(count):
        blob_type, blob_id, length, raw = struct.unpack_from(">B32sII", header, 5 + 41 * i)
        records.append((blob_type, blob_id, offset, length, raw))
        offset += length
    assert offset == start  # every byte is under a tag
    return records


def test_an_independent_reader_following_format_md_recovers_everything() -> None:
    # §5: config header in clear.
    config = (GOLDEN / "config").read_bytes()
    magic, version = struct.unpack(">8sH", config[:10])
    assert (magic, version) == (b"CAIRNREP", 1)

    # §4.3: each password opens exactly one key object, and both give the same master key.
    key_objects = objects("keys")
    assert len(key_objects) == 2
    masters = {}
    for password in PASSWORDS:
        opened = {k: open_key(k, data, password) for k, data in key_objects.items()}
        (master,) = [m for m in opened.values() if m is not None]
        assert len(master) == 32
        masters[password] = master
    assert masters[PASSWORDS[0]] == masters[PASSWORDS[1]]
    keys = Keys.derive(masters[PASSWORDS[0]])

    # §5: the config body.
    body = unpack(unseal(keys.data, config[10:], b"config" + config[:10]))
    assert len(body["id"]) == 32 and isinstance(body["created"], int)
    assert body["chunker"]["algorithm"] == "fastcdc2020" and 0 <= body["chunker"]["seed"] < 2**63
    assert (body["chunker"]["min"], body["chunker"]["avg"], body["chunker"]["max"]) == (262144, 1048576, 4194304)
    assert body["chunker"]["normalization"] == 1
    assert body["compression"] == {"algorithm": "zstd", "level": 3}
    assert body["pack_size"] == 2048 and body["append_only"] is False

    # §8: index objects; records of 45 bytes per blob.
    index: dict[bytes, tuple[int, bytes, int, int, int]] = {}
    for index_id, sealed in objects("index").items():
        obj = unpack(unseal(keys.data, sealed, f"index/{index_id}".encode()))
        assert obj["v"] == 1 and obj["supersedes"] == []
        for pack_id, records in obj["packs"]:
            assert len(records) % 45 == 0
            for i in range(0, len(records), 45):
                blob_type, blob_id, offset, length, raw = struct.unpack_from(">B32sIII", records, i)
                index[blob_id] = (blob_type, pack_id, offset, length, raw)

    # §2 and §7: packs under data/<xx>/<id>; their headers agree with the index; every blob opens.
    plaintexts: dict[bytes, bytes] = {}
    flags: dict[bytes, int] = {}
    packs = objects("data")
    assert len(packs) == 2
    for name, pack in packs.items():
        fanout, hex_id = name.split("/")
        assert fanout == hex_id[:2]
        pack_id = bytes.fromhex(hex_id)
        for blob_type, blob_id, offset, length, raw in parse_pack(keys, pack_id, pack):
            assert index[blob_id] == (blob_type, pack_id, offset, length, raw)
            flags[blob_id], plaintexts[blob_id] = open_blob(keys, blob_type, blob_id, pack[offset : offset + length])
            assert len(plaintexts[blob_id]) == raw
    assert plaintexts.keys() == index.keys() and len(index) == 6

    # §10: the snapshot.
    (snapshot_id, sealed), = objects("snapshots").items()
    snap = unpack(unseal(keys.data, sealed, f"snapshots/{snapshot_id}".encode()))
    assert snap["v"] == 1 and snap["kind"] == "files" and snap["paths"] == [b"/srv/golden"]
    assert (snap["host"], snap["user"], snap["time"], snap["tz"]) == ("golden-host", "golden", TIME_NS, 3600)
    assert snap["tags"] == ["golden", "v1"] and snap["parent"] is None

    # §9: trees from the root, down the backed-up path; file content in blob order.
    found: dict[str, bytes] = {}
    stack = [(snap["root"], "")]
    while stack:
        tree_id, prefix = stack.pop()
        assert index[tree_id][0] == 1  # a tree blob
        tree = unpack(plaintexts[tree_id])
        assert tree["v"] == 1
        names = [e["name"] for e in tree["entries"]]
        assert names == sorted(names) and all(isinstance(n, bytes) and b"/" not in n for n in names)
        for entry in tree["entries"]:
            path = prefix + entry["name"].decode()
            if entry["type"] == "dir":
                stack.append((entry["subtree"], path + "/"))
            else:
                assert entry["type"] == "file" and entry["mode"] == 0o644
                assert all(index[b][0] == 0 for b in entry["content"])  # data blobs
                found[path] = b"".join(plaintexts[b] for b in entry["content"])
                assert entry["size"] == len(found[path])
    assert found == FILES

    # §6: the text was stored compressed, the random bytes raw.
    text_id = blake3.blake3(TEXT, key=keys.id).digest()
    random_id = blake3.blake3(RANDOM, key=keys.id).digest()
    assert (flags[text_id], flags[random_id]) == (1, 0)
    assert index[text_id][3] < len(TEXT) // 2 and index[random_id][3] == len(RANDOM) + 1 + 28


def test_every_object_name_follows_section_2() -> None:
    names = [str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*") if p.is_file()]
    pattern = re.compile(r"^(config|(keys|index|snapshots)/[0-9a-f]{64}|data/[0-9a-f]{2}/[0-9a-f]{64})$")
    assert sorted(n for n in names if not pattern.match(n)) == []
    assert sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file()) < 50 * 1024
