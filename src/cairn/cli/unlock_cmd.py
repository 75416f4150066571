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
    30 minutes. A storage credential that may not delete (append-only) cannot remove locks:
    stale ones block nobody anyway; run unlock where the credential may delete.
    """
    repo = access.open_repository(state.selection())
    result = unlock(repo, UnlockOptions(remove_all=remove_all))
    out = state.output
    if out.json_mode:
        refused = [{**jsonable(lock), "error": error.message} for lock, error in result.refused]
        out.json({"removed": jsonable(result.removed), "kept": jsonable(result.kept), "refused": refused})
    else:
        for lock in result.removed:
            out.result(f"removed {lock.describe()}")
        for lock in result.kept:
            out.result(f"kept {lock.describe()} (still alive; --remove-all removes it)")
        for lock, _ in result.refused:
            out.result(f"could not remove {lock.describe()}")
        if not result.removed and not result.refused:
            out.result("no stale locks")
    if not result.refused:
        return
    error = result.refused[0][1]
    live = [lock for lock, _ in result.refused if not lock.is_stale()]
    advice = "run 'cairn unlock' with a storage credential that may delete (an append-only credential cannot)"
    if live:
        # The user asked to remove a lock that still blocks others, and it is still there.
        raise type(error)(f"{len(live)} live locks could not be removed: {error.message}; {advice}")
    out.warn(f"the storage refused to delete {len(result.refused)} stale locks ({error.message}); "
             f"stale locks block nobody; {advice}")
