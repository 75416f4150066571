"""Under CI, a skipped root test or a skip for a missing tool fails the run.

On a developer's machine such skips are fine: not everyone runs the suite as root with every
Debian package. In CI (``CI`` set) scripts/test runs as root and installs everything, so a skip
there means a broken install step or a lost privilege, and a run that skipped the tests of real
filesystems, loop devices and servers must not pass as green. This matches `servers.missing`,
which fails rather than skips a server fixture under CI.

Loaded by tests/conftest.py (its hooks are imported there).
"""

from __future__ import annotations

import os

import pytest

# Skip reasons that mean "a program or package is not installed", however a test words it.
MISSING_TOOL_HINTS = ("scripts/test", "not installed")

_root_tests: set[str] = set()
_skipped: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _root_tests.update(item.nodeid for item in items if item.get_closest_marker("root") is not None)


def _reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if report.nodeid in _root_tests or any(hint in reason for hint in MISSING_TOOL_HINTS):
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get("CI") or not _skipped:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(
            f"CI: {len(_skipped)} test(s) that need root or an installed tool were skipped; under CI they must run "
            "(run scripts/test as root so it installs every package):",
            red=True, bold=True,
        )
        for line in _skipped[:20]:
            reporter.write_line(f"  {line}", red=True)
        if len(_skipped) > 20:
            reporter.write_line(f"  ... and {len(_skipped) - 20} more", red=True)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
