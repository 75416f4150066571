"""`cairn dump`: a file's exact bytes, and a folder as a tar stream that `tar -x` turns back into
the same bytes, modes, times and names."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import PASSWORD, CliRun, one_line_error
from test_browse_ls import ODD, T0, bpath, snapshot, write
from cairn.errors import DamagedObject, NotFound, UsageError
from cairn.files.tree import DIR, FILE, Node, encode_tree
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.storage.local import LocalBackend

MiB = 1024 * 1024


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    write(root / "big.bin", os.urandom(10 * MiB), 0o640, T0 + 1)
    write(root / "sub" / "script.sh", b"#!/bin/sh\necho hi\n", 0o755, T0 + 2)
    write(root / "sub" / "deeper" / "note.txt", b"a note\n", 0o600, T0 + 3)
    write(root / "sub" / "empty-file", b"", 0o444, T0 + 4)
    write(bpath(root / "sub", ODD), b"latin-1 name", 0o644, T0 + 5)
    for folder, mode, mtime in [(root / "sub" / "deeper", 0o700, T0 + 10), (root / "sub", 0o750, T0 + 11),
                                (root / "empty", 0o711, T0 + 12), (root, 0o755, T0 + 13)]:
        os.chmod(folder, mode)
        os.utime(folder, ns=(mtime, mtime))
    return root


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_file_comes_out_byte_exact(repo_dir: Path, src: Path, cli: CliRun, tmp_path: Path) -> None:
    snap = snapshot(repo_dir, src)
    result = cli("-r", str(repo_dir), "dump", snap[:8], f"{src}/big.bin")
    assert result.exit_code == 0, result.stderr
    assert sha256(result.stdout_bytes) == sha256((src / "big.bin").read_bytes())
    by_colon = cli("-r", str(repo_dir), "dump", f"latest:{src}/sub/deeper/note.txt")
    assert by_colon.stdout_bytes == b"a note\n"
    empty = cli("-r", str(repo_dir), "dump", f"latest:{src}/sub/empty-file")
    assert empty.exit_code == 0 and empty.stdout_bytes == b""

    target = tmp_path / "out.bin"
    to_file = cli("-r", str(repo_dir), "dump", "latest", f"{src}/big.bin", "--target", str(target))
    assert to_file.exit_code == 0, to_file.stderr
    assert sha256(target.read_bytes()) == sha256((src / "big.bin").read_bytes())
    assert to_file.stdout.startswith(f"wrote 1 entries, 10.0 MiB to {target} (raw)")


def extracted_differences(source: Path, extracted: Path, exact_ns: bool) -> list[str]:
    """Names, types, bytes, modes and mtimes that differ between two trees."""
    found = []
    for folder, dirs, files in os.walk(os.fsencode(source)):
        for name in dirs + files:
            a = os.path.join(folder, name)
            b = os.fsencode(extracted) + a[len(os.fsencode(source)):]
            if not os.path.lexists(b):
                found.append(f"missing {b!r}")
                continue
            sa, sb = os.lstat(a), os.lstat(b)
            if sa.st_mode != sb.st_mode:
                found.append(f"mode {a!r}: {oct(sa.st_mode)} != {oct(sb.st_mode)}")
            if (sa.st_mtime_ns != sb.st_mtime_ns) if exact_ns else abs(sa.st_mtime_ns - sb.st_mtime_ns) > 1000:
                found.append(f"mtime {a!r}: {sa.st_mtime_ns} != {sb.st_mtime_ns}")
            if name in files and open(a, "rb").read() != open(b, "rb").read():
                found.append(f"content {a!r}")
    return found


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs tar")
def test_a_folder_piped_into_tar_comes_back_the_same(repo_dir: Path, src: Path, cli: CliRun, tmp_path: Path) -> None:
    snapshot(repo_dir, src)
    result = cli("-r", str(repo_dir), "dump", "latest", str(src))
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "untarred"
    out.mkdir()
    tar = subprocess.run(["tar", "-x", "-p", "-C", str(out)], input=result.stdout_bytes, capture_output=True)
    assert tar.returncode == 0, tar.stderr
    extracted = out / str(src).lstrip("/")  # entries carry their full path, as restic's dump
    assert extracted_differences(src, extracted, exact_ns=True) == []
    assert sorted(os.listdir(os.fsencode(extracted / "sub"))) == [b"caf\xe9", b"deeper", b"empty-file", b"script.sh"]
    top, copy = os.stat(src), os.stat(extracted)  # the dumped folder itself is an entry too
    assert (copy.st_mode, copy.st_mtime_ns) == (top.st_mode, top.st_mtime_ns) == (0o40755, T0 + 13)


def test_the_tar_stream_holds_pax_names_times_and_owners(repo_dir: Path, src: Path, cli: CliRun) -> None:
    snapshot(repo_dir, src)
    result = cli("-r", str(repo_dir), "dump", f"latest:{src}/sub")
    assert result.exit_code == 0, result.stderr
    with tarfile.open(fileobj=io.BytesIO(result.stdout_bytes), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as archive:
        members = {os.fsencode(m.name): m for m in archive.getmembers()}
        prefix = os.fsencode(src).lstrip(b"/") + b"/sub"
        assert sorted(members) == [prefix + s for s in
                                   [b"", b"/caf\xe9", b"/deeper", b"/deeper/note.txt", b"/empty-file", b"/script.sh"]]
        script = members[prefix + b"/script.sh"]
        st = os.stat(src / "sub" / "script.sh")
        assert script.isreg() and script.mode == 0o755 and script.size == 18
        assert script.pax_headers["mtime"] == f"{(T0 + 2) // 10**9}.{(T0 + 2) % 10**9:09d}"
        assert (script.uid, script.gid) == (st.st_uid, st.st_gid) and script.uname and script.gname
        assert members[prefix].isdir() and members[prefix].mode == 0o750
        odd = archive.extractfile(members[prefix + b"/caf\xe9"])
        assert odd is not None and odd.read() == b"latin-1 name"

    single = cli("-r", str(repo_dir), "dump", "--archive", "tar", f"latest:{src}/sub/script.sh")
    with tarfile.open(fileobj=io.BytesIO(single.stdout_bytes), mode="r:") as archive:
        assert [m.name for m in archive.getmembers()] == [str(src / "sub" / "script.sh").lstrip("/")]


def test_a_tar_stream_is_not_written_to_a_terminal(
    repo_dir: Path, src: Path, cli: CliRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot(repo_dir, src)
    monkeypatch.setattr("cairn.cli.dump_cmd.is_terminal", lambda stream: True)
    refused = cli("-r", str(repo_dir), "dump", "latest", str(src))
    assert refused.exit_code == UsageError.exit_code
    assert "a tar stream would go to the terminal" in one_line_error(refused)
    assert refused.stdout_bytes == b""
    text = cli("-r", str(repo_dir), "dump", "latest", f"{src}/sub/deeper/note.txt")  # a file is fine
    assert text.exit_code == 0 and text.stdout_bytes == b"a note\n"


def test_missing_paths_and_damaged_content_are_named(repo_dir: Path, src: Path, cli: CliRun) -> None:
    snap = snapshot(repo_dir, src)
    missing = cli("-r", str(repo_dir), "dump", "latest", f"{src}/nope")
    assert missing.exit_code == NotFound.exit_code
    assert one_line_error(missing) == f"cairn: snapshot {snap[:8]} has no {src}/nope"

    # a tree that claims more bytes than its content has: refused, not silently short
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    blob, _ = repo.save_blob(BlobType.DATA, b"short")
    inner, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(name=b"liar", type=FILE, size=99, content=[blob])]))
    root, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(name=b"d", type=DIR, subtree=inner)]))
    repo.flush()
    bad = repo.save_snapshot(Snapshot(kind="files", root=root, paths=[b"/d"], host="h", user="u")).hex()
    for args in ([f"{bad}:/d/liar"], [bad, "/d"]):
        result = cli("-r", str(repo_dir), "dump", *args)
        assert result.exit_code == DamagedObject.exit_code, args
        assert one_line_error(result) == "cairn: /d/liar: the snapshot says 99 bytes, its content has 5"


class _Sink(io.BytesIO):
    """A write-only stream that keeps nothing, counting what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: object) -> int:
        size = len(memoryview(data))  # type: ignore[arg-type]
        self.written += size
        return size


def test_dump_memory_does_not_grow_with_the_file(repo_dir: Path, tmp_path: Path) -> None:
    """A bounded number of chunks in flight (loaded ahead, sealed and opened), whatever the
    file's size: well under half of a 96 MiB file."""
    import tracemalloc

    from cairn.ops.dump import DumpOptions, dump

    folder = tmp_path / "large"
    folder.mkdir()
    size = 96 * MiB
    with open(folder / "large.bin", "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    snapshot(repo_dir, folder)
    repo = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    repo.load_index()  # the index's memory is not the dump's
    for path, fmt in ((f"{folder}/large.bin", "raw"), (str(folder), "tar")):
        sink = _Sink()
        tracemalloc.start()
        try:
            result = dump(repo, DumpOptions(f"latest:{path}"), lambda chosen: sink)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.format == fmt and result.bytes == size and sink.written >= size
        assert peak < size / 2, f"{fmt}: peak {peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB file"
