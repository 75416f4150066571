"""`cairn check`: verify that the repository can restore what it claims to hold."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import human_size
from cairn.errors import CheckFailed, UsageError
from cairn.ops import access


def _percent(text: str | None) -> float | None:
    """Parse "10%" or "10"; the range is the operation's to check."""
    if text is None:
        return None
    try:
        return float(text.strip().removesuffix("%"))
    except ValueError:
        raise UsageError(f"--read-data-subset wants a percentage such as 10%, not {text!r}") from None


@click.command("check")
@global_options
@click.option("--read-data", is_flag=True, help="Also read and verify every byte of every pack (slow).")
@click.option("--read-data-subset", metavar="N%", help="Read and verify a random N% of the packs.")
@pass_state
def command(state: State, read_data: bool, read_data_subset: str | None) -> None:
    """Verify the repository.

    Checks the structure, and with --read-data every byte of the data too.

    Exits with 20 if anything is damaged; every problem is printed first.
    """
    from cairn.ops.check import CheckOptions, check  # imported late: only this command needs it

    subset = _percent(read_data_subset)
    repo = access.open_repository(state.selection())
    out = state.output
    with out.progress("checking") as progress:
        result = check(repo, CheckOptions(read_data=read_data, subset_percent=subset), progress)
    warnings = list(getattr(result, "warnings", []))
    for warning in warnings:
        out.warn(warning)
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    if out.json_mode:
        out.json({
            "ok": not result.errors, "errors": list(result.errors), "warnings": warnings, "packs": result.packs,
            "blobs": result.blobs, "snapshots": result.snapshots, "bytes_read": getattr(result, "bytes_read", None),
        })
    else:
        read = getattr(result, "bytes_read", None)
        out.result(
            f"checked {result.snapshots:,} snapshots, {result.packs:,} packs, {result.blobs:,} blobs"
            + (f", read {human_size(read)}" if read else "")
            + (f": {len(result.errors)} errors" if result.errors else ": no errors found")
        )
    if result.errors:
        raise CheckFailed(f"the repository is damaged: {len(result.errors)} error(s) found")
