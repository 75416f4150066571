"""The `cairn` command: parse, dispatch, and turn every failure into one line and an exit code.

Error handling lives here and only here: a `CairnError` becomes ``cairn: <message>`` on stderr
and its class's exit code (docs/EXIT_CODES.md), without a traceback unless --debug; Ctrl-C
becomes exit 130; anything else is a bug and keeps its traceback so it can be reported.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Any

import click

from cairn import __version__
from cairn.cli.context import State, global_options
from cairn.errors import CairnError, Interrupted

# Each command's module is imported only when that command runs (or --help lists them all): a
# command should not pay, in start-up time and above all in resident memory, for the libraries
# of the others (the image commands' pytsk3, prune's planning, backup's chunker...). Peak RSS of
# a command is what it holds when Argon2id adds its 64 MiB, so every module not loaded by then
# lowers the peak one for one. Name -> (module under cairn.cli, attribute).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("init_cmd", "command"),
    "backup": ("backup_cmd", "command"),
    "restore": ("restore_cmd", "command"),
    "snapshots": ("snapshots_cmd", "command"),
    "check": ("check_cmd", "command"),
    "key": ("key_cmd", "command"),
    "cat": ("cat_cmd", "command"),
    "unlock": ("unlock_cmd", "command"),
    "ls": ("ls_cmd", "command"),  # browsing: ls, find, diff, dump
    "find": ("find_cmd", "command"),
    "diff": ("diff_cmd", "command"),
    "dump": ("dump_cmd", "command"),
    "forget": ("forget_cmd", "command"),  # snapshot lifecycle
    "prune": ("prune_cmd", "command"),
    "tag": ("tag_cmd", "command"),
    "stats": ("stats_cmd", "command"),
    "copy": ("copy_cmd", "command"),
    "repair": ("repair_cmd", "command"),
    "image": ("image_cmds", "image_command"),
    "image-restore": ("image_cmds", "image_restore_command"),
    "image-ls": ("image_cmds", "image_ls_command"),
    "image-dump": ("image_cmds", "image_dump_command"),
}


class _WarningHandler(logging.Handler):
    """Prints warnings that cairn's layers log (`logging.getLogger("cairn...").warning`) as
    ``cairn: warning: ...`` on stderr, where the CLI's own warnings go. The stream is looked up
    at each record, so it follows whatever stderr is when the warning happens."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"cairn: warning: {record.getMessage()}", err=True)
        except Exception:  # noqa: BLE001 - a warning must never break the command
            self.handleError(record)


_WARNINGS = _WarningHandler()


def _show_warnings() -> None:
    """Install the warning printer once per process (in-process tests invoke many commands)."""
    logger = logging.getLogger("cairn")
    if _WARNINGS not in logger.handlers:
        logger.addHandler(_WARNINGS)


def _fail(message: str, code: int) -> None:
    click.echo(f"cairn: {message}", err=True)
    raise click.exceptions.Exit(code)


class CairnGroup(click.Group):
    """A group that maps exceptions from any subcommand to the documented exit codes, and loads
    each subcommand's module when it is first asked for (see COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module_name, attribute = COMMANDS[cmd_name]
            module = importlib.import_module(f"cairn.cli.{module_name}")
            self.add_command(getattr(module, attribute), cmd_name)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        state = ctx.ensure_object(State)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, BrokenPipeError):
            raise  # BrokenPipeError: the reader of stdout left (`| head`); main() ends quietly
        except CairnError as exc:
            if state.debug:
                traceback.print_exc()
            _fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            if state.debug:
                traceback.print_exc()
            _fail("interrupted; the repository is left consistent, run the command again to continue", Interrupted.exit_code)
        except Exception as exc:
            traceback.print_exc()
            _fail(f"internal error ({type(exc).__name__}: {exc}); this is a bug, please report it", 1)


@click.group(cls=CairnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@global_options
@click.version_option(__version__, "--version", prog_name="cairn")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """cairn: deduplicated, compressed, encrypted backups.

    The password comes from --password-file, --password-command, $CAIRN_PASSWORD,
    $CAIRN_PASSWORD_FILE or $CAIRN_PASSWORD_COMMAND, else a prompt on the terminal.
    Exit codes are listed in docs/EXIT_CODES.md.
    """
    state = ctx.ensure_object(State)
    _show_warnings()
    if state.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        for handler in logging.getLogger().handlers:  # cairn's warnings are printed once, above
            handler.addFilter(lambda r: not (r.name.startswith("cairn") and r.levelno >= logging.WARNING))



def main() -> None:
    """Console-script entry point."""
    # NumPy (the blob index) loads OpenBLAS, which starts a spinning thread per core at import
    # although cairn does no linear algebra: 0.07-0.1 s of CPU per command measured here, and a
    # thread competing with the backup's for the cores. One thread starts none; a user's own
    # setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        cli.main(prog_name="cairn")
    except KeyboardInterrupt:  # before or after a subcommand ran (imports, argument parsing)
        click.echo("cairn: interrupted", err=True)
        sys.exit(Interrupted.exit_code)
    except BrokenPipeError:
        # `cairn snapshots | head`: the reader left; that is not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
