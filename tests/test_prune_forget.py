"""`cairn forget --prune`: forget, then prune in the same command; one JSON document with
--json; with --dry-run, what that prune would do, as if the snapshots were already gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST_KDF_ARGS, PASSWORD, CliRun, one_line_error
from cairn.errors import DamagedObject, UsageError
from test_prune import History, storage_bytes

KiB = 1024


def three_snapshots(cli: CliRun, repo_dir: Path, tmp_path: Path) -> tuple[History, list[str]]:
    """Three backups; each replaces one big file, so forgetting the oldest frees its data (the
    first pack also holds a file the others share: prune repacks it)."""
    history = History(cli, repo_dir, tmp_path, seed=7)
    history.write("kept/shared.bin", 200 * KiB)
    ids = []
    for _ in range(3):
        history.write("changing.bin", 300 * KiB)
        ids.append(history.backup())
    return history, ids


def forget_prune(cli: CliRun, repo_dir: Path, *args: str) -> dict:  # type: ignore[type-arg]
    result = cli("-r", str(repo_dir), "--json", "forget", "--keep-last", "2", "--prune", "--max-unused", "0%", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # the whole of stdout is one document


def test_forget_prune_frees_the_space_and_keeps_the_rest_restorable(cli: CliRun, repo_dir: Path, tmp_path: Path) -> None:
    history, ids = three_snapshots(cli, repo_dir, tmp_path)
    before = storage_bytes(repo_dir)
    result = cli("-r", str(repo_dir), "forget", "--keep-last", "2", "--prune", "--max-unused", "0%")
    assert result.exit_code == 0, result.stderr
    assert "removed 1 snapshots" in result.stdout and "deleted 1 packs" in result.stdout
    history.expected.pop(ids[0])
    assert before - storage_bytes(repo_dir) >= 300 * KiB  # the forgotten file's bytes are gone
    history.verify()


def test_json_forget_prune_is_one_document(cli: CliRun, repo_dir: Path, tmp_path: Path) -> None:
    _, ids = three_snapshots(cli, repo_dir, tmp_path)
    data = forget_prune(cli, repo_dir)
    assert set(data) == {"forget", "prune"}
    assert data["forget"]["removed"] == [ids[0]] and data["forget"]["dry_run"] is False
    assert data["prune"]["dry_run"] is False and data["prune"]["snapshots"] == 2
    assert data["prune"]["deleted_packs"] == 1 and data["prune"]["deleted_bytes"] >= 300 * KiB
    # Without --prune, forget's document is as it always was.
    plain = json.loads(cli("-r", str(repo_dir), "--json", "forget", "--keep-last", "2").stdout)
    assert set(plain) == {"dry_run", "groups", "removed"}


def test_dry_run_shows_the_prune_a_real_run_then_does(cli: CliRun, repo_dir: Path, tmp_path: Path) -> None:
    history, ids = three_snapshots(cli, repo_dir, tmp_path)
    files = sorted(p.name for p in repo_dir.rglob("*") if p.is_file())
    text = cli("-r", str(repo_dir), "forget", "--keep-last", "2", "--prune", "--max-unused", "0%", "--dry-run")
    assert text.exit_code == 0, text.stderr
    assert "would remove 1 snapshots" in text.stdout
    assert "2 snapshots use" in text.stdout and "would drop 0 unused packs, repack 1" in text.stdout
    predicted = forget_prune(cli, repo_dir, "--dry-run")
    assert predicted["forget"]["dry_run"] and predicted["forget"]["removed"] == []
    assert predicted["prune"]["dry_run"] and predicted["prune"]["snapshots"] == 2
    assert sorted(p.name for p in repo_dir.rglob("*") if p.is_file()) == files  # nothing changed
    done = forget_prune(cli, repo_dir)
    for key in ("snapshots", "used_blobs", "unused_bytes", "packs_dropped", "packs_repacked", "repacked_bytes"):
        assert predicted["prune"][key] == done["prune"][key], key
    history.expected.pop(ids[0])
    history.verify()


def test_dry_run_prune_works_on_an_append_only_repository(
    cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    path = tmp_path / "ao"
    assert cli("-r", str(path), "init", "--append-only", *FAST_KDF_ARGS).exit_code == 0
    three_snapshots(cli, path, tmp_path)
    assert forget_prune(cli, path, "--dry-run")["prune"]["packs_repacked"] == 1
    refused = cli("-r", str(path), "forget", "--keep-last", "2", "--prune")
    assert refused.exit_code == 2 and "append-only" in one_line_error(refused)


def test_a_failing_prune_still_prints_what_forget_did(cli: CliRun, repo_dir: Path, tmp_path: Path) -> None:
    _, ids = three_snapshots(cli, repo_dir, tmp_path)
    next(p for p in (repo_dir / "data").rglob("*") if p.is_file()).unlink()  # an indexed pack lost
    result = cli("-r", str(repo_dir), "--json", "forget", "--keep-last", "2", "--prune")
    assert result.exit_code == DamagedObject.exit_code
    assert "repair index" in one_line_error(result)
    data = json.loads(result.stdout)
    assert data["forget"]["removed"] == [ids[0]] and data["prune"] is None


def test_only_a_dry_run_may_ignore_snapshots(repo_dir: Path) -> None:
    from cairn.ops.prune import PruneOptions, prune
    from test_prune import open_repo

    with pytest.raises(UsageError, match="only in a dry run"):
        prune(open_repo(repo_dir), PruneOptions(ignore_snapshots=frozenset({bytes(32)})))
