"""What a backup leaves out: glob patterns, marker files, CACHEDIR.TAG folders, big files.

Patterns follow restic, so an exclude file moves between the two tools unchanged:

- a pattern is matched against the entry's absolute path, on whole path components;
- a leading ``/`` anchors it at the root (``/bin`` matches ``/bin/bash``, not ``/usr/bin``);
  without one it matches at any depth (``foo`` matches ``/a/foo`` and ``/a/foo/b/c``, never
  ``/a/foobar``; ``foo/bar`` matches ``/x/foo/bar``);
- ``*`` and ``?`` never match ``/``; ``[abc]``, ``[!a-z]`` / ``[^a-z]`` are character classes and
  ``\\`` escapes the next character; a ``**`` component matches any number of components,
  none included (``foo/**/bar`` matches ``/tmp/foo/bar`` and ``/foo/x/y/bar``);
- a match excludes everything below it too, and a trailing ``/`` is ignored.

Restic's ``!pattern`` (re-include) is refused rather than read as a literal name: a user who
writes it expects something this version does not do.

All patterns of one kind compile into a single regular expression, so the per-entry cost is one
``fullmatch`` however many patterns there are: a backup visits every entry, and per-entry
Python work is what limits it on small files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from cairn.errors import UsageError

CACHEDIR_TAG = b"CACHEDIR.TAG"
# The first bytes a real cache directory tag starts with (https://bford.info/cachedir/).
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_ANY_DEPTH = "(?:/[^/]+)*"  # zero or more whole components


def parse_size(text: str) -> int:
    """``2048``, ``500k``, ``10M``, ``1.5G``, ``2T`` (binary units, as restic) -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise UsageError(f"{text!r} is not a size: use a number with an optional unit (k, M, G, T)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _component(glob: str, pattern: str) -> str:
    """One path component of a glob as a regular expression that never crosses a `/`."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < len(glob):
            i += 1
            out.append(re.escape(glob[i]))
        elif c == "[":
            end = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "^") else i + 1)
            if end < 0:
                raise UsageError(f"exclude pattern {pattern!r}: '[' without a closing ']'")
            body = glob[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("[", "\\[")
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def pattern_regex(pattern: str) -> str:
    """The regular expression (for `fullmatch` on an absolute path) of one restic pattern."""
    if pattern.startswith("!"):
        raise UsageError(f"exclude pattern {pattern!r}: negated patterns ('!') are not supported")
    anchored = pattern.startswith("/")
    parts = [p for p in pattern.strip("/").split("/") if p]
    if not parts:
        raise UsageError(f"exclude pattern {pattern!r} matches nothing: it has no name in it")
    regex = "" if anchored else _ANY_DEPTH
    for part in parts:
        regex += _ANY_DEPTH if part == "**" else "/" + _component(part, pattern)
    return regex + "(?:/.*)?"


class PathMatcher:
    """Matches absolute paths against a set of patterns (case-sensitive or not)."""

    def __init__(self, patterns: list[str], ignore_case: bool = False) -> None:
        self.patterns = list(patterns)
        self._regex: re.Pattern[str] | None = None
        if patterns:
            joined = "|".join(f"(?:{pattern_regex(p)})" for p in patterns)
            self._regex = re.compile(joined, re.DOTALL | (re.IGNORECASE if ignore_case else 0))

    def __bool__(self) -> bool:
        return self._regex is not None

    def matches(self, path: bytes) -> bool:
        return self._regex is not None and self._regex.fullmatch(os.fsdecode(path)) is not None


def read_pattern_file(path: str) -> list[str]:
    """Patterns from an exclude file: one per line; blank lines and ``#`` comments skipped,
    surrounding spaces stripped, ``$VAR`` / ``${VAR}`` expanded (as restic does)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read exclude file {path}: {exc.strerror or exc}") from None
    patterns = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(os.path.expandvars(line))
    return patterns


@dataclass
class ExcludeOptions:
    """Everything that decides whether an entry is left out (the CLI's --exclude* flags)."""

    patterns: list[str] = field(default_factory=list)
    ipatterns: list[str] = field(default_factory=list)
    """Case-insensitive patterns (--iexclude)."""
    if_present: list[str] = field(default_factory=list)
    """``NAME`` or ``NAME:HEADER``: leave out a folder holding NAME (whose content starts with
    HEADER, when given)."""
    caches: bool = False
    """Leave out folders holding a CACHEDIR.TAG with the standard signature."""
    larger_than: int | None = None
    """Leave out files bigger than this many bytes."""


class Excluder:
    """The compiled form of ExcludeOptions, asked once per entry by the walker."""

    def __init__(self, options: ExcludeOptions) -> None:
        self.matchers = [m for m in (PathMatcher(options.patterns), PathMatcher(options.ipatterns, True)) if m]
        self.larger_than = options.larger_than
        markers: list[tuple[bytes, bytes]] = []
        for spec in options.if_present:
            name, _, header = spec.partition(":")
            if not name or "/" in name:
                raise UsageError(f"--exclude-if-present wants a file name, not {spec!r}")
            markers.append((os.fsencode(name), os.fsencode(header)))
        if options.caches:
            markers.append((CACHEDIR_TAG, CACHEDIR_SIGNATURE))
        self.markers = markers

    def path_excluded(self, path: bytes) -> bool:
        """Whether a pattern excludes `path` (absolute)."""
        for matcher in self.matchers:
            if matcher.matches(path):
                return True
        return False

    def too_large(self, size: int) -> bool:
        return self.larger_than is not None and size > self.larger_than

    def folder_marker(self, folder_fd: int) -> bytes | None:
        """The marker file that excludes the open folder `folder_fd`, or None."""
        for name, header in self.markers:
            if _has_marker(folder_fd, name, header):
                return name
        return None


def _has_marker(folder_fd: int, name: bytes, header: bytes) -> bool:
    try:
        if not header:
            os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            return True
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder_fd)
        try:
            return os.read(fd, len(header)) == header
        finally:
            os.close(fd)
    except OSError:
        return False
