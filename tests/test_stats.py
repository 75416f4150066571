"""`cairn stats`: restore size, unique and stored sizes, deduplication and compression ratios."""

from __future__ import annotations

import json
import random
from pathlib import Path

from conftest import FAST_KDF, CliRun
from cairn.image import format as disk_format
from cairn.image.pages import DATA, PageBuilder
from cairn.ops.stats import StatsOptions, stats
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.testing.memory import MemoryBackend


def test_two_backups_of_the_same_files_dedup_two_to_one(cli: CliRun, repo_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "random.bin").write_bytes(random.Random(1).randbytes(1_000_000))
    (src / "text.txt").write_bytes(b"the same line again and again\n" * 40_000)  # 1.2 MB, compresses well
    (src / "sub").mkdir()
    (src / "sub" / "empty").write_bytes(b"")
    for _ in range(2):
        assert cli("-r", str(repo_dir), "backup", str(src)).exit_code == 0
    result = cli("-r", str(repo_dir), "--json", "stats")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    total = 1_000_000 + 1_200_000
    assert data["files"] == 6 and data["restore_size"] == 2 * total and data["logical_size"] == 2 * total
    assert data["data_raw_size"] == total
    assert data["dedup_ratio"] == 2.0
    assert 1.5 < data["compression_ratio"]  # the text shrinks to almost nothing
    assert 1_000_000 < data["stored_size"] <= data["repository_size"] < 1_100_000
    assert [s["files"] for s in data["per_snapshot"]] == [3, 3]
    one = json.loads(cli("-r", str(repo_dir), "--json", "stats", "latest").stdout)
    assert one["restore_size"] == total and one["dedup_ratio"] == 1.0 and one["blobs"] == data["blobs"]
    text = cli("-r", str(repo_dir), "stats", "--per-snapshot").stdout
    assert "deduplication ratio" in text and "2.00x" in text


def test_image_snapshots_count_their_disk_and_chunks() -> None:
    repo = Repository.init(MemoryBackend(), b"pw", FAST_KDF)
    chunk = 256 * 1024
    with repo.lock():
        blob = random.Random(2).randbytes(chunk)
        blob_id, _ = repo.save_blob(BlobType.DATA, blob)
        page = PageBuilder(0)
        for _ in range(3):
            page.add(DATA, blob_id)  # the same chunk three times: dedups three to one
        page_id, _ = repo.save_blob(BlobType.DISK, page.encode())
        region = disk_format.Region("partition", 0, 3 * chunk, pages=[page_id], number=1)
        disk = disk_format.Disk("partition", 3 * chunk, 512, "none", chunk, 4, regions=[region])
        root, _ = repo.save_blob(BlobType.DISK, disk_format.encode(disk))
        repo.flush()
        repo.save_snapshot(Snapshot("image", root, [b"/dev/x"], "h", "u"))
    result = stats(repo, StatsOptions())
    assert result.restore_size == 3 * chunk and result.logical_size == 3 * chunk
    assert result.blobs == 3 and result.data_raw_size == chunk and result.dedup_ratio == 3.0
