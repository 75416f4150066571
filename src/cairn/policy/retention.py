"""Which snapshots a retention policy keeps, and why: a pure function of times, zones and tags.

The rules are restic's current ones (docs/RETENTION.md states them in full), so its users'
policies mean the same here:

* Snapshots are considered newest first. A bucket rule (`last`, `hourly`, `daily`, `weekly`,
  `monthly`, `yearly`) keeps the newest snapshot of each of its next N distinct buckets; buckets
  are read in the **local time the snapshot was taken in** (its recorded UTC offset), weeks are
  ISO weeks (Monday to Sunday, the ISO year). N may be `UNLIMITED` (-1).
* When a bucket rule still has count left at the oldest snapshot, that snapshot is kept too,
  so the history reaches as far back as the counts allow; its reason then reads
  ``oldest daily snapshot`` (when it is not the newest of its bucket anyway).
* `within` keeps every snapshot newer than the newest snapshot minus the duration (calendar
  arithmetic in the newest snapshot's zone, as Go's ``AddDate`` does it: 31 March minus one month
  is 3 March). The `within_*` rules keep, among those newer than their own bound, the newest of
  each bucket (no count), and the oldest snapshot of the group when it is inside the bound.
* "The newest snapshot" for durations is the newest one taken before `now`: a snapshot from a
  machine whose clock ran years ahead must not push every other snapshot out of a window (it
  is kept itself, being newer than any bound).
* `tags` keeps every snapshot holding all tags of any one of the given tag sets.

Nothing here reads a clock, a file or a repository: inputs are plain values (the caller passes
`now`), so every rule is tested with crafted timestamps (tests/test_retention*.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

UNLIMITED = -1

_DURATION = re.compile(r"(\d+)([ymdh])")


@dataclass(frozen=True)
class Duration:
    """A calendar duration as restic writes it: ``1y2m3d4h`` (years, months, days, hours)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @property
    def zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{unit}" for n, unit in parts if n) or "0h"

    @classmethod
    def parse(cls, text: str) -> Duration:
        """``2y``, ``7d``, ``1y6m``, ``36h``; units may appear at most once; ValueError otherwise."""
        spec = text.strip().lower()
        pos = 0
        seen: dict[str, int] = {}
        for match in _DURATION.finditer(spec):
            if match.start() != pos or match.group(2) in seen:
                break
            seen[match.group(2)] = int(match.group(1))
            pos = match.end()
        if not spec or pos != len(spec):
            raise ValueError(f"{text!r} is not a duration: write it like 1y6m, 7d or 36h (y, m, d, h)")
        return cls(seen.get("y", 0), seen.get("m", 0), seen.get("d", 0), seen.get("h", 0))


@dataclass(frozen=True)
class Policy:
    """What to keep; counts are 0 (rule off), a positive number, or UNLIMITED."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration = Duration()
    within_hourly: Duration = Duration()
    within_daily: Duration = Duration()
    within_weekly: Duration = Duration()
    within_monthly: Duration = Duration()
    within_yearly: Duration = Duration()
    tags: tuple[frozenset[str], ...] = ()
    """Keep snapshots having every tag of at least one of these sets."""

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, name) < UNLIMITED:
                raise ValueError(f"keep-{name} must be a count or unlimited, not {getattr(self, name)}")

    @property
    def empty(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        durations = (
            self.within, self.within_hourly, self.within_daily, self.within_weekly,
            self.within_monthly, self.within_yearly,
        )
        return not any(counts) and all(d.zero for d in durations) and not self.tags


@dataclass(frozen=True)
class Point:
    """One snapshot as the policy sees it."""

    id: bytes
    time_ns: int
    tz_offset: int = 0
    """Seconds east of UTC where it was taken."""
    tags: frozenset[str] = frozenset()

    @property
    def local(self) -> datetime:
        """The wall-clock time where the snapshot was taken (naive: the offset is applied)."""
        return datetime(1970, 1, 1) + timedelta(microseconds=self.time_ns // 1000, seconds=self.tz_offset)


@dataclass(frozen=True)
class Decision:
    point: Point
    keep: bool
    reasons: tuple[str, ...] = field(default=())


Bucket = Callable[[datetime, int], int]


def _hour(t: datetime, nr: int) -> int:
    return ((t.year * 100 + t.month) * 100 + t.day) * 100 + t.hour


def _day(t: datetime, nr: int) -> int:
    return (t.year * 100 + t.month) * 100 + t.day


def _week(t: datetime, nr: int) -> int:
    iso = t.isocalendar()
    return iso.year * 100 + iso.week


def _month(t: datetime, nr: int) -> int:
    return t.year * 100 + t.month


def _year(t: datetime, nr: int) -> int:
    return t.year


def _each(t: datetime, nr: int) -> int:
    return nr


def subtract(latest: Point, duration: Duration) -> int:
    """`latest`'s time minus `duration`, in ns: Go's ``AddDate(-y, -m, -d).Add(-h)``.

    The calendar part is done on the wall clock of `latest`'s zone and normalised the way Go
    normalises (months wrap into years; a day past the month's end runs into the next month).
    """
    local = latest.local
    months = local.year * 12 + (local.month - 1) - duration.years * 12 - duration.months
    first = date(months // 12, months % 12 + 1, 1)
    day = first + timedelta(days=local.day - 1 - duration.days)
    moved = datetime.combine(day, local.time()) - timedelta(hours=duration.hours)
    epoch_local = datetime(1970, 1, 1) + timedelta(seconds=latest.tz_offset)
    delta = moved - epoch_local
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000 + latest.time_ns % 1000


def _tag_reason(tags: frozenset[str]) -> str:
    return "tags " + ",".join(sorted(tags))


def apply(points: Sequence[Point], policy: Policy, now_ns: int | None = None) -> list[Decision]:
    """Decide for every point (one group); the result is newest first.

    Durations count back from the newest point taken before `now_ns` (None: from the newest
    point). An empty policy keeps everything (callers refuse to run one, as forgetting all by
    accident is the worst outcome a retention command can have).
    """
    ordered = sorted(points, key=lambda p: (-p.time_ns, p.id))
    if policy.empty:
        return [Decision(p, True, ("empty policy",)) for p in ordered]
    if not ordered:
        return []
    counted: list[tuple[str, Bucket, int]] = [
        ("last", _each, policy.last), ("hourly", _hour, policy.hourly), ("daily", _day, policy.daily),
        ("weekly", _week, policy.weekly), ("monthly", _month, policy.monthly), ("yearly", _year, policy.yearly),
    ]
    remaining = [count for _, _, count in counted]
    last_seen: list[int | None] = [None] * len(counted)
    past = [p for p in ordered if now_ns is None or p.time_ns < now_ns]
    latest = past[0] if past else None

    def bound(duration: Duration) -> int | None:
        """None for a rule that is off; with every point in the future, all are within."""
        if duration.zero:
            return None
        return subtract(latest, duration) if latest is not None else ordered[-1].time_ns - 1

    within_rules: list[tuple[str, Bucket, Duration]] = [
        ("hourly", _hour, policy.within_hourly), ("daily", _day, policy.within_daily),
        ("weekly", _week, policy.within_weekly), ("monthly", _month, policy.within_monthly),
        ("yearly", _year, policy.within_yearly),
    ]
    within_bounds = [bound(d) for _, _, d in within_rules]
    within_seen: list[int | None] = [None] * len(within_rules)
    within_bound = bound(policy.within)
    oldest = len(ordered) - 1
    decisions = []
    for nr, point in enumerate(ordered):
        reasons: list[str] = [_tag_reason(t) for t in policy.tags if t <= point.tags]
        if within_bound is not None and point.time_ns > within_bound:
            reasons.append(f"within {policy.within}")
        local = point.local
        for i, (name, bucket, _) in enumerate(counted):
            if remaining[i] == 0:
                continue
            value = bucket(local, nr)
            if value != last_seen[i] or nr == oldest:
                prefix = "oldest " if value == last_seen[i] else ""
                last_seen[i] = value
                if remaining[i] > 0:
                    remaining[i] -= 1
                reasons.append(f"{prefix}{name} snapshot")
        for i, (name, bucket, duration) in enumerate(within_rules):
            limit = within_bounds[i]
            if limit is None or point.time_ns <= limit:
                continue
            value = bucket(local, nr)
            if value != within_seen[i] or nr == oldest:
                prefix = "oldest " if value == within_seen[i] else ""
                within_seen[i] = value
                reasons.append(f"{prefix}{name} within {duration}")
        decisions.append(Decision(point, bool(reasons), tuple(reasons)))
    return decisions


GROUP_FIELDS = ("host", "paths", "tags")


def parse_group_by(text: str) -> tuple[str, ...]:
    """``host,paths`` (the default), any subset of host, paths, tags; empty means one group."""
    fields = tuple(f for f in (part.strip() for part in text.split(",")) if f)
    unknown = [f for f in fields if f not in GROUP_FIELDS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}: use any of host, paths, tags")
    return fields
