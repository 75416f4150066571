"""Helpers shared by the image tests: disks made by sfdisk, filesystems by their own mkfs
tools, loop devices (detached by name, never in bulk), and the two ops at their simplest.

No tests here; the module is imported by the test_image_*.py files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cairn.ops.image import ImageOptions, ImageResult, image
from cairn.ops.image_restore import ImageRestoreOptions, ImageRestoreResult, image_restore
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from cairn.testing.memory import MemoryBackend

MiB = 1 << 20
FAST_KDF = KdfParams(iterations=1, memory_kib=8, lanes=1)

is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root: loop devices and mounts")


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (scripts/test installs it)")


def new_repo() -> Repository:
    return Repository.init(MemoryBackend(), b"pw", FAST_KDF)


def stored_bytes(repo: Repository) -> int:
    """What the repository takes in its storage: every pack, index, snapshot and key file."""
    return sum(info.size for info in repo.backend.list())


def run(*args: str, input: str | None = None) -> str:
    done = subprocess.run(args, input=input, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed: {done.stderr}"
    return done.stdout


def sfdisk(path: Path, size: int, script: str) -> list[dict[str, Any]]:
    """Create a disk image file of `size` bytes partitioned by an sfdisk script; returns the
    partitions as sfdisk reports them (start and size in sectors, node, type)."""
    with open(path, "wb") as f:
        f.truncate(size)
    run("sfdisk", "-q", str(path), input=script)
    return partitions_of(path)


def partitions_of(path: Path) -> list[dict[str, Any]]:
    return json.loads(run("sfdisk", "-J", str(path)))["partitiontable"]["partitions"]  # type: ignore[no-any-return]


def put(disk: Path, offset: int, content: Path | bytes) -> None:
    """Write a filesystem image (or bytes) into a disk image at a byte offset."""
    data = content if isinstance(content, bytes) else Path(content).read_bytes()
    with open(disk, "r+b") as f:
        f.seek(offset)
        f.write(data)


def random_file(path: Path, size: int, seed: int = 0) -> None:
    """Pseudo-random but reproducible, and incompressible like real data."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += hashlib.shake_256(block).digest(min(65536, size - len(out)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))


def source_tree(root: Path, big: int = 3 * MiB) -> Path:
    """A small folder of files to put into filesystems and compare after a restore."""
    (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    (root / "hello.txt").write_text("hello, image\n")
    random_file(root / "sub" / "blob.bin", big, seed=1)
    random_file(root / "sub" / "deeper" / "small.bin", 12345, seed=2)
    (root / "text.txt").write_text("cairn " * 50000)
    return root


def mkfs_ext4(path: Path, size: int, tree: Path | None = None, *extra: str) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    args = ["mkfs.ext4", "-q", "-F", *extra]
    if tree is not None:
        args += ["-d", str(tree)]
    run(*args, str(path))
    return path


def image_of(repo: Repository, source: Path | str, **options: object) -> ImageResult:
    return image(repo, ImageOptions(source=str(source), **options))  # type: ignore[arg-type]


def restore_to(repo: Repository, snapshot: bytes | str, target: Path | str, **options: object) -> ImageRestoreResult:
    ref = snapshot.hex() if isinstance(snapshot, bytes) else snapshot
    options.setdefault("yes", True)
    confirm = options.pop("confirm", None)
    return image_restore(repo, ImageRestoreOptions(snapshot=ref, target=str(target), **options), confirm)  # type: ignore[arg-type]


def file_sha(path: Path | str, start: int = 0, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length if length is not None else os.fstat(f.fileno()).st_size - start
        while left > 0:
            data = f.read(min(left, 4 * MiB))
            if not data:
                break
            h.update(data)
            left -= len(data)
    return h.hexdigest()


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@contextlib.contextmanager
def loop(path: Path, offset: int = 0, sizelimit: int = 0, read_only: bool = False) -> Iterator[str]:
    """A loop device over a file (or a byte range of it); detached by its own name afterwards."""
    args = ["losetup", "--find", "--show"]
    if offset:
        args += ["--offset", str(offset)]
    if sizelimit:
        args += ["--sizelimit", str(sizelimit)]
    if read_only:
        args.append("--read-only")
    device = run(*args, str(path)).strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True)


@contextlib.contextmanager
def mounted(device: str, where: Path, *options: str, fuse: str | None = None) -> Iterator[Path]:
    """Mount (read-only unless options say otherwise); `fuse` names a FUSE helper (ntfs-3g)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join(options) or "ro"
    if fuse:
        run(fuse, "-o", opts, device, str(where))
    else:
        run("mount", "-o", opts, device, str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def trees_equal(a: Path, b: Path) -> None:
    """Every file under `a` exists under `b` with the same bytes (and nothing is missing)."""
    names_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    names_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and "lost+found" not in p.parts)
    assert names_a == names_b
    for name in names_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
