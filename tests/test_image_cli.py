"""`cairn image` and `cairn image-restore` as a user types them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CliRun, one_line_error
from test_image_support import MiB, file_sha, needs, put, random_file, sfdisk

from cairn.cli.output import BytesProgress
from cairn.ops.image import ImageProgress


def small_disk(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.img"
    parts = sfdisk(disk, 16 * MiB, "label: gpt\nsize=8M, type=linux\n")
    random_file(tmp_path / "data", 2 * MiB, seed=3)
    put(disk, parts[0]["start"] * 512, tmp_path / "data")
    return disk


@needs("sfdisk")
def test_image_then_restore_from_the_command_line(tmp_path: Path, repo_dir: Path, cli: CliRun) -> None:
    disk = small_disk(tmp_path)
    made = cli("-r", str(repo_dir), "image", str(disk), "--tag", "nightly", "--verify")
    assert made.exit_code == 0, made.stderr
    assert "partition 1: raw" in made.stdout and "verified" in made.stdout
    listed = cli("-r", str(repo_dir), "--json", "snapshots")
    assert json.loads(listed.stdout)[0]["kind"] == "image"
    out = tmp_path / "out.img"
    restored = cli("-r", str(repo_dir), "image-restore", "latest", str(out), "--verify")
    assert restored.exit_code == 0, restored.stderr
    assert file_sha(out) == file_sha(disk)
    refused = cli("-r", str(repo_dir), "image-restore", "latest", str(out))
    assert refused.exit_code == 2 and "--yes" in one_line_error(refused)
    again = cli("-r", str(repo_dir), "--json", "image-restore", "latest", str(out), "--yes")
    report = json.loads(again.stdout.splitlines()[-1])
    assert report["delta"] is True and report["bytes_written"] == 0


@needs("sfdisk")
def test_image_json_and_errors(tmp_path: Path, repo_dir: Path, cli: CliRun) -> None:
    disk = small_disk(tmp_path)
    made = cli("-r", str(repo_dir), "--json", "image", str(disk), "--partition", "1")
    report = json.loads(made.stdout.splitlines()[-1])
    assert report["table"] == "none" and report["disk_size"] == 8 * MiB and report["partitions"][0]["number"] == 1
    missing = cli("-r", str(repo_dir), "image", str(tmp_path / "nope.img"))
    assert missing.exit_code == 2 and "does not exist" in one_line_error(missing)
    no_part = cli("-r", str(repo_dir), "image", str(disk), "--partition", "4")
    assert no_part.exit_code == 2 and "no partition 4" in one_line_error(no_part)


def phases_of(stdout: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The --json status lines grouped by phase (in order), and the summary that ends them."""
    messages = [json.loads(line) for line in stdout.splitlines()]
    *statuses, summary = messages
    assert summary["message_type"] == "summary"
    phases: dict[str, list[dict[str, Any]]] = {}
    for status in statuses:
        assert status["message_type"] == "status"
        assert {"seconds_elapsed", "bytes_done", "total_bytes", "bytes_per_second", "percent_done"} <= set(status)
        phases.setdefault(status["phase"], []).append(status)
    for seen in phases.values():
        done = [s["bytes_done"] for s in seen]
        assert done == sorted(done)
        last = seen[-1]
        assert last["bytes_done"] == last["total_bytes"] > 0 and last["percent_done"] == 1.0
    return phases, summary


@needs("sfdisk")
def test_json_progress_lines_reach_each_phase_total(tmp_path: Path, repo_dir: Path, cli: CliRun,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    disk = small_disk(tmp_path)
    monkeypatch.setenv("CAIRN_PROGRESS_FPS", "200")
    made = cli("-r", str(repo_dir), "--json", "image", str(disk), "--verify")
    assert made.exit_code == 0, made.stderr
    phases, summary = phases_of(made.stdout)
    assert list(phases) == ["imaging", "verifying"]
    assert phases["imaging"][-1]["total_bytes"] == summary["bytes_used"] and summary["verified"] is True
    out = tmp_path / "out.img"
    restored = cli("-r", str(repo_dir), "--json", "image-restore", "latest", str(out), "--verify")
    assert restored.exit_code == 0, restored.stderr
    phases, summary = phases_of(restored.stdout)
    assert list(phases) == ["restoring", "verifying"]
    assert phases["restoring"][-1]["total_bytes"] == summary["bytes_total"]
    assert file_sha(out) == file_sha(disk)


def test_live_line_shows_phase_bytes_rate_and_eta() -> None:
    now = [100.0]
    progress = BytesProgress(clock=lambda: now[0])
    assert progress.line() is None and progress.json() == []  # nothing reported yet
    progress(ImageProgress("imaging", 0, 100 * MiB))
    now[0] += 10
    progress(ImageProgress("imaging", 50 * MiB, 100 * MiB))
    assert progress.line() == "[10.0s] imaging 50.0% 50.0 MiB of 100.0 MiB, 5.0 MiB/s ETA 10.0s"
    progress(ImageProgress("imaging", 100 * MiB, 100 * MiB))
    progress(ImageProgress("verifying", 0, 100 * MiB))  # a new phase: its own rate and ETA
    now[0] += 2
    progress(ImageProgress("verifying", 50 * MiB, 100 * MiB))
    assert progress.line() == "[12.0s] verifying 50.0% 50.0 MiB of 100.0 MiB, 25.0 MiB/s ETA 2.0s"
    ended, current = progress.json()
    assert (ended["phase"], ended["bytes_done"], ended["percent_done"]) == ("imaging", 100 * MiB, 1.0)
    assert current["phase"] == "verifying" and current["seconds_remaining"] == 2 and current["seconds_elapsed"] == 12
    assert [s["phase"] for s in progress.json()] == ["verifying"]  # an ended phase is printed once
    progress("not a report")  # ignored, never an error


@needs("sfdisk")
def test_chunk_size_option(tmp_path: Path, repo_dir: Path, cli: CliRun) -> None:
    disk = small_disk(tmp_path)
    for bad, why in (("3M", "power of two"), ("128K", "from 256 KiB"), ("128M", "to 64 MiB"), ("big", "not a size")):
        refused = cli("-r", str(tmp_path / "none"), "image", str(disk), "--chunk-size", bad)
        assert refused.exit_code == 2 and why in one_line_error(refused), bad
    assert not (tmp_path / "none").exists()  # refused before any repository is opened
    made = cli("-r", str(repo_dir), "--json", "image", str(disk), "--chunk-size", "256K")
    assert made.exit_code == 0, made.stderr
    assert sum(json.loads(made.stdout.splitlines()[-1])["chunks"].values()) == 16 * MiB // (256 << 10)
    out = tmp_path / "out.img"
    assert cli("-r", str(repo_dir), "image-restore", "latest", str(out), "--verify").exit_code == 0
    assert file_sha(out) == file_sha(disk)
