"""`cairn restore SNAPSHOT[:PATH] --target DIR`: bring files back."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import human_duration, human_size
from cairn.errors import PartialSuccess
from cairn.ops import access


@click.command("restore")
@global_options
@click.argument("snapshot", metavar="SNAPSHOT[:PATH]")
@click.option("--target", required=True, type=click.Path(), metavar="DIR", help="Folder to restore into.")
@pass_state
def command(state: State, snapshot: str, target: str) -> None:
    """Restore files from a snapshot.

    SNAPSHOT is an id prefix or 'latest'; with :PATH only that file or folder is restored.
    """
    from cairn.ops.restore import RestoreOptions, restore  # imported late: the files layer is heavy

    repo = access.open_repository(state.selection())
    out = state.output
    with out.progress("restoring") as progress:
        result = restore(repo, RestoreOptions(snapshot=snapshot, target=target), progress=progress)
    skipped = list(getattr(result, "skipped", []))
    for path, reason in skipped:
        out.warn(f"not restored {path}: {reason}")
    if out.json_mode:
        out.json({
            "target": target, "files": result.files, "dirs": result.dirs, "bytes_written": result.bytes_written,
            "duration": result.duration, "skipped": [{"path": p, "reason": r} for p, r in skipped],
        })
    else:
        out.result(
            f"restored {result.files:,} files, {result.dirs:,} folders, {human_size(result.bytes_written)} "
            f"into {target} in {human_duration(result.duration)}"
        )
    if skipped:
        raise PartialSuccess(f"{len(skipped)} item(s) could not be restored")
