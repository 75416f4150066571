"""`cairn repair index` rebuilds the index from pack headers; `cairn repair snapshots` saves
snapshots without what was lost, marking the damaged files."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from conftest import FAST_KDF, FAST_KDF_ARGS, PASSWORD, CliRun
from cairn.ops.check import CheckOptions, check
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend


def open_repo(path: Path) -> Repository:
    return Repository.open(LocalBackend(path), PASSWORD.encode())


def backup(cli: CliRun, repo_dir: Path, src: Path) -> str:
    result = cli("-r", str(repo_dir), "--json", "backup", str(src))
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])["snapshot_id"]


def make_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    rng = random.Random(5)
    (src / "a.bin").write_bytes(rng.randbytes(600_000))
    (src / "dir" / "b.bin").write_bytes(rng.randbytes(600_000))
    return src


def test_repair_index_rebuilds_from_pack_headers(cli: CliRun, repo_dir: Path, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    first = backup(cli, repo_dir, src)
    (src / "c.bin").write_bytes(b"more" * 10_000)
    backup(cli, repo_dir, src)
    shutil.rmtree(repo_dir / "index")  # every index object lost
    assert check(open_repo(repo_dir), CheckOptions()).errors
    result = cli("-r", str(repo_dir), "--json", "repair", "index")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["packs"] >= 2 and data["damaged_packs"] == [] and data["removed_indexes"] == 0
    assert check(open_repo(repo_dir), CheckOptions(read_data=True)).errors == []
    target = tmp_path / "out"
    assert cli("-r", str(repo_dir), "restore", first[:8], "--target", str(target)).exit_code == 0
    restored = target / src.relative_to("/")
    assert (restored / "dir" / "b.bin").read_bytes() == (src / "dir" / "b.bin").read_bytes()
    # Run again: the new objects supersede and replace the ones it wrote before.
    again = json.loads(cli("-r", str(repo_dir), "--json", "repair", "index").stdout)
    assert again["removed_indexes"] >= 1 and again["blobs"] == data["blobs"]
    assert len(list((repo_dir / "index").iterdir())) == 1


def test_repair_index_leaves_out_a_pack_whose_header_is_damaged(cli: CliRun, repo_dir: Path, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    backup(cli, repo_dir, src)
    pack = next(p for p in (repo_dir / "data").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[-10] ^= 0xFF  # inside the sealed header
    pack.write_bytes(bytes(data))
    result = cli("-r", str(repo_dir), "--json", "repair", "index")
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)["damaged_packs"]) == 1 and "left out of the index" in result.stderr


def test_repair_snapshots_drops_lost_blobs_and_marks_the_files(cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = tmp_path / "small-packs"  # every chunk of at least the minimum size fills a pack
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    Repository.init(LocalBackend(repo_dir), PASSWORD.encode(), FAST_KDF, pack_size=256 * 1024)
    src = make_source(tmp_path)
    # b.bin's data goes in first and alone: in one backup, b.bin's first chunk could share a pack
    # with a.bin's short last chunk, whichever order the savers happened to store them in.
    only_b = backup(cli, repo_dir, src / "dir")
    assert cli("-r", str(repo_dir), "forget", only_b).exit_code == 0
    snap = backup(cli, repo_dir, src)
    repo = open_repo(repo_dir)
    repo.load_index()
    from cairn.files.tree import decode_tree

    def node(tree: bytes, name: bytes):  # type: ignore[no-untyped-def]
        return next(n for n in decode_tree(repo.load_blob(tree), "t") if n.name == name)

    tree = repo.load_snapshot(bytes.fromhex(snap)).root
    for part in src.relative_to("/").parts:
        tree = node(tree, part.encode()).subtree
    lost = node(node(tree, b"dir").subtree, b"b.bin").content[0]
    lost_pack = repo.lookup(lost).pack_id
    assert all(repo.lookup(b).pack_id != lost_pack for b in node(tree, b"a.bin").content)
    (repo_dir / "data" / lost_pack.hex()[:2] / lost_pack.hex()).unlink()
    assert cli("-r", str(repo_dir), "repair", "index").exit_code == 0
    assert check(open_repo(repo_dir), CheckOptions()).errors  # the snapshot names a lost blob

    dry = json.loads(cli("-r", str(repo_dir), "--json", "repair", "snapshots", "--dry-run").stdout)
    assert len(dry["repaired"]) == 1 and dry["repaired"][0]["new_id"] is None
    result = cli("-r", str(repo_dir), "--json", "repair", "snapshots", "--forget")
    assert result.exit_code == 0, result.stderr
    repaired = json.loads(result.stdout)["repaired"][0]
    assert repaired["old_id"] == snap and any(p.endswith("/dir/b.bin") for p in repaired["damaged"])
    assert check(open_repo(repo_dir), CheckOptions(read_data=True)).errors == []
    listed = json.loads(cli("-r", str(repo_dir), "--json", "snapshots").stdout)
    assert [s["id"] for s in listed] == [repaired["new_id"]]
    assert "repaired" in listed[0]["tags"] and listed[0]["original"] == snap
    assert listed[0]["summary"]["damaged_count"] == len(repaired["damaged"])
    target = tmp_path / "out"
    assert cli("-r", str(repo_dir), "restore", "latest", "--target", str(target)).exit_code == 0
    restored = target / src.relative_to("/")
    assert (restored / "dir" / "b.bin.damaged").exists() and not (restored / "dir" / "b.bin").exists()
    assert len((restored / "dir" / "b.bin.damaged").read_bytes()) < 600_000
    assert (restored / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    again = json.loads(cli("-r", str(repo_dir), "--json", "repair", "snapshots").stdout)
    assert again["repaired"] == [] and again["intact"] == 1


def test_repair_index_in_an_append_only_repository_keeps_the_old_index_objects(
    cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_dir = tmp_path / "repo"
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    made = cli("-r", str(repo_dir), "init", "--append-only", *FAST_KDF_ARGS)
    assert made.exit_code == 0, made.stderr
    src = make_source(tmp_path)
    first = backup(cli, repo_dir, src)
    old = {p.name for p in (repo_dir / "index").iterdir()}
    result = cli("-r", str(repo_dir), "--json", "repair", "index")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["removed_indexes"] == 0 and data["packs"] >= 1
    now = {p.name for p in (repo_dir / "index").iterdir()}
    assert old < now  # the old objects stay (superseded), one new object names every pack
    assert check(open_repo(repo_dir), CheckOptions(read_data=True)).errors == []
    target = tmp_path / "out"
    assert cli("-r", str(repo_dir), "restore", first[:8], "--target", str(target)).exit_code == 0
    assert (target / src.relative_to("/") / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
