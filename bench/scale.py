"""Scale checks (issue 7): a 10-million-blob index, and a backup of a million tiny files.

    python bench/scale.py index [--blobs 10000000] [--add-blobs 1000000] [--json out.json]
    python bench/scale.py files [--files 1000000] [--tools cairn,restic,borg] [--json out.json]

`index` builds a `BlobIndex` the way `Repository.load_index` does (per pack, the packed 45-byte
index records -> `add_records`, then `compact`), from synthetic random ids and no data, in a
fresh child process, so that its RSS before and after is the index alone. It reports the bytes
per blob by RSS delta and by `memory_bytes()`, the peak RSS during loading (above the steady
size: what building costs), and lookup rates for hits and misses. A second child grows an index
by `add` one blob at a time (the write path of a backup) for `--add-blobs` blobs.

`files` makes (once) a tree of `--files` files under /var/tmp: half empty, half a few bytes
of distinct text, 1,000 per folder. It backs the tree up with each tool into a fresh repository,
timed by GNU time: wall, CPU, peak RSS, files/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from cairn.repo.index import BlobIndex

HERE = Path(__file__).resolve().parent
# CAIRN_BENCH_SRC: another source tree (e.g. `git archive <commit> src`), for before/after runs.
sys.path.insert(0, os.environ.get("CAIRN_BENCH_SRC", str(HERE.parent / "src")))
sys.path.insert(0, str(HERE))

PER_PACK = 2000  # blobs per pack: ~1 MiB packs of ~500-byte blobs
TREE = Path("/var/tmp/cairn-bench/datasets/tiny-1m")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def trim() -> None:
    """Give freed heap memory back to the system, so that RSS shows what is live."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> None:
    """Reset VmHWM (Linux >= 4.0) so that the peak measures the load alone."""
    Path("/proc/self/clear_refs").write_text("5\n")


def _records(rng: np.random.Generator, n: int) -> tuple[np.ndarray, bytes]:
    import numpy as np

    from cairn.repo.index import record_dtype

    rows = np.zeros(n, dtype=record_dtype())
    rows["id"] = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    rows["type"] = 1
    rows["offset"] = np.arange(n, dtype=np.uint32) * 512
    rows["length"] = 500
    rows["raw"] = 1000
    return rows["id"].copy(), rows.tobytes()


def lookup_rates(index: BlobIndex, ids: np.ndarray, samples: int, seed: int) -> dict[str, float]:
    import numpy as np

    rng = np.random.default_rng(seed)
    picks = ids[rng.integers(0, len(ids), samples)]
    hits = [bytes(row) for row in picks]
    misses = [bytes(row) for row in rng.integers(0, 256, size=(samples, 32), dtype=np.uint8)]
    start = time.perf_counter()
    found = sum(1 for h in hits if index.lookup(h) is not None)
    hit_s = time.perf_counter() - start
    start = time.perf_counter()
    wrong = sum(1 for m in misses if index.lookup(m) is not None)
    miss_s = time.perf_counter() - start
    assert found == samples, f"{samples - found} ids not found"
    assert wrong == 0, f"{wrong} absent ids found"
    return {"hits_per_s": samples / hit_s, "misses_per_s": samples / miss_s}


def index_child(blobs: int, mode: str, seed: int) -> dict[str, float]:
    """Runs in a fresh process: build the index, measure it."""
    import numpy as np

    from cairn.repo.index import BlobIndex, iter_records

    rng = np.random.default_rng(seed)
    trim()
    base0 = rss_kib()
    packs = []  # the decoded index objects, as load_index holds them
    all_ids = []
    for p in range((blobs + PER_PACK - 1) // PER_PACK):
        ids, records = _records(rng, min(PER_PACK, blobs - p * PER_PACK))
        packs.append((p.to_bytes(32, "big"), records))
        all_ids.append(ids)
    ids = np.concatenate(all_ids)
    del all_ids
    base = rss_kib()
    reset_peak()
    index = BlobIndex()
    start = time.perf_counter()
    if mode == "load":
        for pack_id, records in packs:
            index.add_records(pack_id, records)
        index.compact()
    else:
        for pack_id, records in packs:
            for entry in iter_records(records):
                index.add(pack_id, entry)
        index.compact()
    build_s = time.perf_counter() - start
    peak = peak_kib()
    packs_bytes = sum(len(r) for _, r in packs)
    del packs
    import gc

    gc.collect()
    trim()
    steady = rss_kib()
    # base0 was taken before the records and ids were made; the ids (kept for the lookups)
    # are subtracted, so the figure is the index's own.
    out = {
        "blobs": blobs,
        "build_s": build_s,
        "blobs_per_s": blobs / build_s,
        "memory_bytes_per_blob": index.memory_bytes() / blobs,
        "rss_bytes_per_blob": ((steady - base0) * 1024 - ids.nbytes) / blobs,
        "load_peak_bytes_per_blob": (peak - base) * 1024 / blobs,
        "records_bytes_per_blob": packs_bytes / blobs,
    }
    out.update(lookup_rates(index, ids, min(200_000, blobs), seed + 1))
    return out


def run_index(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results = {}
    for mode, blobs in (("load", args.blobs), ("add", args.add_blobs)):
        code = f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import scale; " \
               f"print(json.dumps(scale.index_child({blobs}, {mode!r}, {args.seed})))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(mode, json.dumps(results[mode], indent=1), file=sys.stderr)
    return results


def make_tree(files: int, root: Path = TREE) -> Path:
    done = root.with_name(root.name + ".done")
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for d in range((files + 999) // 1000):
        folder = root / f"d{d:04d}"
        folder.mkdir(parents=True)
        for f in range(min(1000, files - d * 1000)):
            n = d * 1000 + f
            with open(folder / f"f{f:03d}", "wb") as fh:
                if n % 2:
                    fh.write(f"file {n}\n".encode())
    done.touch()
    return root


def run_files(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from files import PASSWORD, du, timed, tool_commands

    tree = make_tree(args.files, Path(args.tree))
    work = Path(args.work)
    results = {}
    for tool in args.tools.split(","):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        repo, cache = work / "repo", work / "cache"
        env = dict(os.environ, CAIRN_PASSWORD=PASSWORD, RESTIC_PASSWORD=PASSWORD, BORG_PASSPHRASE=PASSWORD,
                   BORG_BASE_DIR=str(cache), XDG_CACHE_HOME=str(cache), HOME=str(work),
                   PYTHONPATH=str(HERE.parent / "src"))
        cmds = tool_commands(tool, repo, cache, tree, work / "restore")
        subprocess.run(cmds["init"], env=env, check=True, capture_output=True)
        subprocess.run(["sh", "-c", f'find "{tree}" -type f | wc -l > /dev/null'], check=True)
        r = timed(cmds["backup"], env)
        r["files_per_s"] = args.files / r["wall"]
        r["repo_bytes"] = du(repo)
        results[tool] = r
        print(tool, json.dumps(r), file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("index", "files", "tree"))
    parser.add_argument("--blobs", type=int, default=10_000_000)
    parser.add_argument("--add-blobs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--tree", default=str(TREE))
    parser.add_argument("--tools", default="cairn,restic")
    parser.add_argument("--work", default="/var/tmp/cairn-bench/scale-work")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.what == "tree":
        print(make_tree(args.files, Path(args.tree)))
        return
    results = run_index(args) if args.what == "index" else run_files(args)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
