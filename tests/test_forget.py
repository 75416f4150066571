"""`cairn forget`, `cairn tag` and the `snapshots` filters on real repositories, through the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import FAST_KDF, FAST_KDF_ARGS, PASSWORD, CliRun, one_line_error
from cairn.files.tree import encode_tree
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend


def open_repo(path: Path) -> Repository:
    return Repository.open(LocalBackend(path), PASSWORD.encode())


def add_snapshots(path: Path, specs: list[tuple[str, str, str, tuple[str, ...], str]]) -> dict[str, str]:
    """(local time, host, path, tags, kind) each; returns local time -> snapshot id (hex)."""
    repo = open_repo(path)
    ids = {}
    with repo.lock():
        root, _ = repo.save_blob(BlobType.TREE, encode_tree([]))
        repo.flush()
        for when, host, where, tags, kind in specs:
            local = datetime.fromisoformat(when).replace(tzinfo=timezone(timedelta(hours=2)))
            snap = Snapshot(
                kind=kind, root=root, paths=[where.encode()], host=host, user="u",
                time_ns=int(local.timestamp()) * 10**9, tz_offset=7200, tags=list(tags),
            )
            ids[when] = repo.save_snapshot(snap).hex()
    return ids


HISTORY = [
    ("2024-01-01 10:00", "laptop", "/home", (), "files"),
    ("2024-01-02 10:00", "laptop", "/home", ("keep",), "files"),
    ("2024-01-03 10:00", "laptop", "/home", (), "files"),
    ("2024-01-03 12:00", "laptop", "/home", (), "files"),
    ("2024-01-01 11:00", "server", "/srv", (), "files"),
    ("2024-01-03 11:00", "server", "/srv", (), "files"),
    ("2024-01-02 09:00", "server", "disk", (), "image"),
]


def listed(cli: CliRun, repo: Path, *args: str) -> list[dict]:
    result = cli("-r", str(repo), "--json", "snapshots", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_dry_run_shows_each_group_with_reasons_and_deletes_nothing(cli: CliRun, repo_dir: Path) -> None:
    ids = add_snapshots(repo_dir, HISTORY)
    result = cli("-r", str(repo_dir), "forget", "--keep-daily", "2", "--dry-run")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "snapshots for host laptop; paths /home" in text and "snapshots for host server; paths /srv" in text
    assert "daily snapshot" in text and "would remove 2 snapshots" in text
    assert len(listed(cli, repo_dir)) == len(HISTORY)
    data = json.loads(cli("-r", str(repo_dir), "--json", "forget", "--keep-daily", "2", "-n").stdout)
    laptop = next(g for g in data["groups"] if g["group"]["host"] == "laptop")
    assert [k["id"] for k in laptop["keep"]] == [ids["2024-01-03 12:00"], ids["2024-01-02 10:00"]]
    assert [k["reasons"] for k in laptop["keep"]] == [["daily snapshot"], ["daily snapshot"]]
    assert {s["id"] for s in laptop["remove"]} == {ids["2024-01-03 10:00"], ids["2024-01-01 10:00"]}
    assert data["removed"] == [] and data["dry_run"] is True


def test_forget_applies_the_policy_per_host_and_paths(cli: CliRun, repo_dir: Path) -> None:
    ids = add_snapshots(repo_dir, HISTORY)
    result = cli("-r", str(repo_dir), "forget", "--keep-last", "1", "--keep-tag", "keep")
    assert result.exit_code == 0, result.stderr
    left = {s["id"] for s in listed(cli, repo_dir)}
    assert left == {ids["2024-01-03 12:00"], ids["2024-01-02 10:00"], ids["2024-01-03 11:00"], ids["2024-01-02 09:00"]}
    assert "tags keep" in result.stdout


def test_one_group_and_filters(cli: CliRun, repo_dir: Path) -> None:
    ids = add_snapshots(repo_dir, HISTORY)
    result = cli("-r", str(repo_dir), "forget", "--keep-last", "2", "--group-by", "", "--kind", "files")
    assert result.exit_code == 0, result.stderr
    left = {s["id"] for s in listed(cli, repo_dir)}
    # one group of the six file snapshots keeps the 2 newest; the image is not considered
    assert left == {ids["2024-01-03 12:00"], ids["2024-01-03 11:00"], ids["2024-01-02 09:00"]}


def test_forget_by_id_and_unlimited(cli: CliRun, repo_dir: Path) -> None:
    ids = add_snapshots(repo_dir, HISTORY)
    result = cli("-r", str(repo_dir), "forget", ids["2024-01-01 10:00"][:8], ids["2024-01-01 11:00"])
    assert result.exit_code == 0, result.stderr
    assert len(listed(cli, repo_dir)) == len(HISTORY) - 2
    result = cli("-r", str(repo_dir), "forget", "--keep-daily", "unlimited", "--host", "laptop")
    assert result.exit_code == 0, result.stderr
    assert {s["id"] for s in listed(cli, repo_dir, "--host", "laptop")} == {ids["2024-01-03 12:00"], ids["2024-01-02 10:00"]}


def test_refusals(cli: CliRun, repo_dir: Path) -> None:
    add_snapshots(repo_dir, HISTORY)
    result = cli("-r", str(repo_dir), "forget")
    assert result.exit_code == 2 and "no policy given" in one_line_error(result)
    result = cli("-r", str(repo_dir), "forget", "--keep-last", "-1")
    assert result.exit_code == 2
    result = cli("-r", str(repo_dir), "forget", "--keep-within", "3w")
    assert result.exit_code == 2 and "not a duration" in result.stderr
    result = cli("-r", str(repo_dir), "forget", "--keep-last", "1", "abcd1234")
    assert result.exit_code == 2 and "not both" in one_line_error(result)
    assert len(listed(cli, repo_dir)) == len(HISTORY)


def test_snapshots_filters_grouping_and_latest(cli: CliRun, repo_dir: Path) -> None:
    ids = add_snapshots(repo_dir, HISTORY)
    assert [s["id"] for s in listed(cli, repo_dir, "--kind", "image")] == [ids["2024-01-02 09:00"]]
    assert [s["id"] for s in listed(cli, repo_dir, "--tag", "keep")] == [ids["2024-01-02 10:00"]]
    assert len(listed(cli, repo_dir, "--path", "/srv")) == 2
    latest = listed(cli, repo_dir, "--latest", "1")
    assert {s["id"] for s in latest} == {ids["2024-01-03 12:00"], ids["2024-01-03 11:00"], ids["2024-01-02 09:00"]}
    groups = listed(cli, repo_dir, "--group-by", "host")
    assert [(g["group"]["host"], len(g["snapshots"])) for g in groups] == [("laptop", 4), ("server", 3)]
    text = cli("-r", str(repo_dir), "snapshots", "--group-by", "host", "--latest", "2").stdout
    assert "snapshots for host laptop" in text and text.count("2 snapshots") == 2


def test_tag_writes_a_new_snapshot_linked_to_the_original(cli: CliRun, repo_dir: Path) -> None:
    ids = add_snapshots(repo_dir, HISTORY[:2])
    first = ids["2024-01-01 10:00"]
    result = cli("-r", str(repo_dir), "--json", "tag", "--add", "a", "--add", "b", first[:8])
    assert result.exit_code == 0, result.stderr
    change = json.loads(result.stdout)["changed"][0]
    assert change["old_id"] == first and change["tags"] == ["a", "b"]
    snaps = {s["id"]: s for s in listed(cli, repo_dir)}
    assert first not in snaps and snaps[change["new_id"]]["original"] == first
    result = cli("-r", str(repo_dir), "--json", "tag", "--remove", "a", change["new_id"][:8])
    again = json.loads(result.stdout)["changed"][0]
    snaps = {s["id"]: s for s in listed(cli, repo_dir)}
    assert snaps[again["new_id"]]["original"] == first and snaps[again["new_id"]]["tags"] == ["b"]
    # Without ids: every snapshot the filters pass; unchanged ones are left alone.
    result = cli("-r", str(repo_dir), "tag", "--set", "x", "--host", "laptop")
    assert "changed 2 snapshots, 0 unchanged" in result.stdout
    result = cli("-r", str(repo_dir), "tag", "--set", "x")
    assert "changed 0 snapshots, 2 unchanged" in result.stdout
    assert cli("-r", str(repo_dir), "tag", "--clear", "latest").exit_code == 0
    assert cli("-r", str(repo_dir), "tag", "latest").exit_code == 2  # nothing to do
    assert cli("-r", str(repo_dir), "tag", "--set", "a", "--add", "b").exit_code == 2


def test_an_append_only_repository_refuses_every_deletion(cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ao"
    monkeypatch.setenv("CAIRN_PASSWORD", PASSWORD)
    created = cli("-r", str(path), "init", "--append-only", *FAST_KDF_ARGS)
    assert created.exit_code == 0, created.stderr
    Repository.open(LocalBackend(path), PASSWORD.encode()).add_key(b"second", FAST_KDF)
    ids = add_snapshots(path, HISTORY[:2])
    for args in (
        ("forget", "--keep-last", "1"), ("prune",), ("tag", "--add", "x", "latest"),
        ("forget", ids["2024-01-01 10:00"]),
    ):
        result = cli("-r", str(path), *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert "append-only" in one_line_error(result)
    keys = json.loads(cli("-r", str(path), "--json", "key", "list").stdout)
    other = next(k for k in keys if not k.get("current"))
    result = cli("-r", str(path), "key", "remove", other["id"][:8])
    assert result.exit_code == 2 and "append-only" in one_line_error(result)
    # Looking is allowed: a dry run deletes nothing.
    assert cli("-r", str(path), "forget", "--keep-last", "1", "--dry-run").exit_code == 0
    assert cli("-r", str(path), "prune", "--dry-run").exit_code == 0
    assert len(listed(cli, path)) == 2
