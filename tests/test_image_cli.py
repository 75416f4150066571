"""`cairn image` and `cairn image-restore` as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CliRun, one_line_error
from test_image_support import MiB, file_sha, needs, put, random_file, sfdisk


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
    report = json.loads(again.stdout)
    assert report["delta"] is True and report["bytes_written"] == 0


@needs("sfdisk")
def test_image_json_and_errors(tmp_path: Path, repo_dir: Path, cli: CliRun) -> None:
    disk = small_disk(tmp_path)
    made = cli("-r", str(repo_dir), "--json", "image", str(disk), "--partition", "1")
    report = json.loads(made.stdout)
    assert report["table"] == "none" and report["disk_size"] == 8 * MiB and report["partitions"][0]["number"] == 1
    missing = cli("-r", str(repo_dir), "image", str(tmp_path / "nope.img"))
    assert missing.exit_code == 2 and "does not exist" in one_line_error(missing)
    no_part = cli("-r", str(repo_dir), "image", str(disk), "--partition", "4")
    assert no_part.exit_code == 2 and "no partition 4" in one_line_error(no_part)
