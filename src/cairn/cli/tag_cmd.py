"""`cairn tag`: change the tags of existing snapshots."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.snapshots_cmd import filter_options, make_filter
from cairn.ops import access
from cairn.ops.tag import TagOptions, tag


@click.command("tag")
@global_options
@click.option("--add", multiple=True, metavar="TAG", help="Add TAG (repeatable).")
@click.option("--remove", multiple=True, metavar="TAG", help="Remove TAG (repeatable).")
@click.option("--set", "set_tags", multiple=True, metavar="TAG", help="Replace all tags by these (repeatable).")
@click.option("--clear", is_flag=True, help="Remove every tag (the same as --set with no tag).")
@filter_options
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@pass_state
def command(state: State, add: tuple[str, ...], remove: tuple[str, ...], set_tags: tuple[str, ...], clear: bool,
            hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...], kinds: tuple[str, ...],
            snapshot_ids: tuple[str, ...]) -> None:
    """Add, remove or set tags of snapshots (all that the filters pass when no id is given).

    The data is not touched: each changed snapshot is written anew (its id changes) and
    remembers the id of the first snapshot of its line.
    """
    options = TagOptions(
        add=add, remove=remove, set=set_tags if (set_tags or clear) else None, snapshots=snapshot_ids,
        filter=make_filter(hosts, tags, paths, kinds),
    )
    result = tag(access.open_repository(state.selection()), options)
    out = state.output
    if out.json_mode:
        out.json(result.to_json())
        return
    for change in result.changed:
        out.result(f"{change.old_id[:8]} -> {change.new_id[:8]}: {', '.join(change.tags) or '(no tags)'}")
    out.result(f"changed {len(result.changed)} snapshots, {result.unchanged} unchanged")
