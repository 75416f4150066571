"""`cairn backup PATH...`: save files and folders as a new snapshot."""

from __future__ import annotations

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.notices import created_default_notice
from cairn.cli.output import human_duration, human_size
from cairn.errors import PartialSuccess
from cairn.ops import access


def _split_tags(values: tuple[str, ...]) -> list[str]:
    return [t for value in values for t in value.split(",") if t]


@click.command("backup")
@global_options
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="PATH...")
@click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]", help="Tag the snapshot (repeatable).")
@click.option("--host", metavar="HOST", help="Record HOST instead of this machine's name.")
@click.option("--dry-run", is_flag=True, help="Read everything and report what would be added; save nothing.")
@pass_state
def command(state: State, paths: tuple[str, ...], tags: tuple[str, ...], host: str | None, dry_run: bool) -> None:
    """Back up files and folders.

    Each run saves PATHs as a new snapshot. Without -r or $CAIRN_REPOSITORY the default
    repository is used, and created on first use. Exits with 3 if some files could not be
    read (the snapshot is saved without them).
    """
    from cairn.ops.backup import BackupOptions, backup  # imported late: the files layer is heavy

    out = state.output
    repo, created = access.ensure_repository(state.selection(), create_default=not dry_run)
    location = repo.backend.properties.location
    if created:
        out.notice(created_default_notice(location))
    options = BackupOptions(paths=list(paths), host=host, tags=_split_tags(tags), dry_run=dry_run)
    with out.progress("backing up") as progress:
        result = backup(repo, options, progress=progress)
    for path, reason in result.skipped:
        out.warn(f"skipped {path}: {reason}")
    snapshot = result.snapshot_id.hex() if result.snapshot_id else None
    if out.json_mode:
        out.json({
            "snapshot_id": snapshot, "dry_run": dry_run, "repository": location, "repository_created": created,
            "files": result.files, "dirs": result.dirs, "bytes_read": result.bytes_read,
            "bytes_added": result.bytes_added, "duration": result.duration,
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
        })
    else:
        head = f"snapshot {snapshot[:8]} saved" if snapshot else "dry run: nothing saved"
        out.result(
            f"{head}: {result.files:,} files, {result.dirs:,} folders, {human_size(result.bytes_read)} read, "
            f"{human_size(result.bytes_added)} added in {human_duration(result.duration)}"
        )
    if result.skipped:
        raise PartialSuccess(
            f"{len(result.skipped)} item(s) could not be read and were left out of the snapshot"
        )
