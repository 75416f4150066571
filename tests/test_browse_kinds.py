"""Every kind of entry through ls, diff and dump: symlinks, hard links, FIFOs, devices, xattrs,
ACLs, odd and deep names. A dumped tar extracted by GNU tar is compared with the source by rsync
(`-naAXHc`: content, types, modes, owners, mtimes, ACLs, xattrs, hard-link groups, devices)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PASSWORD, CliRun
from test_browse_ls import snapshot
from test_restore_support import AS_ROOT, MiB, make_every_kind, rsync_differences
from cairn.ops.diff import Change, DiffOptions, diff
from cairn.repo.repository import Repository
from cairn.storage.local import LocalBackend

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("tar", "rsync", "setfacl")), reason="needs GNU tar, rsync and setfacl"
)


@pytest.fixture
def every_kind(repo_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    if not shutil.which("setfacl"):
        pytest.skip("needs setfacl")
    src = tmp_path / "src"
    make_every_kind(src, sparse_size=8 * MiB)
    return src, snapshot(repo_dir, src)


@needs_tools
def test_ls_long_and_json_show_links_devices_and_attributes(every_kind: tuple[Path, str], repo_dir: Path,
                                                            cli: CliRun) -> None:
    src, _ = every_kind
    long = cli("-r", str(repo_dir), "ls", "-l", f"latest:{src}")
    assert long.exit_code == 0, long.stderr
    lines = {line.split(" -> ")[0].rsplit(" ", 1)[-1]: line for line in long.stdout.splitlines()}
    rel = lines[f"{src}/files/rel-link"].split()
    assert (rel[0], rel[3], rel[6:]) == ("lrwxrwxrwx", "9", [f"{src}/files/rel-link", "->", "small.txt"])
    assert lines[f"{src}/files/binary-target"].endswith(" -> target-\\xff\\xfe\\x80")
    assert lines[f"{src}/specials/fifo"].startswith("prw-r----- ")
    if AS_ROOT:
        assert lines[f"{src}/specials/null-like"].startswith("crw-")
        assert " 1, 3 " in lines[f"{src}/specials/null-like"]
        assert " 7, 200 " in lines[f"{src}/specials/loop-like"]

    as_json = cli("-r", str(repo_dir), "--json", "ls", f"latest:{src}")
    nodes = {n["path"]: n for n in map(json.loads, as_json.stdout.splitlines()) if n["struct_type"] == "node"}
    small = nodes[f"{src}/files/small.txt"]
    xattrs = {x["name"]: x for x in small["xattrs"]}
    assert xattrs["user.note"] == {"name": "user.note", "value": "hello"}
    assert xattrs["user.binary"] == {"name": "user.binary", "value_hex": bytes(range(256)).hex()}
    acl = {x["name"] for x in nodes[f"{src}/acl-dir"]["xattrs"]}
    assert {"system.posix_acl_access", "system.posix_acl_default"} <= acl
    binary = nodes[f"{src}/files/binary-target"]
    assert binary["type"] == "symlink" and bytes.fromhex(binary["target_hex"]) == b"target-\xff\xfe\x80"
    pair = nodes[f"{src}/links/a/pair"]["links"]
    assert pair["nlink"] == 2 and pair == nodes[f"{src}/links/b/pair-too"]["links"]
    if AS_ROOT:
        assert (nodes[f"{src}/specials/loop-like"]["major"], nodes[f"{src}/specials/loop-like"]["minor"]) == (7, 200)


@needs_tools
def test_a_dump_extracted_by_tar_is_what_was_backed_up(every_kind: tuple[Path, str], repo_dir: Path,
                                                       tmp_path: Path) -> None:
    src, _ = every_kind
    from cairn.ops.dump import DumpOptions, dump

    archive = tmp_path / "dump.tar"
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    with open(archive, "wb") as out:
        result = dump(repo, DumpOptions(f"latest:{src}"), lambda fmt: out)
    assert result.format == "tar" and result.skipped == []
    target = tmp_path / "extracted"
    target.mkdir()
    tar = subprocess.run(
        ["tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-f", str(archive),
         "-C", str(target)], capture_output=True, text=True,
    )
    assert tar.returncode == 0, tar.stderr
    assert rsync_differences(src, target / str(src).lstrip("/")) == []


def test_diff_sees_a_retargeted_link_a_new_hard_link_and_changed_xattrs(tmp_path: Path, repo_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(b"content")
    os.symlink("data", src / "link")
    os.setxattr(src / "data", "user.colour", b"blue")
    first = snapshot(repo_dir, src)
    os.unlink(src / "link")
    os.symlink("elsewhere", src / "link")
    os.setxattr(src / "data", "user.colour", b"green")
    os.link(src / "data", src / "data-again")
    second = snapshot(repo_dir, src)

    found: list[Change] = []
    diff(Repository.open(LocalBackend(repo_dir), PASSWORD.encode()), DiffOptions(f"{first}:{src}", f"{second}:{src}"),
         found.append)
    by_path = {c.path: c for c in found}
    base = os.fsencode(src)
    assert by_path[base + b"/link"].kind == "M"  # a symlink's content is its target
    data = by_path[base + b"/data"]
    assert data.kind == "U" and set(data.fields) == {"xattrs", "links"}
    assert by_path[base + b"/data-again"].kind == "+"
