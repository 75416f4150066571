"""Walk files and folders into tree blobs, reading only what changed since the parent snapshot.

The walk runs in the caller's thread, depth first and in name order (so trees come out the same
whatever the timing). For each entry it does one lstat and decides:

- a file unchanged since the parent (filescache) keeps the parent's content ids, unread;
- any other file is handed to the pipeline (pipeline.py), whose readers open it, capture its
  metadata and read and store it in their threads; a second hard link to a file already read
  shares that read;
- a folder is entered; symlinks, FIFOs and devices carry metadata only; a socket is skipped
  with a warning (it is recreated by the program listening on it, not restored).

A folder is finished when its last entry was visited. If it and everything below it are
unchanged it keeps the parent's tree id (see filescache); else each entry's metadata is
captured (files.metadata; a file being read by the reader that opened it) and the folder waits
in a queue, its descriptor open for the readers, until the content of its files is read; then
its tree is encoded and stored and the folder closed. The queue is in post-order, so a folder's
subfolders are always finished before it, and the walk never waits for the readers except when
the queue or the pipeline is full: memory and open descriptors stay bounded and both cores stay
busy.

The snapshot root mirrors restic: it holds the components of each given absolute path, so
backing up /home/u/docs gives root -> home -> u -> docs and a restore recreates that under its
target. The components above a given path get the metadata of the real folders.

Checkpoints (see checkpoint.py for why they are local files): every `checkpoint_interval`
seconds, and once more when asked to stop (Ctrl-C), the walk waits for the pipeline, stores a
partial root tree holding everything finished so far (each open folder with the entries done),
flushes packs and index, and hands the tree id to `on_checkpoint`. The next run uses that tree
as its first parent, so the files saved before the interruption are not read again.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.errors import DamagedObject
from cairn.files import filescache
from cairn.files.excludes import ExcludeOptions, Excluder
from cairn.files.filescache import ParentFolder, ParentTrees
from cairn.files.foldercache import FolderRecord, entry_signature, folder_digest
from cairn.files.metadata import capture, entry_type
from cairn.files.pipeline import Pending, Pipeline
from cairn.files.pipeline_procs import ProcessPipeline
from cairn.files.scanner import DIR_FLAGS, Plan, Totals, join, list_names, make_plan, open_at, reason
from cairn.files.tree import DIR, FILE, Node, decode_entry, encode_packed, entry_map, pack_entry, reusable_entry
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository

# Entries of folders finished but waiting for file content; beyond this the walk waits for the
# oldest folder. It bounds memory when a big file holds up the queue while the other reader
# keeps going (a few hundred bytes per entry: close_folder lets go of the rest), and is large
# enough for that reader to stay busy meanwhile.
MAX_WAITING_ENTRIES = 8192
# Folders waiting with their descriptor open (the readers open their files through it).
MAX_WAITING_FOLDERS = 256
# Hard-linked files read in this run, remembered so a second link shares the first read.
MAX_LINKS_REMEMBERED = 100_000


@dataclass
class BackupStatus:
    """Live counters, updated in place while the backup runs (read by progress displays)."""

    folder: bytes = b""
    name: bytes = b""
    """The entry being looked at, in `folder` (joined and decoded only when displayed)."""
    files: int = 0
    dirs: int = 0
    bytes_done: int = 0
    """Bytes of the files visited so far, read or unchanged."""
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    totals: Totals | None = None
    """What the pre-scan counted (for a percentage and an ETA), when one runs."""

    @property
    def path(self) -> str:
        return os.fsdecode(join(self.folder, self.name)) if self.name else ""


@dataclass
class ArchiveResult:
    root: bytes = b""
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unchanged: int = 0
    others: int = 0
    """Symlinks, FIFOs and device nodes."""
    excluded: int = 0
    bytes_total: int = 0
    """Size of every file in the snapshot, read or not."""
    bytes_read: int = 0
    bytes_added: int = 0
    """Plaintext bytes of the blobs (data and tree) the repository did not have yet."""
    blobs_new: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of each entry that could not be read and is not in the snapshot."""
    warnings: list[tuple[str, str]] = field(default_factory=list)
    """(path, message) of what the user should know but that is in the snapshot."""
    folders: dict[bytes, FolderRecord] = field(default_factory=dict)
    """Each walked folder's record for the next backup's folder cache (foldercache.py)."""
    owners: set[tuple[int, int]] = field(default_factory=set)
    """The (uid, gid) pairs of the walked entries, whose names the folder cache checks."""

    @property
    def files(self) -> int:
        return self.files_new + self.files_changed + self.files_unchanged

    @property
    def dirs(self) -> int:
        return self.dirs_new + self.dirs_changed + self.dirs_unchanged


@dataclass
class ArchiveOptions:
    excluder: Excluder = field(default_factory=lambda: Excluder(ExcludeOptions()))
    one_file_system: bool = False
    dry_run: bool = False
    checkpoint_interval: float = 300.0
    """Seconds between checkpoints; 0 for none."""
    on_checkpoint: Callable[[bytes], None] | None = None
    stop: threading.Event | None = None
    """Set it (from a signal handler) to checkpoint and raise KeyboardInterrupt."""
    processes: int = 0
    """Worker processes that read and store the files (files/pipeline_procs.py); 0 for threads."""
    folder_cache: dict[bytes, FolderRecord] | None = None
    """The parent's folder records (foldercache.py), when they may be trusted."""


class _Item:
    """One entry of a folder being walked."""

    __slots__ = ("name", "st", "kind", "node", "packed", "content", "pending", "same", "entry", "subtree", "dropped",
                 "fresh", "reads")

    def __init__(self, name: bytes, st: os.stat_result, kind: str) -> None:
        self.name = name
        self.st = st
        self.kind = kind
        self.node: Node | None = None
        self.packed: bytes | None = None  # its tree entry: the parent's, or packed by the worker that read it
        self.content: list[bytes] | None = None  # reused content ids
        self.pending: Pending | None = None
        self.same = False
        self.entry: filescache.Entry | None = None  # the parent's entry, when `same`
        self.subtree: bytes | None = None
        self.dropped = False
        self.fresh = False  # a file being read that the parent did not have
        self.reads = False  # its reader opens it and captures its node (in the pending result)


class _Folder:
    __slots__ = ("path", "fd", "item", "todo", "plan", "items", "same", "parent", "parent_tree", "record",
                 "signatures", "digest", "clean", "deferred_files", "known")

    def __init__(self, path: bytes, fd: int, item: _Item | None, names: list[bytes], plan: Plan | None,
                 parent: ParentFolder | None, record: FolderRecord | None = None) -> None:
        self.path = path
        self.fd = fd
        self.item = item  # its entry in the folder above; None for the snapshot root
        self.todo = iter(names)
        self.plan = plan  # the given paths below, for folders above them; None inside them
        self.items: list[_Item] = []
        self.same = True  # every entry so far is unchanged
        self.parent = parent
        self.parent_tree: bytes | None = None  # the parent's tree id, once `parent` is let go
        # The folder cache (foldercache.py): with a record, entries are not compared with the
        # parent's as they are visited; the folder's end decides (close_folder, settle).
        self.record = record
        self.signatures: list[bytes] | None = None if plan is not None else []
        self.digest = b""
        self.clean = True  # no entry skipped, dropped or changed while read
        self.deferred_files = 0  # files counted unchanged if the record holds
        self.known = record  # its record, deferred or not (to count how many folders change)


class _Archiver:
    def __init__(self, repo: Repository, parents: ParentTrees, options: ArchiveOptions,
                 progress: Callable[[BackupStatus], None] | None, status: BackupStatus) -> None:
        self.repo = repo
        self.parents = parents
        self.options = options
        self.excluder = options.excluder
        self.progress = progress
        self.status = status
        self.result = ArchiveResult()
        self.pipeline = (ProcessPipeline(repo, options.processes) if options.processes and not options.dry_run
                         else Pipeline(repo, options.dry_run))
        self.waiting: deque[_Folder] = deque()
        self.waiting_entries = 0
        self.stack: list[_Folder] = []
        self.links: dict[tuple[int, int], tuple[Pending, os.stat_result]] = {}
        self.devices: set[int] = set()
        self.empty_tree: bytes | None = None
        self.next_checkpoint = time.monotonic() + (options.checkpoint_interval or float("inf"))
        # Of the last folders with a record, how many changed: when most do, deferring costs
        # more than it saves, and folders are compared as they are walked again (enter).
        self.recorded = self.changed = 0

    # -- the walk ------------------------------------------------------------------------

    def run(self, paths: list[bytes]) -> ArchiveResult:
        plan = make_plan(paths)
        for path in paths:  # -x stays on the filesystems of all given paths, nested ones too
            try:
                self.devices.add(os.stat(path).st_dev)
            except OSError:
                pass  # reported when the walk reaches it
        root_fd = os.open(b"/", DIR_FLAGS)
        names = list_names(root_fd) if plan is None else sorted(plan)
        cache = self.options.folder_cache
        record = cache.get(b"/") if cache is not None and plan is None else None
        self.stack = [_Folder(b"/", root_fd, None, names, plan, None if record else self.parents.root(), record)]
        ok = False
        try:
            while self.stack:
                folder = self.stack[-1]
                name = next(folder.todo, None)
                if name is None:
                    self.stack.pop()
                    self.close_folder(folder)
                    continue
                if self.options.stop is not None and self.options.stop.is_set():
                    self.checkpoint()
                    raise KeyboardInterrupt
                if time.monotonic() >= self.next_checkpoint:
                    self.checkpoint()
                child = self.visit(folder, name)
                if child is not None:
                    self.stack.append(child)
            self.pipeline.submit()
            self.drain()
            ok = True
        finally:
            try:
                self.parents.close()
                self.pipeline.close(abort=not ok)  # before the folders: readers open files in them
            finally:
                for folder in (*self.stack, *self.waiting):
                    os.close(folder.fd)
        r = self.result
        r.bytes_read, r.bytes_added, r.blobs_new = self.pipeline.bytes_read, self.pipeline.bytes_added, self.pipeline.blobs_new
        return r

    def skip(self, path: bytes, why: str) -> None:
        self.result.skipped.append((os.fsdecode(path), why))
        self.status.skipped += 1

    def visit(self, folder: _Folder, name: bytes) -> _Folder | None:
        """Look at one entry: note it in `folder`, or return the folder to walk into.

        The hot loop of a backup (once per entry, 56,000 times for /usr): the path is joined
        only when something needs it.
        """
        status = self.status
        status.folder, status.name = folder.path, name
        if self.progress is not None:
            self.progress(status)
        above = folder.plan is not None and folder.plan[name] is not None
        fd = -1
        try:
            if above:  # a folder above a given path: follow symlinks, as the user named it
                fd = os.open(name, DIR_FLAGS, dir_fd=folder.fd)
                st = os.fstat(fd)
            else:
                st = os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
        except OSError as exc:
            self.skip(join(folder.path, name), reason(exc))
            folder.same = folder.clean = False
            return None
        if folder.signatures is not None:
            folder.signatures.append(entry_signature(name, st))
            self.result.owners.add((st.st_uid, st.st_gid))
        kind = entry_type(st)
        if kind is None:
            self.skip(join(folder.path, name), "is a socket: sockets are not backed up")
            folder.clean = False
            return None
        if not above and self.excluder.matchers and self.excluder.path_excluded(join(folder.path, name)):
            self.result.excluded += 1
            return None
        item = _Item(name, st, kind)
        deferred = folder.record is not None
        entry = folder.parent.get(name) if folder.parent is not None else None
        if kind == DIR:
            return self.enter(folder, item, join(folder.path, name), entry, fd)
        if self.options.one_file_system and st.st_dev not in self.devices:
            self.result.excluded += 1
            return None
        if kind == FILE:
            if self.excluder.too_large(st.st_size):
                self.result.excluded += 1
                return None
            self.count_file(st)
            if deferred:
                item.same = True  # for now: settle() compares it if the folder's digest differs
                folder.deferred_files += 1
            else:
                self.add_file(folder, item, entry)
        else:
            self.result.others += 1
            if deferred:
                item.same = True
            else:
                self.compare_other(item, entry)
        folder.items.append(item)
        if not item.same:
            folder.same = False
        return None

    def count_file(self, st: os.stat_result) -> None:
        self.status.files += 1
        self.status.bytes_done += st.st_size
        self.result.bytes_total += st.st_size

    def compare_other(self, item: _Item, entry: filescache.Entry | None) -> None:
        """A symlink, FIFO or device: unchanged if its parent entry equals its stat."""
        item.same = self.parents.shortcut and filescache.same_entry(entry, item.st, item.kind)
        item.entry = entry if item.same else None

    def add_file(self, folder: _Folder, item: _Item, entry: filescache.Entry | None) -> None:
        """Keep the parent's content of an unchanged file, or have the file read."""
        st = item.st
        content, same = filescache.compare_file(entry, st, self.parents.shortcut)
        if content is not None and (self.parents.indexed or all(self.repo.has_blob(b) for b in content)):
            item.content = content
            item.same = same
            item.entry = entry if same else None
            self.result.files_unchanged += 1
            return
        item.fresh = entry is None
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            earlier = self.links.get(key)
            if earlier is not None and _same_version(earlier[1], st):
                item.pending = earlier[0]
                return
        # The reader opens it and captures its metadata through the open file (cheaper than
        # through /proc when the folder is finished, and off this thread); a failure comes
        # back in the result and the file is skipped then.
        item.reads = True
        item.pending = self.pipeline.read_at(folder.fd, item.name, st)
        if st.st_nlink > 1:
            if len(self.links) >= MAX_LINKS_REMEMBERED:
                self.links.clear()
            self.links[(st.st_dev, st.st_ino)] = (item.pending, st)

    def enter(self, folder: _Folder, item: _Item, path: bytes, entry: filescache.Entry | None, fd: int) -> _Folder | None:
        above = fd >= 0
        try:
            if not above:
                fd = open_at(folder.fd, item.name, DIR_FLAGS | os.O_NOFOLLOW, item.st.st_uid)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (item.st.st_dev, item.st.st_ino):
                raise FileNotFoundError("replaced during the backup")
            if not above and self.excluder.markers and self.excluder.folder_marker(fd) is not None:
                os.close(fd)
                self.result.excluded += 1
                return None
            if not above and self.options.one_file_system and st.st_dev not in self.devices:
                os.close(fd)  # a mount point: kept as an empty folder, as restic does
                item.subtree = self.empty()
                item.same = folder.record is not None or self.same_subtree(item, entry)
                folder.items.append(item)
                folder.same = folder.same and item.same
                return None
            plan = folder.plan[item.name] if folder.plan is not None else None
            names = sorted(plan) if plan is not None else list_names(fd)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            self.skip(path, reason(exc))
            folder.same = folder.clean = False
            return None
        if plan is None:
            self.status.dirs += 1
        cache = self.options.folder_cache
        record = cache.get(path) if cache is not None and plan is None else None
        defer = record is not None and self.changed * 2 <= self.recorded
        if record is not None and not defer and folder.record is not None:
            # Most folders change lately (1% of files spread over every folder changes them
            # all): deferring costs more than it saves. Compare this folder from here on, and
            # so its subfolders, their parent trees read ahead as without a cache.
            self.settle(folder, item.name)
            entry = folder.parent.get(item.name) if folder.parent is not None else None
        # Provisionally unchanged in a deferred folder: its close sets it False if it changed.
        item.same = folder.record is not None or self.same_folder(item, entry)
        folder.items.append(item)
        if defer:
            return _Folder(path, fd, item, names, plan, None, record)
        child = _Folder(path, fd, item, names, plan, self.parents.child(folder.parent, item.name))
        child.known = record
        return child

    def same_folder(self, item: _Item, entry: filescache.Entry | None) -> bool:
        """Whether a folder entry's own metadata equals the parent's (its tree is decided when
        the folder is finished)."""
        return self.parents.shortcut and filescache.same_entry(entry, item.st, DIR)

    def same_subtree(self, item: _Item, entry: filescache.Entry | None) -> bool:
        """Whether a folder entry whose tree is already known equals the parent's."""
        return self.same_folder(item, entry) and entry is not None and entry.get("subtree") == item.subtree

    def close_folder(self, folder: _Folder) -> None:
        """All entries visited: keep the parent's tree, or capture and queue for storing."""
        above = self.stack[-1] if self.stack else None
        if folder.signatures is not None:
            folder.digest = folder_digest(folder.signatures)
            folder.signatures = None
        if folder.known is not None:
            self.recorded += 1
            if not (folder.same and folder.clean and folder.known.digest == folder.digest):
                self.changed += 1
            if self.recorded >= 64:  # the last few dozen count
                self.recorded, self.changed = self.recorded // 2, self.changed // 2
        record = folder.record
        if record is not None:
            if folder.same and folder.clean and record.digest == folder.digest:
                self.result.files_unchanged += folder.deferred_files
                self.keep_tree(folder, record.tree_id, above)
                return
            self.settle(folder)
        parent = folder.parent
        same = (
            folder.same and parent is not None and self.parents.shortcut
            and len(parent.names) == len(folder.items)
            and all(a.name == b for a, b in zip(folder.items, parent.names))
        )
        if same:
            assert parent is not None
            self.keep_tree(folder, parent.tree_id, above)
            return
        if folder.item is not None:
            folder.item.same = False
        if above is not None:
            above.same = False
        self.waiting.append(folder)  # closed when stored, or by run() on an error
        # A waiting folder may wait for hundreds of others' files: it lets go of what only its
        # walk and capture needed (its parent tree decoded, each entry's parent map, the stat
        # of each entry not being read): about 1 KB an entry, 12 MiB of a 1%-changed re-backup
        # of 100,000 small files.
        for item in folder.items:
            self.capture(folder, item)
            item.entry = None
            if item.pending is None:
                del item.st
        folder.parent, folder.parent_tree = None, parent.tree_id if parent is not None else None
        self.waiting_entries += len(folder.items)
        self.drain(MAX_WAITING_ENTRIES)

    def keep_tree(self, folder: _Folder, tree_id: bytes, above: _Folder | None) -> None:
        """The folder is unchanged: its tree is the parent snapshot's `tree_id`."""
        if folder.plan is None:
            self.result.dirs_unchanged += 1
        os.close(folder.fd)
        self.note_folder(folder, tree_id)
        if folder.item is None:
            self.result.root = tree_id
        else:
            folder.item.subtree = tree_id
            if not folder.item.same and above is not None:
                above.same = False

    def settle(self, folder: _Folder, entering: bytes | None = None) -> None:
        """Compare a deferred folder's entries with its parent tree after all (read now, by the
        recorded id): its digest differs, a subfolder changed, a checkpoint needs its nodes,
        or most folders change (the walk then enters the subfolder `entering` comparing)."""
        record, folder.record = folder.record, None
        assert record is not None
        visited = {item.name for item in folder.items}
        if entering is not None:
            visited.add(entering)
        parent = folder.parent = self.parents.load_folder(record.tree_id, visited)
        folder.deferred_files = 0
        folder.same = True
        for item in folder.items:
            entry = parent.get(item.name) if parent is not None else None
            if item.kind == FILE:
                item.same = False
                self.add_file(folder, item, entry)
            elif any(f.item is item for f in self.stack):  # a subfolder still open (a checkpoint)
                item.same = item.same and self.same_folder(item, entry)
            elif item.kind == DIR:
                item.same = item.same and self.same_subtree(item, entry)
            else:
                self.compare_other(item, entry)
            if not item.same:
                folder.same = False

    def note_folder(self, folder: _Folder, tree_id: bytes) -> None:
        """Record a finished folder for the next backup's folder cache."""
        if folder.plan is None:
            clean = folder.clean and not any(item.dropped for item in folder.items)
            self.result.folders[folder.path] = FolderRecord(folder.digest if clean else b"", tree_id)

    def capture(self, folder: _Folder, item: _Item) -> None:
        if item.node is not None or item.packed is not None or item.dropped or item.reads:
            return
        if item.entry is not None:
            # Unchanged down to ctime, which any change of metadata (xattrs and ACLs included)
            # sets: the parent's entry is what capturing would give, without the xattr calls
            # (the same rule that lets a whole unchanged folder keep its tree; filescache). A
            # plain file's entry is stored again as it is, others are checked.
            if item.kind == FILE and reusable_entry(item.entry):
                assert folder.parent is not None  # where the entry came from
                item.packed = folder.parent.packed_entry(item.name, item.entry)
                return
            try:
                item.node = decode_entry(item.entry, f"the parent's entry {item.name!r}")
                return
            except DamagedObject:
                pass  # captured afresh below
        try:
            item.node = capture(folder.fd, item.name, item.st)
        except OSError as exc:
            item.dropped = True
            folder.clean = False
            self.skip(join(folder.path, item.name), reason(exc))

    # -- finishing folders -------------------------------------------------------------------

    def drain(self, keep: int = 0) -> None:
        """Store the trees of waiting folders whose files are all read, oldest first; wait for
        the readers while the waiting folders hold more than `keep` entries."""
        while self.waiting:
            folder = self.waiting[0]
            if self.waiting_entries <= keep and len(self.waiting) <= MAX_WAITING_FOLDERS and not _read(folder):
                return
            tree_id = self.store_tree(folder)  # its files are all read (opened) after this
            self.waiting.popleft()
            os.close(folder.fd)
            self.note_folder(folder, tree_id)
            self.waiting_entries -= len(folder.items)
            if folder.plan is None:
                if folder.parent_tree is None:
                    self.result.dirs_new += 1
                elif folder.parent_tree == tree_id:
                    self.result.dirs_unchanged += 1
                else:
                    self.result.dirs_changed += 1
            if folder.item is None:
                self.result.root = tree_id
            else:
                folder.item.subtree = tree_id

    def packed_entry(self, folder: _Folder, item: _Item) -> bytes | None:
        """The item's entry in its folder's tree, packed; None when it is left out. An
        unchanged plain file keeps the parent's map (capture), a file a worker process read
        comes packed by it, the rest are packed from their nodes here."""
        if item.dropped:
            return None
        if item.packed is not None:
            return item.packed
        if item.node is None and not item.reads:
            return None
        result = None
        if item.pending is not None:
            result = self.pipeline.result(item.pending)
            item.pending = None
            if result.error is not None:
                item.dropped = True
                self.result.bytes_total -= item.st.st_size
                self.skip(join(folder.path, item.name), result.error)
                return None
            if item.fresh:
                self.result.files_new += 1
            else:
                self.result.files_changed += 1
            if result.warning is not None:
                folder.clean = False
                self.result.warnings.append((os.fsdecode(join(folder.path, item.name)), result.warning))
            if item.reads:
                if result.packed is not None:
                    item.packed = result.packed
                    return item.packed
                item.node = result.finished_node()
        node = item.node
        assert node is not None  # captured, or by the reader that read it
        if result is not None and not item.reads:  # a hard link sharing another link's read
            result.complete(node)
        elif item.content is not None:
            node.content = item.content
        if item.kind == DIR:
            node.subtree = item.subtree
        return pack_entry(entry_map(node))

    def store_tree(self, folder: _Folder) -> bytes:
        entries = []
        for item in folder.items:
            packed = self.packed_entry(folder, item)
            if packed is not None:
                entries.append((item.name, packed))
        return self.pipeline.store(BlobType.TREE, encode_packed(entries))

    def empty(self) -> bytes:
        if self.empty_tree is None:
            self.empty_tree = self.pipeline.store(BlobType.TREE, encode_packed([]))
        return self.empty_tree

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Store what is finished as a partial tree, flush, and report the tree's id."""
        interval = self.options.checkpoint_interval
        self.next_checkpoint = time.monotonic() + (interval or float("inf"))
        if self.options.dry_run or self.options.on_checkpoint is None:
            return
        for folder in self.stack:
            if folder.record is not None:
                self.settle(folder)  # its nodes are needed now
        self.pipeline.submit()
        self.drain()
        partial: Node | None = None
        for depth in range(len(self.stack) - 1, -1, -1):
            folder = self.stack[depth]
            open_child = self.stack[depth + 1].item if depth + 1 < len(self.stack) else None
            entries = []
            for item in folder.items:
                if item is open_child:
                    if partial is not None:
                        entries.append((partial.name, pack_entry(entry_map(partial))))
                    continue
                self.capture(folder, item)
                packed = self.packed_entry(folder, item)
                if packed is not None:
                    entries.append((item.name, packed))
            tree_id = self.pipeline.store(BlobType.TREE, encode_packed(entries))
            if folder.item is None:
                self.pipeline.flush()
                self.options.on_checkpoint(tree_id)
                return
            self.capture(self.stack[depth - 1], folder.item)
            if folder.item.node is None:
                return  # the open folder vanished: nothing above it can be saved
            partial = dataclasses.replace(folder.item.node, subtree=tree_id)


def _read(folder: _Folder) -> bool:
    """Whether every file of `folder` being read is read (asked once per batch, not per file)."""
    batch = None
    for item in folder.items:
        pending = item.pending
        if pending is not None and pending.batch is not batch:
            if not pending.done():
                return False
            batch = pending.batch
    return True


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def archive(
    repo: Repository,
    paths: list[str],
    progress: Callable[[BackupStatus], None] | None = None,
    options: ArchiveOptions | None = None,
    parents: ParentTrees | None = None,
    status: BackupStatus | None = None,
) -> ArchiveResult:
    """Store `paths` (files or folders, made absolute) and return the root tree's id.

    Unreadable, vanished or changing entries are skipped and listed in the result; storage
    errors abort. With `dry_run` nothing is written: chunks are hashed and looked up to count
    what is new. The caller flushes the repository and saves the snapshot.
    """
    repo.load_index()  # once, before the threads race to load it
    absolute = [os.fsencode(os.path.abspath(p)) for p in paths]
    parents = parents or ParentTrees(repo, [], False)
    return _Archiver(repo, parents, options or ArchiveOptions(), progress, status or BackupStatus()).run(absolute)
