"""Reproducible benchmark data sets, made once and reused from the work folder.

- ``real``: a copy of /usr/lib/x86_64-linux-gnu and /usr/share (about 1.3 GB, ~50,000 files),
  the set ../shared/research/peer-baselines.md measured restic and borg on.
- ``small``: 100,000 files of 0–4 KiB in 1,000 folders (per-file overhead).
- ``large``: four 256 MiB files: random, zeros, text-like, half random half repeated.
- ``linux``: the Linux 6.1 source tree from Debian's linux-source-6.1 package (~80,000 files,
  the data set of public benchmarks such as deajan/backup-bench); installs the package if needed.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from pathlib import Path


def _real(dest: Path) -> None:
    dest.mkdir(parents=True)
    for src in ("/usr/lib/x86_64-linux-gnu", "/usr/share"):
        subprocess.run(["cp", "-a", src, str(dest)], check=True)


def _small(dest: Path) -> None:
    rng = random.Random(1)
    for d in range(1000):
        folder = dest / f"d{d:04d}"
        folder.mkdir(parents=True)
        for f in range(100):
            (folder / f"f{f:03d}.txt").write_bytes(rng.randbytes(rng.randrange(0, 4096)))


def _large(dest: Path) -> None:
    dest.mkdir(parents=True)
    rng = random.Random(2)
    size = 256 << 20
    words = [rng.randbytes(rng.randrange(2, 9)).hex().encode() for _ in range(5000)]
    with open(dest / "random.bin", "wb") as f:
        for _ in range(size >> 20):
            f.write(rng.randbytes(1 << 20))
    with open(dest / "zeros.bin", "wb") as f:
        f.truncate(size)
        f.write(b"\0")
    with open(dest / "text.log", "wb") as f:
        while f.tell() < size:
            f.write(b" ".join(rng.choices(words, k=200000)) + b"\n")
    with open(dest / "mixed.bin", "wb") as f:
        block = rng.randbytes(1 << 20)
        for i in range(size >> 20):
            f.write(rng.randbytes(1 << 20) if i % 2 else block)


def _linux(dest: Path) -> None:
    tarball = Path("/usr/src/linux-source-6.1.tar.xz")
    if not tarball.exists():
        subprocess.run(["apt-get", "install", "-y", "-q", "linux-source-6.1"], check=True)
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-xJf", str(tarball), "-C", str(dest), "--strip-components=1"], check=True)


DATASETS: dict[str, Callable[[Path], None]] = {"real": _real, "small": _small, "large": _large, "linux": _linux}


def prepare(name: str, root: Path) -> Path:
    """Return the folder of data set `name`, making it first if needed."""
    dest = root / name
    done = root / f"{name}.done"
    if not done.exists():
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        DATASETS[name](dest)
        done.touch()
    return dest


if __name__ == "__main__":
    import sys

    print(prepare(sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/cairn-bench/datasets")))
