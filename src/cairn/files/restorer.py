"""Write a snapshot's entries back under a target folder.

Shape: the calling thread walks the trees depth-first and does everything that changes a folder
(mkdir, unlink, symlink, mkfifo, mknod, link, delete); regular files are created and written
in their open folder by a pool of writer threads (restore_files), while a loader pool reads and
decrypts the next blobs; from a local repository, by forked writer processes instead
(restore_procs), which do not share one GIL. Memory stays bounded whatever the file sizes;
folders are opened lazily, so an --include that selects one file deep down creates only the
folders leading to it.

Modules: restorer (the walk, folders, special entries, hard links, --delete), restore_files
(regular files), restore_procs (the same in writer processes), restore_content (sparse
writing, comparing), restore_reads (the blobs of the next files read from their packs in
coalesced ranges), restore_entries (what to do with what the target already has),
restore_select (patterns), restore_state (settings and result).

Safety against a malicious snapshot or a hostile target: every name was checked by `decode_tree`
to be one path component; every entry is reached relative to an open descriptor of its parent,
with O_NOFOLLOW; nothing existing is followed, opened for writing or kept unless it is a
single-link entry of the right type (restore_entries). Within a folder, symlinks are created
last, after everything else in it, so no step of this run can pass through one.

Order: a folder's metadata is applied when the walk leaves it and the writers are done with its
files (entries created later would change its mtime; a read-only folder could not be filled).
A file's metadata is applied after its content (a write clears setuid bits and capabilities).
Resuming: a file interrupted half-way lacks its final size or mtime (set last), so a second run
rewrites it, while complete files are compared (or, with if-changed, just stat'ed) and kept.
"""

from __future__ import annotations

import functools
import os
import resource
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.files import metadata
from cairn.files.restore_entries import (
    DIR_FLAGS, IF_NEWER, NEVER, Action, decide, delete_strays, lstat_at, remove,
)
from cairn.files.restore_files import IN_FLIGHT, FileJob, FileWriter
from cairn.files.restore_procs import ProcessFileWriter
from cairn.files.restore_others import OtherEntries
from cairn.files.restore_select import planned_bytes
from cairn.files.restore_state import RestoreProgress, RestoreResult, RestoreSettings, Tally
from cairn.files.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node, decode_tree
from cairn.repo.repository import Repository

__all__ = ["RestoreProgress", "RestoreResult", "RestoreSettings", "load_tree", "restore", "restore_nodes"]


def load_tree(repo: Repository, tree_id: bytes) -> list[Node]:
    return decode_tree(repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")


@dataclass
class _Frame:
    """A snapshot folder being restored; its target folder is opened (created) on first need."""

    node: Node | None  # None for the target itself when no folder node describes it
    path: bytes  # inside the snapshot, for patterns
    rel: bytes  # inside the target, for messages and hard links
    parent: _Frame | None
    entries: list[Node]
    selected: bool  # an include names this folder or one above it
    fd: int | None = None
    apply: bool = True
    blocked: bool = False
    strays: bool = True  # --delete may remove what the snapshot folder does not have
    pending: list[FileJob] = field(default_factory=list)
    compact_at: int = IN_FLIGHT  # `pending` is cleared of finished jobs when this long
    index: int = 0
    planned: int = 0  # entries before this one had their blobs planned (PackReads)
    created: metadata.Created | None = None  # what a new entry in the open folder gets by itself


def _raise_fd_limit() -> None:
    """Each folder on the walk's path stays open (no path string is ever resolved again), so a
    tree 2000 folders deep needs 2000 descriptors: lift the soft limit (often 1024) toward the
    hard one, as far as 65536."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# Files planned ahead of the walker, so that the blobs of a run of small files are read together
# (restore_reads); at most PLAN_BLOBS blobs per look ahead (the rest of a huge file reads blob by blob).
LOOKAHEAD = 64
PLAN_BLOBS = 1024


def _ordered(nodes: list[Node]) -> list[Node]:
    return sorted(nodes, key=lambda n: n.type == SYMLINK)  # stable: symlinks last


# Entries walked between two looks at the folders waiting for their files (and at each folder's
# end): looking at every entry cost a tenth of the walk's CPU, re-checking the same jobs.
REAP_EVERY = 64


class Restorer:
    def __init__(self, repo: Repository, settings: RestoreSettings,
                 progress: Callable[[RestoreProgress], None] | None) -> None:
        self.repo, self.settings = repo, settings
        self.tally = Tally(progress)
        self.owner = os.geteuid() == 0 if settings.owner is None else settings.owner
        self.files: FileWriter | ProcessFileWriter = (
            ProcessFileWriter(repo, settings, self.tally, self.owner, settings.processes) if settings.processes
            else FileWriter(repo, settings, self.tally, self.owner))
        self.others = OtherEntries(settings, self.tally, self.owner)
        self.linked: dict[tuple[int, int], tuple[bytes, FileJob | None]] = {}
        self.waiting: list[_Frame] = []  # left by the walk, files still being written
        self.top_fd = -1

    def note(self, kind: str, rel: bytes, text: str) -> None:
        self.tally.note(kind, rel, text)

    # -- the walk ----------------------------------------------------------------------------
    def run(self, top: _Frame, target: str) -> RestoreResult:
        _raise_fd_limit()
        if not self.owner and os.geteuid() != 0:
            self.tally.result.notes.append("not running as root: owners are not restored (files belong to you)")
        existed = os.path.isdir(target)
        os.makedirs(target, exist_ok=True)
        self.top_fd = top.fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        top.created = metadata.probe_folder(top.fd, made=not existed)
        if existed and top.node is not None:  # the target stands for the folder restored into it
            mode, mtime = self.settings.overwrite, os.fstat(top.fd).st_mtime_ns
            top.apply = mode != NEVER and not (mode == IF_NEWER and top.node.mtime <= mtime)
        stopped = threading.Event()
        if self.tally.progress is not None:
            threading.Thread(target=self.measure, args=(top, stopped), daemon=True, name="cairn-measure").start()
        stack = [top]
        steps = 0
        try:
            while stack:
                frame = stack[-1]
                steps += 1
                if frame.index < len(frame.entries):
                    node = frame.entries[frame.index]
                    frame.index += 1
                    child = self.visit(frame, node)
                    if child is not None:
                        stack.append(child)
                    if steps % REAP_EVERY:
                        continue
                else:
                    stack.pop()
                    self.leave(frame)
                self.reap(wait=False)
            self.reap(wait=True)
            self.files.check()
        finally:
            stopped.set()
            self.files.close()
            for frame in stack + self.waiting:
                if frame.fd is not None and frame.fd != self.top_fd:
                    os.close(frame.fd)
            os.close(self.top_fd)
        return self.tally.result

    def measure(self, top: _Frame, stopped: threading.Event) -> None:
        """In a side thread: the bytes to restore, the progress bar's total. Any failure (a
        damaged tree, the repository closed once the restore is over) just ends the count: the
        walk itself reports what matters, and a progress bar must never fail a restore."""
        load = functools.partial(load_tree, self.repo)
        try:
            total = planned_bytes(load, top.path, top.entries, top.selected, self.settings.selection, stopped)
        except Exception:  # noqa: BLE001 - see above
            return
        if total is not None:
            self.tally.total_bytes = total

    def visit(self, frame: _Frame, node: Node) -> _Frame | None:
        path = frame.path + b"/" + node.name
        rel = frame.rel + b"/" + node.name if frame.rel else node.name
        sel = self.settings.selection
        if sel.excluded(path):
            return None
        selected = frame.selected or sel.included(path)
        self.tally.report(rel)
        if node.type == DIR:
            if not selected and not sel.worth_entering(path):
                return None
            assert node.subtree is not None
            child = _Frame(node, path, rel, frame, _ordered(load_tree(self.repo, node.subtree)), selected)
            if selected:
                self.open(child)
            return child
        if not selected:
            return None
        parent = self.open(frame)
        if parent is None:
            return None
        key = node.links[:2] if node.links is not None else None
        if key is not None and key in self.linked:
            first, first_job = self.linked[key]
            if first_job is None or first_job.result():  # else this name becomes the first
                self.others.link(self.top_fd, parent, node, rel, first)
                return None
        job: FileJob | None = None
        if node.type == FILE:
            if self.files.plans_ahead and frame.index > frame.planned:
                self.plan(frame)
            job = self.files.start(parent, node, rel, frame.created)
            if len(frame.pending) >= frame.compact_at:  # a folder of a million files keeps few futures
                frame.pending = [j for j in frame.pending if not j.done()]
                # twice what is still running: the writers take files in batches, so dozens stay
                # pending, and filtering them again at every file cost 0.9 s of a 4.6 s restore
                frame.compact_at = max(IN_FLIGHT, 2 * len(frame.pending))
            frame.pending.append(job)
        elif node.type in (SYMLINK, FIFO, CHARDEV, BLOCKDEV):
            if not self.others.special(parent, node, rel, frame.created):
                return None
        else:
            self.note("skipped", rel, f"entry type {node.type!r} is not restored by this version")
            return None
        if key is not None:
            self.linked[key] = (rel, job)
        return None

    def plan(self, frame: _Frame) -> None:
        """Plan the blobs of the files the walk is about to start in this folder: this one and
        up to LOOKAHEAD - 1 after it (those the selection keeps and that are not links to a
        file already started; a guess that is wrong only costs a read)."""
        assert isinstance(self.files, FileWriter), "only the threads' writer plans ahead"
        sel, ids = self.settings.selection, list[bytes]()
        at = frame.index - 1
        end = min(len(frame.entries), at + LOOKAHEAD)
        while at < end and len(ids) < PLAN_BLOBS:
            node = frame.entries[at]
            at += 1
            if node.type != FILE or not node.content:
                continue
            if node.links is not None and node.links[:2] in self.linked:
                continue
            if not sel.everything:
                path = frame.path + b"/" + node.name
                if sel.excluded(path) or not (frame.selected or sel.included(path)):
                    continue
            ids.extend(node.content[:PLAN_BLOBS - len(ids)])
        frame.planned = at
        self.files.plan(ids)

    def open(self, frame: _Frame, create: bool = True) -> int | None:
        """The frame's folder in the target, created (and its parents) when `create`; None when
        it cannot be (blocked), or does not exist and `create` is false."""
        chain = []
        while frame.fd is None and not frame.blocked and frame.parent is not None:
            chain.append(frame)
            frame = frame.parent
        if frame.fd is None:
            return None
        for child in reversed(chain):  # outermost first: each needs its parent open
            if not self.open_one(child, frame.fd, create):
                return None
            frame = child
        return frame.fd

    def open_one(self, frame: _Frame, parent: int, create: bool) -> bool:
        node = frame.node
        assert node is not None
        try:
            if create:  # mkdir first: in a new folder the name is never taken
                try:
                    os.mkdir(node.name, 0o700, dir_fd=parent)
                    frame.fd = os.open(node.name, DIR_FLAGS, dir_fd=parent)
                    frame.created = metadata.probe_folder(frame.fd, made=True)
                    self.tally.count("dirs")
                    return True
                except FileExistsError:
                    pass
            st = lstat_at(parent, node.name)
            if not create and (st is None or not stat.S_ISDIR(st.st_mode)):
                return False  # only looking (for --delete): nothing to look into
            action = decide(parent, node.name, st, node, self.settings.overwrite, self.settings.delete)
            made = action in (Action.CREATE, Action.REPLACE)
            if made:
                if st is not None:
                    remove(parent, node.name, st)
                os.mkdir(node.name, 0o700, dir_fd=parent)
            elif st is not None and not stat.S_ISDIR(st.st_mode):  # LEAVE over a non-folder
                frame.blocked = True
                self.note("skipped", frame.rel, "a non-folder in the target is in the way (--overwrite)")
                return False
            frame.apply = action != Action.LEAVE
            frame.fd = os.open(node.name, DIR_FLAGS, dir_fd=parent)
            frame.created = metadata.probe_folder(frame.fd, made)
        except OSError as exc:
            frame.blocked = True
            self.note("skipped", frame.rel, f"folder not restored: {exc.strerror or exc}")
            return False
        self.tally.count("dirs")
        return True

    def leave(self, frame: _Frame) -> None:
        """Delete strays (--delete), then apply the folder's metadata once its files are done."""
        if self.settings.delete and frame.strays and not frame.blocked:
            fd = self.open(frame, create=False)
            if fd is not None:
                known = {n.name for n in frame.entries}
                wants = functools.partial(self.settings.selection.wants, inside_included=frame.selected)
                for name, problem in delete_strays(fd, frame.path, known, wants):
                    if problem:
                        self.note("skipped", frame.rel + b"/" + name if frame.rel else name, problem)
                    else:
                        self.tally.count("deleted")
        self.files.left_folder()
        if frame.fd is not None:
            self.waiting.append(frame)

    def reap(self, wait: bool) -> None:
        """Finish the folders whose files are all written (all of them when `wait`)."""
        self.files.check()
        still = []
        for frame in self.waiting:
            if wait:
                for job in frame.pending:
                    job.result()
            if all(job.done() for job in frame.pending):
                self.finish_folder(frame)
            else:
                still.append(frame)
        self.waiting = still

    def finish_folder(self, frame: _Frame) -> None:
        assert frame.fd is not None
        try:
            if frame.node is not None and frame.apply:
                for warning in metadata.apply(-1, frame.node.name, frame.node, owner=self.owner, fd=frame.fd):
                    self.note("warnings", frame.rel, warning)
        finally:
            if frame.fd != self.top_fd:
                os.close(frame.fd)
            frame.fd = None


def restore(
    repo: Repository, tree_id: bytes, target: str, progress: Callable[[RestoreProgress], None] | None = None,
    settings: RestoreSettings | None = None, node: Node | None = None, path: bytes = b"",
) -> RestoreResult:
    """Restore the entries of the tree `tree_id` into `target` (created when missing).

    `node` is the folder entry the tree belongs to, when there is one: its metadata is applied to
    the target. `path` is the tree's path inside the snapshot, for include/exclude patterns.
    """
    settings = settings or RestoreSettings()
    repo.load_index()  # once, before the worker threads race to load it
    sel = settings.selection
    entries = [] if path and sel.excluded(path) else _ordered(load_tree(repo, tree_id))
    top = _Frame(node, path, b"", None, entries, selected=bool(path) and sel.included(path) or not sel.includes)
    return Restorer(repo, settings, progress).run(top, target)


def restore_nodes(
    repo: Repository, nodes: list[Node], target: str, progress: Callable[[RestoreProgress], None] | None = None,
    settings: RestoreSettings | None = None, path: bytes = b"",
) -> RestoreResult:
    """Restore the given entries (a single file picked out of a folder, say) into `target`;
    `path` is their folder's path inside the snapshot. --delete touches nothing else there."""
    settings = settings or RestoreSettings()
    repo.load_index()
    top = _Frame(None, path, b"", None, _ordered(nodes), selected=not settings.selection.includes, strays=False)
    return Restorer(repo, settings, progress).run(top, target)
