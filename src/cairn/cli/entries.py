"""Printing snapshot entries, shared by ls, find and diff: long lines and JSON lines.

Listings can run to millions of lines, so they are written straight to the buffered stdout
(click.echo flushes every line), and their JSON is one compact object per line (NDJSON, as
restic's ``ls --json`` prints) rather than one document that must be complete before it parses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import click

from cairn.files.tree import Node
from cairn.ops.browse import Entry, display, mode_string

_ID_WIDTH = 8


def write_line(text: str) -> None:
    """One line of a listing on stdout, without a flush per line."""
    sys.stdout.write(text + "\n")


def write_json_line(data: Any) -> None:
    """One JSON object on one line (its strings are never split, control characters escaped)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")


def _owner(name: str, number: int) -> str:
    return name or str(number)


def _size_column(node: Node) -> str:
    """Bytes for a file, the target's length for a symlink, ``major, minor`` for a device (as ls)."""
    if node.rdev is not None:
        return f"{os.major(node.rdev)}, {os.minor(node.rdev)}"
    if node.target is not None:
        return str(len(node.target))
    return str(node.size) if node.type == "file" else "0"


def mtime_text(ns: int) -> str:
    """Local time to the second, as `ls -l --time-style=long-iso` and restic show it."""
    when = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S")


def long_line(entry: Entry) -> str:
    """``-rw-r--r-- alice    staff       1234 2024-05-01 10:00:00 /home/alice/a.txt``."""
    node = entry.node
    line = (
        f"{mode_string(node)} {_owner(node.user, node.uid):<{_ID_WIDTH}} {_owner(node.group, node.gid):<{_ID_WIDTH}} "
        f"{_size_column(node):>12} {mtime_text(node.mtime)} {entry.display_path}"
    )
    if node.target is not None:
        line += f" -> {display(node.target)}"
    return line


def flush() -> None:
    sys.stdout.flush()


@contextmanager
def listing() -> Iterator[None]:
    """Flush the listing at the end, and end quietly when the reader left (``cairn ls | head``).

    A closed pipe is not a failure of ours: no traceback, exit code 1 as `cairn.cli.main.main`
    gives it. stdout is pointed at /dev/null first, so the interpreter's final flush of what is
    still buffered cannot fail again on the way out.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # not a real file (tests capture stdout in memory)
            pass
        raise click.exceptions.Exit(1) from None
