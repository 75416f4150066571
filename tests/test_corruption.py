"""One flipped bit, a truncation or a swap in any stored object is caught and named.

The repository lives in a real folder and the damage is done to its files, as a failing disk or
a meddling storage provider would. For each kind of object two things must hold: `check` reports
an error naming it (kind and short id), and the read that hits it fails with a one-line message
naming it, instead of returning wrong bytes.

Key objects are the one place where AES-GCM cannot tell a wrong key from a changed ciphertext (the
sealed master key is opened with a password-derived key). Their unkeyed `check` field (FORMAT.md
§4.3) names a bit flipped in the `salt`, KDF parameters or sealed `master` as damage rather than a
wrong password; the MAC catches the rest once the master key is known. Both are reported
(DamagedObject naming the key), by `open` and by `check`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cairn.errors import CairnError, DamagedObject, RepositoryNotFound, StorageError, WrongPassword
from cairn.files.tree import Node, encode_tree
from cairn.ops.check import CheckOptions, CheckResult, check
from cairn.repo.blob import BlobType
from cairn.repo.keys import KdfParams
from cairn.repo.pack import object_name
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend

FAST_KDF = KdfParams(iterations=1, memory_kib=8, lanes=1)


@dataclass
class Repo:
    """A repository in a folder, with two backups, and the ids of what a test will damage."""

    root: Path
    repo: Repository
    snapshots: list[Snapshot]
    data_ids: list[bytes]

    def path(self, name: str) -> Path:
        return self.root.joinpath(*name.split("/"))

    def names(self, prefix: str) -> list[str]:
        return sorted(o.name for o in self.repo.backend.list(prefix))

    def reopen(self, password: bytes = b"pw") -> Repository:
        return Repository.open(LocalBackend(self.root), password)


def backup(repo: Repository, contents: list[bytes]) -> tuple[Snapshot, list[bytes]]:
    ids = [repo.save_blob(BlobType.DATA, c)[0] for c in contents]
    nodes = [Node(f"f{i}".encode(), "file", size=len(c), content=[b]) for i, (c, b) in enumerate(zip(contents, ids))]
    root, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    repo.flush()
    snap = Snapshot("files", root, [b"/data"], "host", "user")
    repo.save_snapshot(snap)
    return snap, ids


@pytest.fixture
def r(tmp_path: Path) -> Repo:
    root = tmp_path / "repo"
    repo = Repository.init(LocalBackend(root), b"pw", FAST_KDF, pack_size=2048)
    first, ids1 = backup(repo, [os.urandom(3000), os.urandom(3000)])
    second, ids2 = backup(repo, [os.urandom(3000)])
    return Repo(root, Repository.open(LocalBackend(root), b"pw"), [first, second], ids1 + ids2)


def flip(path: Path, byte: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def one_line(exc: pytest.ExceptionInfo[CairnError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def errors_naming(result: CheckResult, *needles: str) -> list[str]:
    found = [e for e in result.errors if all(n in e for n in needles)]
    assert found, f"no error names {needles}: {result.errors}"
    return found


# -- packs ------------------------------------------------------------------------------------


def test_a_bit_flipped_in_a_blob(r: Repo) -> None:
    blob = r.data_ids[1]
    entry = r.repo.lookup(blob)
    pack, short_blob = entry.pack_id.hex()[:12], blob.hex()[:12]
    flip(r.path(object_name(entry.pack_id)), entry.offset + 500, bit=3)

    assert check(r.repo, CheckOptions()).ok  # headers and index still agree: only reading finds it
    result = check(r.repo, CheckOptions(read_data=True))
    assert result.errors == [f"pack {pack}: blob {short_blob} is damaged or was changed: authentication failed"]
    with pytest.raises(DamagedObject) as raised:
        r.reopen().load_blob(blob)
    assert one_line(raised) == f"pack {pack}: blob {short_blob} is damaged or was changed: authentication failed"


def test_a_bit_flipped_in_a_pack_header(r: Repo) -> None:
    entry = r.repo.lookup(r.data_ids[0])
    path = r.path(object_name(entry.pack_id))
    size = path.stat().st_size
    flip(path, size - 4 - 20)  # inside the sealed header, before the 4-byte length
    message = f"pack {entry.pack_id.hex()[:12]} header is damaged or was changed: authentication failed"

    assert check(r.repo, CheckOptions()).errors == [message]
    assert errors_naming(check(r.repo, CheckOptions(read_data=True)), message)
    with pytest.raises(DamagedObject) as raised:
        r.reopen().read_pack_header(entry.pack_id, size)
    assert one_line(raised) == message
    assert r.reopen().load_blob(r.data_ids[0])  # the blobs themselves are intact and still restore


@pytest.mark.parametrize(
    ("bit", "expected"),
    [(0, "header is damaged or was changed: authentication failed"), (31, "is damaged: header length")],
    ids=["low-bit-shifts-the-header", "high-bit-makes-it-impossible"],
)
def test_a_bit_flipped_in_a_pack_trailing_length(r: Repo, bit: int, expected: str) -> None:
    entry = r.repo.lookup(r.data_ids[2])
    path = r.path(object_name(entry.pack_id))
    size = path.stat().st_size
    flip(path, size - 1 - bit // 8, bit % 8)  # the u32 is big-endian: bit 0 is in the last byte
    pack = f"pack {entry.pack_id.hex()[:12]}"

    errors_naming(check(r.repo, CheckOptions()), pack, expected)
    with pytest.raises(DamagedObject) as raised:
        r.reopen().read_pack_header(entry.pack_id, size)
    assert pack in one_line(raised) and expected in one_line(raised)


def test_a_truncated_pack(r: Repo) -> None:
    entry = r.repo.lookup(r.data_ids[0])
    path = r.path(object_name(entry.pack_id))
    size = path.stat().st_size
    truncate(path, size // 2)
    pack = entry.pack_id.hex()[:12]

    errors_naming(check(r.repo, CheckOptions()), f"pack {pack} has {size // 2} bytes, but its index records imply {size}")
    # The storage refuses a read past the end: a StorageError naming the pack object, not wrong bytes.
    with pytest.raises(StorageError) as raised:
        r.reopen().load_blob(r.data_ids[0])
    assert object_name(entry.pack_id) in one_line(raised)


# -- index, snapshot, config, key -------------------------------------------------------------


def test_a_bit_flipped_in_an_index_object(r: Repo) -> None:
    name = r.names("index/")[0]
    flip(r.path(name), 40)
    short = name.split("/")[1][:8]

    errors_naming(check(r.repo, CheckOptions()), f"index {short} is damaged or was changed: authentication failed")
    with pytest.raises(DamagedObject) as raised:
        r.reopen().load_index()
    assert one_line(raised) == f"index {short} is damaged or was changed: authentication failed"


def test_a_bit_flipped_in_a_snapshot(r: Repo) -> None:
    snap = r.snapshots[0]
    flip(r.path(f"snapshots/{snap.id.hex()}"), 30, bit=7)
    message = f"snapshot {snap.short_id} is damaged or was changed: authentication failed"

    result = check(r.repo, CheckOptions())
    assert result.errors == [message]
    assert result.snapshots == 1  # the other one was checked
    with pytest.raises(DamagedObject) as raised:
        r.reopen().load_snapshot(snap.id)
    assert one_line(raised) == message


def test_a_bit_flipped_in_the_sealed_config(r: Repo) -> None:
    flip(r.root / "config", 40)
    message = "the config object is damaged or was changed: authentication failed"

    assert check(r.repo, CheckOptions()).errors == [message]  # a repository opened before
    with pytest.raises(DamagedObject) as raised:
        r.reopen()
    assert one_line(raised) == message


def test_a_bit_flipped_in_the_config_magic(r: Repo) -> None:
    flip(r.root / "config", 2)
    with pytest.raises(RepositoryNotFound) as raised:
        r.reopen()
    assert one_line(raised) == "not a cairn repository: the config object has no cairn header"
    assert check(r.repo, CheckOptions()).errors == ["not a cairn repository: the config object has no cairn header"]


def test_a_bit_flipped_in_a_key_structure(r: Repo) -> None:
    (name,) = r.names("keys/")
    flip(r.path(name), 0)  # the map header: 10 entries become 11, and the object ends too early
    short = name.split("/")[1][:8]

    errors_naming(check(r.repo, CheckOptions()), f"key {short} does not decode")
    with pytest.raises(DamagedObject) as raised:
        r.reopen()
    assert one_line(raised).startswith(f"key {short} does not decode")


@pytest.mark.parametrize("field", [b"salt", b"master", b"iterations", b"check"])
def test_a_bit_flipped_in_the_only_key_is_damage_not_a_wrong_password(r: Repo, field: bytes) -> None:
    (name,) = r.names("keys/")
    short = name.split("/")[1][:8]
    path = r.path(name)
    data = path.read_bytes()
    at = data.index(field) + len(field) + (0 if field == b"iterations" else 3)  # inside the value
    flip(path, at, 0x02)
    with pytest.raises(DamagedObject) as raised:
        r.reopen()
    assert one_line(raised).startswith(f"key {short} is damaged: its checksum does not match")
    assert "no other key opens with this password" in one_line(raised)
    errors_naming(check(r.repo, CheckOptions()), f"key {short}")


def test_a_wrong_password_is_still_a_wrong_password(r: Repo) -> None:
    with pytest.raises(WrongPassword):
        r.reopen(b"not the password")


def test_a_damaged_second_key_leaves_the_first_password_working(r: Repo) -> None:
    second = r.repo.add_key(b"second", FAST_KDF)
    flip(r.path(f"keys/{second}"), 0)
    opened = r.reopen(b"pw")
    errors_naming(check(opened, CheckOptions()), f"key {second[:8]}")
    with pytest.raises(DamagedObject, match=f"key {second[:8]} does not decode"):
        r.reopen(b"second")


@pytest.mark.parametrize("field", [b"host", b"salt", b"master"])
def test_a_bit_flipped_anywhere_in_a_key_whose_password_check_does_not_know(r: Repo, field: bytes) -> None:
    second = r.repo.add_key(b"second", FAST_KDF)
    path = r.path(f"keys/{second}")
    data = path.read_bytes()
    flip(path, data.index(field) + len(field) + 3)  # inside the field's value
    errors_naming(check(r.reopen(b"pw"), CheckOptions()), f"key {second[:8]}")
    with pytest.raises(DamagedObject, match=f"key {second[:8]}"):
        r.reopen(b"second")


# -- truncations and swaps --------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 27, -1], ids=["empty", "shorter-than-a-seal", "last-byte-lost"])
def test_a_truncated_snapshot(r: Repo, keep: int) -> None:
    snap = r.snapshots[1]
    path = r.path(f"snapshots/{snap.id.hex()}")
    truncate(path, keep if keep >= 0 else path.stat().st_size + keep)
    errors_naming(check(r.repo, CheckOptions()), f"snapshot {snap.short_id}", "is damaged")
    with pytest.raises(DamagedObject) as raised:
        r.reopen().load_snapshot(snap.id)
    assert one_line(raised).startswith(f"snapshot {snap.short_id} is damaged")


def test_a_truncated_index_object(r: Repo) -> None:
    name = r.names("index/")[1]
    truncate(r.path(name), 100)
    short = name.split("/")[1][:8]
    errors_naming(check(r.repo, CheckOptions()), f"index {short} is damaged")
    with pytest.raises(DamagedObject, match=f"index {short} is damaged"):
        r.reopen().load_index()


def test_a_snapshot_copied_over_another_fails_to_open(r: Repo) -> None:
    a, b = r.snapshots
    shutil.copyfile(r.path(f"snapshots/{a.id.hex()}"), r.path(f"snapshots/{b.id.hex()}"))
    message = f"snapshot {b.short_id} is damaged or was changed: authentication failed"
    assert check(r.repo, CheckOptions()).errors == [message]
    with pytest.raises(DamagedObject) as raised:
        r.reopen().load_snapshot(b.id)
    assert one_line(raised) == message
    assert r.reopen().load_snapshot(a.id).root == a.root


def test_an_index_object_copied_over_another_fails_to_open(r: Repo) -> None:
    first, second = r.names("index/")
    shutil.copyfile(r.path(first), r.path(second))
    errors_naming(check(r.repo, CheckOptions()), f"index {second.split('/')[1][:8]} is damaged or was changed")


def test_a_pack_copied_over_another_fails_header_and_blobs(r: Repo) -> None:
    a, b = (r.repo.lookup(i).pack_id for i in r.data_ids[:2])
    shutil.copyfile(r.path(object_name(a)), r.path(object_name(b)))
    result = check(r.repo, CheckOptions(read_data=True))
    errors_naming(result, f"pack {b.hex()[:12]} header is damaged or was changed")
    errors_naming(result, f"pack {b.hex()[:12]}: blob {r.data_ids[1].hex()[:12]} is damaged or was changed")
    with pytest.raises(DamagedObject, match=f"pack {b.hex()[:12]}: blob {r.data_ids[1].hex()[:12]}"):
        r.reopen().load_blob(r.data_ids[1])
