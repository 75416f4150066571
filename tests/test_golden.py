"""The golden repositories of format version 1 stay readable, and docs/FORMAT.md alone suffices
to read them: tests/fixtures/golden-v1 (made once by tests/fixtures/make_golden.py: one files
snapshot, key objects from before their `check` field) and tests/fixtures/golden-v1-full (made by
make_golden_full.py: every kind of object; the current code's reading of it is in
test_golden_full.py, which imports the restatement of its content from here).

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
import uuid
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


def objects(prefix: str, root: Path = GOLDEN) -> dict[str, bytes]:
    """Objects under `prefix` by name relative to it (for data/, `<xx>/<id>`)."""
    base = root / prefix
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
    if "check" in key:  # compared before the KEK is derived: a mismatch is damage, not a wrong password
        assert key["check"] == key_check(key), f"key {key_id[:8]} is damaged"
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


def key_check(key: dict[str, Any]) -> bytes:
    """§4.3: the optional unkeyed checksum of the Argon2id parameters, the salt and the seal."""
    params = struct.pack("<III", key["iterations"], key["memory_kib"], key["lanes"])
    return blake3.blake3(b"cairn 2026-12 v1 key object check" + params + key["salt"] + key["master"]).digest()[:16]


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
    assert not any("check" in unpack(data[:-32]) for data in key_objects.values())  # made before §4.3's check
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


# -- (b) continued: the full fixture, every kind of object version 1 has ----------------------
#
# tests/fixtures/golden-v1-full (made by make_golden_full.py with the code's own operations:
# backup, tag, image, forget, and a prune beside a held lock) holds what golden-v1 does not:
# key objects with `check`, tree entries of every type with xattrs, links and rdev, a
# retagged snapshot (`original`), an image snapshot (§9a), a superseding index object, a lock
# and a pending object. What the script put in, restated:

FULL = Path(__file__).parent / "fixtures" / "golden-v1-full"
FULL_DISK = Path(__file__).parent / "fixtures" / "golden-v1-full.disk.zst"
FULL_SOURCE = b"/tmp/cairn-golden-full/src"
FULL_IMAGE = b"/tmp/cairn-golden-full/disk.img"
FULL_TIME_NS = 1_796_000_001_000_000_000  # the second backup's, kept by the retagged snapshot
FILE_NS = 1_790_000_000_123_456_789
FULL_TEXT = b"".join(b"line %03d: cairn golden-v1-full, every object of format version 1\n" % i for i in range(60))
FULL_RANDOM = random.Random(20261202).randbytes(6000)
DOOMED = random.Random(666).randbytes(3000)  # in the forgotten first backup only
OWNER = (1234, 5678)
CHARDEV = (260, 300)
BLOCKDEV = (7, 200)
ACL = [(0x01, 0o7, None), (0x02, 0o6, 1234), (0x04, 0o5, None), (0x08, 0o4, 5678), (0x10, 0o7, None), (0x20, 0o5, None)]
"""system.posix_acl_access of sub/tool.sh (setfacl -m u:1234:rw,g:5678:r ): (tag, perm, id)."""
FULL_FILES: dict[bytes, dict[str, Any]] = {
    b"hello.txt": {"type": "file", "mode": 0o644, "content": FULL_TEXT,
                   "xattrs": [[b"user.comment", b"a text attribute"], [b"user.golden", b"\x00\xffbinary value"]]},
    b"random.bin": {"type": "file", "mode": 0o600, "content": FULL_RANDOM, "owner": OWNER, "names": ("", "")},
    b"caf\xe9.txt": {"type": "file", "mode": 0o644, "content": "caf\xe9 au lait\n".encode("latin-1")},
    b"empty.txt": {"type": "file", "mode": 0o644, "content": b""},
    b"pair-a": {"type": "file", "mode": 0o644, "content": b"one file, two names\n", "linked": True},
    b"sub/pair-b": {"type": "file", "mode": 0o644, "content": b"one file, two names\n", "linked": True},
    # setfacl made the group bits the ACL's mask (rwx): mode 2775, not 2755
    b"sub/tool.sh": {"type": "file", "mode": 0o2775, "content": b"#!/bin/sh\necho golden\n", "acl": ACL},
    b"sub/suid": {"type": "file", "mode": 0o4750, "content": b"setuid\n"},
    b"link-to-hello": {"type": "symlink", "target": b"hello.txt"},
    b"dangling": {"type": "symlink", "target": b"../nowhere-\xff"},
    b"fifo": {"type": "fifo", "mode": 0o640},
    b"chardev": {"type": "chardev", "mode": 0o600, "rdev": CHARDEV, "owner": (0, 5)},  # mknod 0o620, umask 022
    b"blockdev": {"type": "blockdev", "mode": 0o640, "rdev": BLOCKDEV},
    b"sub": {"type": "dir", "mode": 0o1777, "xattrs": [[b"user.dir", b"a folder's attribute"]]},
    b"emptydir": {"type": "dir", "mode": 0o755},
}
FULL_DISK_SIZE = 6 << 20
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
FULL_REGIONS = [  # (role, n, start, length, fs, type, uuid, label)
    ("gap", 0, 17408, (1 << 20) - 17408, "raw", "", "", ""),
    ("partition", 1, 1 << 20, 3 << 20, "ext4", GPT_LINUX, "5A1B0000-0000-4000-8000-000000000001", "golden-ext4"),
    ("partition", 2, 4 << 20, 512 << 10, "raw", GPT_LINUX, "5A1B0000-0000-4000-8000-000000000002", "golden-raw"),
    ("gap", 0, (4 << 20) + (512 << 10), FULL_DISK_SIZE - 33 * 512 - (4 << 20) - (512 << 10), "raw", "", "", ""),
]


@dataclass
class Decoded:
    """A repository read by the independent decoder: every object opened and checked."""

    keys: Keys
    config: dict[str, Any]
    indexes: dict[bytes, dict[str, Any]]
    """Every index object in storage, live or superseded, by id."""
    live: dict[bytes, tuple[int, bytes, int, int, int]]
    """§8: blob id -> (type, pack, offset, sealed length, plaintext length), live index objects only."""
    packs: dict[bytes, list[tuple[int, bytes, int, int, int]]]
    """§7: every pack in storage with its header's records."""
    blobs: dict[bytes, bytes]
    types: dict[bytes, int]
    snapshots: dict[bytes, dict[str, Any]]

    @property
    def superseded(self) -> set[bytes]:
        return {s for body in self.indexes.values() for s in body["supersedes"]}

    @property
    def live_packs(self) -> set[bytes]:
        return {pack for blob_type, pack, *_ in self.live.values()}


def read_repository(root: Path, passwords: tuple[bytes, ...]) -> Decoded:
    """Open every object of the repository at `root` as §2–§10 say, checking as it goes."""
    config = (root / "config").read_bytes()
    assert struct.unpack(">8sH", config[:10]) == (b"CAIRNREP", 1)
    key_objects = objects("keys", root)
    masters = set()
    for password in passwords:
        (master,) = [m for k, d in key_objects.items() if (m := open_key(k, d, password)) is not None]
        masters.add(master)
    (master,) = masters
    keys = Keys.derive(master)
    body = unpack(unseal(keys.data, config[10:], b"config" + config[:10]))

    indexes = {}
    for name, sealed in objects("index", root).items():
        obj = unpack(unseal(keys.data, sealed, f"index/{name}".encode()))
        assert obj["v"] == 1 and all(isinstance(s, bytes) and len(s) == 32 for s in obj["supersedes"])
        indexes[bytes.fromhex(name)] = obj
    superseded = {s for obj in indexes.values() for s in obj["supersedes"]}
    live: dict[bytes, tuple[int, bytes, int, int, int]] = {}
    described: dict[bytes, set[tuple[int, bytes, int, int, int]]] = {}
    for index_id, obj in indexes.items():
        for pack_id, records in obj["packs"]:
            assert len(pack_id) == 32 and len(records) % 45 == 0
            entries = {struct.unpack_from(">B32sIII", records, i) for i in range(0, len(records), 45)}
            # Identical records in several index objects are allowed (§12), different ones not.
            assert described.setdefault(pack_id, entries) == entries
            if index_id not in superseded:
                for blob_type, blob_id, offset, length, raw in entries:
                    live[blob_id] = (blob_type, pack_id, offset, length, raw)

    packs, blobs, types = {}, {}, {}
    for name, pack in objects("data", root).items():
        fanout, hex_id = name.split("/")
        assert fanout == hex_id[:2]
        pack_id = bytes.fromhex(hex_id)
        packs[pack_id] = parse_pack(keys, pack_id, pack)
        if pack_id in described:  # the header says what every index object naming the pack says
            assert {(t, i, o, n, r) for t, i, o, n, r in packs[pack_id]} == described[pack_id]
        for blob_type, blob_id, offset, length, raw in packs[pack_id]:
            _, blobs[blob_id] = open_blob(keys, blob_type, blob_id, pack[offset : offset + length])
            assert len(blobs[blob_id]) == raw and blob_type in (0, 1, 2)
            types[blob_id] = blob_type
    assert live.keys() <= blobs.keys()  # INV-1

    snapshots = {}
    for name, sealed in objects("snapshots", root).items():
        snapshots[bytes.fromhex(name)] = unpack(unseal(keys.data, sealed, f"snapshots/{name}".encode()))
    return Decoded(keys, body, indexes, live, packs, blobs, types, snapshots)


@pytest.fixture(scope="module")
def full() -> Decoded:
    return read_repository(FULL, PASSWORDS)


# §9: the keys of a tree entry, in the order they are written.
ENTRY_KEYS = ["name", "type", "mode", "uid", "gid", "user", "group", "mtime", "atime", "ctime",
              "size", "content", "subtree", "target", "rdev", "xattrs", "links"]


def check_entry(entry: dict[str, Any]) -> None:
    """§9: every rule a reader must enforce on one tree entry."""
    name = entry["name"]
    assert isinstance(name, bytes) and name not in (b"", b".", b"..") and b"/" not in name and b"\0" not in name
    known = [k for k in entry if k in ENTRY_KEYS]
    assert known == sorted(known, key=ENTRY_KEYS.index), f"{name!r}: keys out of the table's order"
    assert isinstance(entry["type"], str) and 0 <= entry["mode"] <= 0o7777
    assert all(isinstance(entry[k], int) for k in ("uid", "gid", "mtime", "atime", "ctime"))
    assert isinstance(entry["user"], str) and isinstance(entry["group"], str)
    kind = entry["type"]
    if kind == "file":
        assert entry["size"] >= 0 and all(isinstance(b, bytes) and len(b) == 32 for b in entry["content"])
    if kind == "dir":
        assert isinstance(entry["subtree"], bytes) and len(entry["subtree"]) == 32
        assert "links" not in entry
    if kind == "symlink":
        assert isinstance(entry["target"], bytes) and 1 <= len(entry["target"]) <= 4095 and b"\0" not in entry["target"]
    if kind in ("chardev", "blockdev"):
        assert isinstance(entry["rdev"], int) and 0 <= entry["rdev"] < 2**64
    attrs = entry.get("xattrs", [])
    assert "xattrs" not in entry or attrs  # omitted when empty
    attr_names = [a[0] for a in attrs]
    assert attr_names == sorted(set(attr_names))  # sorted by name bytes, unique
    for attr, value in attrs:
        assert 1 <= len(attr) <= 255 and b"\0" not in attr and isinstance(value, bytes) and len(value) <= 65536
    if "links" in entry:
        device, inode, count = entry["links"]
        assert all(isinstance(v, int) for v in (device, inode)) and count >= 2


def tree_entries(repo: Decoded, tree_id: bytes) -> list[dict[str, Any]]:
    assert repo.types[tree_id] == 1 and tree_id in repo.live  # a tree blob, indexed
    tree = unpack(repo.blobs[tree_id])
    assert tree["v"] == 1
    names = [e["name"] for e in tree["entries"]]
    assert names == sorted(set(names))
    for entry in tree["entries"]:
        check_entry(entry)
    return list(tree["entries"])


def walk_files(repo: Decoded, root: bytes, below: bytes) -> dict[bytes, dict[str, Any]]:
    """Entries under the absolute path `below` of a files snapshot, by path relative to it."""
    tree = root
    for part in below.strip(b"/").split(b"/"):  # §9: the root holds the path's components
        (entry,) = [e for e in tree_entries(repo, tree) if e["name"] == part]
        assert entry["type"] == "dir"
        tree = entry["subtree"]
    found: dict[bytes, dict[str, Any]] = {}
    stack = [(tree, b"")]
    while stack:
        tree, prefix = stack.pop()
        for entry in tree_entries(repo, tree):
            found[prefix + entry["name"]] = entry
            if entry["type"] == "dir":
                stack.append((entry["subtree"], prefix + entry["name"] + b"/"))
    return found


def major_minor(rdev: int) -> tuple[int, int]:
    """§9: glibc's split of a raw Linux st_rdev."""
    return ((rdev >> 8) & 0xFFF) | ((rdev >> 32) & ~0xFFF), (rdev & 0xFF) | ((rdev >> 12) & ~0xFF)


def posix_acl(value: bytes) -> list[tuple[int, int, int | None]]:
    """§9: the kernel's binary ACL: u32le version 2, then (u16le tag, u16le perm, u32le id)."""
    (version,) = struct.unpack_from("<I", value)
    assert version == 2 and (len(value) - 4) % 8 == 0
    entries = [struct.unpack_from("<HHI", value, i) for i in range(4, len(value), 8)]
    return [(tag, perm, None if ident == 0xFFFFFFFF else ident) for tag, perm, ident in entries]


def read_image(repo: Decoded, description_id: bytes) -> tuple[dict[str, Any], bytearray, dict[int, int]]:
    """§9a: a disk description, its pages and chunks, reassembled as a restore onto a new
    (zero) file writes them; returns (description, disk bytes, chunks of each run kind)."""
    assert repo.types[description_id] == 2
    disk = unpack(repo.blobs[description_id])
    size, chunk, per_page = disk["size"], disk["chunk"], disk["page_chunks"]
    assert disk["v"] == 1 and disk["kind"] in ("disk", "partition") and disk["table"] in ("gpt", "mbr", "none")
    assert disk["sector"] in (512, 1024, 2048, 4096) and 0 < size
    assert chunk & (chunk - 1) == 0 and 256 << 10 <= chunk <= 64 << 20 and 1 <= per_page <= 65536
    spans = [(offset, offset + len(data)) for offset, data in disk["tables"]]
    assert spans == sorted(spans) and all(1 <= len(data) <= 1 << 20 for _, data in disk["tables"])
    regions = disk["regions"]
    assert [r["start"] for r in regions] == sorted(r["start"] for r in regions)
    spans = sorted(spans + [(r["start"], r["start"] + r["length"]) for r in regions])
    assert spans[0][0] == 0 and spans[-1][1] == size  # tables and regions cover the disk, once
    assert all(end == start for (_, end), (start, _) in zip(spans, spans[1:]))

    out = bytearray(size)
    kinds = {0: 0, 1: 0, 2: 0, 3: 0}
    for region in regions:
        start, length, block = region["start"], region["length"], region["block"]
        assert region["role"] in ("partition", "gap") and length >= 1 and start + length <= size
        assert block & (block - 1) == 0 and 512 <= block <= chunk // 8
        count = -(-length // chunk)
        assert len(region["pages"]) == -(-count // per_page)
        index = 0
        for page_number, page_id in enumerate(region["pages"]):
            assert repo.types[page_id] == 2 and page_id in repo.live
            page = unpack(repo.blobs[page_id])
            assert page["v"] == 1 and page["chunks"] == min(per_page, count - page_number * per_page)
            runs, at, in_page = page["runs"], 0, 0
            while at < len(runs):
                kind, n = struct.unpack_from(">BI", runs, at)
                at += 5
                assert kind in kinds and n >= 1
                for _ in range(n):
                    offset = index * chunk
                    chunk_length = min(chunk, length - offset)
                    if kind in (2, 3):  # DATA, PARTIAL
                        blob_id = runs[at : at + 32]
                        at += 32
                        data = repo.blobs[blob_id]
                        assert repo.types[blob_id] == 0 and blob_id in repo.live and len(data) == chunk_length
                        if kind == 3:
                            mask_size = chunk // block // 8
                            bits = int.from_bytes(runs[at : at + mask_size], "little")
                            at += mask_size
                            blocks = -(-chunk_length // block)
                            assert bits >> blocks == 0  # no bit past the region's end
                            for k in range(blocks):  # unused blocks are stored as zeros
                                if not bits >> k & 1:
                                    assert not any(data[k * block : (k + 1) * block])
                        out[start + offset : start + offset + chunk_length] = data
                    # ZERO: zeros; UNUSED: nothing written. A new target file reads zeros for both.
                    kinds[kind] += 1
                    index += 1
                    in_page += 1
            assert at == len(runs) and in_page == page["chunks"]  # no trailing bytes
        assert index == count
    for offset, data in disk["tables"]:
        out[offset : offset + len(data)] = data
    return disk, out, kinds


def gpt_partitions(disk: bytes | bytearray, sector: int = 512) -> list[tuple[int, int, str, str, str]]:
    """The primary GPT's used entries: (first byte, length, type GUID, unique GUID, name). Not
    cairn's format (UEFI's), read here to tie the description to the table bytes it holds."""
    header = disk[sector : 2 * sector]
    assert header[:8] == b"EFI PART"
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    found = []
    for i in range(count):
        entry = disk[entries_lba * sector + i * entry_size :][:entry_size]
        if any(entry[:16]):
            first, last = struct.unpack_from("<QQ", entry, 32)
            name = entry[56:128].decode("utf-16-le").rstrip("\0")
            type_guid, unique = (str(uuid.UUID(bytes_le=bytes(entry[o : o + 16]))).upper() for o in (0, 16))
            found.append((first * sector, (last - first + 1) * sector, type_guid, unique, name))
    return found


def reached_blobs(repo: Decoded) -> set[bytes]:
    """Every blob some snapshot needs: trees and file content, descriptions, pages and chunks."""
    reached: set[bytes] = set()
    for snap in repo.snapshots.values():
        if snap["kind"] == "files":
            stack = [snap["root"]]
            while stack:
                tree = stack.pop()
                reached.add(tree)
                for entry in tree_entries(repo, tree):
                    reached.update(entry.get("content", []))
                    if entry["type"] == "dir":
                        stack.append(entry["subtree"])
        else:
            disk = unpack(repo.blobs[snap["root"]])
            reached.add(snap["root"])
            for region in disk["regions"]:
                for page_id in region["pages"]:
                    reached.add(page_id)
                    runs, at = unpack(repo.blobs[page_id])["runs"], 0
                    mask = disk["chunk"] // region["block"] // 8
                    while at < len(runs):
                        kind, n = struct.unpack_from(">BI", runs, at)
                        at += 5
                        step = {2: 32, 3: 32 + mask}.get(kind, 0)
                        reached.update(runs[at + i * step : at + i * step + 32] for i in range(n) if step)
                        at += n * step
    return reached


def test_full_key_objects_carry_a_check_that_tells_damage_from_a_wrong_password() -> None:
    key_objects = objects("keys", FULL)
    assert len(key_objects) == 2
    for key_id, data in key_objects.items():
        key = unpack(data[:-32])
        assert len(key["check"]) == 16 and key["check"] == key_check(key)
        assert (key["host"], key["user"], key["iterations"], key["memory_kib"], key["lanes"]) == ("golden-host", "golden", 2, 64, 2)
        flipped = bytearray(key["salt"])
        flipped[0] ^= 1
        assert key_check({**key, "salt": bytes(flipped)}) != key["check"]  # named damaged before any KDF
    opened = [open_key(k, d, PASSWORDS[1]) for k, d in key_objects.items()]
    assert sum(m is not None for m in opened) == 1


def test_full_config_and_index_objects(full: Decoded) -> None:
    assert full.config["chunker"]["algorithm"] == "fastcdc2020" and full.config["chunker"]["seed"] == 20261202
    assert (full.config["chunker"]["min"], full.config["chunker"]["avg"], full.config["chunker"]["max"]) == (512, 1024, 4096)
    assert full.config["pack_size"] == 4096 and full.config["append_only"] is False
    # §8: one index object (the prune's) supersedes another, which is still in storage.
    (superseded,) = full.superseded
    assert superseded in full.indexes
    (newer,) = [i for i, body in full.indexes.items() if body["supersedes"]]
    old_packs = {p for p, _ in full.indexes[superseded]["packs"]}
    new_packs = {p for p, _ in full.indexes[newer]["packs"]}
    assert old_packs & new_packs and new_packs - old_packs  # a kept pack, and a repacked one
    assert full.live_packs <= full.packs.keys()
    assert reached_blobs(full) <= full.live.keys()  # INV-2: every blob a snapshot needs is indexed


def test_full_lock_and_pending_objects_left_by_a_prune_beside_a_writer(full: Decoded) -> None:
    # §11: the lock of a writer that was running when the prune ran.
    ((lock_id, sealed),) = objects("locks", FULL).items()
    lock = unpack(unseal(full.keys.data, sealed, f"locks/{lock_id}".encode()))
    assert lock["v"] == 1 and lock["exclusive"] is False and lock["command"] == "backup"
    assert (lock["host"], lock["user"]) == ("golden-host", "golden") and lock["pid"] > 0
    assert lock["refreshed"] >= lock["time"] > FULL_TIME_NS
    # §12: the prune's pending object: its barrier is that lock.
    ((pending_id, sealed),) = objects("pending", FULL).items()
    pending = unpack(unseal(full.keys.data, sealed, f"pending/{pending_id}".encode()))
    assert pending["v"] == 1 and pending["host"] == "golden-host" and pending["time"] >= lock["time"]
    assert pending["locks"] == [bytes.fromhex(lock_id)]
    assert pending["indexes"] == sorted(full.superseded) and all(i in full.indexes for i in pending["indexes"])
    assert pending["packs"] and all(p in full.packs and p not in full.live_packs for p in pending["packs"])
    assert full.packs.keys() == full.live_packs | set(pending["packs"])  # nothing else unindexed
    # What the pending packs alone hold is garbage: no snapshot reaches it.
    only_pending = {b for p in pending["packs"] for _, b, *_ in full.packs[p]} - full.live.keys()
    assert only_pending and not only_pending & reached_blobs(full)
    # Among it, the forgotten backup's folder and the file only it had, whole.
    (doomed,) = [
        e for b in only_pending if full.types[b] == 1
        for e in unpack(full.blobs[b])["entries"] if e["name"] == b"doomed.bin"
    ]
    assert set(doomed["content"]) <= only_pending
    assert b"".join(full.blobs[b] for b in doomed["content"]) == DOOMED


def test_full_snapshots_one_retagged_one_image(full: Decoded) -> None:
    assert len(full.snapshots) == 2
    (files,) = [s for s in full.snapshots.values() if s["kind"] == "files"]
    (image,) = [s for s in full.snapshots.values() if s["kind"] == "image"]
    # §10: `tag` wrote a new object naming the first of its line; the backup's parent was forgotten.
    assert len(files["original"]) == 32 and files["original"] not in full.snapshots
    assert len(files["parent"]) == 32 and files["parent"] not in full.snapshots
    assert files["tags"] == ["golden", "v1-full"] and files["paths"] == [FULL_SOURCE]
    assert (files["host"], files["user"], files["time"], files["program"]) == ("golden-host", "golden", FULL_TIME_NS, "cairn 0.1.0")
    assert files["summary"]["files"] == 8
    assert "original" not in image and image["parent"] is None  # written by `image`, never replaced
    assert image["tags"] == ["disk"] and image["paths"] == [FULL_IMAGE]


def test_full_files_every_entry_kind_and_metadata_key(full: Decoded) -> None:
    (snap,) = [s for s in full.snapshots.values() if s["kind"] == "files"]
    entries = walk_files(full, snap["root"], FULL_SOURCE)
    assert entries.keys() == FULL_FILES.keys()
    for path, want in FULL_FILES.items():
        entry = entries[path]
        assert entry["type"] == want["type"], path
        if "mode" in want:
            assert entry["mode"] == want["mode"], path
        if want["type"] != "symlink":
            assert entry["mtime"] == entry["atime"] == FILE_NS, path
        assert (entry["uid"], entry["gid"]) == want.get("owner", (0, 0)), path
        if "names" in want:
            assert (entry["user"], entry["group"]) == want["names"]
        if want["type"] == "file":
            assert all(full.types[b] == 0 for b in entry["content"])
            content = b"".join(full.blobs[b] for b in entry["content"])
            assert content == want["content"] and entry["size"] == len(content), path
        if "target" in want:
            assert entry["target"] == want["target"]
        if "rdev" in want:
            assert major_minor(entry["rdev"]) == want["rdev"], path
        if "acl" in want:
            ((name, value),) = entry["xattrs"]
            assert name == b"system.posix_acl_access" and posix_acl(value) == want["acl"]
        else:
            assert entry.get("xattrs", []) == want.get("xattrs", []), path
        assert ("links" in entry) == want.get("linked", False), path
    assert entries[b"pair-a"]["links"] == entries[b"sub/pair-b"]["links"]  # one file, two names
    assert entries[b"pair-a"]["links"][2] == 2
    assert len(entries[b"random.bin"]["content"]) > 1  # chunked at 1 KiB on average


def test_full_image_reassembles_the_source_disk(full: Decoded) -> None:
    (snap,) = [s for s in full.snapshots.values() if s["kind"] == "image"]
    disk, restored, kinds = read_image(full, snap["root"])
    assert (disk["kind"], disk["size"], disk["sector"], disk["table"]) == ("disk", FULL_DISK_SIZE, 512, "gpt")
    assert disk["disk_id"] == "5A1B0000-0000-4000-8000-00000000D15C"
    assert (disk["chunk"], disk["page_chunks"]) == (256 << 10, 4)
    # GPT: LBA 0-33 at the start, the backup entries and header in the last 33 sectors.
    assert [(o, len(d)) for o, d in disk["tables"]] == [(0, 34 * 512), (FULL_DISK_SIZE - 33 * 512, 33 * 512)]
    regions = [(r["role"], r["n"], r["start"], r["length"], r["fs"], r["type"], r["uuid"], r["label"]) for r in disk["regions"]]
    assert regions == FULL_REGIONS
    assert [len(r["pages"]) for r in disk["regions"]] == [1, 3, 1, 2]  # 4 chunks of 256 KiB a page
    assert all(kinds.values()), kinds  # ZERO, UNUSED, DATA and PARTIAL chunks all occur
    # The source's free blocks were zeros (mkfs on a new file), so the whole disk comes back.
    source = zstd.decompress(FULL_DISK.read_bytes())
    assert len(source) == FULL_DISK_SIZE and bytes(restored) == source
    # The table bytes the description holds describe exactly its partition regions.
    assert gpt_partitions(restored) == [
        (r["start"], r["length"], r["type"], r["uuid"], r["label"]) for r in disk["regions"] if r["role"] == "partition"
    ]
    ext = restored[1 << 20 : 4 << 20]
    assert struct.unpack_from("<H", ext, 1024 + 56) == (0xEF53,)  # the ext4 superblock's magic


def test_every_object_name_of_the_full_fixture_follows_section_2() -> None:
    names = [str(p.relative_to(FULL)) for p in FULL.rglob("*") if p.is_file()]
    pattern = re.compile(r"^(config|(keys|index|snapshots|locks|pending)/[0-9a-f]{64}|data/[0-9a-f]{2}/[0-9a-f]{64})$")
    assert sorted(n for n in names if not pattern.match(n)) == []
    assert {n.split("/")[0] for n in names} == {"config", "keys", "data", "index", "snapshots", "locks", "pending"}
    assert sum(p.stat().st_size for p in FULL.rglob("*") if p.is_file()) + FULL_DISK.stat().st_size < 100 * 1024
