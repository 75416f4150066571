"""Which packs prune drops, which it repacks, and which it leaves alone: a pure function.

Dropping a pack with nothing in use costs one delete. Repacking a partly used pack costs
reading it and writing its used blobs again, so it pays only for packs that are mostly waste.
The plan therefore:

1. drops every pack holding no used blob;
2. keeps every fully used pack;
3. of the partly used ones, repacks the most wasteful first (the fewest used bytes per unused
   byte reclaimed) until the unused bytes left behind are within `max_unused`, never copying
   more than `max_repack` bytes.

`max_unused` is either a share of the repository (``5%``: unused / (used + unused) stays at or
below 5 %, restic's default) or a number of bytes; `max_repack` bounds the bytes copied in one
run (None: no bound). Forgetting one snapshot out of fifty leaves a few percent unused, so the
default plan drops what is wholly unused and copies nothing: prune's cost tracks what was
forgotten, not the size of the repository.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Limit:
    """A bound on unused data: a percentage of the repository or an absolute size."""

    percent: float | None = None
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> Limit:
        """``5%``, ``0%``, ``100%``, ``500M``, ``2G``, ``unlimited``."""
        spec = text.strip().lower()
        if spec == "unlimited":
            return cls(percent=100.0)
        if spec.endswith("%"):
            try:
                value = float(spec[:-1])
            except ValueError:
                raise ValueError(f"{text!r} is not a percentage") from None
            if not 0 <= value <= 100:
                raise ValueError(f"{text!r}: a percentage must be between 0 and 100")
            return cls(percent=value)
        return cls(size=parse_size(text))

    def allowed(self, used: int) -> float:
        """How many unused bytes may remain beside `used` used bytes."""
        if self.size is not None:
            return float(self.size)
        percent = 100.0 if self.percent is None else self.percent
        if percent >= 100:
            return float("inf")
        return used * percent / (100 - percent)


def parse_size(text: str) -> int:
    """``1024``, ``64K``, ``500M``, ``2G``, ``1T`` (binary units; ``MiB``/``MB`` accepted alike)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size: write it like 500M or 2G")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class PruneOptions:
    """What `prune` may do. Kept here, beside the limits it holds, so that the command line
    builds it (refusing a bad limit before asking the password) without loading prune and
    numpy: 16 MiB that would otherwise be resident while the key derivation takes its 32."""

    max_unused: Limit = Limit(percent=5.0)
    max_repack_size: int | None = None
    dry_run: bool = False
    ignore_snapshots: frozenset[bytes] = frozenset()
    """Snapshots to count as already forgotten, for `forget --dry-run --prune` to show what
    the prune after a real forget would do. Dry runs only: a real prune that skipped live
    snapshots would delete their data."""


@dataclass(frozen=True)
class PackUsage:
    """What prune learned about one pack."""

    number: int
    """The caller's handle for the pack."""
    size: int
    """Bytes it occupies in storage."""
    used_bytes: int
    unused_bytes: int
    used_blobs: int
    unused_blobs: int


@dataclass(frozen=True)
class RepackOptions:
    max_unused: Limit = Limit(percent=5.0)
    max_repack: int | None = None


@dataclass
class RepackPlan:
    drop: list[int] = field(default_factory=list)
    repack: list[int] = field(default_factory=list)
    keep: list[int] = field(default_factory=list)
    drop_bytes: int = 0
    repack_bytes: int = 0
    """Used bytes the repack copies."""
    reclaimed_bytes: int = 0
    """Storage bytes freed once the dropped and repacked packs are deleted, less the copies."""
    unused_left: int = 0


def plan(packs: Sequence[PackUsage], options: RepackOptions | None = None) -> RepackPlan:
    options = options or RepackOptions()
    result = RepackPlan()
    candidates: list[PackUsage] = []
    used_total = sum(p.used_bytes for p in packs)
    for p in packs:
        if p.used_blobs == 0:
            result.drop.append(p.number)
            result.drop_bytes += p.size
        elif p.unused_blobs == 0:
            result.keep.append(p.number)
        else:
            candidates.append(p)
    unused_left = sum(p.unused_bytes for p in candidates)
    allowed = options.max_unused.allowed(used_total)
    # Cheapest reclaim first: the fewest bytes to copy per byte won back.
    candidates.sort(key=lambda p: (p.used_bytes / p.unused_bytes, -p.unused_bytes, p.number))
    for p in candidates:
        fits = options.max_repack is None or result.repack_bytes + p.used_bytes <= options.max_repack
        if unused_left > allowed and fits:
            result.repack.append(p.number)
            result.repack_bytes += p.used_bytes
            result.reclaimed_bytes += p.size - p.used_bytes
            unused_left -= p.unused_bytes
        else:
            result.keep.append(p.number)
    result.reclaimed_bytes += result.drop_bytes
    result.unused_left = unused_left
    result.keep.sort()
    return result
