"""The tree blob codec: round trip, determinism, forward compatibility, hostile input."""

from __future__ import annotations

from typing import Any

import pytest

from cairn.errors import DamagedObject
from cairn.files.tree import (
    Node, decode_tree, encode_packed, encode_tree, entry_map, iter_tree, pack_entry, reusable_entry,
)
from cairn.repo import encoding

ID_A = bytes(range(32))
ID_B = bytes(range(1, 33))


def sample_nodes() -> list[Node]:
    return [
        Node(name=b"zeta", type="dir", mode=0o755, uid=1000, gid=1000, user="u", group="g",
             mtime=1_600_000_000_123_456_789, atime=-5, ctime=7, subtree=ID_A),
        Node(name=b"caf\xe9", type="file", mode=0o4750, uid=0, gid=0, user="", group="",
             mtime=1, atime=2, ctime=3, size=123, content=[ID_A, ID_B, ID_A]),
        Node(name=b"empty", type="file", mode=0o600, size=0, content=[]),
    ]


def entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": b"f", "type": "file", "mode": 0o644, "uid": 1, "gid": 2, "user": "a", "group": "b",
        "mtime": 10, "atime": 11, "ctime": 12, "size": 0, "content": [],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def raw_tree(*entries: dict[str, Any], **top: Any) -> bytes:
    return encoding.pack({"v": 1, "entries": list(entries), **top})


def test_round_trip_sorts_by_raw_name_bytes() -> None:
    nodes = sample_nodes()
    decoded = decode_tree(encode_tree(nodes), "tree")
    assert [n.name for n in decoded] == [b"caf\xe9", b"empty", b"zeta"]
    assert decoded == sorted(nodes, key=lambda n: n.name)


def test_encoding_is_deterministic_so_equal_folders_dedup() -> None:
    nodes = sample_nodes()
    assert encode_tree(nodes) == encode_tree(list(reversed(nodes)))


def test_unknown_keys_and_types_are_kept_readable() -> None:
    data = raw_tree(
        entry(name=b"a", future=[1, 2], target=b"not a symlink: ignored", rdev="ignored too"),
        entry(name=b"door", type="door", size=..., content=..., target=5),
        added_later="ignored",
    )
    a, door = decode_tree(data, "tree")
    assert a == Node(name=b"a", type="file", mode=0o644, uid=1, gid=2, user="a", group="b",
                     mtime=10, atime=11, ctime=12)
    assert door.type == "door" and door.content == [] and door.subtree is None and door.target is None


@pytest.mark.parametrize("name", [b"..", b".", b"a/b", b"/", b"", b"a\0b", "text-not-bytes", None])
def test_names_that_could_escape_are_refused(name: object) -> None:
    with pytest.raises(DamagedObject, match="name"):
        decode_tree(raw_tree(entry(name=name)), "tree 1234")


@pytest.mark.parametrize("name", [b"..", b"a/b", b""])
def test_encoder_refuses_bad_names_too(name: bytes) -> None:
    with pytest.raises(ValueError):
        encode_tree([Node(name=name, type="file")])


@pytest.mark.parametrize(
    "bad",
    [
        raw_tree(entry(mode="0644")),
        raw_tree(entry(mode=0o10000)),
        raw_tree(entry(uid=-1)),
        raw_tree(entry(mtime=1.5)),
        raw_tree(entry(user=b"bytes")),
        raw_tree(entry(size=-1)),
        raw_tree(entry(content=[b"short"])),
        raw_tree(entry(content=b"x" * 32)),
        raw_tree(entry(type="dir", size=..., content=...)),  # no subtree
        raw_tree(entry(type="dir", subtree=b"x" * 31)),
        raw_tree(entry(type="")),
        raw_tree(entry(uid=True)),
        raw_tree(entry(name=b"b"), entry(name=b"a")),  # unsorted
        raw_tree(entry(name=b"a"), entry(name=b"a")),  # duplicate
        raw_tree("not a map"),
        encoding.pack({"v": 2, "entries": []}),
        encoding.pack({"v": 1, "entries": {}}),
        encoding.pack([1, 2]),
        b"\xc1garbage",
        raw_tree(entry()) + b"\x00",  # bytes after the tree
        raw_tree(entry())[:-3],  # cut short
        encoding.pack({"entries": []}),  # no version
        encoding.pack({"v": True, "entries": []}),
        encoding.pack({"v": 1}),  # no entries
        b"\x82\xa1v\x01\xa1v\x01",  # {"v": 1, "v": 1}
        b"\x82\x91\x01\x01\xa1v\x01",  # {[1]: 1, "v": 1}: a key no map may have
    ],
)
def test_malformed_trees_are_damaged_objects(bad: bytes) -> None:
    with pytest.raises(DamagedObject):
        decode_tree(bad, "tree 1234")


def test_entries_are_read_one_at_a_time() -> None:
    """What lets prune walk a folder of 100,000 files without holding it decoded whole: the
    first entry comes out before a damaged second one is even read."""
    entries = iter_tree(raw_tree(entry(name=b"a"), entry(name=b"b", mode="0644")), "tree 1234")
    assert next(entries).name == b"a"
    with pytest.raises(DamagedObject, match="tree 1234, entry b'b' is damaged"):
        next(entries)


def special_nodes() -> list[Node]:
    return [
        Node(name=b"link", type="symlink", mode=0o777, target=b"../t\xff\xferget", mtime=5),
        Node(name=b"null", type="chardev", mode=0o666, rdev=(1 << 8) | 3),
        Node(name=b"disk", type="blockdev", mode=0o660, rdev=2**64 - 1),
        Node(name=b"pipe", type="fifo", mode=0o640, xattrs=[(b"trusted.x", b""), (b"security.y", b"\0\1")]),
        Node(name=b"hard", type="file", size=1, content=[ID_A], links=(2049, 2**63, 3),
             xattrs=[(b"system.posix_acl_access", b"\x02\0\0\0" + bytes(24)), (b"user.k", b"v" * 65536)]),
    ]


def test_the_optional_keys_round_trip_and_xattrs_come_out_sorted() -> None:
    nodes = special_nodes()
    decoded = {n.name: n for n in decode_tree(encode_tree(nodes), "tree")}
    for node in nodes:
        node.xattrs.sort()
        assert decoded[node.name] == node
    # absent from entries that do not have them: old readers see the same bytes as before
    plain = encoding.unpack_map(encode_tree(sample_nodes()), "t")["entries"]
    assert not any({"target", "rdev", "xattrs", "links"} & set(e) for e in plain)


def test_a_stored_plain_file_entry_packs_again_to_the_same_bytes() -> None:
    """A backup stores an unchanged file's entry from its parent tree again as it is (the map
    it decoded), skipping the node: the tree must be byte for byte what encoding gives."""
    nodes = [*sample_nodes(), Node(name=b"hard", type="file", size=1, content=[ID_A], links=(1, 2, 3))]
    stored = encoding.unpack_map(encode_tree(nodes), "t")["entries"]
    files = [e for e in stored if e["type"] == "file"]
    assert len(files) == 3 and all(reusable_entry(e) for e in files)
    mixed = [e if e["type"] == "file" else entry_map(n) for e, n in zip(stored, sorted(nodes, key=lambda n: n.name))]
    assert encode_packed([(e["name"], pack_entry(e)) for e in mixed]) == encode_tree(nodes)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65535, 65536])
def test_entries_packed_one_by_one_join_into_the_tree_encoding_gives(count: int) -> None:
    """A backup's worker processes pack each file's entry and the walk joins them (the array's
    header changes form at 16 and 65,536 entries)."""
    nodes = [Node(name=b"f%06d" % i, type="file", size=i, content=[ID_A] * (i % 3)) for i in range(count)]
    packed = [(n.name, pack_entry(entry_map(n))) for n in nodes]
    assert encode_packed(packed) == encode_tree(nodes)


@pytest.mark.parametrize("names, problem", [
    ([b"b", b"a"], "unsorted"), ([b"a", b"a"], "duplicate"), ([b"a", b"x/y"], "contains '/'"), ([b".."], "not allowed"),
])
def test_joined_entries_with_names_a_reader_rejects_are_refused(names: list[bytes], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_packed([(name, pack_entry(entry_map(Node(name=name, type="file")))) for name in names])


@pytest.mark.parametrize("stored", [
    entry(xattrs=[[b"user.k", b"v"]]),  # not compared with the file: decoded and checked instead
    {"type": "file", **entry()},  # keys out of the format's order would pack to other bytes
    entry(future=1),  # a key this version does not write
    entry(size=..., content=..., type="dir", subtree=ID_A),
    entry(size=..., content=..., type="symlink", target=b"t"),
])
def test_other_stored_entries_are_not_reused_as_they_are(stored: dict[str, Any]) -> None:
    assert not reusable_entry(stored)


def test_hard_link_identity_is_not_kept_on_folders() -> None:
    data = raw_tree(entry(type="dir", size=..., content=..., subtree=ID_A, links=[1, 2, 3]))
    assert decode_tree(data, "tree")[0].links is None


@pytest.mark.parametrize("node", [
    Node(name=b"l", type="symlink"), Node(name=b"d", type="chardev"), Node(name=b"d", type="blockdev"),
])
def test_encoder_refuses_special_entries_missing_their_key(node: Node) -> None:
    with pytest.raises(ValueError):
        encode_tree([node])


SYMLINK = {"type": "symlink", "size": ..., "content": ...}
DEVICE = {"type": "chardev", "size": ..., "content": ...}


@pytest.mark.parametrize(
    "bad",
    [
        entry(**SYMLINK),  # no target
        entry(**SYMLINK, target=b""),
        entry(**SYMLINK, target=b"a\0b"),
        entry(**SYMLINK, target=b"x" * 4096),
        entry(**SYMLINK, target="text"),
        entry(**DEVICE),  # no rdev
        entry(**DEVICE, rdev=-1),
        entry(**DEVICE, rdev=1.0),
        entry(**DEVICE, rdev=True),
        entry(xattrs={"user.a": b"1"}),
        entry(xattrs=[[b"user.a"]]),
        entry(xattrs=[[b"user.a", b"1", b"2"]]),
        entry(xattrs=[[b"", b"1"]]),
        entry(xattrs=[[b"user.\0", b"1"]]),
        entry(xattrs=[[b"u" * 256, b"1"]]),
        entry(xattrs=[[b"user.a", b"v" * 65537]]),
        entry(xattrs=[[b"user.a", "text"]]),
        entry(xattrs=[["user.a", b"1"]]),
        entry(xattrs=[[b"user.b", b"1"], [b"user.a", b"1"]]),
        entry(xattrs=[[b"user.a", b"1"], [b"user.a", b"2"]]),
        entry(xattrs=[[b"u.%d" % i, b""] for i in range(65537)]),
        entry(links=[1, 2]),
        entry(links=[1, 2, 1]),
        entry(links=[1, -2, 2]),
        entry(links=[1, 2, True]),
        entry(links=[1, 2.0, 2]),
        entry(links={"dev": 1}),
    ],
)
def test_malformed_optional_keys_are_damaged_objects(bad: dict[str, Any]) -> None:
    with pytest.raises(DamagedObject, match="tree 1234, entry b'f' is damaged"):
        decode_tree(raw_tree(bad), "tree 1234")
