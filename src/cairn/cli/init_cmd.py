"""`cairn init`: create a repository."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.kdf import ADVANCED_HELP, kdf_options, kdf_params
from cairn.cli.notices import password_notice
from cairn.ops import access
from cairn.ops.init import InitOptions


@click.command("init", epilog=ADVANCED_HELP)
@global_options
@kdf_options
@click.option(
    "--append-only", is_flag=True,
    help="Refuse forget, prune, tag and key removal from any client (see docs/RETENTION.md).",
)
@pass_state
def command(state: State, kdf_iterations: int, kdf_memory_kib: int, kdf_lanes: int, append_only: bool) -> None:
    """Create a repository.

    At -r LOCATION, else $CAIRN_REPOSITORY, else the default location.
    """
    options = InitOptions(kdf=kdf_params(kdf_iterations, kdf_memory_kib, kdf_lanes), append_only=append_only)
    result = access.create_repository(state.selection(), options)
    out = state.output
    if out.json_mode:
        out.json(result.to_json())
    else:
        out.result(f"created repository {result.repository_id[:8]} at {result.location}")
    out.notice(password_notice())  # on stderr, so even scripts' logs carry it
