"""Image benchmark: cairn beside `partclone.extfs | zstd` and `dd | zstd` on one ext4 partition,
or on a GPT disk holding it (--disk).

    sudo python bench/image_bench.py [--size-mib 1024] [--used-mib 500] [--change-mib 20]
                                     [--chunks 0.5,1,4] [--runs 1] [--disk] [--json out.json]

Builds an ext4 partition image of --size-mib filled with about --used-mib of real files (from
/usr/lib), then a changed copy: the partition is loop-mounted read-write, --change-mib/2 of new
files are written and as much of existing files overwritten in place (so the journal, bitmaps
and inode tables change as they do on a real machine), and unmounted. Needs root for that mount.

Figures per tool: first image (seconds, stored bytes), second image of the changed partition
(seconds, bytes the repository or archive grew), full restore, and for cairn a delta restore
of the changed image onto a target holding the first one. The page cache is warm for all
tools (each source is read once before), so this measures the pipelines, not the disk. cairn
runs in-process through the ops API (no interpreter start-up); the others as shell pipelines.
On a shared machine, compare ratios, not absolute seconds.

cairn's two restores onto an existing target are timed --restore-runs times, alternately (the
target set back to the first image before each delta run), and the medians reported, with
their ratio `delta_x` (full restore seconds / delta restore seconds): alternation spreads the
machine's noise over both. `delta_x_cpu` is the same ratio in CPU seconds of the process (all
threads), which other load on a shared machine disturbs far less than wall time. `--cold` drops the page cache (sync; drop_caches) before each timed
restore, so the target and the packs are read from the medium, as on a real disk.
`--cairn-only` skips partclone and dd.

With --disk each partition is put inside a GPT disk of its own (the partition from 1 MiB, the
backup table in the last MiB, fixed GUIDs: the same disk, changed): cairn and dd image the
whole disk; partclone, as Clonezilla does, saves the first MiB and `sfdisk -d` beside the
partition, and restores them in that order. Issue 7's disk: --disk --size-mib 2048 --used-mib 1024.

Before timing, the two partitions are compared 4 KiB block by 4 KiB block: how many bytes the
change touched on the device (file data plus the metadata and journal blocks ext4 wrote), how
many of those are in the journal, and for each chunk size how many bytes of chunks they fall
in. `growth_x` is the repository growth of the second image over the bytes the benchmark wrote
into files (--change-mib), `growth_x_4k` over the bytes that differ on the device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cairn.ops.image import ImageOptions, image  # noqa: E402
from cairn.ops.image_restore import ImageRestoreOptions, image_restore  # noqa: E402
from cairn.repo.keys import KdfParams  # noqa: E402
from cairn.repo.repository import Repository  # noqa: E402
from cairn.storage.local import LocalBackend  # noqa: E402

MiB = 1 << 20


CPU: dict[str, float] = {}


def cpu_now(children: bool) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sh(command: str, cpu_key: str = "") -> float:
    start, cpu = time.monotonic(), cpu_now(True)
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if cpu_key:
        CPU[cpu_key] = cpu_now(True) - cpu
    return time.monotonic() - start


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stage(work: Path, used: int) -> Path:
    """Copy about `used` bytes of /usr/lib (binaries, libraries, data: typical system content)."""
    root = work / "stage"
    total = 0
    for folder, dirs, files in os.walk("/usr/lib"):
        dirs.sort()
        for name in sorted(files):
            src = Path(folder) / name
            if src.is_symlink() or not src.is_file():
                continue
            size = src.stat().st_size
            if total + size > used:
                return root
            dst = root / src.relative_to("/usr/lib")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            total += size
    return root


def make_partitions(work: Path, size: int, used: int, change: int) -> tuple[Path, Path]:
    first = work / "part1.img"
    with open(first, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(stage(work, used)), str(first)], check=True)
    second = work / "part2.img"
    shutil.copyfile(first, second)
    mnt = work / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(second), str(mnt)], check=True)
    try:
        (mnt / "new").mkdir()
        for i in range(max(1, change // 2 // MiB)):
            (mnt / "new" / f"f{i}.bin").write_bytes(os.urandom(MiB))
        left = change // 2
        for path in sorted(p for p in mnt.rglob("*") if p.is_file() and "new" not in p.parts)[::7]:
            if left <= 0:
                break
            n = min(path.stat().st_size, left)
            with open(path, "r+b") as f:
                f.write(os.urandom(n))
            left -= n
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    return first, second


# The whole-disk case (--disk): each partition inside a GPT disk, as an installer leaves one.
DISK_START = MiB  # the partition's first byte; before it the protective MBR and the GPT
DISK_TAIL = MiB  # after it, room for the backup GPT
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# Fixed GUIDs: the second image is of the same disk, changed, as on a real machine.
DISK_GUID, PART_GUID = "5C1D1E3A-8A39-4C2B-9C38-2F7B3B0E6D11", "7E0B5C43-2E4F-4B44-8F0A-6C2D9A1B3E22"


def make_disks(work: Path, partitions: tuple[Path, Path]) -> tuple[Path, Path]:
    """Each partition inside a GPT disk of its own (one Linux partition from 1 MiB, the backup
    table at the end); the partition files are removed. Issue 7's data set: a 2 GiB disk with
    a GPT table and a half-full ext4 partition (--disk --size-mib 2048 --used-mib 1024)."""
    disks = []
    for n, part in enumerate(partitions, 1):
        disk, size = work / f"disk{n}.img", part.stat().st_size
        with open(disk, "wb") as f:
            f.truncate(DISK_START + size + DISK_TAIL)
        table = (f"label: gpt\nlabel-id: {DISK_GUID}\n"
                 f"start={DISK_START // 512}, size={size // 512}, type={LINUX_FS}, uuid={PART_GUID}\n")
        subprocess.run(["sfdisk", "-q", str(disk)], input=table, text=True, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["dd", f"if={part}", f"of={disk}", "bs=4M", f"seek={DISK_START}", "oflag=seek_bytes",
                        "conv=notrunc,sparse", "status=none"], check=True)
        part.unlink()
        disks.append(disk)
    return disks[0], disks[1]


@contextlib.contextmanager
def partition_device(disk: Path) -> Iterator[str]:
    """The disk's partition as a block device (a loop at its offset), as /dev/sda1 would be."""
    size = disk.stat().st_size - DISK_START - DISK_TAIL
    loop = subprocess.run(["losetup", "--find", "--show", "--offset", str(DISK_START), "--sizelimit", str(size), str(disk)],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def changed_blocks(first: Path, second: Path, block: int = 4096) -> list[int]:
    """Numbers of the `block`-sized blocks that differ between the two partitions: what the
    change really touched on the device (file data, and the metadata and journal ext4 wrote)."""
    out: list[int] = []
    step = 4 * MiB
    with open(first, "rb") as a, open(second, "rb") as b:
        at = 0
        while True:
            x, y = a.read(step), b.read(step)
            if not x and not y:
                return out
            if x != y:
                out += [(at + i) // block for i in range(0, max(len(x), len(y)), block) if x[i:i + block] != y[i:i + block]]
            at += step


def journal_blocks(part: Path) -> range:
    """The 4 KiB blocks of the ext4 journal (inode 8), from debugfs; empty if it cannot tell."""
    done = subprocess.run(["debugfs", "-R", "stat <8>", str(part)], capture_output=True, text=True)
    found = re.findall(r"\(\d+(?:-\d+)?\):(\d+)-(\d+)", done.stdout)
    if not found:
        return range(0)
    return range(min(int(a) for a, _ in found), max(int(b) for _, b in found) + 1)


def change_profile(first: Path, second: Path, chunks: list[int]) -> dict[str, float]:
    """Bytes changed at 4 KiB granularity, how many of them are in the journal, and for each
    chunk size the bytes of the chunks those blocks fall in (the least a second image can add
    before compression)."""
    blocks = changed_blocks(first, second)
    journal = journal_blocks(first)
    out: dict[str, float] = {
        "changed_4k_bytes": len(blocks) * 4096,
        "changed_journal_bytes": sum(1 for b in blocks if b in journal) * 4096,
        "journal_bytes": len(journal) * 4096,
    }
    for chunk in chunks:
        out[f"touched_{chunk / MiB:g}m_bytes"] = len({b * 4096 // chunk for b in blocks}) * chunk
    return out


def settle_cache(cold: bool) -> None:
    """Write back dirty pages (so one run's writeback is not billed to the next), and with
    `cold` forget every cached page."""
    subprocess.run(["sync"], check=True)
    if cold:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def bench_cairn(work: Path, first: Path, second: Path, chunk: int, restore_runs: int = 3, cold: bool = False) -> dict[str, float]:
    repo_dir = work / f"repo-{chunk}"
    repo = Repository.init(LocalBackend(str(repo_dir)), b"pw", KdfParams(iterations=1, memory_kib=8, lanes=1))
    out: dict[str, float] = {}
    start, cpu = time.monotonic(), cpu_now(False)
    one = image(repo, ImageOptions(source=str(first), chunk_size=chunk))
    out["image1_s"], out["image1_bytes"] = time.monotonic() - start, du(repo_dir)
    out["image1_cpu"] = cpu_now(False) - cpu
    start = time.monotonic()
    two = image(repo, ImageOptions(source=str(second), chunk_size=chunk))
    out["image2_s"], out["image2_bytes"] = time.monotonic() - start, du(repo_dir) - out["image1_bytes"]
    target = work / f"target-{chunk}.img"
    start = time.monotonic()
    image_restore(repo, ImageRestoreOptions(two.snapshot_id.hex(), str(target), yes=True))
    out["restore_sparse_s"] = time.monotonic() - start
    image_restore(repo, ImageRestoreOptions(one.snapshot_id.hex(), str(target), yes=True, delta=False))
    runs: dict[str, list[float]] = {"delta_s": [], "full_s": [], "delta_cpu": [], "full_cpu": []}
    for _ in range(restore_runs):
        image_restore(repo, ImageRestoreOptions(one.snapshot_id.hex(), str(target), yes=True))  # back to the older state
        for kind, delta in (("delta", None), ("full", False)):
            settle_cache(cold)
            start, cpu = time.monotonic(), cpu_now(False)
            done = image_restore(repo, ImageRestoreOptions(two.snapshot_id.hex(), str(target), yes=True, delta=delta))
            runs[f"{kind}_s"].append(time.monotonic() - start)
            runs[f"{kind}_cpu"].append(cpu_now(False) - cpu)
            if kind == "delta":
                out["delta_written"] = done.bytes_written
    for key, values in runs.items():
        out[f"restore_{key}"] = median(values)
    out["delta_x"] = out["restore_full_s"] / out["restore_delta_s"]
    out["delta_x_cpu"] = out["restore_full_cpu"] / out["restore_delta_cpu"]
    out["used_bytes"] = two.bytes_used
    target.unlink()
    shutil.rmtree(repo_dir)
    return out


def bench_partclone(work: Path, first: Path, second: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    one, two = work / "pc1.zst", work / "pc2.zst"
    out["image1_s"] = sh(f"partclone.extfs -c -q -s {first} -o - | zstd -3 -T2 -q -c > {one}", "pc")
    out["image1_cpu"] = CPU["pc"]
    out["image1_bytes"] = one.stat().st_size
    out["image2_s"] = sh(f"partclone.extfs -c -q -s {second} -o - | zstd -3 -T2 -q -c > {two}")
    out["image2_bytes"] = two.stat().st_size
    target = work / "pc-target.img"
    with open(target, "wb") as f:
        f.truncate(second.stat().st_size)
    subprocess.run(["sync"], check=True)
    out["restore_full_s"] = sh(f"zstd -d -q -c {two} | partclone.extfs -r -q -s - -O {target}")
    for p in (one, two, target):
        p.unlink()
    return out


def bench_partclone_disk(work: Path, first: Path, second: Path) -> dict[str, float]:
    """Clonezilla's way with a whole disk: the first MiB (protective MBR, GPT, boot code) and the
    table (`sfdisk -d`), then partclone of the partition; restored in the same order."""
    out: dict[str, float] = {}
    saved = {n: (work / f"pcd{n}.head.zst", work / f"pcd{n}.sfdisk", work / f"pcd{n}.zst") for n in (1, 2)}
    for n, disk in ((1, first), (2, second)):
        head, table, body = saved[n]
        with partition_device(disk) as part:
            out[f"image{n}_s"] = sh(f"dd if={disk} bs=1M count=1 status=none | zstd -3 -q -c > {head} && sfdisk -d {disk} > {table}"
                                    f" && partclone.extfs -c -q -s {part} -o - | zstd -3 -T2 -q -c > {body}", "pcd")
        out[f"image{n}_bytes"] = sum(p.stat().st_size for p in saved[n])
        if n == 1:
            out["image1_cpu"] = CPU["pcd"]
    target = work / "pcd-target.img"
    with open(target, "wb") as f:
        f.truncate(second.stat().st_size)
    subprocess.run(["sync"], check=True)
    head, table, body = saved[2]
    start = time.monotonic()
    sh(f"zstd -d -q -c {head} | dd of={target} bs=1M conv=notrunc status=none && sfdisk -q {target} < {table}")
    with partition_device(target) as part:
        sh(f"zstd -d -q -c {body} | partclone.extfs -r -q -s - -O {part}")
    out["restore_full_s"] = time.monotonic() - start
    for p in (*saved[1], *saved[2], target):
        p.unlink()
    return out


def bench_dd(work: Path, first: Path, second: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    one, two = work / "dd1.zst", work / "dd2.zst"
    out["image1_s"] = sh(f"dd if={first} bs=4M status=none | zstd -3 -T2 -q -c > {one}", "dd")
    out["image1_cpu"] = CPU["dd"]
    out["image1_bytes"] = one.stat().st_size
    out["image2_s"] = sh(f"dd if={second} bs=4M status=none | zstd -3 -T2 -q -c > {two}")
    out["image2_bytes"] = two.stat().st_size
    target = work / "dd-target.img"
    out["restore_full_s"] = sh(f"zstd -d -q -c {two} | dd of={target} bs=4M status=none")
    for p in (one, two, target):
        p.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--used-mib", type=int, default=500)
    parser.add_argument("--change-mib", type=int, default=20)
    parser.add_argument("--chunks", default="1,4", help="cairn chunk sizes to try, MiB (0.25 and 0.5 too)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--restore-runs", type=int, default=3, help="alternating delta/full restores (median)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each timed restore")
    parser.add_argument("--cairn-only", action="store_true", help="skip partclone and dd")
    parser.add_argument("--disk", action="store_true",
                        help="each partition inside a GPT disk of --size-mib + 2 MiB: cairn and dd image the "
                             "whole disk, partclone its partition with the table and first MiB (Clonezilla's way)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cairn-image-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        work = Path(tmp)
        started = time.strftime("%Y-%m-%dT%H:%M:%S"), os.getloadavg()
        first, second = make_partitions(work, args.size_mib * MiB, args.used_mib * MiB, args.change_mib * MiB)
        chunk_list = [int(float(c) * MiB) for c in args.chunks.split(",")]
        profile = change_profile(first, second, chunk_list)
        if args.disk:
            first, second = make_disks(work, (first, second))
        for p in (first, second):
            subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.runs):
            if not args.cairn_only:
                partclone = bench_partclone_disk if args.disk else bench_partclone
                results.setdefault("partclone|zstd", []).append(partclone(work, first, second))
                results.setdefault("dd|zstd", []).append(bench_dd(work, first, second))
            for chunk in chunk_list:
                out = bench_cairn(work, first, second, chunk, args.restore_runs, args.cold)
                out["growth_x"] = out["image2_bytes"] / (args.change_mib * MiB)
                out["growth_x_4k"] = out["image2_bytes"] / profile["changed_4k_bytes"]
                results.setdefault(f"cairn {chunk / MiB:g} MiB", []).append(out)
    print(f"started {started[0]}, load average {started[1]} -> {os.getloadavg()}")
    print(f"changed by the writes: {args.change_mib} MiB of file data; on the device "
          + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in profile.items()))
    keys = ["image1_s", "image1_cpu", "image1_bytes", "image2_s", "image2_bytes", "growth_x", "growth_x_4k", "restore_full_s", "restore_sparse_s", "restore_delta_s", "delta_written", "delta_x", "delta_x_cpu"]
    print(f"{'tool':<16}" + "".join(f"{k:>16}" for k in keys))
    for tool, runs in results.items():
        row = []
        for k in keys:
            values = sorted(r[k] for r in runs if k in r)
            v = values[len(values) // 2] if values else None
            row.append("-" if v is None else f"{v / MiB:.1f} MiB" if "bytes" in k or "written" in k else f"{v:.2f}")
        print(f"{tool:<16}" + "".join(f"{c:>16}" for c in row))
    if args.json:
        args.json.write_text(json.dumps({"started": started[0], "load_start": started[1], "load_end": os.getloadavg(),
                                         "change_profile": profile, "results": results}, indent=2))


if __name__ == "__main__":
    main()
