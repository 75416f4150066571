"""`cairn diff SNAP1 SNAP2`: what changed from one snapshot to another."""

from __future__ import annotations

import dataclasses

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.entries import listing, write_json_line, write_line
from cairn.cli.output import human_size
from cairn.ops import access
from cairn.ops.browse import Entry
from cairn.ops.diff import METADATA, TYPE, Change, DiffOptions, DiffStats, diff


def _human_line(change: Change) -> str:
    path = Entry(change.path, change.node).display_path
    if change.node.type == "dir" and change.kind != TYPE:
        path += "/"
    line = f"{change.kind}    {path}"
    if change.kind in (METADATA, TYPE) and change.fields:
        line += f"  ({', '.join(change.fields)})"
    return line


def _json_change(change: Change) -> dict[str, object]:
    data = {"message_type": "change", "modifier": change.kind, **_path_only(change)}
    data["type"] = change.node.type
    if change.before is not None and change.after is not None:
        data["fields"] = list(change.fields)
        data["before"] = Entry(change.path, change.before).to_json()
        data["after"] = Entry(change.path, change.after).to_json()
    return data


def _path_only(change: Change) -> dict[str, object]:
    full = Entry(change.path, change.node).to_json()
    return {k: full[k] for k in ("path", "path_hex") if k in full}


def _summary(s: DiffStats) -> list[str]:
    return [
        f"Files:         {s.files_added:>8,} new, {s.files_removed:>8,} removed, {s.modified:>8,} changed",
        f"Dirs:          {s.dirs_added:>8,} new, {s.dirs_removed:>8,} removed",
        f"Others:        {s.others_added:>8,} new, {s.others_removed:>8,} removed",
        f"Metadata only: {s.metadata_changed:>8,} changed",
        f"Type changed:  {s.type_changed:>8,}",
        f"Added:   {human_size(s.bytes_added)}",
        f"Removed: {human_size(s.bytes_removed)}",
    ]


@click.command("diff")
@global_options
@click.argument("before", metavar="SNAPSHOT1[:PATH]")
@click.argument("after", metavar="SNAPSHOT2[:PATH]")
@click.option("--metadata/--no-metadata", default=True, show_default=True,
              help="List entries whose metadata alone changed (U); they are counted either way.")
@pass_state
def command(state: State, before: str, after: str, metadata: bool) -> None:
    """Show what changed between two snapshots.

    One line per change: '+' added, '-' removed, 'M' content changed, 'U' metadata only
    (mode, owner, mtime, xattrs...; the changed fields in parentheses), 'T' type changed.
    Folders end in '/'. A summary follows: entries added, removed and changed, and the bytes
    of the file versions added and removed (a changed file counts on both sides).

    With --json: one JSON object per line, each change as {"message_type": "change",
    "modifier": "+", "path": ...} (with "fields", "before" and "after" when both sides have
    the entry), then {"message_type": "statistics", ...}.
    """
    repo = access.open_repository(state.selection())
    out = state.output

    def on_change(change: Change) -> None:
        if out.json_mode:
            if metadata or change.kind != METADATA:
                write_json_line(_json_change(change))
        elif metadata or change.kind != METADATA:
            write_line(_human_line(change))

    with listing():
        result = diff(repo, DiffOptions(before, after), on_change)
        if out.json_mode:
            write_json_line({"message_type": "statistics", "before": result.before.id, "after": result.after.id,
                             **dataclasses.asdict(result.stats)})
        elif not out.quiet:
            write_line(f"\ncompared snapshot {result.before.short_id} to {result.after.short_id}:")
            for line in _summary(result.stats):
                write_line(line)
