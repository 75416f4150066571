"""`cairn restore SNAPSHOT[:PATH] --target DIR`: bring files back."""

from __future__ import annotations

from typing import Any

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import Output, human_duration, human_size
from cairn.errors import CairnError, PartialSuccess
from cairn.ops import access

OVERWRITE = ("always", "if-changed", "if-newer", "never")


def _report(out: Output, result: Any, target: str) -> None:
    """Name every file that was skipped or failed, then the summary (JSON or one line)."""
    for note in result.notes:
        out.notice(f"cairn: note: {note}")
    for path, reason in result.warnings:
        out.warn(f"{path}: {reason}")
    for path, reason in result.skipped:
        out.warn(f"not restored {path}: {reason}")
    for path, reason in result.errors:
        out.warn(f"failed {path}: {reason}")
    if out.json_mode:
        out.json({
            "target": target, "files": result.files, "dirs": result.dirs, "unchanged": result.unchanged,
            "specials": result.specials, "links": result.links, "deleted": result.deleted,
            "verified": result.verified, "bytes_written": result.bytes_written,
            "bytes_on_disk": result.bytes_on_disk, "duration": result.duration,
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
            "errors": [{"path": p, "reason": r} for p, r in result.errors],
            "warnings": [{"path": p, "reason": r} for p, r in result.warnings],
            "counts": result.counts, "notes": result.notes,
        })
        return
    extra = [f"{n:,} {what}" for n, what in [
        (result.unchanged, "unchanged"), (result.specials, "links/fifos/devices"),
        (result.links, "hard links"), (result.deleted, "deleted"), (result.verified, "verified"),
        (result.counts.get("skipped", 0), "not restored"), (result.counts.get("errors", 0), "FAILED"),
    ] if n]
    out.result(
        f"restored {result.files:,} files, {result.dirs:,} folders, {human_size(result.bytes_written)} "
        f"into {target} in {human_duration(result.duration)}" + (f" ({', '.join(extra)})" if extra else "")
    )


@click.command("restore")
@global_options
@click.argument("snapshot", metavar="SNAPSHOT[:PATH]")
@click.option("--target", "-t", required=True, type=click.Path(), metavar="DIR", help="Folder to restore into.")
@click.option("--include", "-i", multiple=True, metavar="PATTERN",
              help="Restore only paths matching PATTERN (glob, ** for any depth; repeatable).")
@click.option("--exclude", "-e", multiple=True, metavar="PATTERN", help="Do not restore paths matching PATTERN.")
@click.option("--overwrite", type=click.Choice(OVERWRITE), default="always", show_default=True,
              help="What to do with files already in the target: always (keep only what is equal), "
              "if-changed (trust equal size and mtime), if-newer, never.")
@click.option("--delete", is_flag=True, help="Remove files in the target that the snapshot does not have.")
@click.option("--verify", is_flag=True, help="Read each restored file back and compare it with the snapshot.")
@pass_state
def command(state: State, snapshot: str, target: str, include: tuple[str, ...], exclude: tuple[str, ...],
            overwrite: str, delete: bool, verify: bool) -> None:
    """Restore files from a snapshot.

    SNAPSHOT is an id prefix or 'latest'; with :PATH only that file or folder is restored (a
    folder's content lands in DIR). Patterns match paths inside the snapshot. Running the same
    command again after an interruption finishes the job without rewriting complete files.
    Exits with 3 if some files could not be restored, each named in a warning.
    """
    from cairn.ops.restore import RestoreOptions, restore  # imported late: the files layer is heavy

    repo = access.open_repository(state.selection())
    out = state.output
    options = RestoreOptions(snapshot=snapshot, target=target, include=list(include), exclude=list(exclude),
                             overwrite=overwrite, delete=delete, verify=verify)
    try:
        with out.progress("restoring") as progress:
            # No display, no callback: the restore then skips its side walk of every tree that
            # only adds up the progress bar's total (a second read of all the trees).
            result = restore(repo, options, progress=progress if progress.enabled else None)
    except CairnError as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:
            _report(out, partial, target)
        raise
    _report(out, result, target)
    if result.skipped:
        raise PartialSuccess(f"{result.counts.get('skipped', len(result.skipped))} item(s) could not be restored")
