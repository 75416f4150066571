"""The files cache: what the parent snapshot already holds, so unchanged files are not read again.

Design (restic's, and why): the cache is the parent snapshot's own trees, not a local database.
It needs no local state, so it works on a new machine, after the cache folder was wiped, and
for two users sharing one repository; it can never disagree with the repository, because it
*is* the repository. Its cost is loading one tree blob per folder, paid only for folders the
parent has: about 40 µs each to read, decrypt and decompress, but with decoding every entry and
comparing it with its stat, half of an unchanged re-backup of /usr (0.5 s of 1.0 s of walk,
measured 2026-12-06). So a local accelerator sits on top (foldercache.py): one digest of the
stats per folder, which lets an unchanged folder keep its tree without its parent tree being
read. It is a cache in the strict sense: bound to one parent snapshot, authenticated, and any
doubt or difference falls back to the comparison described here, which stays the rule.

Why no inode in the file comparison (the issue names (path, inode, size, mtime, ctime)): the
inode would catch a file replaced by another one, but ctime already does. A file that takes
another's place (created and renamed over it, restored from another disk, swapped) gets a ctime
of when that happened, since creating, writing, `utime` and rename each set ctime to the
current time and nothing else can set it; so its ctime differs from the one the parent
recorded (tests/test_filescache.py shows a same-size, same-mtime replacement read again). The
inode would add a difference only for a clock set back to the old ctime to the nanosecond, and
would cost false changes wherever inode numbers are not stable: FUSE, sshfs and some NFS or
SMB mounts renumber files on each mount, which is why restic has `--ignore-inode`, and every
file there would be read again at every backup. Trees would also have to record it (format
§9), changing every tree's id once. So the inode is compared only for hard links (`links`),
where it is the identity that a restore recreates.

Two levels of reuse:

- a **file** whose type, size, mtime and ctime equal its entry in the parent keeps the parent's
  content ids, once each id is confirmed to be in the index (a blob lost to damage and
  `repair index` must be read again, or every later snapshot would inherit the hole);
- a **folder** whose every entry is unchanged down to the last stat field (mode, owner, times
  with atime, size, hard-link identity, device number, owner names), with the same names, and
  whose subfolders are all unchanged, keeps the parent's tree id without capturing metadata or
  encoding anything. This is what makes an unchanged re-backup cost one lstat per entry. It
  relies on ctime: any change to an entry's metadata (chmod, chown, xattrs, ACLs, a new link)
  updates ctime, which the kernel does not let anyone set. It is used only when the parent was
  written by this same program version, so a newer version that records more metadata does not
  inherit trees without it; otherwise every folder is captured and encoded again, and since
  tree encoding is deterministic an unchanged folder still gets the same id.

Under the same conditions, an entry unchanged down to the last stat field inside a folder that
did change is taken from the parent's tree rather than captured again: that saves its
extended-attribute calls, which were most of a 1%-changed re-backup's extra time, since 1% of
files spread over a tree changes most of its folders. A plain file's entry (the keys this
version writes, no extended attributes) is stored again as it is, its fields being the ones just
compared (tree.reusable_entry), and as the bytes the parent tree holds it in (the tree was
written by this version, so packing the map again gives the same bytes); any other is checked
as any tree entry is.

Trees are read here with the bare MessagePack decoder (an entry at a time, to keep each one's
bytes) and only the fields above are used, each type-checked at use: decoding every field of
every entry with full validation (`decode_tree`) costs 5 µs per entry, which would be most of
an unchanged re-backup.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgpack

from cairn.errors import CairnError, NotFound
from cairn.files.metadata import group_name, user_name
from cairn.files.tree import DIR, FILE, pack_entry
from cairn.repo.repository import Repository

Entry = dict[str, Any]
_Tree = tuple[dict[bytes, Entry], list[bytes], dict[bytes, bytes]]
"""A parent tree as the walk uses it: entries by name, names in order, each entry's bytes."""
_Loaded = tuple[bytes, "_Tree | None"]
ID_SIZE = 32
PREFETCH = 16
UNUSABLE_TREE = (CairnError, ValueError, TypeError, KeyError, msgpack.UnpackException)
"""What reading a damaged parent tree may raise (`_read_tree` checks nothing itself): caught,
its folder's files are read again."""


class ParentFolder:
    """One folder as the parent snapshot(s) had it.

    The first parent source that has the folder (a checkpoint before the real parent) gives
    `tree_id`, `entries` and `names`; only it can be reused whole. `fallback` entries from
    later sources serve single files (a checkpoint has only part of a folder; the rest comes
    from the previous snapshot).
    """

    __slots__ = ("tree_id", "entries", "names", "packed", "fallback", "prefetched", "upcoming")

    def __init__(self, tree_id: bytes, entries: dict[bytes, Entry], names: list[bytes], packed: dict[bytes, bytes],
                 fallback: dict[bytes, Entry] | None) -> None:
        self.tree_id = tree_id
        self.entries = entries
        self.names = names
        self.packed = packed  # each of `entries` as its bytes in the tree
        self.fallback = fallback
        self.prefetched: dict[bytes, Future[dict[bytes, list[_Loaded]]]] = {}
        self.upcoming: deque[bytes] | None = None  # subfolder names not yet prefetched

    def get(self, name: bytes) -> Entry | None:
        entry = self.entries.get(name)
        if entry is None and self.fallback is not None:
            entry = self.fallback.get(name)
        return entry

    def packed_entry(self, name: bytes, entry: Entry) -> bytes:
        """`entry` (this folder's `name`) packed: the bytes the parent tree holds it in, when it
        is the first source's, which is what packing it again gives when the tree was written
        by this version (the condition for reusing entries at all, ParentTrees.shortcut)."""
        packed = self.packed.get(name) if self.entries.get(name) is entry else None
        return packed if packed is not None else pack_entry(entry)

    def subtrees(self, name: bytes) -> list[bytes]:
        """The tree ids the sources hold for a subfolder `name`, primary first."""
        found = []
        for source in (self.entries, self.fallback or {}):
            entry = source.get(name)
            if entry is not None and entry.get("type") == DIR:
                subtree = entry.get("subtree")
                if isinstance(subtree, bytes) and len(subtree) == ID_SIZE and subtree not in found:
                    found.append(subtree)
        return found


class ParentTrees:
    """Loads the parent snapshot's folders as the walk enters them.

    A background thread loads the trees of the next PREFETCH subfolders of each folder on the
    walk's path, in one task, while the walk stats entries: reading, decrypting, decompressing
    and hashing a tree release the GIL, so that work leaves the walk's thread (40 µs per folder
    otherwise). Memory stays bounded: 2 * PREFETCH trees per folder on the path at most.
    """

    def __init__(self, repo: Repository, roots: list[bytes], shortcut: bool, indexed: bool = False) -> None:
        self.repo = repo
        self.roots = roots
        self.shortcut = shortcut
        """Whether a whole unchanged folder may keep its parent tree (same program version)."""
        self.indexed = indexed
        """Whether every blob the parents reference is known to be indexed (files/verified.py),
        so that reused content ids need no check one by one."""
        self.problems: list[str] = []
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def root(self) -> ParentFolder | None:
        return self.folder([self._load(t) for t in self.roots])

    def load_folder(self, tree_id: bytes, visited: set[bytes]) -> ParentFolder | None:
        """One folder's parent tree, read now (the folder cache's way in); the trees of its
        subfolders not `visited` yet are read ahead from the first `child` call on."""
        folder = self._folder([self._load(tree_id)])
        if folder is not None:
            folder.upcoming = _subfolders(folder, visited)
        return folder

    def child(self, parent: ParentFolder | None, name: bytes) -> ParentFolder | None:
        if parent is None:
            return None
        future = parent.prefetched.pop(name, None)
        if not parent.prefetched:
            self._prefetch(parent)
        if future is not None:
            return self.folder(future.result()[name])
        return self.folder([self._load(t) for t in parent.subtrees(name)])

    def _prefetch(self, parent: ParentFolder) -> None:
        """Load the next PREFETCH subfolders' trees in one task (one thread hand-off each)."""
        if parent.upcoming is None:
            parent.upcoming = _subfolders(parent)
        group = [parent.upcoming.popleft() for _ in range(min(PREFETCH, len(parent.upcoming)))]
        if group:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="cairn-parent")
            future = self._pool.submit(self._load_group, [(n, parent.subtrees(n)) for n in group])
            for name in group:
                parent.prefetched[name] = future

    def _load_group(self, group: list[tuple[bytes, list[bytes]]]) -> dict[bytes, list[_Loaded]]:
        return {name: [self._load(t) for t in tree_ids] for name, tree_ids in group}

    def folder(self, loaded: list[_Loaded]) -> ParentFolder | None:
        folder = self._folder(loaded)
        if folder is not None:
            self._prefetch(folder)  # while the walk stats this folder's own entries
        return folder

    def _folder(self, loaded: list[_Loaded]) -> ParentFolder | None:
        sources = [item for item in loaded if item[1] is not None]
        if not sources:
            return None
        tree_id, first = sources[0]
        assert first is not None
        entries, names, packed = first
        fallback: dict[bytes, Entry] | None = None
        if len(sources) > 1:
            fallback = {}
            for _, more in reversed(sources[1:]):
                assert more is not None
                fallback.update(more[0])
        return ParentFolder(tree_id, entries, names, packed, fallback)

    def _load(self, tree_id: bytes) -> _Loaded:
        """(id, (entries by name, names, entries' bytes)), the second None (noted) when the
        tree cannot be read: a damaged parent only means its files are read again."""
        try:
            try:
                plaintext = self.repo.load_blob(tree_id)
            except NotFound:
                # The index is read here while savers may be adding to it (Repository.lookup
                # takes no lock); a miss during a segment merge is not a missing tree.
                plaintext = self.repo.load_blob(tree_id)
            return tree_id, _read_tree(plaintext)
        except UNUSABLE_TREE as exc:
            if len(self.problems) < 10:
                self.problems.append(f"parent tree {tree_id.hex()[:12]} unusable ({exc}); its files are read again")
            return tree_id, None


def _read_tree(plaintext: bytes) -> _Tree:
    """The entries of a tree blob, each also as its bytes (a slice of `plaintext`: taken
    whole into the new tree when unchanged, they need not be packed again, which was a tenth of
    the walk's thread in a 1%-changed re-backup of 100,000 small files). msgpack's own
    unpacker, bare: this runs for every folder the walk enters, beside it on the same GIL."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(plaintext), 1))
    unpacker.feed(plaintext)
    found = False
    entries: dict[bytes, Entry] = {}
    names: list[bytes] = []
    packed: dict[bytes, bytes] = {}
    for _ in range(unpacker.read_map_header()):
        if unpacker.unpack() != "entries":
            unpacker.skip()
            continue
        found = True
        count = unpacker.read_array_header()
        start = unpacker.tell()
        for _ in range(count):
            entry = unpacker.unpack()
            end = unpacker.tell()
            name = entry["name"]
            entries[name] = entry
            names.append(name)
            packed[name] = plaintext[start:end]
            start = end
    if not found:
        raise ValueError("no entry list")
    return entries, names, packed


def _subfolders(parent: ParentFolder, visited: set[bytes] | frozenset[bytes] = frozenset()) -> deque[bytes]:
    """The names of `parent`'s subfolders (its fallback's too) the walk has not entered yet, in
    the walk's order: what is left to read ahead."""
    names = deque(n for n in parent.names if parent.entries[n].get("type") == DIR and n not in visited)
    if parent.fallback:
        names.extend(n for n, e in parent.fallback.items()
                     if e.get("type") == DIR and n not in parent.entries and n not in visited)
    return names


def compare_file(entry: Entry | None, st: os.stat_result, whole: bool) -> tuple[list[bytes] | None, bool]:
    """(the parent's content ids if the file did not change, else None; whether the entry is
    also equal to what capturing `st` would give, asked only when `whole` folders may be
    reused). One function for both, since it runs for every file of an unchanged tree."""
    if entry is None:
        return None, False
    get = entry.get
    if (
        get("type") != FILE
        or get("size") != st.st_size
        or get("mtime") != st.st_mtime_ns
        or get("ctime") != st.st_ctime_ns
    ):
        return None, False
    content = get("content")
    if type(content) is not list:
        return None, False
    for blob_id in content:
        if type(blob_id) is not bytes or len(blob_id) != ID_SIZE:
            return None, False
    return content, whole and _same_metadata(entry, st, FILE)


def same_entry(entry: Entry | None, st: os.stat_result, kind: str) -> bool:
    """Whether the parent's entry equals what capturing `st` would give (see the module doc).

    Content is not compared here: for a file `compare_file` decides, for a folder its
    subtree does.
    """
    if entry is None or entry.get("type") != kind:
        return False
    if kind == FILE and entry.get("size") != st.st_size:
        return False
    return entry.get("mtime") == st.st_mtime_ns and entry.get("ctime") == st.st_ctime_ns \
        and _same_metadata(entry, st, kind)


def _same_metadata(entry: Entry, st: os.stat_result, kind: str) -> bool:
    """The fields besides type, size, mtime and ctime (checked by the callers)."""
    get = entry.get
    if (
        get("atime") != st.st_atime_ns
        or get("mode") != stat.S_IMODE(st.st_mode)
        or get("uid") != st.st_uid
        or get("gid") != st.st_gid
        or get("user") != user_name(st.st_uid)
        or get("group") != group_name(st.st_gid)
    ):
        return False
    if kind != DIR:
        links = get("links")
        if st.st_nlink > 1:
            if links != [st.st_dev, st.st_ino, st.st_nlink]:
                return False
        elif links is not None:
            return False
    return "rdev" not in entry or entry["rdev"] == st.st_rdev
