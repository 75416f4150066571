"""The files cache: unchanged files are not read again, and what changed always is.

Every test backs up a real folder twice or more and looks at what was read (`bytes_read`, the
files new/changed/unchanged counts) and at what the new snapshot holds.
"""

from __future__ import annotations

import os
import random
from typing import Any
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cairn.files import archiver, filescache
from cairn.files.restorer import load_tree
from cairn.files.tree import Node, encode_tree, pack_entry
from cairn.ops.backup import BackupOptions, backup, program
from cairn.ops.check import CheckOptions, check
from cairn.repo.blob import BlobType
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend

KiB = 1024


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repo"), b"pw", KdfParams(iterations=1, memory_kib=8, lanes=1))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rng = random.Random(5)
    root = tmp_path / "src"
    for i in range(6):
        folder = root / f"d{i}"
        folder.mkdir(parents=True)
        for j in range(5):
            (folder / f"f{j}").write_bytes(rng.randbytes(rng.randrange(1, 40 * KiB)))
    (root / "big").write_bytes(rng.randbytes(3 * 1024 * KiB))
    return root


def node_at(repo: Repository, tree: bytes, path: Path) -> Node:
    node = None
    for part in path.parts[1:]:
        node = next(n for n in load_tree(repo, tree) if n.name == os.fsencode(part))
        tree = node.subtree or b""
    assert node is not None
    return node


def run(repo: Repository, source: Path, **options: object) -> object:
    result = backup(repo, BackupOptions([str(source)], host="h", **options))  # type: ignore[arg-type]
    assert result.skipped == []
    return result


def test_an_unchanged_tree_is_not_read_and_keeps_its_tree_ids(repo: Repository, source: Path) -> None:
    first = run(repo, source)
    assert first.bytes_read == first.bytes_total > 3 * 1024 * KiB
    again = run(repo, source)
    assert (again.bytes_read, again.files_unchanged, again.files) == (0, 31, 31)
    # nothing below `source` is stored again; the folders above it may have changed meanwhile
    # (other test runs create folders in /tmp/pytest-of-*), each a tree of a few hundred bytes
    assert again.bytes_added < 4096
    assert (again.dirs_unchanged, again.dirs) == (7, 7)
    assert again.parent_id == first.snapshot_id
    snaps = repo.list_snapshots()
    assert node_at(repo, snaps[0].root, source).subtree == node_at(repo, snaps[1].root, source).subtree
    assert snaps[1].parent == snaps[0].id


def test_only_changed_files_are_read(repo: Repository, source: Path) -> None:
    run(repo, source)
    touched, grown, rewritten = source / "d1" / "f2", source / "d3" / "f0", source / "d4" / "f4"
    os.utime(touched, ns=(0, 1_000_000_000))
    with open(grown, "ab") as f:
        f.write(b"more")
    # same size and mtime as before, new bytes: only ctime tells
    st = rewritten.stat()
    rewritten.write_bytes(os.urandom(st.st_size))
    os.utime(rewritten, ns=(st.st_atime_ns, st.st_mtime_ns))
    (source / "d5" / "new").write_bytes(b"fresh")
    result = run(repo, source)
    expected = sum(p.stat().st_size for p in (touched, grown, rewritten, source / "d5" / "new"))
    assert result.bytes_read == expected
    assert (result.files_new, result.files_changed, result.files_unchanged) == (1, 3, 28)
    assert (result.dirs_changed, result.dirs_unchanged) == (4 + 1, 2)  # d1 d3 d4 d5, and src
    snap = repo.find_snapshot("latest")
    assert node_at(repo, snap.root, rewritten).content == [repo.blob_id(rewritten.read_bytes())]


def test_a_file_replaced_by_another_of_equal_size_and_mtime_is_read_again(repo: Repository, source: Path) -> None:
    """What an inode comparison would catch, ctime catches: a file renamed over another (or
    two swapped) gets a new ctime, which no one can set back (see filescache's docstring)."""
    first, second = source / "d2" / "f0", source / "d2" / "f1"
    old = first.stat()
    second.write_bytes(os.urandom(old.st_size))
    os.utime(second, ns=(old.st_atime_ns, old.st_mtime_ns))
    run(repo, source)

    def read_again(*paths: Path) -> None:
        result = run(repo, source)
        assert (result.files_changed, result.bytes_read) == (len(paths), len(paths) * old.st_size)
        snap = repo.find_snapshot("latest")
        for path in paths:
            assert node_at(repo, snap.root, path).content == [repo.blob_id(path.read_bytes())]

    replacement = source / "d2" / ".new"
    replacement.write_bytes(os.urandom(old.st_size))
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, first)
    new = first.stat()
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert new.st_ctime_ns != old.st_ctime_ns and new.st_ino != old.st_ino
    read_again(first)
    swap = source / "d2" / ".swap"  # two files of one size and mtime trade places
    os.rename(second, swap)
    os.rename(first, second)
    os.rename(swap, first)
    read_again(first, second)


def test_metadata_changes_reach_the_snapshot(repo: Repository, source: Path) -> None:
    """Whole folders are reused on stat equality; chmod and xattrs change ctime, so they show."""
    run(repo, source)
    os.chmod(source / "d2" / "f1", 0o600)
    os.setxattr(source / "d0" / "f3", b"user.colour", b"blue")
    os.chmod(source / "d5", 0o700)
    run(repo, source)
    snap = repo.find_snapshot("latest")
    assert node_at(repo, snap.root, source / "d2" / "f1").mode == 0o600
    assert node_at(repo, snap.root, source / "d0" / "f3").xattrs == [(b"user.colour", b"blue")]
    assert node_at(repo, snap.root, source / "d5").mode == 0o700


def test_content_missing_from_the_index_is_read_again(repo: Repository, source: Path) -> None:
    """A parent naming a blob the index no longer has (lost, then `repair index`) must not pass
    the hole on: the file is read and stored again."""
    victim = source / "d0" / "f0"
    st = victim.stat()
    node = Node(victim.name.encode(), "file", mode=0o644, mtime=st.st_mtime_ns, ctime=st.st_ctime_ns,
                atime=st.st_atime_ns, size=st.st_size, content=[os.urandom(32)])
    tree = repo.save_blob(BlobType.TREE, encode_tree([node]))[0]
    for name in reversed(victim.parent.parts[1:]):
        tree = repo.save_blob(BlobType.TREE, encode_tree([Node(name.encode(), "dir", subtree=tree)]))[0]
    repo.flush()
    fake = Snapshot(kind="files", root=tree, paths=[bytes(victim.parent)], host="h", user="u", program=program())
    repo.save_snapshot(fake)
    result = backup(repo, BackupOptions([str(victim.parent)], host="h"))
    assert result.parent_id == fake.id and result.files_changed + result.files_new == 5
    assert result.bytes_read == sum(p.stat().st_size for p in victim.parent.iterdir())
    repo.backend.delete(f"snapshots/{fake.id.hex()}")  # the damaged one; the new one is whole
    assert check(repo, CheckOptions(read_data=True)).ok


def test_a_parent_of_another_version_is_compared_file_by_file(repo: Repository, source: Path) -> None:
    """No folder is reused whole from a parent written by another version, yet unchanged
    files are not read and the trees come out identical (encoding is deterministic)."""
    first = run(repo, source)
    old = repo.find_snapshot("latest")
    repo.save_snapshot(Snapshot(kind="files", root=old.root, paths=old.paths, host="h", user="u",
                                time_ns=old.time_ns + 1, program="cairn 0.0.1"))
    again = run(repo, source)
    assert (again.bytes_read, again.files_unchanged, again.dirs_unchanged) == (0, 31, 7)
    latest = repo.find_snapshot("latest")
    assert latest.id == again.snapshot_id and latest.parent != first.snapshot_id
    assert node_at(repo, latest.root, source).subtree == node_at(repo, old.root, source).subtree


def test_the_parent_is_the_latest_of_this_host_and_paths(repo: Repository, source: Path) -> None:
    other = source.parent / "other"
    other.mkdir()
    (other / "x").write_bytes(b"x")
    base = datetime(2024, 5, 1, 12, 0, 0)
    a = backup(repo, BackupOptions([str(source)], host="h", time=base))
    backup(repo, BackupOptions([str(source)], host="elsewhere", time=base + timedelta(hours=1)))
    backup(repo, BackupOptions([str(source), str(other)], host="h", time=base + timedelta(hours=2)))
    b = backup(repo, BackupOptions([str(source)], host="h", time=base + timedelta(hours=3)))
    assert b.parent_id == a.snapshot_id and b.bytes_read == 0
    # a backup recorded as taken before b compares with a, not with the later b
    earlier = backup(repo, BackupOptions([str(source)], host="h", time=base + timedelta(minutes=30)))
    assert earlier.parent_id == a.snapshot_id
    # another host starts from scratch; --parent and --force override the choice
    assert backup(repo, BackupOptions([str(source)], host="new")).parent_id is None
    chosen = backup(repo, BackupOptions([str(source)], host="new", parent=a.snapshot_id.hex()[:8]))
    assert chosen.parent_id == a.snapshot_id and chosen.bytes_read == 0
    forced = backup(repo, BackupOptions([str(source)], host="h", force=True))
    assert forced.parent_id is None and forced.bytes_read == forced.bytes_total


def test_hard_links_are_read_once(repo: Repository, source: Path) -> None:
    os.link(source / "big", source / "d0" / "big-link")
    result = run(repo, source)
    assert result.bytes_read == result.bytes_total - (source / "big").stat().st_size
    snap = repo.find_snapshot("latest")
    one, two = node_at(repo, snap.root, source / "big"), node_at(repo, snap.root, source / "d0" / "big-link")
    assert one.content == two.content and one.links == two.links and one.links is not None


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of its own, outside the backed-up folders' parents (writing it would
    change them)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def count_index_checks(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    asked: list[bytes] = []
    real = repo.has_blob

    def has_blob(blob_id: bytes) -> bool:
        asked.append(blob_id)
        return real(blob_id)

    monkeypatch.setattr(repo, "has_blob", has_blob)
    return asked


def test_a_verified_parent_skips_the_check_per_blob(repo: Repository, source: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run(repo, source)
    content = {blob_id for ids in _contents(repo, source) for blob_id in ids}
    asked = count_index_checks(repo, monkeypatch)
    again = run(repo, source)
    # the record says every blob is still indexed (trees above `source` may be stored anew)
    assert again.bytes_read == 0 and not content & set(asked)
    # and the packs holding them are still declared as relied on, for a prune running beside
    assert {repo.index.lookup(b).pack_id for b in content} <= repo.relied.relied  # type: ignore[union-attr]
    # a record that cannot be trusted (here: gone) means one check per reused blob again
    for record in (Path(os.environ["XDG_CACHE_HOME"]) / "cairn").rglob("verified/*"):
        record.unlink()
    third = run(repo, source)
    assert third.bytes_read == 0 and content <= set(asked)


def _contents(repo: Repository, source: Path) -> list[list[bytes]]:
    snap = repo.find_snapshot("latest")
    found, stack = [], [node_at(repo, snap.root, source).subtree]
    while stack:
        for node in load_tree(repo, stack.pop()):
            if node.type == "dir":
                stack.append(node.subtree)
            elif node.type == "file":
                found.append(node.content)
    return found


def test_an_index_rewritten_without_a_pack_is_noticed(repo: Repository, source: Path) -> None:
    """`repair index` or prune writes an index object superseding the others: the record no
    longer vouches for the parent, each blob is checked, the lost ones are read again."""
    from cairn.repo import index as index_mod
    from cairn.repo.pack import PackEntry

    run(repo, source)
    old_ids = [bytes.fromhex(o.name.rsplit("/", 1)[-1]) for o in repo.backend.list("index/")]
    packs: dict[bytes, list[PackEntry]] = {}
    for entry in repo.index:
        packs.setdefault(entry.pack_id, []).append(
            PackEntry(entry.blob_type, entry.blob_id, entry.offset, entry.length, entry.raw_length))
    lost = next(p for p, entries in packs.items() if any(e.blob_type == 0 and e.raw_length > 100_000 for e in entries))
    kept = [(p, index_mod.pack_records(e)) for p, e in packs.items() if p != lost]
    repo.store_object("index", os.urandom(32).hex(), index_mod.encode_index(kept, supersedes=old_ids))
    fresh = Repository.open(repo.backend, b"pw")
    again = backup(fresh, BackupOptions([str(source)], host="h"))
    lost_bytes = sum(e.raw_length for e in packs[lost] if e.blob_type == 0)
    assert again.bytes_read >= lost_bytes > 0
    for content in _contents(fresh, source):
        assert all(fresh.has_blob(b) for b in content)


def test_a_reused_folder_tree_is_what_encoding_would_give(repo: Repository, source: Path) -> None:
    """Whole folders are reused on stat equality without encoding them: a backup that reads
    and encodes everything again (--force) must come to the very same tree ids."""
    os.setxattr(source / "d1" / "f1", b"user.k", b"v")
    os.symlink("d1/f1", source / "link")
    os.mkfifo(source / "d2" / "pipe")
    os.link(source / "d3" / "f0", source / "d4" / "hard")
    run(repo, source)
    run(repo, source)  # reading the link (readlink) set its atime once: this run records it
    reused = run(repo, source)
    assert reused.dirs_unchanged == 7 and reused.bytes_read == 0
    reused_tree = node_at(repo, repo.find_snapshot("latest").root, source).subtree
    forced = run(repo, source, force=True)
    assert (forced.files_unchanged, forced.dirs_unchanged, forced.parent_id) == (0, 0, None)
    assert node_at(repo, repo.find_snapshot("latest").root, source).subtree == reused_tree


def test_unchanged_entries_of_a_changed_folder_keep_their_metadata(repo: Repository, source: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """In a folder that changed, each unchanged entry is taken from the parent's tree instead
    of being captured again: its xattrs, link identity and special kinds must come through
    intact, the changed sibling must show its change, and the tree must be the one a backup
    capturing everything (--force) encodes, plain files' entries taken as the parent's tree
    holds them."""
    captured: list[bytes] = []
    real_capture = archiver.capture

    def noted_capture(parent_fd: int, name: bytes, *args: Any, **kwargs: Any) -> Node:
        captured.append(name)
        return real_capture(parent_fd, name, *args, **kwargs)

    decoded: list[bytes] = []
    real_decode = archiver.decode_entry

    def noted_decode(entry: dict[str, Any], what: str) -> Node:
        decoded.append(entry["name"])
        return real_decode(entry, what)

    packed: list[bytes] = []
    real_pack = archiver.pack_entry

    def noted_pack(entry: dict[str, Any]) -> bytes:
        packed.append(entry["name"])
        return real_pack(entry)

    monkeypatch.setattr(archiver, "capture", noted_capture)
    monkeypatch.setattr(archiver, "decode_entry", noted_decode)
    monkeypatch.setattr(archiver, "pack_entry", noted_pack)
    monkeypatch.setattr(filescache, "pack_entry", noted_pack)
    folder = source / "d1"
    os.setxattr(folder / "f1", b"user.k", b"v")
    os.symlink("f1", folder / "link")
    os.mkfifo(folder / "pipe")
    os.link(folder / "f0", folder / "hard")
    run(repo, source)
    run(repo, source)  # reading the link set its atime once: this run records it
    (folder / "f2").write_bytes(b"changed")  # the folder changes; f0, f1, link, pipe, hard do not
    os.setxattr(folder / "f3", b"user.k", b"new")
    captured.clear()
    packed.clear()
    changed = run(repo, source)
    assert changed.files_changed == 2  # f2, and f3 whose xattr changed its ctime
    assert not {b"f0", b"f1", b"link", b"pipe", b"hard"} & set(captured)  # taken from the parent's tree
    # plain files' entries are stored again as they are; the others are decoded and checked
    assert {b"f1", b"link", b"pipe"} <= set(decoded) and not {b"f0", b"f4", b"hard", b"big"} & set(decoded)
    # ... and not even packed again: their bytes in the parent's tree go into the new one
    assert not {b"f0", b"f4", b"hard", b"big"} & set(packed)
    root = repo.find_snapshot("latest").root
    assert node_at(repo, root, folder / "f1").xattrs == [(b"user.k", b"v")]
    assert node_at(repo, root, folder / "f3").xattrs == [(b"user.k", b"new")]
    assert node_at(repo, root, folder / "link").target == b"f1"
    assert node_at(repo, root, folder / "pipe").type == "fifo"
    assert node_at(repo, root, folder / "hard").links == node_at(repo, root, folder / "f0").links is not None
    kept_tree = node_at(repo, root, folder).subtree
    run(repo, source, force=True)
    assert node_at(repo, repo.find_snapshot("latest").root, folder).subtree == kept_tree


def test_a_parent_tree_is_read_with_each_entry_as_its_bytes_and_damage_is_caught() -> None:
    """The walk reads parent trees itself (filescache._read_tree): each entry's bytes are the
    ones packing its map gives (what the new tree stores for an unchanged file), and a damaged
    tree raises only what ParentTrees catches (it then reads the folder's files again), never
    anything that would end the backup."""
    nodes = [Node(f"f{i}".encode(), "file", 0o644, size=i, content=[bytes(32)] * (i % 3)) for i in range(20)]
    nodes.append(Node(b"sub", "dir", 0o755, subtree=bytes(range(32))))
    plaintext = encode_tree(nodes)
    entries, names, packed = filescache._read_tree(plaintext)
    assert names == sorted(n.name for n in nodes)
    assert all(packed[name] == pack_entry(entries[name]) for name in names)
    rng = random.Random(5)
    for _ in range(1000):
        damaged = bytearray(plaintext)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(damaged))
            damaged[at:at + rng.randint(0, 3)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 3)))
        try:
            filescache._read_tree(bytes(damaged))
        except filescache.UNUSABLE_TREE:
            pass
