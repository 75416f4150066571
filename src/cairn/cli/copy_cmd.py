"""`cairn copy --from-repo LOCATION`: copy snapshots from another repository into this one."""

from __future__ import annotations

import getpass
import os
import sys

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import human_size, is_terminal
from cairn.cli.snapshots_cmd import filter_options, make_filter
from cairn.errors import RepositoryNotFound, UsageError
from cairn.ops import access
from cairn.repo.repository import Repository

ENV_FROM_PASSWORD = "CAIRN_FROM_PASSWORD"
ENV_FROM_PASSWORD_FILE = "CAIRN_FROM_PASSWORD_FILE"


def source_password(location: str, password_file: str | None, password_command: str | None) -> bytes:
    """The source's password; never taken from the destination's $CAIRN_PASSWORD and friends."""
    if not (password_file or password_command) and os.environ.get(ENV_FROM_PASSWORD):
        return os.fsencode(os.environ[ENV_FROM_PASSWORD])
    password_file = password_file or (None if password_command else os.environ.get(ENV_FROM_PASSWORD_FILE))
    if password_file or password_command:
        return access.read_password(access.RepoSelection(location, password_file, password_command), location)
    if is_terminal(sys.stdin):
        return os.fsencode(getpass.getpass(f"password for {location} (the source): "))
    raise UsageError(
        "no password for the source repository: use --from-password-file, --from-password-command, "
        f"${ENV_FROM_PASSWORD} or ${ENV_FROM_PASSWORD_FILE}"
    )


def open_source(location: str, password_file: str | None, password_command: str | None,
                connections: int | None = None, cache: bool = True) -> Repository:
    backend = access.open_backend(location, connections=connections, cache=cache)
    try:
        if not Repository.probe(backend):
            raise RepositoryNotFound(f"no repository at {location} (the source)")
        return Repository.open(backend, source_password(location, password_file, password_command))
    except BaseException:
        backend.close()
        raise


@click.command("copy")
@global_options
@click.option("--from-repo", required=True, metavar="LOCATION", help="The repository to copy snapshots from.")
@click.option("--from-password-file", metavar="FILE", help=f"Its password, from FILE (also ${ENV_FROM_PASSWORD_FILE}).")
@click.option("--from-password-command", metavar="COMMAND", help="Its password, printed by COMMAND.")
@filter_options
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@pass_state
def command(state: State, from_repo: str, from_password_file: str | None, from_password_command: str | None,
            hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...], kinds: tuple[str, ...],
            snapshot_ids: tuple[str, ...]) -> None:
    """Copy snapshots (the given ones, else all the filters pass) from another repository.

    Only blobs this repository lacks are uploaded; snapshots copied before are skipped, so
    running it again copies only what is new.
    """
    from cairn.ops.copy import CopyOptions, copy

    selection = state.selection()
    src = open_source(from_repo, from_password_file, from_password_command, selection.connections,
                      cache=not state.no_cache)
    dst = access.open_repository(selection)
    result = copy(src, dst, CopyOptions(snapshots=snapshot_ids, filter=make_filter(hosts, tags, paths, kinds)))
    out = state.output
    if out.json_mode:
        out.json(result.to_json())
        return
    for source, destination in result.copied:
        out.result(f"copied snapshot {source[:8]} -> {destination[:8]}")
    out.result(f"{len(result.copied)} copied, {result.skipped} already there; "
               f"uploaded {result.blobs_new:,} new blobs ({human_size(result.bytes_new)})")
