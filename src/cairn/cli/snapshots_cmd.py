"""`cairn snapshots`: list snapshots, newest last, optionally filtered and grouped."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import local_time
from cairn.errors import UsageError
from cairn.ops import access
from cairn.ops.snapshots import SnapshotFilter, SnapshotInfo, group, list_snapshots
from cairn.policy.retention import parse_group_by


def filter_options(f):  # type: ignore[no-untyped-def]
    """--host, --tag, --path, --kind: shared by snapshots, forget, stats and copy."""
    for option in reversed(
        [
            click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only snapshots of HOST (repeatable)."),
            click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]",
                         help="Only snapshots with these tags; 'a,b' needs both, repeating means either."),
            click.option("--path", "paths", multiple=True, metavar="PATH",
                         help="Only snapshots that include PATH (repeatable)."),
            click.option("--kind", "kinds", multiple=True, type=click.Choice(["files", "image"]),
                         help="Only file snapshots or only system images."),
        ]
    ):
        f = option(f)
    return f


def make_filter(hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...], kinds: tuple[str, ...]) -> SnapshotFilter:
    return SnapshotFilter(list(hosts), list(tags), list(paths), list(kinds))


def parse_groups(text: str) -> tuple[str, ...]:
    try:
        return parse_group_by(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _rows(snaps: list[SnapshotInfo]) -> list[list[str]]:
    return [[s.short_id, local_time(s.time), s.host, ",".join(s.tags), "\n".join(s.paths), s.kind] for s in snaps]


@click.command("snapshots")
@global_options
@filter_options
@click.option("--group-by", "group_by", metavar="FIELDS", default=None,
              help="Group by any of host, paths, tags (comma-separated), as forget does.")
@click.option("--latest", type=click.IntRange(min=0), metavar="N", default=None,
              help="Only the newest N snapshots of each group (of each host and paths without --group-by).")
@pass_state
def command(
    state: State, hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...], kinds: tuple[str, ...],
    group_by: str | None, latest: int | None,
) -> None:
    """List the snapshots in the repository."""
    repo = access.open_repository(state.selection())
    snaps = list_snapshots(repo, make_filter(hosts, tags, paths, kinds))
    fields = parse_groups(group_by if group_by is not None else "host,paths")
    groups = group(snaps, fields, latest)
    out = state.output
    if group_by is None:
        flat = sorted((s for _, members in groups for s in members), key=lambda s: s.time)
        if out.json_mode:
            out.json([s.to_json() for s in flat])
        elif not flat:
            out.result("no snapshots")
        else:
            out.table(["ID", "time", "host", "tags", "paths", "kind"], _rows(flat), footer=f"{len(flat)} snapshots")
        return
    if out.json_mode:
        out.json([{"group": key.to_json(), "snapshots": [s.to_json() for s in members]} for key, members in groups])
        return
    if not groups:
        out.result("no snapshots")
    for key, members in groups:
        out.result(f"snapshots for {key.describe()}:")
        out.table(["ID", "time", "host", "tags", "paths", "kind"], _rows(members), footer=f"{len(members)} snapshots\n")
