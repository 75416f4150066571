"""Everything the CLI prints: human text and tables on stdout, JSON for scripts, progress and
warnings on stderr.

stdout carries only the result (a table, a summary, or JSON with --json), so it can be piped;
everything about the run itself (progress, warnings, notices, errors) goes to stderr. Progress
is drawn only when stderr is a terminal and neither --json nor --quiet was given, and only once
a command has run for a second, so quick commands and logs stay clean.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # rich is imported where a table or a progress bar is drawn (~9 MiB of RSS)
    from rich.console import Console
    from rich.progress import Progress, TaskID

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
JsonStatus = dict[str, Any] | list[dict[str, Any]] | None
"""What a live status callback returns for --json: one message, several, or nothing yet."""


def human_size(n: int | float) -> str:
    """Bytes in binary units, as `ls -lh` and restic print them: 1.5 MiB."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def local_time(when: datetime) -> str:
    """A time in the viewer's own zone, to the second: what people compare with their clock."""
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def make_console(**options: Any) -> Console:
    """A rich console; rich is imported here, at the first table or progress bar, not with the
    CLI: it is ~9 MiB of resident memory that most runs never use."""
    from rich.console import Console

    return Console(**options)


class Output:
    """The printing half of a command; the command decides what, this decides how."""

    def __init__(self, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """rich's console for stdout, made (and rich imported) at the first table."""
        if self._console is None:
            # Piped output must not wrap table rows (grep, awk); a terminal gets its real width.
            width = None if is_terminal(sys.stdout) else 1000
            self._console = make_console(width=width, highlight=False, soft_wrap=False)
        return self._console

    def result(self, text: str) -> None:
        """A human result line (a summary); suppressed by --quiet; never in --json mode."""
        if not self.json_mode and not self.quiet:
            click.echo(text)

    def notice(self, text: str) -> None:
        """Something the user must read even in --quiet or --json mode (on stderr)."""
        click.echo(text, err=True)

    def warn(self, text: str) -> None:
        click.echo(f"cairn: warning: {text}", err=True)

    def json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))

    def json_line(self, data: Any, err: bool = False) -> None:
        """One JSON object on one line (a stream of messages, restic's --json style)."""
        click.echo(json.dumps(data, ensure_ascii=False, separators=(",", ":")), err=err)

    def status(
        self, render: Callable[[], str | None], json_status: Callable[[], JsonStatus], final: bool = False,
    ) -> Ticker:
        """Live progress: `render()` redrawn as one line on a terminal's stderr, or, with --json,
        `json_status()` (one message or several) printed as lines on stdout every second, and once
        more at the end with `final` (so a script sees the last phase reach its total). Neither
        without a reader (stderr not a terminal, --quiet). Use as a context manager; the line is
        cleared at the end.
        """
        if self.json_mode:
            return Ticker(
                lambda last: None if last and not final else self._json_status(json_status), progress_interval(1.0)
            )
        if not self.quiet and is_terminal(sys.stderr):
            return Ticker(LiveLine(sys.stderr, render), progress_interval(0.1))
        return Ticker(None, 0)

    def _json_status(self, json_status: Callable[[], JsonStatus]) -> None:
        data = json_status()
        for message in [data] if isinstance(data, dict) else data or []:
            self.json_line(message)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]], footer: str | None = None) -> None:
        """A plain table; cell text is never read as rich markup (paths may hold brackets)."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        self.console.print(table)
        if footer and not self.quiet:
            click.echo(footer)

    def raw(self, data: bytes) -> None:
        """Bytes exactly as they are (a blob's content), for redirecting to a file."""
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def progress(self, description: str) -> ProgressReporter:
        enabled = not self.json_mode and not self.quiet and is_terminal(sys.stderr)
        return ProgressReporter(description, enabled)


@dataclass
class _Phase:
    """The phase under way of a `BytesProgress`."""

    name: str
    started: float
    done: int = 0
    total: int = 0


class BytesProgress:
    """Live progress of an operation that moves bytes in phases (`cairn image`: imaging, then
    verifying; `image-restore`: restoring, then verifying): bytes done of the phase's total, the
    rate since the phase began, and the time left at that rate. The operation calls it with
    reports that have `phase`, `bytes_done` and `total_bytes` (from its own threads); a timer
    reads `line()` or `json()` (`Output.status`), so reporting never waits on the terminal.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._phase: _Phase | None = None
        self._ended: list[dict[str, Any]] = []
        """Last status of each phase that ended and was not yet printed as JSON."""

    def __call__(self, report: Any) -> None:
        try:
            phase, done, total = str(report.phase), int(report.bytes_done), int(report.total_bytes)
        except (AttributeError, TypeError, ValueError):  # progress must never break the operation
            return
        now = self._clock()
        with self._lock:
            if self._phase is None or self._phase.name != phase:
                if self._phase is not None:
                    self._ended.append(self._status(now)[0])
                self._phase = _Phase(phase, now)
            self._phase.done, self._phase.total = done, total

    def _status(self, now: float) -> tuple[dict[str, Any], float | None]:
        """The JSON status message, and the seconds left unrounded (None: unknown)."""
        assert self._phase is not None
        phase, done, total = self._phase.name, self._phase.done, self._phase.total
        rate = done / max(now - self._phase.started, 1e-6)
        remaining = max(total - done, 0) / rate if total > 0 and rate > 0 else None
        data: dict[str, Any] = {"message_type": "status", "phase": phase, "seconds_elapsed": int(now - self._started)}
        if total > 0:
            data["percent_done"] = min(done / total, 1.0)
        if remaining is not None:
            data["seconds_remaining"] = int(remaining)
        data.update(bytes_done=done, total_bytes=total, bytes_per_second=int(rate))
        return data, remaining

    def line(self) -> str | None:
        """``[12.0s] imaging 45.0% 450.0 MiB of 1000.0 MiB, 37.5 MiB/s ETA 14.6s``"""
        now = self._clock()
        with self._lock:
            if self._phase is None:
                return None
            s, remaining = self._status(now)
        parts = [f"[{human_duration(now - self._started)}]", s["phase"]]
        if "percent_done" in s:
            parts.append(f"{s['percent_done'] * 100:.1f}%")
        parts.append(f"{human_size(s['bytes_done'])} of {human_size(s['total_bytes'])}, "
                     f"{human_size(s['bytes_per_second'])}/s")
        if remaining is not None:
            parts.append(f"ETA {human_duration(remaining)}")
        return " ".join(parts)

    def json(self) -> list[dict[str, Any]]:
        """The last status of phases that ended since the previous call, then the current one."""
        now = self._clock()
        with self._lock:
            out, self._ended = self._ended, []
            if self._phase is not None:
                out.append(self._status(now)[0])
        return out


class ProgressReporter:
    """A callable handed to an operation as its `progress` argument.

    Operations report in one of two shapes, both accepted: ``progress(phase, done, total)``
    (check) or ``progress(obj)`` with whatever counters `obj` has (`files`, `bytes`, `bytes_read`,
    `bytes_written`, `bytes_added`, `bytes_done` with `total_bytes`, and `path` or `current`). Unknown shapes are ignored, never
    an error: progress must not break a backup. Safe to call from worker threads.
    """

    DELAY = 1.0

    def __init__(self, description: str, enabled: bool) -> None:
        self.description = description
        self.enabled = enabled
        self._started_at = time.monotonic()
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            self.enabled = False

    def __call__(self, *args: Any) -> None:
        if not self.enabled:
            return
        try:
            update = self._parse(args)
        except Exception:  # a counter of an unexpected type: skip this update
            return
        if update is None:
            return
        with self._lock:
            if not self.enabled:
                return
            if self._progress is None:
                if time.monotonic() - self._started_at < self.DELAY:
                    return
                self._start()
            assert self._progress is not None and self._task is not None
            self._progress.update(self._task, **update)

    def _start(self) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=make_console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task(self.description, total=None, detail="")
        self._progress.start()

    def _parse(self, args: tuple[Any, ...]) -> dict[str, Any] | None:
        if len(args) == 3 and isinstance(args[0], str):
            phase, done, total = args
            return {"description": f"{self.description}: {phase}", "completed": done,
                    "total": total or None, "detail": f"{done}/{total}" if total else str(done)}
        if len(args) != 1:
            return None
        obj = args[0]
        parts = []
        files = getattr(obj, "files", None)
        if isinstance(files, int):
            parts.append(f"{files:,} files")
        for name in ("bytes", "bytes_read", "bytes_written"):
            value = getattr(obj, name, None)
            if isinstance(value, int):
                parts.append(human_size(value))
                break
        added = getattr(obj, "bytes_added", None)
        if isinstance(added, int):
            parts.append(f"{human_size(added)} new")
        update: dict[str, Any] = {"detail": ", ".join(parts)}
        done = getattr(obj, "bytes_done", None)
        total = getattr(obj, "total_bytes", None)
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            update.update(completed=done, total=total)
        current = getattr(obj, "current", None) or getattr(obj, "path", None)
        if isinstance(current, str) and current:
            update["description"] = f"{self.description} {current[-40:]}"
        return update


def progress_interval(default: float) -> float:
    """Seconds between progress updates: `default`, or 1/$CAIRN_PROGRESS_FPS (as restic's
    RESTIC_PROGRESS_FPS) so scripts and tests can ask for more or fewer."""
    try:
        fps = float(os.environ.get("CAIRN_PROGRESS_FPS", ""))
    except ValueError:
        return default
    return 1 / fps if fps > 0 else default


class LiveLine:
    """One line on a terminal, redrawn in place (cut to the terminal's width, never wrapped,
    since a wrapped line cannot be redrawn), and erased at the end."""

    def __init__(self, stream: Any, render: Callable[[], str | None]) -> None:
        self.stream = stream
        self.render = render
        self.drawn = False

    def __call__(self, final: bool) -> None:
        if final:
            if self.drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            return
        text = self.render()
        if text is None:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r" + text[:width] + "\x1b[K")
        self.stream.flush()
        self.drawn = True


class Ticker:
    """Calls `tick(final=False)` every `interval` seconds in a daemon thread, the first time
    after one interval, and `tick(final=True)` once when the block ends."""

    def __init__(self, tick: Callable[[bool], None] | None, interval: float) -> None:
        self.tick = tick
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Ticker:
        if self.tick is not None:
            self._thread = threading.Thread(target=self._run, name="cairn-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.tick is not None
        while not self._stop.wait(self.interval):
            with self._lock:
                try:
                    self.tick(False)
                except Exception:  # progress must never break the command it reports on
                    pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            with self._lock:
                try:
                    assert self.tick is not None
                    self.tick(True)
                except Exception:
                    pass
