"""`cairn image`, `image-restore`, `image-ls` and `image-dump`: thin handlers over ops.image,
ops.image_restore and ops.image_files."""

from __future__ import annotations

import stat
import sys
from datetime import datetime
from typing import TYPE_CHECKING

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.notices import created_default_notice
from cairn.cli.output import BytesProgress, human_duration, human_size, is_terminal
from cairn.errors import CairnError, UsageError
from cairn.ops import access

if TYPE_CHECKING:
    from cairn.image.tsk import Entry


@click.command("image")
@global_options
@click.argument("source", metavar="DEVICE|FILE")
@click.option("--partition", type=int, metavar="N", help="Image only partition N of the disk.")
@click.option("--all-blocks", is_flag=True, help="Read every block, even those filesystems say are free.")
@click.option("--freeze", is_flag=True, help="Freeze mounted filesystems (fsfreeze) while they are read.")
@click.option("--freeze-timeout", type=float, default=600.0, show_default=True, metavar="SECONDS",
              help="Thaw after this long at the latest; the image then fails.")
@click.option("--snapshot", "snapshot_mode", type=click.Choice(["lvm", "btrfs"]),
              help="lvm: image a temporary LVM snapshot of the source logical volume, removed afterwards. "
                   "btrfs is refused: a btrfs snapshot is a consistent file tree, not a consistent block "
                   "device (use --freeze, or 'cairn backup' of the snapshot).")
@click.option("--snapshot-size", metavar="SIZE",
              help="Copy-on-write space of the LVM snapshot: a size (2G) or a percentage (10%ORIGIN, 50%FREE); "
                   "default 10%ORIGIN.")
@click.option("--force", is_flag=True, help="Image a read-write mounted filesystem anyway (recorded as a warning).")
@click.option("--verify", is_flag=True, help="Re-read the source and compare it with what was stored.")
@click.option("--chunk-size", metavar="SIZE",
              help="Chunk size, a power of two from 256K to 64M (default 512K); a later image of the disk "
                   "deduplicates only against images with the same size.")
@click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]", help="Tag the snapshot (repeatable).")
@click.option("--host", metavar="HOST", help="Record HOST instead of this machine's name.")
@pass_state
def image_command(
    state: State, source: str, partition: int | None, all_blocks: bool, freeze: bool, freeze_timeout: float,
    snapshot_mode: str | None, snapshot_size: str | None, force: bool, verify: bool, chunk_size: str | None,
    tags: tuple[str, ...], host: str | None,
) -> None:
    """Image a whole disk (or one partition) into a new snapshot.

    Partition tables, boot code and every partition are kept; ext2/3/4, FAT and NTFS are read
    only where they store data, anything else whole with zero runs skipped. A second image of
    the same disk stores only what changed.

    A read-write mounted source is refused unless it is read through a consistent point:
    --snapshot lvm (a temporary LVM snapshot, removed afterwards even on failure or Ctrl-C),
    --freeze (fsfreeze, bounded by --freeze-timeout), or --force (no consistent point: recorded
    as a warning). --snapshot btrfs is refused: a btrfs snapshot is a consistent file tree, not a
    consistent block device; use --freeze, or 'cairn backup' of a btrfs snapshot for the files.

    Progress shows the phase (imaging, then verifying), bytes done of the total, rate and ETA.
    With --json: {"message_type": "status", "phase": ...} lines every second, then one
    {"message_type": "summary", ...} line.
    """
    from cairn.files.excludes import parse_size
    from cairn.ops.image import DEFAULT_CHUNK, ImageOptions, check_chunk_size, image

    out = state.output
    chunk = DEFAULT_CHUNK if chunk_size is None else parse_size(chunk_size)
    check_chunk_size(chunk)  # before a default repository is created
    if snapshot_size is not None and snapshot_mode != "lvm":
        raise UsageError("--snapshot-size goes with --snapshot lvm")
    size = snapshot_size or "10%ORIGIN"
    cow: str | int = size if "%" in size else parse_size(size)
    repo, created = access.ensure_repository(state.selection())
    if created:
        out.notice(created_default_notice(repo.backend.properties.location))
    options = ImageOptions(
        source=source, partition=partition, all_blocks=all_blocks, freeze=freeze, freeze_timeout=freeze_timeout,
        snapshot=snapshot_mode, force=force, verify=verify, host=host, chunk_size=chunk,
        snapshot_size=cow,
        tags=[t for value in tags for t in value.split(",") if t],
    )
    progress = BytesProgress()
    with out.status(progress.line, progress.json, final=True):
        result = image(repo, options, progress=progress)
    for warning in result.warnings:
        out.warn(warning)
    if out.json_mode:
        out.json_line({"message_type": "summary", **result.to_json()})
        return
    for p in result.partitions:
        out.result(f"  partition {p.number}: {p.fs}, {human_size(p.length)}, {human_size(p.used)} used")
    out.result(
        f"snapshot {result.snapshot_id.hex()[:8]} saved: {result.table} disk of {human_size(result.disk_size)}, "
        f"{human_size(result.bytes_read)} read, {human_size(result.bytes_new)} new "
        f"({human_size(result.bytes_stored)} stored) in {human_duration(result.duration)}"
        + (", verified" if result.verified else "")
    )


@click.command("image-restore")
@global_options
@click.argument("snapshot")
@click.argument("target", metavar="DEVICE|FILE")
@click.option("--partition", type=int, metavar="N", help="Restore only partition N, to the start of TARGET.")
@click.option("--yes", is_flag=True, help="Overwrite a device or existing file without asking.")
@click.option("--delta/--no-delta", default=None,
              help="Compare with what TARGET holds and write only differences (default: when it exists).")
@click.option("--no-sparse", is_flag=True, help="Write zeros instead of leaving holes in a file.")
@click.option("--verify", is_flag=True, help="Re-read the target and compare it with the image.")
@pass_state
def image_restore_command(
    state: State, snapshot: str, target: str, partition: int | None, yes: bool, delta: bool | None,
    no_sparse: bool, verify: bool,
) -> None:
    """Restore an image snapshot onto a device or into a file.

    SNAPSHOT is an id prefix or 'latest'. A mounted target or one smaller than the image is
    refused; onto a larger disk the GPT backup header moves to the new end. Progress and --json
    output as for 'cairn image' (phases: restoring, then verifying).
    """
    from cairn.ops.image_restore import ImageRestoreOptions, image_restore

    out = state.output
    repo = access.open_repository(state.selection())

    def confirm(question: str) -> bool:
        if not is_terminal(sys.stdin):
            return False
        return click.confirm(f"cairn: {question}", default=False, err=True)

    options = ImageRestoreOptions(
        snapshot=snapshot, target=target, partition=partition, yes=yes, delta=delta, sparse=not no_sparse, verify=verify,
    )
    progress = BytesProgress()
    with out.status(progress.line, progress.json, final=True):
        result = image_restore(repo, options, confirm=confirm, progress=progress)
    if out.json_mode:
        out.json_line({"message_type": "summary", **result.to_json()})
        return
    how = f"delta: {human_size(result.bytes_compared)} compared, " if result.delta else ""
    out.result(
        f"restored snapshot {result.snapshot_id.hex()[:8]} onto {result.target}: {how}"
        f"{human_size(result.bytes_written)} written in {human_duration(result.duration)}"
        + (", GPT backup moved to the end" if result.gpt_moved else "")
        + (", verified" if result.verified else "")
    )
    if result.verified is False:
        raise CairnError("the target does not match the image")


def _entry_line(entry: Entry, long: bool, full_path: bool) -> str:
    name = entry.path if full_path else entry.name
    name += "/" if entry.kind == "dir" else ""
    if entry.kind == "symlink":
        name += f" -> {entry.target}"
    if not long:
        return name
    when = datetime.fromtimestamp(entry.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    return f"{KIND_LETTERS.get(entry.kind, '?')}{stat.filemode(entry.mode)[1:]} {entry.size:>14,} {when}  {name}"


KIND_LETTERS = {"file": "-", "dir": "d", "symlink": "l"}


@click.command("image-ls")
@global_options
@click.argument("snapshot")
@click.argument("path", default="/")
@click.option("--partition", type=int, metavar="N", help="The partition to read (default: the only one with a filesystem).")
@click.option("-R", "--recursive", is_flag=True, help="Everything under PATH, with full paths.")
@click.option("-l", "--long", "long_format", is_flag=True, help="Kind, permissions, size and modification time.")
@click.option("--system", "show_system", is_flag=True, help="Also list NTFS metadata files ($MFT, $Bitmap, ...).")
@pass_state
def image_ls_command(
    state: State, snapshot: str, path: str, partition: int | None, recursive: bool, long_format: bool, show_system: bool,
) -> None:
    """List files inside an image snapshot, without restoring it.

    ext2/3/4, FAT and NTFS partitions are read through The Sleuth Kit, loading only the parts
    of the image it needs. Without --partition on a disk with several filesystems, the
    partitions are listed.
    """
    from cairn.ops.image_files import ImageLsOptions, image_ls

    out = state.output
    repo = access.open_repository(state.selection())
    result = image_ls(repo, ImageLsOptions(snapshot, path, partition, recursive, show_system))
    if out.json_mode:
        out.json(result.to_json())
        return
    if result.partition is None:
        for p in result.partitions:
            label = f" '{p.label}'" if p.label else ""
            out.result(f"partition {p.number}: {p.fs}, {human_size(p.length)}, {human_size(p.used)} used{label}")
        out.result("choose one with --partition N")
        return
    for entry in result.entries:
        out.result(_entry_line(entry, long_format, recursive))


@click.command("image-dump")
@global_options
@click.argument("snapshot")
@click.argument("path")
@click.option("--partition", type=int, metavar="N", help="The partition to read (default: the only one with a filesystem).")
@click.option("-t", "--target", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write to FILE instead of standard output.")
@pass_state
def image_dump_command(state: State, snapshot: str, path: str, partition: int | None, target: str | None) -> None:
    """Write one file from inside an image snapshot to standard output, without restoring it."""
    from cairn.ops.image_files import ImageDumpOptions, image_dump

    out = state.output
    repo = access.open_repository(state.selection())
    options = ImageDumpOptions(snapshot, path, partition)
    if target is None:
        sys.stdout.flush()
        image_dump(repo, options, sys.stdout.buffer)
        return
    with open(target, "wb") as f:
        result = image_dump(repo, options, f)
    if out.json_mode:
        out.json({"target": target, "partition": result.partition, "path": result.path, "bytes": result.bytes})
    else:
        out.result(f"wrote {human_size(result.bytes)} from partition {result.partition}:{result.path} to {target}")
