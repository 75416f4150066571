"""`cairn dump SNAPSHOT[:PATH] [PATH]`: a file's content, or a folder as tar, on stdout."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import BinaryIO

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.entries import listing
from cairn.cli.output import human_size, is_terminal
from cairn.errors import PartialSuccess, UsageError
from cairn.ops import access
from cairn.ops.dump import ARCHIVES, TAR, DumpOptions, dump


@click.command("dump")
@global_options
@click.argument("snapshot", metavar="SNAPSHOT[:PATH]")
@click.argument("path", required=False, metavar="[PATH]")
@click.option("--archive", type=click.Choice(ARCHIVES), default=None,
              help="Archive format for a folder (default: tar); given, a single file is archived too.")
@click.option("-t", "--target", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write to FILE instead of standard output.")
@pass_state
def command(state: State, snapshot: str, path: str | None, archive: str | None, target: str | None) -> None:
    """Write a file or folder from a snapshot to standard output.

    A file comes out as its bytes; a folder as a POSIX (PAX) tar stream holding names as bytes,
    modes, owners, nanosecond times, symlinks, hard links, FIFOs, devices, extended attributes
    and ACLs (for tar -x --xattrs --xattrs-include='*'), named by their full path in the
    snapshot: `cairn dump latest /home/me/docs | tar -x` recreates home/me/docs. A tar stream
    is not written to a terminal.
    """
    repo = access.open_repository(state.selection())
    out = state.output
    with ExitStack() as stack:

        def open_output(fmt: str) -> BinaryIO:
            if target is not None:
                return stack.enter_context(open(target, "wb"))
            if fmt == TAR and is_terminal(sys.stdout):
                raise UsageError("a tar stream would go to the terminal: redirect it ('> docs.tar', '| tar -x') "
                                 "or use --target FILE")
            sys.stdout.flush()
            return sys.stdout.buffer

        with listing():
            result = dump(repo, DumpOptions(snapshot, path, archive), open_output)
    for where, reason in result.skipped:
        out.warn(f"not dumped {where}: {reason}")
    if target is not None:
        if out.json_mode:
            out.json({"target": target, "format": result.format, "entries": result.entries, "bytes": result.bytes,
                      "skipped": [{"path": p, "reason": r} for p, r in result.skipped]})
        else:
            out.result(f"wrote {result.entries:,} entries, {human_size(result.bytes)} to {target} ({result.format})")
    if result.skipped:
        raise PartialSuccess(f"{len(result.skipped)} entries could not be dumped")
