"""`cairn cat KIND [ID]`: print one repository object decrypted, as JSON (a blob: its raw bytes)."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.ops import access
from cairn.ops.cat import KINDS, CatOptions, cat


@click.command("cat")
@global_options
@click.argument("kind", type=click.Choice(KINDS), metavar="|".join(KINDS))
@click.argument("object_id", required=False, metavar="[ID]")
@pass_state
def command(state: State, kind: str, object_id: str | None) -> None:
    """Show a raw repository object.

    KIND is config (no ID), or index, snapshot, blob, key, pack or lock with an ID.

    IDs may be shortened to a unique prefix (a blob needs its full id). Output is JSON with
    bytes in hex, except for a blob, whose plaintext is written as is.
    """
    repo = access.open_repository(state.selection())
    result = cat(repo, CatOptions(kind, object_id))
    if result.raw is not None:
        state.output.raw(result.raw)
    else:
        state.output.json(result.data)
