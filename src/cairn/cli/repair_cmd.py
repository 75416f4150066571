"""`cairn repair index` and `cairn repair snapshots`."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.ops import access


@click.group("repair")
def command() -> None:
    """Rebuild the index, or save snapshots without the data they lost."""


@command.command("index")
@global_options
@pass_state
def index_command(state: State) -> None:
    """Rebuild the index from the pack headers alone (takes an exclusive lock)."""
    from cairn.ops.repair import repair_index

    result = repair_index(access.open_repository(state.selection()))
    out = state.output
    for problem in result.damaged_packs:
        out.warn(f"{problem}: left out of the index")
    if out.json_mode:
        out.json(result.to_json())
    else:
        out.result(f"indexed {result.blobs:,} blobs in {result.packs:,} packs; "
                   f"replaced {result.removed_indexes:,} index objects")


@command.command("snapshots")
@global_options
@click.option("--forget", is_flag=True, help="Delete each damaged snapshot once its repaired copy is saved.")
@click.option("-n", "--dry-run", is_flag=True, help="Only report what is damaged.")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@pass_state
def snapshots_command(state: State, forget: bool, dry_run: bool, snapshot_ids: tuple[str, ...]) -> None:
    """Save new snapshots without references to lost data.

    A file that lost data keeps what is left and is renamed NAME.damaged; a lost folder becomes
    empty. The new snapshot is tagged 'repaired' and lists the damaged paths.
    """
    from cairn.ops.repair import RepairSnapshotsOptions, repair_snapshots

    result = repair_snapshots(access.open_repository(state.selection()),
                              RepairSnapshotsOptions(snapshots=snapshot_ids, forget=forget, dry_run=dry_run))
    out = state.output
    for problem in result.images:
        out.warn(f"{problem} (image snapshots are not rewritten)")
    if out.json_mode:
        out.json(result.to_json())
        return
    for item in result.repaired:
        target = f"-> {item.new_id[:8]}" if item.new_id else "(dry run)"
        out.result(f"snapshot {item.old_id[:8]} {target}: {len(item.damaged)} damaged: {', '.join(item.damaged[:5])}")
    out.result(f"{len(result.repaired)} snapshots repaired, {result.intact} intact")
