"""`cairn stats`: sizes, deduplication and compression of snapshots."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import human_size
from cairn.cli.snapshots_cmd import filter_options, make_filter
from cairn.ops import access


@click.command("stats")
@global_options
@filter_options
@click.option("--per-snapshot", is_flag=True, help="Also list each snapshot's file count and sizes.")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@pass_state
def command(state: State, hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...],
            kinds: tuple[str, ...], per_snapshot: bool, snapshot_ids: tuple[str, ...]) -> None:
    """Show restore size, stored size, deduplication and compression.

    Of the given snapshots, else of all that the filters pass.
    """
    from cairn.ops.stats import StatsOptions, stats

    result = stats(access.open_repository(state.selection()),
                   StatsOptions(snapshots=snapshot_ids, filter=make_filter(hosts, tags, paths, kinds)))
    out = state.output
    if out.json_mode:
        out.json(result.to_json())
        return
    rows = [
        ["snapshots", f"{len(result.snapshots):,}"],
        ["files", f"{result.files:,}"],
        ["restore size", human_size(result.restore_size)],
        ["data referenced", human_size(result.logical_size)],
        ["unique blobs", f"{result.blobs:,}"],
        ["unique, uncompressed", human_size(result.raw_size)],
        ["stored (compressed, encrypted)", human_size(result.stored_size)],
        ["deduplication ratio", f"{result.dedup_ratio:.2f}x"],
        ["compression ratio", f"{result.compression_ratio:.2f}x"],
        ["repository packs", f"{result.packs:,} ({human_size(result.repository_size)})"],
    ]
    out.table(["", ""], rows)
    if per_snapshot:
        out.table(["ID", "kind", "files", "restore size"],
                  [[s.id[:8], s.kind, f"{s.files:,}", human_size(s.restore_size)] for s in result.snapshots])
