"""The CLI's printing helpers: sizes, and a progress reporter that never gets in the way."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
from rich.console import Console

from cairn.cli import output
from cairn.cli.output import Output, ProgressReporter, human_duration, human_size


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB"), (2**60, "1024.0 PiB")],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


def test_human_duration() -> None:
    assert human_duration(1.25) == "1.2s"
    assert human_duration(75) == "1m15s"
    assert human_duration(3725) == "1h02m05s"


@dataclass
class Counts:
    path: str
    files: int
    bytes_read: int
    bytes_added: int


def test_progress_is_silent_when_disabled() -> None:
    reporter = ProgressReporter("backing up", enabled=False)
    with reporter:
        reporter(Counts("/x", 1, 2, 3))
        reporter("packs", 1, 10)
    assert reporter._progress is None


def test_progress_waits_a_second_then_shows_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(output, "make_console", lambda **kw: Console(file=screen, force_terminal=True, width=100))
    clock = [100.0]
    monkeypatch.setattr(output.time, "monotonic", lambda: clock[0])
    reporter = ProgressReporter("backing up", enabled=True)
    with reporter:
        reporter(Counts("/home/me/a", 3, 2048, 1024))
        assert reporter._progress is None  # a quick command never draws anything
        clock[0] += 1.5
        reporter(Counts("/home/me/b", 1234, 5 * 1024**2, 1024))
        assert reporter._progress is not None
        task = reporter._progress.tasks[0]
        assert task.fields["detail"] == "1,234 files, 5.0 MiB, 1.0 KiB new"
        assert task.description == "backing up /home/me/b"
        reporter("packs", 3, 12)  # check's (phase, done, total) shape: a real bar
        assert (task.completed, task.total) == (3, 12)
    assert reporter._progress is None


def test_progress_ignores_what_it_does_not_understand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output.time, "monotonic", lambda: 1e9)
    monkeypatch.setattr(output, "make_console", lambda **kw: Console(file=io.StringIO(), force_terminal=True))
    with ProgressReporter("x", enabled=True) as reporter:
        reporter(object())
        reporter(1, 2)
        reporter(None)


def test_progress_is_off_for_json_quiet_and_non_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    assert Output().progress("x").enabled
    assert not Output(json_mode=True).progress("x").enabled
    assert not Output(quiet=True).progress("x").enabled
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not Output().progress("x").enabled


def test_table_cells_are_not_markup(capsys: pytest.CaptureFixture[str]) -> None:
    Output().table(["path"], [["/data/[bold]odd[/bold]"]])
    assert "/data/[bold]odd[/bold]" in capsys.readouterr().out
