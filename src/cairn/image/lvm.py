"""`cairn image --snapshot lvm`: image a temporary LVM snapshot of a logical volume.

A snapshot LV is a point-in-time copy of the whole block device (LVM suspends the origin and
freezes its filesystem while taking it), so the origin can stay mounted and in use while the
snapshot is read. The snapshot lives only for the image: created with `lvcreate -s` under a
name no other run picks, and removed with `lvremove` when imaging ends, whether it succeeded,
failed or was interrupted (Ctrl-C or SIGTERM). A snapshot left behind would keep filling with
the origin's changes until it overflowed, so a failed removal is an error that names the
command to finish the job.

Only the LVM command-line tools are used (`lvs`, `lvcreate`, `lvremove`), nothing of their
internals, so the path stays small and its tests can stand in for the tools.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cairn.errors import CairnError, UsageError

DEFAULT_SIZE = "10%ORIGIN"
"""Copy-on-write space for the snapshot: what the origin may change while it is imaged."""
_PERCENT = re.compile(r"(\d{1,3})%(ORIGIN|FREE|VG|PVS)", re.IGNORECASE)


@dataclass(frozen=True)
class Volume:
    vg: str
    lv: str

    @property
    def name(self) -> str:
        return f"{self.vg}/{self.lv}"


def size_args(size: str | int) -> list[str]:
    """`lvcreate` arguments for a snapshot size: bytes (``-L <n>b``) or a percentage of the
    origin, the volume group or its free space (``-l 10%ORIGIN``)."""
    if isinstance(size, int):
        if size <= 0:
            raise UsageError("the LVM snapshot size must be more than 0 bytes")
        return ["-L", f"{size}b"]
    match = _PERCENT.fullmatch(size.strip())
    if not match or not 0 < int(match.group(1)) <= 100:
        raise UsageError(f"{size!r} is not an LVM snapshot size: use a size like 2G or a percentage like 10%ORIGIN")
    return ["-l", f"{int(match.group(1))}%{match.group(2).upper()}"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise UsageError(f"--snapshot lvm needs the LVM tools, and {args[0]} was not found") from None


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def _lvs(target: str, fields: str) -> list[str] | None:
    """The fields `lvs` reports for one LV (a device path or VG/LV), or None if it is none."""
    done = _run("lvs", "--noheadings", "--separator", "|", "-o", fields, "--", target)
    rows = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or len(rows) != 1:
        return None
    return [value.strip() for value in rows[0].split("|")]


def logical_volume(path: str) -> Volume:
    """The logical volume at `path`; refuses anything else before any snapshot is made."""
    found = _lvs(path, "vg_name,lv_name")
    if found is None or len(found) != 2 or not all(found):
        raise UsageError(f"{path} is not an LVM logical volume: --snapshot lvm needs one (or use --freeze)")
    return Volume(*found)


_HELD = {signal.SIGINT, signal.SIGTERM}


def _hold_signals() -> set[int] | None:
    """Hold back Ctrl-C and SIGTERM (they arrive when released) so that creating or removing
    the snapshot is never cut short; child processes inherit the mask, so a Ctrl-C at the
    terminal cannot stop lvcreate or lvremove halfway either. Returns the mask to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)


def _release(previous: set[int] | None) -> None:
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _remove(snapshot: Volume) -> str | None:
    """Remove the snapshot; returns why that failed, or None."""
    previous = _hold_signals()
    try:
        done = _run("lvremove", "-f", "--", snapshot.name)
        return None if done.returncode == 0 else _last_line(done)
    except CairnError as exc:
        return str(exc)
    finally:
        _release(previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def snapshot(origin: Volume, size: str | int = DEFAULT_SIZE) -> Iterator[str]:
    """A temporary snapshot of `origin` for the block; yields its device path."""
    args = size_args(size)
    temporary = Volume(origin.vg, f"{origin.lv[:64]}-cairn-{secrets.token_hex(4)}")
    main = threading.current_thread() is threading.main_thread()
    # SIGTERM would end the process without unwinding; as an interrupt it removes the snapshot.
    previous_handler = signal.signal(signal.SIGTERM, _interrupt) if main else None
    held = _hold_signals()
    try:
        done = _run("lvcreate", "-s", *args, "-n", temporary.lv, "--", origin.name)
        if done.returncode != 0:
            raise UsageError(f"lvcreate could not snapshot {origin.name}: {_last_line(done)}")
        try:
            _release(held)  # a Ctrl-C that came meanwhile is raised here, where the snapshot is removed
            held = None
            found = _lvs(temporary.name, "lv_path")
            if found is None or not found[0]:
                raise CairnError(f"lvs does not show the new snapshot {temporary.name}")
            yield found[0]
        except BaseException as exc:
            problem = _remove(temporary)
            if problem is not None:
                raise CairnError(f"{str(exc) or 'interrupted'}; {_left_behind(temporary, problem)}") from exc
            raise
        problem = _remove(temporary)
        if problem is not None:
            raise CairnError(f"imaging finished, but {_left_behind(temporary, problem)}")
    finally:
        _release(held)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _left_behind(snapshot: Volume, problem: str) -> str:
    return f"the LVM snapshot {snapshot.name} could not be removed ({problem}): remove it with 'lvremove {snapshot.name}'"
