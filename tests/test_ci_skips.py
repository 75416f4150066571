"""Under CI, skipping what needs root or an installed tool fails the run (tests/ci_skips.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_runs():
    pass

@pytest.mark.root
@pytest.mark.skipif(True, reason="mounts a tmpfs: needs root")
def test_needs_root():
    pass

def test_needs_a_tool():
    pytest.skip("needs mkfs.xfs (scripts/test installs it)")

@pytest.mark.skipif(True, reason="root reads files whatever their permissions")
def test_skipped_for_an_ordinary_reason():
    pass
'''


def run_sample(tmp_path: Path, ci: bool, select: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    root: needs root\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(TESTS)
    if ci:
        env["CI"] = "true"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "ci_skips", "-rs", str(tmp_path)]
    if select:
        args += ["-k", select]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_outside_ci_skips_are_only_reported(tmp_path: Path) -> None:
    done = run_sample(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout
    assert "CI:" not in done.stdout


def test_under_ci_a_skipped_root_test_or_missing_tool_fails_the_run_and_names_them(tmp_path: Path) -> None:
    done = run_sample(tmp_path, ci=True)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "CI: 2 test(s) that need root or an installed tool were skipped" in done.stdout
    assert "test_sample.py::test_needs_root: mounts a tmpfs: needs root" in done.stdout
    assert "test_sample.py::test_needs_a_tool: needs mkfs.xfs (scripts/test installs it)" in done.stdout
    assert "test_skipped_for_an_ordinary_reason:" not in done.stdout.split("CI: ")[1].split("short test summary")[0]


def test_under_ci_an_ordinary_skip_passes(tmp_path: Path) -> None:
    done = run_sample(tmp_path, ci=True, select="runs or ordinary")
    assert done.returncode == 0, done.stdout
    assert "CI:" not in done.stdout
