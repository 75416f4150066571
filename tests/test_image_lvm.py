"""`cairn image --snapshot lvm`: a temporary LVM snapshot is created, imaged and removed.

These kernels have no device-mapper, so `lvs`, `lvcreate` and `lvremove` are stand-ins on PATH
that log their arguments and keep a "snapshot" as a copy of the origin file; the origin is
changed right after the copy, so an image equal to the copy shows the snapshot was read. What
runs for real is cairn's side: the commands and their order, the unique name, the removal on
success, on failure and on Ctrl-C, and the one-line errors.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CliRun, one_line_error
from test_image_support import MiB, file_sha, new_repo, random_file

from cairn.ops.image import ImageOptions, image

LVS = r"""#!/bin/bash
echo "lvs $*" >> "$FAKE_LVM/log"
for last; do :; done
fields=$(echo "$*" | sed -n 's/.*-o \([^ ]*\).*/\1/p')
case "$last" in
  "$FAKE_LVM/origin.img") echo "  vg0|root" ;;
  vg0/root-cairn-*)
    if [ -e "$FAKE_LVM/${last#vg0/}" ]; then echo "  $FAKE_LVM/${last#vg0/}"
    else echo "  Failed to find logical volume \"$last\"" >&2; exit 5; fi ;;
  *) echo "  Volume group \"$(basename "$last")\" not found" >&2; echo "  Cannot process volume group" >&2; exit 5 ;;
esac
"""
LVCREATE = r"""#!/bin/bash
echo "lvcreate $*" >> "$FAKE_LVM/log"
if [ -e "$FAKE_LVM/lvcreate-fails" ]; then
  echo "  Insufficient free space: 25 extents needed, but only 0 available" >&2; exit 5
fi
while [ $# -gt 0 ]; do [ "$1" = -n ] && name=$2; shift; done
cp "$FAKE_LVM/origin.img" "$FAKE_LVM/$name"
printf 'written to the origin after the snapshot' | dd of="$FAKE_LVM/origin.img" bs=1 seek=1000 conv=notrunc status=none
"""
LVREMOVE = r"""#!/bin/bash
echo "lvremove $*" >> "$FAKE_LVM/log"
if [ -e "$FAKE_LVM/lvremove-fails" ]; then echo "  Logical volume vg0/x in use." >&2; exit 5; fi
for last; do :; done
rm "$FAKE_LVM/${last#vg0/}"
"""


@dataclass
class FakeLvm:
    dir: Path
    origin: Path
    original_sha: str
    """The origin's content when the snapshot was taken."""

    def calls(self) -> list[list[str]]:
        log = self.dir / "log"
        return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.dir.glob("root-cairn-*"))


@pytest.fixture
def fake_lvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeLvm:
    folder = tmp_path / "lvm"
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for name, script in (("lvs", LVS), ("lvcreate", LVCREATE), ("lvremove", LVREMOVE)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    origin = folder / "origin.img"
    random_file(origin, 8 * MiB, seed=12)
    monkeypatch.setenv("FAKE_LVM", str(folder))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return FakeLvm(folder, origin, file_sha(origin))


def test_the_snapshot_is_imaged_then_removed(fake_lvm: FakeLvm, repo_dir: Path, tmp_path: Path, cli: CliRun) -> None:
    made = cli("-r", str(repo_dir), "--json", "image", str(fake_lvm.origin), "--snapshot", "lvm", "--snapshot-size", "1G")
    assert made.exit_code == 0, made.stderr
    lvs, lvcreate, lvs_new, lvremove = fake_lvm.calls()
    assert lvs[0] == "lvs" and lvs[-1] == str(fake_lvm.origin)
    name = lvcreate[lvcreate.index("-n") + 1]
    assert lvcreate == ["lvcreate", "-s", "-L", f"{1 << 30}b", "-n", name, "--", "vg0/root"]
    assert name.startswith("root-cairn-") and lvs_new[-1] == f"vg0/{name}"
    assert lvremove == ["lvremove", "-f", "--", f"vg0/{name}"]
    assert fake_lvm.leftovers() == []
    # The image is the snapshot (the origin changed right after it was taken), recorded under
    # the origin's name.
    summary = json.loads(made.stdout.splitlines()[-1])
    snapshots = json.loads(cli("-r", str(repo_dir), "--json", "snapshots").stdout)
    assert snapshots[0]["paths"] == [str(fake_lvm.origin)] and summary["warnings"] == []
    out = tmp_path / "out.img"
    assert cli("-r", str(repo_dir), "image-restore", "latest", str(out)).exit_code == 0
    assert file_sha(out) == fake_lvm.original_sha != file_sha(fake_lvm.origin)

    again = cli("-r", str(repo_dir), "image", str(fake_lvm.origin), "--snapshot", "lvm")
    assert again.exit_code == 0, again.stderr
    second = fake_lvm.calls()[5]
    assert second[:4] == ["lvcreate", "-s", "-l", "10%ORIGIN"] and second[5] != name  # a new name each run


def test_the_snapshot_is_removed_when_imaging_fails(fake_lvm: FakeLvm, repo_dir: Path, cli: CliRun) -> None:
    failed = cli("-r", str(repo_dir), "image", str(fake_lvm.origin), "--snapshot", "lvm", "--partition", "3")
    assert failed.exit_code == 2 and "no partition 3" in one_line_error(failed)
    assert [call[0] for call in fake_lvm.calls()] == ["lvs", "lvcreate", "lvs", "lvremove"]
    assert fake_lvm.leftovers() == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_snapshot_is_removed_on_ctrl_c_or_sigterm(fake_lvm: FakeLvm, signum: int, request: pytest.FixtureRequest) -> None:
    before = signal.getsignal(signal.SIGTERM)
    # A shell without job control starts background jobs with SIGINT ignored, and Python then
    # keeps it ignored: give this test the handler a terminal's Ctrl-C meets.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))

    def interrupt(report: object) -> None:
        os.kill(os.getpid(), signum)  # delivered to this, the main thread, while imaging

    with pytest.raises(KeyboardInterrupt):
        image(new_repo(), ImageOptions(str(fake_lvm.origin), snapshot="lvm"), progress=interrupt)
    assert [call[0] for call in fake_lvm.calls()] == ["lvs", "lvcreate", "lvs", "lvremove"]
    assert fake_lvm.leftovers() == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_snapshot_that_cannot_be_removed_is_an_error_naming_the_fix(fake_lvm: FakeLvm, repo_dir: Path, cli: CliRun) -> None:
    (fake_lvm.dir / "lvremove-fails").touch()
    failed = cli("-r", str(repo_dir), "image", str(fake_lvm.origin), "--snapshot", "lvm")
    (name,) = fake_lvm.leftovers()
    assert failed.exit_code == 1
    assert one_line_error(failed) == (
        f"cairn: imaging finished, but the LVM snapshot vg0/{name} could not be removed (Logical volume vg0/x in use.): "
        f"remove it with 'lvremove vg0/{name}'"
    )


def test_lvm_refusals_are_one_line(fake_lvm: FakeLvm, repo_dir: Path, tmp_path: Path, cli: CliRun,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: str) -> str:
        done = cli("-r", str(repo_dir), "image", *args)
        assert done.exit_code == 2, done.stderr
        return one_line_error(done)

    plain = tmp_path / "plain.img"
    random_file(plain, MiB)
    assert refused(str(plain), "--snapshot", "lvm") == (
        f"cairn: {plain} is not an LVM logical volume: --snapshot lvm needs one (or use --freeze)"
    )
    assert "lvcreate" not in {call[0] for call in fake_lvm.calls()}
    (fake_lvm.dir / "lvcreate-fails").touch()
    assert refused(str(fake_lvm.origin), "--snapshot", "lvm") == (
        "cairn: lvcreate could not snapshot vg0/root: Insufficient free space: 25 extents needed, but only 0 available"
    )
    assert "lvremove" not in {call[0] for call in fake_lvm.calls()}
    assert "not an LVM snapshot size" in refused(str(fake_lvm.origin), "--snapshot", "lvm", "--snapshot-size", "10%BANANA")
    assert "not both" in refused(str(fake_lvm.origin), "--snapshot", "lvm", "--freeze")
    assert refused(str(fake_lvm.origin), "--snapshot-size", "1G") == "cairn: --snapshot-size goes with --snapshot lvm"
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert refused(str(fake_lvm.origin), "--snapshot", "lvm") == "cairn: --snapshot lvm needs the LVM tools, and lvs was not found"


def test_btrfs_snapshot_is_refused_with_the_reason(tmp_path: Path, repo_dir: Path, cli: CliRun) -> None:
    disk = tmp_path / "disk.img"
    random_file(disk, MiB)
    done = cli("-r", str(repo_dir), "image", str(disk), "--snapshot", "btrfs")
    assert done.exit_code == 2
    assert one_line_error(done) == (
        "cairn: --snapshot btrfs gives a consistent file tree, not a consistent block device: use "
        "'cairn backup' on a btrfs snapshot for files, or --freeze to image the device"
    )
