"""What every command shares: the global options and the state they fill in.

Global options are accepted both before and after the command name (``cairn -r X snapshots`` and
``cairn snapshots -r X``), because users type both; one decorator adds them everywhere and they
all land in one `State`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from cairn.cli.output import Output, is_terminal
from cairn.ops.access import RepoSelection
from cairn.storage.stack import parse_connections

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class State:
    """The parsed global options of one invocation."""

    repo: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    json: bool = False
    debug: bool = False
    quiet: bool = False
    no_cache: bool = False
    connections: str | None = None
    """As typed; checked when a repository is opened, so a bad value is a one-line error."""
    _output: Output | None = field(default=None, repr=False)

    def selection(self) -> RepoSelection:
        return RepoSelection(
            location=self.repo,
            password_file=self.password_file,
            password_command=self.password_command,
            interactive=is_terminal(sys.stdin),
            cache=not self.no_cache,
            connections=parse_connections(self.connections, "--connections") if self.connections else None,
        )

    @property
    def output(self) -> Output:
        if self._output is None:
            self._output = Output(json_mode=self.json, quiet=self.quiet)
        return self._output


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Store a global option given at either level; a default never overrides a given value."""
    if value not in (None, False) and param.name:
        setattr(ctx.ensure_object(State), param.name, value)
    return value


_GLOBAL_OPTIONS = [
    click.option(
        "-r", "--repo", metavar="LOCATION", expose_value=False, callback=_remember,
        help="Repository: a folder, sftp:host:/path, s3:https://endpoint/bucket/prefix or rclone:remote:path "
        "(docs/STORAGE.md; default: $CAIRN_REPOSITORY, else $XDG_DATA_HOME/cairn/repo).",
    ),
    click.option(
        "--password-file", metavar="FILE", expose_value=False, callback=_remember,
        help="Read the password from FILE (also $CAIRN_PASSWORD_FILE; $CAIRN_PASSWORD holds it directly).",
    ),
    click.option(
        "--password-command", metavar="COMMAND", expose_value=False, callback=_remember,
        help="Run COMMAND (no shell) and use what it prints as the password (also $CAIRN_PASSWORD_COMMAND).",
    ),
    click.option(
        "--connections", metavar="N", expose_value=False, callback=_remember,
        help="At most N requests at once to a remote repository (also $CAIRN_CONNECTIONS; "
        "default 4 for SFTP and rclone, 8 for S3).",
    ),
    click.option("--json", is_flag=True, expose_value=False, callback=_remember, help="Print JSON for scripts."),
    click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_remember,
                 help="Print only results, warnings and errors."),
    click.option("--no-cache", is_flag=True, expose_value=False, callback=_remember,
                 help="Use no local copies of a remote repository's index and snapshots (docs/STORAGE.md)."),
    click.option("--debug", is_flag=True, expose_value=False, callback=_remember,
                 help="Show tracebacks of errors."),
]


def global_options(f: F) -> F:
    for option in reversed(_GLOBAL_OPTIONS):
        f = option(f)
    return f


pass_state = click.make_pass_decorator(State, ensure=True)
