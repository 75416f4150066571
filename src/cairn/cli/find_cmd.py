"""`cairn find PATTERN...`: search every snapshot for files by name or path."""

from __future__ import annotations

import json
from datetime import datetime

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.entries import listing, long_line, write_line
from cairn.cli.output import local_time
from cairn.ops import access
from cairn.ops.find import FindGroup, FindOptions, find
from cairn.ops.snapshots import SnapshotFilter


def _time_ns(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """ISO 8601 or ``YYYY-MM-DD[ HH:MM[:SS]]``; without a zone, the local one."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time: use YYYY-MM-DD or YYYY-MM-DD HH:MM:SS") from None
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


@click.command("find")
@global_options
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@click.option("-s", "--snapshot", "snapshots", multiple=True, metavar="ID",
              help="Search only this snapshot (an id prefix or 'latest'; repeatable).")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only snapshots of HOST (repeatable).")
@click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]",
              help="Only snapshots with these tags; 'a,b' needs both, repeating means either.")
@click.option("--path", "paths", multiple=True, metavar="PATH", help="Only snapshots that include PATH (repeatable).")
@click.option("-i", "--ignore-case", is_flag=True, help="Match letters regardless of case.")
@click.option("--newer", callback=_time_ns, metavar="TIME", help="Only entries modified at or after TIME.")
@click.option("--older", callback=_time_ns, metavar="TIME", help="Only entries modified before TIME.")
@pass_state
def command(
    state: State, patterns: tuple[str, ...], snapshots: tuple[str, ...], hosts: tuple[str, ...],
    tags: tuple[str, ...], paths: tuple[str, ...], ignore_case: bool, newer: int | None, older: int | None,
) -> None:
    """Find files and folders in snapshots by name.

    A PATTERN without '/' matches names ('*.jpg', 'notes-202?.txt'); with '/', whole paths
    ('/home/*/notes.txt' from the root, 'docs/*.txt' at any depth). '*' and '?' stay within
    one name, '**' crosses folders. Any pattern may match.

    Matches are printed per snapshot, oldest first, in `ls -l` format. With --json: a list with
    one object per snapshot that has matches: {"snapshot": {...}, "hits": N, "matches": [entry,
    ...]}, each entry as `cairn ls --json` prints it.
    """
    repo = access.open_repository(state.selection())
    out = state.output
    options = FindOptions(
        patterns=list(patterns), snapshots=list(snapshots), filter=SnapshotFilter(list(hosts), list(tags), list(paths)),
        ignore_case=ignore_case, newer_ns=newer, older_ns=older,
    )
    groups = 0

    def on_group(group: FindGroup) -> None:
        nonlocal groups
        info = group.snapshot
        if out.json_mode:
            data = {"snapshot": info.to_json(), "hits": len(group.matches),
                    "matches": [m.to_json() for m in group.matches]}
            write_line(("[" if not groups else ",") + json.dumps(data, ensure_ascii=False))
        else:
            if groups:
                write_line("")
            write_line(f"snapshot {info.short_id} of {', '.join(info.paths)} at {local_time(info.time)} ({info.host}):")
            for entry in group.matches:
                write_line(long_line(entry))
        groups += 1

    with listing():
        result = find(repo, options, on_group)
        if out.json_mode:
            write_line("]" if groups else "[]")
        elif not out.quiet:
            write_line(f"{result.hits:,} matches in {groups} of {result.snapshots} snapshots")
