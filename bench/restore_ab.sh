#!/bin/bash
# Full restore, alternating, into tmpfs (or, with NEW_EXT4=1 as root, onto a new ext4 made for
# each run, as bench/run.py does): cairn (this tree), cairn (another tree: base) and restic,
# each from its own repository of the same data, page cache warm. One line per run:
#   round tool wall user sys maxrss_kib load=1-minute-load-average
# Usage: bench/restore_ab.sh ROUNDS CAIRN_REPO RESTIC_REPO BASE_SRC [tool...]   (tools: base new restic)
# Make the repositories first (password bench-password), e.g. of the `real` data set:
#   cairn -r R init; cairn -r R backup /var/tmp/cairn-bench/datasets/real; restic -r RR init; restic -r RR backup ...
# BASE_SRC is an older tree's src folder: git archive <commit> src | tar -x -C DIR.
set -u
export CAIRN_PASSWORD=bench-password RESTIC_PASSWORD=bench-password
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
[ -x "$py" ] || py=python3
rounds=$1 crepo=$2 rrepo=$3 base=$4; shift 4
tools=${*:-base new restic}
shm=${SHM:-/dev/shm}
for i in $(seq "$rounds"); do
  for t in $tools; do
    target=$shm/cairn-restore-ab-$t; rm -rf "$target"
    if [ "${NEW_EXT4:-0}" = 1 ]; then  # a new filesystem: no inodes freed minutes ago (bench/files.py)
      image=${IMAGE_DIR:-/var/tmp}/cairn-restore-ab.ext4; rm -f "$image"; truncate -s 4G "$image"
      mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$image"
      mkdir -p "$target"; mount -o loop "$image" "$target"
    fi
    case $t in
      base) cmd=(env PYTHONPATH="$base" "$py" -m cairn -r "$crepo" restore latest --target "$target");;
      new) cmd=(env PYTHONPATH="$here/src" "$py" -m cairn -r "$crepo" restore latest --target "$target");;
      restic) cmd=(restic -r "$rrepo" --cache-dir "$rrepo.cache" -q restore latest --target "$target");;
    esac
    load=$(cut -d' ' -f1 /proc/loadavg)
    /usr/bin/time -o "$shm/cairn-restore-ab.time" -f "$i $t %e %U %S %M load=$load" "${cmd[@]}" >/dev/null
    cat "$shm/cairn-restore-ab.time"
    if [ "${NEW_EXT4:-0}" = 1 ]; then umount "$target"; rm -f "$image"; fi
    rm -rf "$target" "$shm/cairn-restore-ab.time"
  done
done
