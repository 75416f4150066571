"""Which entries of a snapshot a restore writes: `--include` / `--exclude` glob patterns.

Patterns are matched against an entry's path inside the snapshot, as `cairn ls` shows it
(`/home/u/docs/a.txt`), byte for byte, so a pattern can name a file whose name is not UTF-8.

- `*` matches within one path component, `?` one byte of it, `[abc]`/`[!abc]`/`[^abc]` a set of
  bytes, `\\` escapes the next character; `**` as a whole component matches any number of
  components (none included). The same language as backup's `--exclude` (files/excludes.py).
- A pattern starting with `/` is anchored at the snapshot's root; any other pattern may match at
  any depth (`*.txt`, `docs/*.txt`), like restic's and rsync's patterns. A trailing `/` is ignored.
- A pattern matching a folder matches everything below it: an excluded folder is not entered,
  an included folder is restored whole.
- With includes, only what an include matches is restored, with the folders leading to it; an
  exclude wins over an include.

Why our own matcher and not fnmatch: fnmatch lets `*` cross `/` and knows no `**`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.files.tree import DIR, FILE, Node


def _component(part: bytes) -> bytes:
    """The regular expression for one component of a pattern (no `/` inside)."""
    out = []
    i = 0
    while i < len(part):
        c = part[i : i + 1]
        if c == b"*":
            while part[i : i + 1] == b"*":
                i += 1
            out.append(b"[^/]*")
            continue
        if c == b"?":
            out.append(b"[^/]")
        elif c == b"\\" and i + 1 < len(part):
            i += 1
            out.append(re.escape(part[i : i + 1]))
        elif c == b"[":
            end = part.find(b"]", i + 2 if part[i + 1 : i + 2] in (b"!", b"^") else i + 1)
            if end < 0:
                raise ValueError(f"pattern {os.fsdecode(part)!r}: '[' without a closing ']'")
            body = part[i + 1 : end]
            negate = body[:1] in (b"!", b"^")
            body = body[1:] if negate else body
            escaped = b"".join(b"\\" + bytes([b]) if b in b"\\^[]" else bytes([b]) for b in body)
            out.append(b"[" + (b"^/" if negate else b"") + escaped + b"]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


@dataclass(frozen=True)
class Pattern:
    """One compiled glob; `anchored` patterns start at the snapshot root."""

    text: str
    anchored: bool
    parts: tuple[bytes, ...]
    regex: re.Pattern[bytes]

    @classmethod
    def compile(cls, text: str) -> Pattern:
        raw = os.fsencode(text)
        anchored = raw.startswith(b"/")
        parts = tuple(p for p in raw.strip(b"/").split(b"/") if p not in (b"", b"."))
        if not parts:
            raise ValueError(f"pattern {text!r} matches nothing")
        body = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == b"**":
                body.append(b".*" if last else b"(?:.*/)?")
            else:
                body.append(_component(part) + (b"" if last else b"/"))
        prefix = b"/" if anchored else b"(?:.*/)?"
        return cls(text, anchored, parts, re.compile(prefix + b"".join(body), re.DOTALL))

    def matches(self, path: bytes) -> bool:
        """Whether the snapshot path `path` (starting with `/`) is what this pattern names."""
        return self.regex.fullmatch(path if self.anchored else path.lstrip(b"/")) is not None

    def may_match_below(self, folder: bytes) -> bool:
        """Whether something below `folder` could match: false only when an anchored pattern's
        leading components already disagree with it, so a restore need not read that subtree."""
        if not self.anchored:
            return True
        names = [p for p in folder.split(b"/") if p]
        for i, name in enumerate(names):
            if i >= len(self.parts) or self.parts[i] == b"**":
                return self.parts[i:i + 1] == (b"**",)
            if not re.fullmatch(_component(self.parts[i]), name, re.DOTALL):
                return False
        return len(self.parts) > len(names)


@dataclass
class Selection:
    """The include and exclude patterns of one restore."""

    includes: list[Pattern] = field(default_factory=list)
    excludes: list[Pattern] = field(default_factory=list)

    @classmethod
    def from_patterns(cls, includes: list[str] | None = None, excludes: list[str] | None = None) -> Selection:
        """Compile the patterns; a ValueError names a pattern that can match nothing."""
        return cls([Pattern.compile(p) for p in includes or []], [Pattern.compile(p) for p in excludes or []])

    @property
    def everything(self) -> bool:
        return not self.includes and not self.excludes

    def excluded(self, path: bytes) -> bool:
        return any(p.matches(path) for p in self.excludes)

    def included(self, path: bytes) -> bool:
        """Whether an include names `path` itself (always true without includes)."""
        return not self.includes or any(p.matches(path) for p in self.includes)

    def worth_entering(self, folder: bytes) -> bool:
        """Whether a folder no include names could still hold something an include names."""
        return any(p.may_match_below(folder) for p in self.includes)

    def wants(self, path: bytes, inside_included: bool) -> bool:
        """Whether an entry that is not in the snapshot would have been restored: what
        `--delete` may remove (a restore of `*.txt` deletes stray .txt files only)."""
        return not self.excluded(path) and (inside_included or self.included(path))


def planned_bytes(
    load: Callable[[bytes], list[Node]], path: bytes, entries: list[Node], selected: bool,
    selection: Selection, stopped: threading.Event,
) -> int | None:
    """The content bytes a restore of `entries` (the folder `path`) will write, each hard-linked
    file once; None when `stopped` is set first. `load` reads a tree by id."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [(path, entries, selected)]
    while stack:
        if stopped.is_set():
            return None
        folder, nodes, inside = stack.pop()
        for node in nodes:
            child = folder + b"/" + node.name
            if selection.excluded(child):
                continue
            chosen = inside or selection.included(child)
            if node.type == DIR and node.subtree and (chosen or selection.worth_entering(child)):
                stack.append((child, load(node.subtree), chosen))
            elif node.type == FILE and chosen:
                if node.links is not None:
                    if node.links[:2] in seen:
                        continue
                    seen.add(node.links[:2])
                total += node.size
    return total
