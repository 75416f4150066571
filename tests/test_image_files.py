"""Files read straight out of image snapshots (image-ls, image-dump), never restored.

The GPT and MBR test disks are imaged once per module; every file of the source tree is then
listed and dumped from each filesystem (FAT32, ext4; FAT16, logical ext4, NTFS) and compared
with the source. Also: what is hidden (TSK's virtual entries, NTFS metadata files), symlinks,
errors as a user meets them, bounded memory, a damaged blob reported as itself, and the CLI.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import FAST_KDF_ARGS, PASSWORD, one_line_error
from test_image_disks import gpt_disk, mbr_disk
from test_image_support import MiB, image_of, mkfs_ext4, needs, new_repo, put, sfdisk, source_tree

from cairn.errors import DamagedObject, NotFound, UsageError
from cairn.image.volume import RegionReader
from cairn.ops.image_files import ImageDumpOptions, ImageLsOptions, image_dump, image_ls, opened
from cairn.repo.repository import Repository

pytest.importorskip("pytsk3", reason="pytsk3 (a cairn dependency) is not installed")

TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "mkswap", "mkntfs", "ntfscp")
pytestmark = needs(*TOOLS)
Image = tuple[Repository, str, Path]


def source_files(tree: Path) -> dict[str, bytes]:
    return {"/" + str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> Image:
    disk, _, tree = gpt_disk(tmp_path_factory.mktemp("gpt"))
    repo = new_repo()
    return repo, image_of(repo, disk).snapshot_id.hex(), tree


@pytest.fixture(scope="module")
def mbr(tmp_path_factory: pytest.TempPathFactory) -> Image:
    work = tmp_path_factory.mktemp("mbr")
    disk, _, tree, _ = mbr_disk(work)
    repo = new_repo()
    return repo, image_of(repo, disk).snapshot_id.hex(), tree


def dump(repo: Repository, snap: str, partition: int, path: str) -> bytes:
    out = io.BytesIO()
    result = image_dump(repo, ImageDumpOptions(snap, path, partition), out)
    assert result.bytes == len(out.getvalue())
    return out.getvalue()


def assert_partition_holds(repo: Repository, snap: str, partition: int, files: dict[str, bytes], fs: str) -> None:
    listed = image_ls(repo, ImageLsOptions(snap, "/", partition, recursive=True))
    assert listed.fs == fs and listed.partition == partition
    found = {e.path: e for e in listed.entries if e.kind == "file" and "lost+found" not in e.path}
    assert sorted(found) == sorted(files)
    for path, content in files.items():
        assert found[path].size == len(content), path
        assert dump(repo, snap, partition, path) == content, path


def test_every_file_of_the_gpt_disk_lists_and_dumps_equal(gpt: Image) -> None:
    repo, snap, tree = gpt
    files = source_files(tree)
    assert_partition_holds(repo, snap, 1, files, "fat32")
    assert_partition_holds(repo, snap, 2, files, "ext4")
    root = image_ls(repo, ImageLsOptions(snap, "/", 2))
    assert [e.name for e in root.entries] == ["hello.txt", "lost+found", "sub", "text.txt"]  # no $OrphanFiles
    sub = image_ls(repo, ImageLsOptions(snap, "sub/../sub/", 2)).entries
    assert [(e.name, e.kind) for e in sub] == [("blob.bin", "file"), ("deeper", "dir")]
    fat_root = image_ls(repo, ImageLsOptions(snap, "/", 1)).entries
    assert not any(e.name.startswith("$") for e in fat_root)  # $MBR, $FAT1, $FAT2 are TSK's own


def test_every_file_of_the_mbr_disk_lists_and_dumps_equal(mbr: Image) -> None:
    repo, snap, tree = mbr
    files = source_files(tree)
    assert_partition_holds(repo, snap, 1, files, "fat16")
    assert_partition_holds(repo, snap, 5, files, "ext4")
    ntfs = {"/hello.txt": files["/hello.txt"], "/text.txt": files["/text.txt"], "/blob.bin": files["/sub/blob.bin"]}
    assert_partition_holds(repo, snap, 6, ntfs, "ntfs")
    system = image_ls(repo, ImageLsOptions(snap, "/", 6, show_system=True)).entries
    assert {"$MFT", "$Bitmap", "$LogFile"} <= {e.name for e in system}
    assert dump(repo, snap, 6, "/$Bitmap")  # readable on request


def test_choosing_a_partition(gpt: Image, mbr: Image) -> None:
    repo, snap, _ = gpt
    listed = image_ls(repo, ImageLsOptions(snap))  # FAT32 and ext4: the user must choose
    assert listed.partition is None
    assert [(p.number, p.fs) for p in listed.partitions] == [(1, "fat32"), (2, "ext4"), (3, "raw")]
    with pytest.raises(UsageError, match="several partitions"):
        image_dump(repo, ImageDumpOptions(snap, "/hello.txt"), io.BytesIO())
    with pytest.raises(UsageError, match="no partition 9"):
        image_ls(repo, ImageLsOptions(snap, "/", 9))
    with pytest.raises(UsageError, match="no filesystem"):
        image_ls(repo, ImageLsOptions(snap, "/", 3))  # swap


def test_errors_a_user_meets(gpt: Image) -> None:
    repo, snap, _ = gpt
    with pytest.raises(NotFound, match="no such file"):
        dump(repo, snap, 2, "/nope.txt")
    with pytest.raises(NotFound):
        image_ls(repo, ImageLsOptions(snap, "/sub/nope", 2))
    with pytest.raises(UsageError, match="is a folder"):
        dump(repo, snap, 2, "/sub")
    assert [e.name for e in image_ls(repo, ImageLsOptions(snap, "/hello.txt", 2)).entries] == ["hello.txt"]


def test_reads_load_only_what_they_need_within_a_bounded_cache(gpt: Image) -> None:
    repo, snap, tree = gpt
    from cairn.image.tsk import ImageFs

    with opened(repo, snap, 2, "test") as (_, disk, region, _open):
        assert region is not None
        reader = RegionReader(repo, disk, region, cache_bytes=2 * MiB)
        fs = ImageFs(reader, region.fs)
        fs.list("/")
        # superblock, descriptors, journal, root inode and folder: 8 MiB at most, of 120 MiB
        assert 0 < reader.chunks_loaded <= 8 * MiB // disk.chunk
        pieces: list[bytes] = []
        fs.read("/sub/blob.bin", pieces.append)
        assert b"".join(pieces) == (tree / "sub" / "blob.bin").read_bytes()
        assert reader._cached <= 2 * MiB and len(reader._chunks) <= 2 * MiB // disk.chunk
        assert reader.chunks_loaded < region.length // disk.chunk // 4  # not the whole partition
        assert reader.read(region.length - 10, 100) == reader.read(region.length - 10, 10)  # short at the end
        assert reader.read(region.length, 5) == b""


def test_a_damaged_blob_is_reported_as_itself(gpt: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, snap, _ = gpt
    original = repo.load_blob
    with opened(repo, snap, 2, "test") as (_, disk, region, _open):
        assert region is not None
        from cairn.image.pages import DATA, iter_chunks

        victims = {ref.blob_id for ref in iter_chunks(repo, disk, region) if ref.kind == DATA}

    def damaged(blob_id: bytes) -> bytes:
        if blob_id in victims:
            raise DamagedObject(f"blob {blob_id.hex()[:12]} does not match its id")
        return original(blob_id)

    monkeypatch.setattr(repo, "load_blob", damaged)
    with pytest.raises(DamagedObject, match="does not match its id"):
        dump(repo, snap, 2, "/sub/blob.bin")


@pytest.fixture
def image_cli() -> click.Group:
    """The real `cairn` command group, as a user runs it."""
    from cairn.cli.main import cli

    return cli


def test_image_ls_and_dump_from_the_command_line(tmp_path: Path, image_cli: click.Group) -> None:
    tree = source_tree(tmp_path / "tree", big=MiB)
    (tree / "link").symlink_to("hello.txt")
    disk = tmp_path / "disk.img"
    part = sfdisk(disk, 64 * MiB, "label: gpt\nsize=40M, type=linux, name=root\n")[0]
    put(disk, part["start"] * 512, mkfs_ext4(tmp_path / "fs.img", 40 * MiB, tree, "-b", "4096"))
    repo = str(tmp_path / "repo")
    env = {"CAIRN_PASSWORD": PASSWORD}

    def run(*args: str) -> str:
        result = CliRunner().invoke(image_cli, ["-r", repo, *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return result.stdout

    run("init", *FAST_KDF_ARGS)
    run("image", str(disk))
    assert run("image-ls", "latest").splitlines() == ["hello.txt", "link -> hello.txt", "lost+found/", "sub/", "text.txt"]
    long = run("image-ls", "latest", "/sub", "-l").splitlines()
    assert long[0].startswith("-rw-r--r--") and long[0].endswith(" blob.bin") and f"{MiB:,}" in long[0]
    listed = json.loads(run("--json", "image-ls", "latest", "-R", "--partition", "1"))
    assert "/sub/deeper/small.bin" in {e["path"] for e in listed["entries"]} and listed["fs"] == "ext4"
    assert run("image-dump", "latest", "/text.txt") == (tree / "text.txt").read_text()
    out = tmp_path / "blob.out"
    report = json.loads(run("--json", "image-dump", "latest", "sub/blob.bin", "-t", str(out)))
    assert report["bytes"] == MiB and out.read_bytes() == (tree / "sub" / "blob.bin").read_bytes()
    for path, message in (("/nope", "no such file"), ("/link", "symbolic link to hello.txt"), ("/sub", "is a folder")):
        failed = CliRunner().invoke(image_cli, ["-r", repo, "image-dump", "latest", path], env=env)
        assert failed.exit_code in (2, 15) and message in one_line_error(failed), failed.stderr
