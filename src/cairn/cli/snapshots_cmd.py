"""`cairn snapshots`: list snapshots, newest last."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import local_time
from cairn.ops import access
from cairn.ops.snapshots import SnapshotFilter, list_snapshots


@click.command("snapshots")
@global_options
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only snapshots of HOST (repeatable).")
@click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]",
              help="Only snapshots with these tags; 'a,b' needs both, repeating means either.")
@click.option("--path", "paths", multiple=True, metavar="PATH", help="Only snapshots that include PATH (repeatable).")
@pass_state
def command(state: State, hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...]) -> None:
    """List the snapshots in the repository."""
    repo = access.open_repository(state.selection())
    snaps = list_snapshots(repo, SnapshotFilter(list(hosts), list(tags), list(paths)))
    out = state.output
    if out.json_mode:
        out.json([s.to_json() for s in snaps])
        return
    if not snaps:
        out.result("no snapshots")
        return
    rows = [
        [s.short_id, local_time(s.time), s.host, ",".join(s.tags), "\n".join(s.paths), s.kind] for s in snaps
    ]
    out.table(["ID", "time", "host", "tags", "paths", "kind"], rows, footer=f"{len(snaps)} snapshots")
