"""`cairn ls SNAPSHOT[:PATH] [PATH...]`: list what a snapshot holds."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.entries import listing, long_line, write_json_line, write_line
from cairn.ops import access
from cairn.ops.browse import Entry
from cairn.ops.ls import LsOptions, ls
from cairn.ops.snapshots import SnapshotInfo


@click.command("ls")
@global_options
@click.argument("snapshot", metavar="SNAPSHOT[:PATH]")
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.option("-l", "--long", "long_format", is_flag=True,
              help="Show mode, owner, group, size and modification time too.")
@click.option("--recursive/--no-recursive", default=True, show_default=True,
              help="List everything below each folder, or only its own entries.")
@pass_state
def command(state: State, snapshot: str, paths: tuple[str, ...], long_format: bool, recursive: bool) -> None:
    """List files and folders in a snapshot.

    SNAPSHOT is an id prefix or 'latest'; SNAPSHOT:PATH or PATH lists only that file or folder
    (a folder with everything below it). Paths are absolute inside the snapshot, one per line;
    bytes that are not UTF-8 and control characters are shown escaped (\\xNN, \\n), a backslash
    as \\\\.

    With --json: one JSON object per line, the snapshot first ("struct_type": "snapshot"), then
    one per entry ("struct_type": "node") with all its metadata, times both as ISO 8601 and in
    nanoseconds; a name that is not UTF-8 also comes as "path_hex", its exact bytes.
    """
    repo = access.open_repository(state.selection())
    json_mode = state.output.json_mode

    def on_snapshot(info: SnapshotInfo) -> None:
        if json_mode:
            write_json_line({"struct_type": "snapshot", **info.to_json()})

    def on_entry(entry: Entry) -> None:
        if json_mode:
            write_json_line({"struct_type": "node", **entry.to_json()})
        elif long_format:
            write_line(long_line(entry))
        else:
            write_line(entry.display_path)

    with listing():
        ls(repo, LsOptions(snapshot, list(paths), recursive), on_entry, on_snapshot)
