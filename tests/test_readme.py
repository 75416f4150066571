"""README.md's first command works verbatim for a new user: a fresh copy of the project, a new
HOME, a new virtual environment, nothing installed by hand.

pip's download cache is shared with the caller (PIP_CACHE_DIR) so the test does not fetch the
dependencies again each run; everything else is as on a fresh machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_the_install_and_the_test_command() -> None:
    first, second = readme_commands()[:2]
    assert "pip install" in first and "cairn backup" in first
    assert second.strip() == "bash scripts/test"
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_the_first_readme_command_works_verbatim_for_a_new_user(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the project as a clone would")
    project = tmp_path / "cairn"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, project / name)
    home = tmp_path / "home"
    home.mkdir()
    cache = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PIP_CACHE_DIR": cache, "LANG": "C.UTF-8"}
    first = readme_commands()[0]
    done = subprocess.run(
        ["bash", "-c", first], cwd=project, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"snapshot [0-9a-f]{8} saved", done.stdout), done.stdout
    repo = home / ".local" / "share" / "cairn" / "repo"
    assert (repo / "config").is_file()
    assert f"created a new repository at {repo}" in done.stderr
    assert "Keep the password safe" in done.stderr
