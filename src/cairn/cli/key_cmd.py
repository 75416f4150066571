"""`cairn key list|add|passwd|remove`: the passwords that open a repository."""

from __future__ import annotations

from datetime import datetime

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.kdf import ADVANCED_HELP, kdf_options, kdf_params
from cairn.cli.output import human_size, local_time
from cairn.ops import access
from cairn.ops import keys as keys_ops
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository


@click.group("key")
def command() -> None:
    """Manage the passwords (keys) that open the repository."""


@command.command("list")
@global_options
@pass_state
def list_command(state: State) -> None:
    """List the keys.

    The key opened by the given password is marked with '*'.
    """
    repo = access.open_repository(state.selection())
    entries = keys_ops.list_keys(repo)
    out = state.output
    if out.json_mode:
        out.json([e.to_json() for e in entries])
        return
    rows = [
        [
            ("*" if e.current else " ") + e.id[:8],
            f"{e.user}@{e.host}",
            local_time(datetime.fromtimestamp(e.created_ns / 1e9).astimezone()),
            f"argon2id t={e.kdf.iterations} m={human_size(e.kdf.memory_kib * 1024)} p={e.kdf.lanes}",
        ]
        for e in entries
    ]
    out.table(["ID", "user", "created", "key derivation"], rows, footer=f"{len(entries)} keys")


NEW_PASSWORD_FILE = click.option(
    "--new-password-file", metavar="FILE", help="Read the new password from FILE (else asked twice on the terminal)."
)


def _new_key(state: State, new_password_file: str | None, kdf: KdfParams) -> tuple[Repository, keys_ops.AddKeyOptions]:
    """Open the repository, then read the new password: a typo in -r never costs a prompt."""
    selection = state.selection()
    repo = access.open_repository(selection)
    return repo, keys_ops.AddKeyOptions(access.read_key_password(selection, new_password_file), kdf)


@command.command("add", epilog=ADVANCED_HELP)
@global_options
@NEW_PASSWORD_FILE
@kdf_options
@pass_state
def add_command(
    state: State, new_password_file: str | None, kdf_iterations: int, kdf_memory_kib: int, kdf_lanes: int
) -> None:
    """Add another password.

    The current password keeps working.
    """
    repo, options = _new_key(state, new_password_file, kdf_params(kdf_iterations, kdf_memory_kib, kdf_lanes))
    key_id = keys_ops.add_key(repo, options)
    out = state.output
    if out.json_mode:
        out.json({"key_id": key_id})
    else:
        out.result(f"added key {key_id[:8]}")


@command.command("passwd", epilog=ADVANCED_HELP)
@global_options
@NEW_PASSWORD_FILE
@kdf_options
@pass_state
def passwd_command(
    state: State, new_password_file: str | None, kdf_iterations: int, kdf_memory_kib: int, kdf_lanes: int
) -> None:
    """Change the password in use.

    Adds a key for the new password, then removes the key of the old one.
    """
    repo, options = _new_key(state, new_password_file, kdf_params(kdf_iterations, kdf_memory_kib, kdf_lanes))
    change = keys_ops.change_password(repo, options)
    out = state.output
    if out.json_mode:
        out.json({"new_key_id": change.new_key_id, "removed_key_id": change.removed_key_id})
    else:
        out.result(f"password changed: key {change.new_key_id[:8]} replaces key {change.removed_key_id[:8]}")


@command.command("remove")
@global_options
@click.argument("key_id")
@pass_state
def remove_command(state: State, key_id: str) -> None:
    """Remove a key.

    KEY_ID is an id prefix from 'cairn key list'; the key in use cannot be removed.
    """
    repo = access.open_repository(state.selection())
    removed = keys_ops.remove_key(repo, key_id)
    out = state.output
    if out.json_mode:
        out.json({"removed_key_id": removed})
    else:
        out.result(f"removed key {removed[:8]}")
