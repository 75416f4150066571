"""`cairn unlock`: remove locks left by processes that died."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.ops import access
from cairn.ops.cat import jsonable
from cairn.ops.unlock import UnlockOptions, unlock


@click.command("unlock")
@global_options
@click.option("--remove-all", is_flag=True, help="Remove every lock, also those of processes that may still run.")
@pass_state
def command(state: State, remove_all: bool) -> None:
    """Remove stale locks.

    A lock is stale when its process on this host is gone, or it was not refreshed for
    30 minutes.
    """
    repo = access.open_repository(state.selection())
    result = unlock(repo, UnlockOptions(remove_all=remove_all))
    out = state.output
    if out.json_mode:
        out.json({"removed": jsonable(result.removed), "kept": jsonable(result.kept)})
        return
    for lock in result.removed:
        out.result(f"removed {lock.describe()}")
    for lock in result.kept:
        out.result(f"kept {lock.describe()} (still alive; --remove-all removes it)")
    if not result.removed:
        out.result("no stale locks")
