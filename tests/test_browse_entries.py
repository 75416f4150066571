"""How entries are shown (escaping, mode strings, times, JSON), and entry types beyond files and
folders, on snapshots built by hand from tree blobs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from conftest import PASSWORD, CliRun
from cairn.errors import PartialSuccess
from cairn.files.tree import DIR, FILE, Node, encode_tree
from cairn.ops.browse import Entry, display, iso_time, mode_string
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend

T0 = 1_600_000_000_123_456_789


def test_display_escapes_what_could_mislead_a_reader() -> None:
    assert display(b"plain name.txt") == "plain name.txt"
    assert display("été 😀".encode()) == "été 😀"  # UTF-8 stays readable
    assert display(b"caf\xe9") == "caf\\xe9"
    assert display(b"a\nb\tc\rd\x1b[31m\x7f") == "a\\nb\\tc\\rd\\x1b[31m\\x7f"
    assert display("c1\u0085".encode()) == "c1\\x85"
    assert display(b"back\\slash") == "back\\\\slash"  # so "\\xe9" typed in a name stays distinguishable
    assert display(b"back\\xe9") != display(b"back\xe9")


def test_mode_strings_follow_ls() -> None:
    assert mode_string(Node(name=b"f", type=FILE, mode=0o644)) == "-rw-r--r--"
    assert mode_string(Node(name=b"d", type=DIR, mode=0o1777)) == "drwxrwxrwt"
    assert mode_string(Node(name=b"s", type=FILE, mode=0o6750)) == "-rwsr-s---"
    assert mode_string(Node(name=b"l", type="symlink", mode=0o777)) == "lrwxrwxrwx"
    assert mode_string(Node(name=b"p", type="fifo", mode=0o600)) == "prw-------"
    assert mode_string(Node(name=b"c", type="chardev", mode=0o666)) == "crw-rw-rw-"
    assert mode_string(Node(name=b"b", type="blockdev", mode=0o660)) == "brw-rw----"
    assert mode_string(Node(name=b"x", type="door", mode=0o644)) == "?rw-r--r--"


def test_iso_time_keeps_every_nanosecond_and_the_zone() -> None:
    text = iso_time(T0)
    assert text[19:29] == ".123456789" and text[29] in "+-" and len(text) == 35
    assert iso_time(-1)[19:29] == ".999999999"  # one ns before the epoch


def test_entry_json_for_a_file_and_a_folder() -> None:
    blob = bytes(32)
    file = Entry(b"/a/caf\xe9", Node(name=b"caf\xe9", type=FILE, mode=0o640, uid=1000, gid=100, user="me",
                                      group="users", mtime=T0, atime=T0 + 1, ctime=T0 + 2, size=5, content=[blob]))
    data = file.to_json()
    assert data["path"] == "/a/caf\\xe9" and data["path_hex"] == b"/a/caf\xe9".hex()
    assert data["name"] == "caf\\xe9" and data["name_hex"] == "636166e9"
    assert (data["type"], data["mode"], data["permissions"], data["size"], data["blobs"]) == (
        "file", 0o640, "-rw-r-----", 5, 1)
    assert (data["uid"], data["gid"], data["user"], data["group"]) == (1000, 100, "me", "users")
    assert (data["mtime_ns"], data["atime_ns"], data["ctime_ns"]) == (T0, T0 + 1, T0 + 2)
    assert "content" not in data and "subtree" not in data
    folder = Entry(b"/a", Node(name=b"a", type=DIR, subtree=b"\x01" * 32)).to_json()
    assert folder["subtree"] == "01" * 32 and "size" not in folder and "path_hex" not in folder
    json.dumps(data, ensure_ascii=False).encode("utf-8")  # always encodable, whatever the name


@pytest.fixture
def odd_repo(repo_dir: Path) -> tuple[Path, str]:
    """A snapshot holding a FIFO and an entry of a type this version does not know."""
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    data, _ = repo.save_blob(BlobType.DATA, b"hello")
    inner, _ = repo.save_blob(BlobType.TREE, encode_tree([
        Node(name=b"door", type="door", mode=0o644, mtime=T0),
        Node(name=b"file", type=FILE, mode=0o644, mtime=T0, size=5, content=[data]),
        Node(name=b"pipe", type="fifo", mode=0o600, mtime=T0, user="me", group="us"),
    ]))
    root, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(name=b"d", type=DIR, mode=0o755, subtree=inner)]))
    repo.flush()
    snap = repo.save_snapshot(Snapshot(kind="files", root=root, paths=[b"/d"], host="h", user="u"))
    return repo_dir, snap.hex()


def test_ls_shows_other_entry_types(odd_repo: tuple[Path, str], cli: CliRun) -> None:
    repo_dir, _ = odd_repo
    result = cli("-r", str(repo_dir), "ls", "-l", "latest")
    assert result.exit_code == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [(line[0], line[-1]) for line in lines] == [
        ("drwxr-xr-x", "/d"), ("?rw-r--r--", "/d/door"), ("-rw-r--r--", "/d/file"), ("prw-------", "/d/pipe"),
    ]
    assert lines[3][1:4] == ["me", "us", "0"]


def test_dump_puts_a_fifo_in_the_tar_and_names_what_it_cannot(odd_repo: tuple[Path, str], cli: CliRun) -> None:
    repo_dir, _ = odd_repo
    result = cli("-r", str(repo_dir), "dump", "latest", "/d")
    assert result.exit_code == PartialSuccess.exit_code
    assert "cairn: warning: not dumped /d/door: entry type 'door' cannot go into a tar archive" in result.stderr
    with tarfile.open(fileobj=io.BytesIO(result.stdout_bytes), mode="r:") as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert sorted(members) == ["d", "d/file", "d/pipe"]
    assert members["d/pipe"].isfifo() and members["d/pipe"].mode == 0o600
    assert members["d/pipe"].uname == "me" and members["d/pipe"].gname == "us"


def test_diff_sees_a_type_it_does_not_know_change(odd_repo: tuple[Path, str], repo_dir: Path, cli: CliRun) -> None:
    _, first = odd_repo
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    inner, _ = repo.save_blob(BlobType.TREE, encode_tree([
        Node(name=b"door", type="fifo", mode=0o644, mtime=T0),
        Node(name=b"pipe", type="fifo", mode=0o644, mtime=T0, user="me", group="us"),
    ]))
    root, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(name=b"d", type=DIR, mode=0o755, subtree=inner)]))
    repo.flush()
    second = repo.save_snapshot(Snapshot(kind="files", root=root, paths=[b"/d"], host="h", user="u")).hex()
    result = cli("-r", str(repo_dir), "diff", first, second)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[:3] == ["T    /d/door", "-    /d/file", "U    /d/pipe  (mode)"]
    assert "Others:               0 new,        0 removed" in result.stdout
