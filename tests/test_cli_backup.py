"""`cairn backup`, `restore` and `check` end to end through the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import PASSWORD, CliRun, one_line_error
from cairn.errors import CheckFailed, NotFound, PartialSuccess, RepositoryNotFound

AS_ROOT = os.geteuid() == 0


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_first_backup_creates_the_default_repository_and_explains_the_password(
    isolated_env: Path, data: Path, cli: CliRun
) -> None:
    env = {"CAIRN_PASSWORD": PASSWORD}
    first = cli("backup", str(data), env=env)  # the real Argon2id defaults: about 0.15 s
    assert first.exit_code == 0, first.stderr
    default = isolated_env / "cairn" / "repo"
    assert (default / "config").is_file()
    assert f"created a new repository at {default}" in first.stderr
    assert "cannot be recovered" in first.stderr and "lost" in first.stderr
    assert "password manager" in first.stderr and "cairn key add" in first.stderr
    assert first.stdout.startswith("snapshot ") and " saved: 2 files, " in first.stdout

    second = cli("backup", str(data), env=env)
    assert second.exit_code == 0
    assert second.stderr == ""  # the notice is printed once, when the repository is created
    # Nothing changed, so nothing is read again. (Bytes added may not be 0: the folders above the
    # backed-up path are recorded too, and other tests touch /tmp's folders meanwhile.)
    assert " 0 B read, " in second.stdout and "files:   0 new, 0 changed, 2 unchanged" in second.stdout


def test_backup_to_a_missing_explicit_repository_is_not_created(tmp_path: Path, data: Path, cli: CliRun) -> None:
    result = cli("-r", str(tmp_path / "typo"), "backup", str(data), env={"CAIRN_PASSWORD": PASSWORD})
    assert result.exit_code == RepositoryNotFound.exit_code
    assert one_line_error(result) == f"cairn: no repository at {tmp_path / 'typo'}: run 'cairn init' first"
    assert not (tmp_path / "typo").exists()


def test_dry_run_does_not_create_the_default_repository(isolated_env: Path, data: Path, cli: CliRun) -> None:
    result = cli("backup", "--dry-run", str(data), env={"CAIRN_PASSWORD": PASSWORD})
    assert result.exit_code == RepositoryNotFound.exit_code
    assert not (isolated_env / "cairn").exists()


def test_backup_then_restore(repo_dir: Path, data: Path, tmp_path: Path, cli: CliRun) -> None:
    backed = cli("-r", str(repo_dir), "--json", "backup", str(data), "--tag", "daily,docs", "--host", "box")
    assert backed.exit_code == 0, backed.stderr
    summary = json.loads(backed.stdout)
    assert summary["files"] == 2 and summary["skipped"] == [] and summary["repository_created"] is False
    snap_id = summary["snapshot_id"]

    listed = json.loads(cli("-r", str(repo_dir), "--json", "snapshots").stdout)
    assert [(s["id"], s["host"], s["tags"], s["paths"]) for s in listed] == [
        (snap_id, "box", ["daily", "docs"], [str(data)])
    ]

    target = tmp_path / "restored"
    restored = cli("-r", str(repo_dir), "restore", snap_id[:8], "--target", str(target))
    assert restored.exit_code == 0, restored.stderr
    assert restored.stdout.startswith("restored 2 files")
    assert tree(target / str(data).lstrip("/")) == tree(data)

    one = tmp_path / "one"
    part = cli("-r", str(repo_dir), "restore", f"latest:{data}/docs", "--target", str(one))
    assert part.exit_code == 0, part.stderr
    assert tree(one) == {"letter.txt": (data / "docs" / "letter.txt").read_bytes()}


def test_dry_run_saves_nothing(repo_dir: Path, data: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "backup", "--dry-run", str(data))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("dry run: nothing saved: 2 files")
    assert cli("-r", str(repo_dir), "snapshots").stdout.strip() == "no snapshots"


def test_backup_of_a_missing_path_is_a_usage_error(repo_dir: Path, tmp_path: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "backup", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert one_line_error(result) == f"cairn: {tmp_path / 'nope'}: no such file or directory"


def test_skipped_files_are_warned_and_exit_3(repo_dir: Path, data: Path, cli: CliRun,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import cairn.ops.backup as backup_ops

    real = backup_ops.backup

    def with_skips(repo, options, progress=None):  # type: ignore[no-untyped-def]
        result = real(repo, options, progress)
        result.skipped = [("/data/secret", "Permission denied"), ("/data/gone", "vanished during the backup")]
        return result

    monkeypatch.setattr(backup_ops, "backup", with_skips)
    result = cli("-r", str(repo_dir), "backup", str(data))
    assert result.exit_code == PartialSuccess.exit_code == 3
    assert result.stdout.startswith("snapshot ")  # the summary is printed, the snapshot saved
    assert result.stderr.splitlines() == [
        "cairn: warning: skipped /data/secret: Permission denied",
        "cairn: warning: skipped /data/gone: vanished during the backup",
        "cairn: 2 item(s) could not be read and were left out of the snapshot",
    ]


@pytest.mark.skipif(AS_ROOT, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_skipped_for_real(repo_dir: Path, data: Path, cli: CliRun) -> None:
    secret = data / "secret"
    secret.write_text("no")
    secret.chmod(0)
    try:
        result = cli("-r", str(repo_dir), "backup", str(data))
    finally:
        secret.chmod(0o600)
    assert result.exit_code == 3
    assert f"cairn: warning: skipped {secret}" in result.stderr


def test_restore_of_an_unknown_snapshot(repo_dir: Path, tmp_path: Path, cli: CliRun) -> None:
    result = cli("-r", str(repo_dir), "restore", "abcd1234", "--target", str(tmp_path / "t"))
    assert result.exit_code == NotFound.exit_code
    assert one_line_error(result) == "cairn: no snapshot abcd1234"
    assert cli("-r", str(repo_dir), "restore", "latest").exit_code == 2  # --target is required


def test_check_passes_then_finds_damage(repo_dir: Path, data: Path, cli: CliRun) -> None:
    pytest.importorskip("cairn.ops.check")
    assert cli("-r", str(repo_dir), "backup", str(data)).exit_code == 0
    clean = cli("-r", str(repo_dir), "check", "--read-data")
    assert clean.exit_code == 0, clean.stderr
    assert "no errors found" in clean.stdout

    pack = next(p for p in (repo_dir / "data").rglob("*") if p.is_file())
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 0xFF
    pack.write_bytes(bytes(raw))
    damaged = cli("-r", str(repo_dir), "check", "--read-data")
    assert damaged.exit_code == CheckFailed.exit_code == 20
    errors = [line for line in damaged.stderr.splitlines() if line.startswith("error: ")]
    assert errors and pack.name[:12] in " ".join(errors)
    assert damaged.stderr.strip().splitlines()[-1].startswith("cairn: the repository is damaged")

    as_json = cli("-r", str(repo_dir), "--json", "check", "--read-data-subset", "100%")
    assert as_json.exit_code == 20
    assert json.loads(as_json.stdout)["ok"] is False


def test_check_subset_must_be_a_percentage(repo_dir: Path, cli: CliRun) -> None:
    pytest.importorskip("cairn.ops.check")
    not_a_number = cli("-r", str(repo_dir), "check", "--read-data-subset", "lots")
    assert not_a_number.exit_code == 2
    assert one_line_error(not_a_number) == "cairn: --read-data-subset wants a percentage such as 10%, not 'lots'"
    for bad in ("0%", "150"):
        result = cli("-r", str(repo_dir), "check", "--read-data-subset", bad)
        assert result.exit_code == 2, bad
        assert "subset must be between 0 and 100 percent" in one_line_error(result)
