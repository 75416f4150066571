"""Memory stays bounded whatever the file sizes (issue 3): the peak resident memory of a
`cairn backup` process must not grow with the size of the largest file.

Measured on a real `python -m cairn backup` subprocess (its own ru_maxrss, from wait4), once
with a 64 MiB file and once with a 1 GiB file, each beside 1,000 small files. The big file
repeats one 32 MiB random block: every chunk is real data that is read, cut, hashed and looked
up, while deduplication keeps the run to a few seconds; both runs store the same new data, so
the only difference between them is how much is read.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from conftest import FAST_KDF_ARGS, PASSWORD, SRC

MiB = 1 << 20
BLOCK = 32 * MiB


def make_tree(root: Path, big_size: int) -> Path:
    rng = random.Random(7)
    block = rng.randbytes(BLOCK)
    tree = root / "tree"
    (tree / "small").mkdir(parents=True)
    with open(tree / "big.bin", "wb") as out:
        for _ in range(big_size // BLOCK):
            out.write(block)
    for i in range(1000):
        (tree / "small" / f"{i:04d}").write_bytes(rng.randbytes(rng.randrange(1, 16 * 1024)))
    return tree


def peak_of_backup(root: Path, big_size: int) -> tuple[int, int]:
    """(peak resident bytes of the backup process, bytes it read)."""
    tree = make_tree(root, big_size)
    env = {**os.environ, "CAIRN_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(root / "cache"), "PYTHONPATH": str(SRC)}
    base = [sys.executable, "-m", "cairn", "-r", str(root / "repo")]
    subprocess.run([*base, "init", *FAST_KDF_ARGS], env=env, check=True, capture_output=True)
    process = subprocess.Popen([*base, "--json", "backup", str(tree)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 reaps the child and gives its own rusage (RUSAGE_CHILDREN would mix in `init`);
    # the pipes are small enough not to fill before it exits.
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read() if process.stderr else ""
    assert process.stdout is not None
    summary = json.loads(process.stdout.read().splitlines()[-1])
    return usage.ru_maxrss * 1024, summary["bytes_read"]


def test_peak_memory_does_not_grow_with_the_file_size(tmp_path: Path) -> None:
    small_peak, small_read = peak_of_backup(tmp_path / "a", 64 * MiB)
    big_peak, big_read = peak_of_backup(tmp_path / "b", 1024 * MiB)
    assert big_read - small_read == 960 * MiB
    # 16x the data read, and not even a twentieth of the difference held: a leak of the file's
    # chunks, or reading it whole, would show as hundreds of MiB.
    assert big_peak - small_peak < 48 * MiB, (small_peak // MiB, big_peak // MiB)
    print(f"peak resident memory: {small_peak / MiB:.0f} MiB with a 64 MiB file, "
          f"{big_peak / MiB:.0f} MiB with a 1 GiB file")
