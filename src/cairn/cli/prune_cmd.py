"""`cairn prune`: reclaim the space of data no snapshot needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import Output, human_size
from cairn.errors import UsageError
from cairn.ops import access
from cairn.policy.repack import Limit, PruneOptions, parse_size

F = TypeVar("F", bound=Callable[..., Any])


def prune_options(f: F) -> F:
    """--max-unused and --max-repack-size: shared by prune and forget --prune."""
    f = click.option("--max-repack-size", metavar="SIZE", default=None,
                     help="Copy at most SIZE of used data out of partly used packs in one run (e.g. 2G).")(f)
    f = click.option("--max-unused", metavar="LIMIT", default="5%", show_default=True,
                     help="Leave up to this much unused data rather than repack it: a share "
                     "of the repository (5%), a size (500M), or 'unlimited'.")(f)
    return f


def build_options(max_unused: str, max_repack_size: str | None, dry_run: bool) -> PruneOptions:
    try:
        limit = Limit.parse(max_unused)
        repack = parse_size(max_repack_size) if max_repack_size is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return PruneOptions(max_unused=limit, max_repack_size=repack, dry_run=dry_run)


def show(out: Output, result: Any) -> None:
    if out.json_mode:
        out.json(result.to_json())
        return
    verb = "would" if result.dry_run else "will"
    out.result(
        f"{result.snapshots:,} snapshots use {result.used_blobs:,} of {result.blobs:,} blobs; "
        f"{human_size(result.unused_bytes)} of {human_size(result.stored_bytes)} in {result.packs:,} packs is unused"
    )
    out.result(
        f"{verb} drop {result.packs_dropped:,} unused packs, repack {result.packs_repacked:,} "
        f"(copying {human_size(result.repacked_bytes)}), remove {result.leftover_packs:,} leftover packs; "
        f"{human_size(result.unused_left)} unused left in place"
    )
    if result.reindexed_packs:
        out.result(f"indexed {result.reindexed_packs:,} packs again that new snapshots need")
    if result.temporaries_removed:
        out.result(f"removed {result.temporaries_removed:,} temporary files that interrupted writes left over a day ago")
    if not result.dry_run:
        out.result(
            f"deleted {result.deleted_packs:,} packs ({human_size(result.deleted_bytes)}) and "
            f"{result.deleted_indexes:,} index objects; wrote {human_size(result.written_bytes)}"
        )
    if result.pending:
        waiting = "; ".join(result.waiting_for) or "other processes"
        out.result(
            f"{result.pending} deletions wait until what ran beside this prune has finished ({waiting}): "
            "the next prune completes them"
        )


def pruned(state: State, repo: Any, options: Any) -> Any:
    """Run prune with a progress display; the `PruneResult`, not printed."""
    from cairn.ops.prune import prune

    with state.output.progress("pruning") as progress:
        return prune(repo, options, progress)


def run_prune(state: State, repo: Any, options: Any) -> None:
    show(state.output, pruned(state, repo, options))


@click.command("prune")
@global_options
@prune_options
@click.option("-n", "--dry-run", is_flag=True, help="Only say what would be done.")
@pass_state
def command(state: State, max_unused: str, max_repack_size: str | None, dry_run: bool) -> None:
    """Delete data that no snapshot needs.

    Runs beside backups from any host: nothing a running backup may still use is deleted
    (such deletions wait for the next prune).
    """
    options = build_options(max_unused, max_repack_size, dry_run)
    run_prune(state, access.open_repository(state.selection()), options)
