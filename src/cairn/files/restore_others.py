"""Restoring what is not a regular file or a folder: symlinks, FIFOs, device nodes, and the
second and later names of a hard-linked file.

Both run in the walking thread, relative to the open parent folder, never following anything
in the target (restore_entries). A hard link is made to the first name of its file restored in
this run, reached from the target folder one component at a time with O_NOFOLLOW; a name
already linked to it (a second run) is left as it is.
"""

from __future__ import annotations

import os
import stat

from cairn.files import metadata
from cairn.files.restore_entries import IF_NEWER, NEVER, Action, decide, lstat_at, make_special, open_folder, remove
from cairn.files.restore_state import RestoreSettings, Tally
from cairn.files.tree import BLOCKDEV, CHARDEV, Node

IN_THE_WAY = "a folder in the target is in the way (add --delete to replace it)"


class OtherEntries:
    def __init__(self, settings: RestoreSettings, tally: Tally, owner: bool) -> None:
        self.settings, self.tally, self.owner = settings, tally, owner

    def special(self, parent: int, node: Node, rel: bytes, created: metadata.Created | None = None) -> bool:
        """A symlink, FIFO or device node; False when it was not restored. `created`: what a
        new entry of the folder gets by itself (metadata.probe_folder)."""
        kept = False
        try:
            try:  # the usual case first: the name is free
                make_special(parent, node.name, node)
            except FileExistsError:
                created = None  # what is there now was not made by this call
                st = lstat_at(parent, node.name)
                action = decide(parent, node.name, st, node, self.settings.overwrite, self.settings.delete)
                if action == Action.BLOCKED:
                    self.tally.note("skipped", rel, IN_THE_WAY)
                    return False
                if action == Action.LEAVE:
                    self.tally.count("unchanged")
                    return True
                kept = action == Action.KEEP
                if not kept:
                    if st is not None:
                        remove(parent, node.name, st)
                    make_special(parent, node.name, node)
        except PermissionError as exc:
            if node.type in (CHARDEV, BLOCKDEV):
                self.tally.note("warnings", rel, "device node not created: only root can create device nodes")
            else:
                self.tally.note("skipped", rel, f"not restored: {exc.strerror or exc}")
            return False
        except OSError as exc:
            self.tally.note("skipped", rel, f"not restored: {exc.strerror or exc}")
            return False
        for warning in metadata.apply(parent, node.name, node, owner=self.owner, created=created):
            self.tally.note("warnings", rel, warning)
        self.tally.count("unchanged" if kept else "specials")
        return True

    def link(self, top: int, parent: int, node: Node, rel: bytes, first: bytes) -> None:
        """Make `node` a hard link to `first`, a name restored earlier in this run (whose
        writer, if any, is done: it may have replaced the file)."""
        *folders, first_name = first.split(b"/")
        try:
            source = open_folder(top, folders)
            try:
                have = lstat_at(source, first_name)
                st = lstat_at(parent, node.name)
                if have is not None and st is not None and (st.st_dev, st.st_ino) == (have.st_dev, have.st_ino):
                    self.tally.count("unchanged")
                    return
                if st is not None:
                    if self.settings.overwrite == NEVER or (
                        self.settings.overwrite == IF_NEWER and node.mtime <= st.st_mtime_ns):
                        self.tally.count("unchanged")
                        return
                    if stat.S_ISDIR(st.st_mode) and not self.settings.delete:
                        self.tally.note("skipped", rel, IN_THE_WAY)
                        return
                    remove(parent, node.name, st)
                os.link(first_name, node.name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(source)
        except OSError as exc:
            self.tally.note("skipped", rel, f"hard link to {os.fsdecode(first)} not made: {exc.strerror or exc}")
            return
        self.tally.count("links")
