"""The retention rules against tables worked out by hand (docs/RETENTION.md states the rules;
they are restic's, so each expectation here is what restic documents or does for the same
history). Snapshots are named by their local time; the expected column lists what is kept."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cairn.policy.retention import UNLIMITED, Duration, Point, Policy, apply, parse_group_by, subtract


def at(text: str, tz_hours: float = 0, tags: tuple[str, ...] = ()) -> Point:
    """A snapshot taken at local time `text` ("2024-01-31 23:59") in a zone `tz_hours` east of UTC."""
    local = datetime.fromisoformat(text)
    offset = int(tz_hours * 3600)
    utc = local.replace(tzinfo=timezone(timedelta(seconds=offset))).astimezone(timezone.utc)
    ns = int(utc.timestamp()) * 1_000_000_000
    return Point(f"{text} {tz_hours:+}".encode(), ns, offset, frozenset(tags))


def kept(points: list[Point], policy: Policy) -> list[str]:
    """The local times of the kept snapshots, newest first."""
    return [d.point.id.decode().rsplit(" ", 1)[0] for d in apply(points, policy) if d.keep]


def reasons(points: list[Point], policy: Policy) -> dict[str, tuple[str, ...]]:
    return {d.point.id.decode().rsplit(" ", 1)[0]: d.reasons for d in apply(points, policy) if d.keep}


DAYS = [at(f"2024-01-{d:02d} {h:02d}:00") for d in range(1, 11) for h in (9, 21)]  # 20 snapshots


def test_keep_last_keeps_the_newest_n() -> None:
    assert kept(DAYS, Policy(last=3)) == ["2024-01-10 21:00", "2024-01-10 09:00", "2024-01-09 21:00"]


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    assert kept(DAYS, Policy(daily=3)) == ["2024-01-10 21:00", "2024-01-09 21:00", "2024-01-08 21:00"]


def test_keep_hourly_counts_hours_that_have_snapshots_not_clock_hours() -> None:
    # 20 snapshots in 20 distinct hours: hourly 4 keeps the 4 newest, however far apart.
    assert kept(DAYS, Policy(hourly=4)) == ["2024-01-10 21:00", "2024-01-10 09:00", "2024-01-09 21:00", "2024-01-09 09:00"]


def test_rules_combine_as_a_union_with_every_reason_listed() -> None:
    got = reasons(DAYS, Policy(last=2, daily=2))
    assert got == {
        "2024-01-10 21:00": ("last snapshot", "daily snapshot"),
        "2024-01-10 09:00": ("last snapshot",),
        "2024-01-09 21:00": ("daily snapshot",),
    }


def test_the_oldest_snapshot_is_kept_when_a_rule_has_count_left() -> None:
    # restic's forum example: four snapshots in January, --keep-monthly 4 keeps the newest and,
    # since three monthly slots are unfilled, the oldest too.
    january = [at("2024-01-02 13:42"), at("2024-01-03 01:04"), at("2024-01-04 20:09"), at("2024-01-04 20:20")]
    assert kept(january, Policy(monthly=4)) == ["2024-01-04 20:20", "2024-01-02 13:42"]
    assert reasons(january, Policy(monthly=4))["2024-01-02 13:42"] == ("monthly snapshot",)
    # A rule whose count is used up keeps no extra oldest one.
    assert kept(january, Policy(monthly=1)) == ["2024-01-04 20:20"]
    # keep-last has a bucket per snapshot: with count left, all are kept, the oldest included once.
    assert kept(january, Policy(last=10)) == [p.id.decode().rsplit(" ", 1)[0] for p in reversed(january)]


def test_unlimited_keeps_one_per_bucket_for_ever() -> None:
    assert kept(DAYS, Policy(daily=UNLIMITED)) == [f"2024-01-{d:02d} 21:00" for d in range(10, 0, -1)] + ["2024-01-01 09:00"]
    # ...and the oldest snapshot, since an unlimited rule always has count left.


WEEKS = [
    at("2024-12-27 10:00"),  # Friday, ISO week 2024-W52
    at("2024-12-29 23:30"),  # Sunday, 2024-W52
    at("2024-12-30 00:30"),  # Monday, ISO week 2025-W01 although still December 2024
    at("2025-01-05 23:59"),  # Sunday, 2025-W01
    at("2025-01-06 00:00"),  # Monday, 2025-W02
]


def test_weeks_start_on_monday_and_follow_iso_years() -> None:
    assert kept(WEEKS, Policy(weekly=3)) == ["2025-01-06 00:00", "2025-01-05 23:59", "2024-12-29 23:30"]
    # Years are calendar years, though: 30 December 2024 is in 2024.
    assert kept(WEEKS, Policy(yearly=2)) == ["2025-01-06 00:00", "2024-12-30 00:30"]


def test_month_ends_and_leap_days() -> None:
    history = [
        at("2023-02-28 23:59"), at("2024-01-31 23:59"), at("2024-02-01 00:00"),
        at("2024-02-29 12:00"), at("2024-03-01 00:00"), at("2024-03-31 23:59"),
    ]
    assert kept(history, Policy(monthly=3)) == ["2024-03-31 23:59", "2024-02-29 12:00", "2024-01-31 23:59"]
    assert kept(history, Policy(daily=3)) == ["2024-03-31 23:59", "2024-03-01 00:00", "2024-02-29 12:00"]
    assert kept(history, Policy(yearly=5)) == ["2024-03-31 23:59", "2023-02-28 23:59"]


def test_buckets_use_the_local_time_the_snapshot_was_taken_in() -> None:
    # Taken at +03:00: 1 June 20:00 local, then 2 June 01:00 local (still 1 June in UTC).
    east = [at("2024-06-01 20:00", 3), at("2024-06-02 01:00", 3), at("2024-06-02 11:00", 3)]
    assert kept(east, Policy(daily=2)) == ["2024-06-02 11:00", "2024-06-01 20:00"]
    # The same instants taken at UTC fall on other days: 1 June 22:00 is now a day's newest.
    utc = [at("2024-06-01 17:00"), at("2024-06-01 22:00"), at("2024-06-02 08:00")]
    assert kept(utc, Policy(daily=2)) == ["2024-06-02 08:00", "2024-06-01 22:00"]
    # Two hosts' zones in one group: each snapshot is bucketed by its own offset, in the order
    # of the instants (04:30, 22:30 and 19:00 UTC; local days 1, 2 and 1 June).
    mixed = [at("2024-06-01 23:30", -5), at("2024-06-02 00:30", 2), at("2024-06-01 21:00", 2), at("2024-05-30 12:00")]
    assert kept(mixed, Policy(daily=3)) == ["2024-06-01 23:30", "2024-06-02 00:30", "2024-06-01 21:00"]


def test_keep_within_is_relative_to_the_newest_snapshot_not_now() -> None:
    old = [at("2001-01-10 12:00"), at("2001-01-09 12:01"), at("2001-01-08 12:00"), at("2001-01-01 00:00")]
    assert kept(old, Policy(within=Duration(days=2))) == ["2001-01-10 12:00", "2001-01-09 12:01"]
    assert kept(old, Policy(within=Duration(days=2, hours=1))) == ["2001-01-10 12:00", "2001-01-09 12:01", "2001-01-08 12:00"]
    # Strictly newer: a snapshot exactly at the bound is not kept.
    assert kept([at("2001-01-10 12:00"), at("2001-01-08 12:00")], Policy(within=Duration(days=2))) == ["2001-01-10 12:00"]


def test_calendar_subtraction_normalises_like_go() -> None:
    def minus(text: str, duration: str) -> str:
        point = at(text)
        ns = subtract(point, Duration.parse(duration))
        return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")

    assert minus("2024-03-31 10:00", "1m") == "2024-03-02 10:00"  # 31 February 2024 = 2 March
    assert minus("2023-03-31 10:00", "1m") == "2023-03-03 10:00"  # 31 February 2023 = 3 March
    assert minus("2024-02-29 10:00", "1y") == "2023-03-01 10:00"  # 29 February 2023 = 1 March
    assert minus("2025-02-28 10:00", "1y") == "2024-02-28 10:00"
    assert minus("2024-01-01 01:00", "2h") == "2023-12-31 23:00"
    assert minus("2024-01-15 00:00", "1y13m") == "2021-12-15 00:00"


def test_keep_within_a_month_from_a_month_end() -> None:
    history = [at("2024-03-31 10:00"), at("2024-03-02 10:01"), at("2024-03-02 10:00"), at("2024-02-29 10:00")]
    assert kept(history, Policy(within=Duration(months=1))) == ["2024-03-31 10:00", "2024-03-02 10:01"]


def test_within_bucket_rules_keep_one_per_bucket_inside_their_window() -> None:
    got = kept(DAYS, Policy(within_daily=Duration(days=3)))
    # Window: after 2024-01-07 21:00. Newest of 10th, 9th, 8th; nothing older (count-free rule,
    # so no extra oldest snapshot: the oldest of the group is outside the window).
    assert got == ["2024-01-10 21:00", "2024-01-09 21:00", "2024-01-08 21:00"]
    assert reasons(DAYS, Policy(within_daily=Duration(days=3)))["2024-01-08 21:00"] == ("daily within 3d",)
    assert kept(DAYS, Policy(within_weekly=Duration(years=1))) == ["2024-01-10 21:00", "2024-01-07 21:00", "2024-01-01 09:00"]


def test_keep_tag_keeps_snapshots_holding_every_tag_of_a_set() -> None:
    points = [at("2024-01-03 00:00", tags=("a",)), at("2024-01-02 00:00", tags=("a", "b")), at("2024-01-01 00:00", tags=("b",))]
    assert kept(points, Policy(tags=(frozenset({"a", "b"}),))) == ["2024-01-02 00:00"]
    assert kept(points, Policy(tags=(frozenset({"a"}), frozenset({"b"})))) == ["2024-01-03 00:00", "2024-01-02 00:00", "2024-01-01 00:00"]
    assert reasons(points, Policy(last=1, tags=(frozenset({"a"}),)))["2024-01-03 00:00"] == ("tags a", "last snapshot")


def test_a_year_of_dailies_under_a_typical_policy() -> None:
    """Daily snapshots at 03:00 through 2023; keep 7 daily, 4 weekly, 6 monthly, 2 yearly."""
    start = datetime(2023, 1, 1, 3, 0)
    year = [at((start + timedelta(days=i)).isoformat(sep=" ", timespec="minutes")) for i in range(365)]
    got = kept(year, Policy(daily=7, weekly=4, monthly=6, yearly=2))
    assert got == [
        # 7 daily: 25-31 December (Sunday 31 Dec also closes ISO week 52, December and 2023)
        "2023-12-31 03:00", "2023-12-30 03:00", "2023-12-29 03:00", "2023-12-28 03:00",
        "2023-12-27 03:00", "2023-12-26 03:00", "2023-12-25 03:00",
        # weekly: the Sundays of weeks 51, 50, 49 (week 52 already counted)
        "2023-12-24 03:00", "2023-12-17 03:00", "2023-12-10 03:00",
        # monthly: the last days of November to July (December already counted)
        "2023-11-30 03:00", "2023-10-31 03:00", "2023-09-30 03:00", "2023-08-31 03:00", "2023-07-31 03:00",
        # yearly 2 has one slot unfilled, so the oldest snapshot stays
        "2023-01-01 03:00",
    ]


def test_an_empty_policy_keeps_everything_and_says_so() -> None:
    assert all(d.keep and d.reasons == ("empty policy",) for d in apply(DAYS, Policy()))
    assert Policy().empty and not Policy(tags=(frozenset({"x"}),)).empty


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7d", Duration(days=7)), ("1y6m", Duration(years=1, months=6)), ("36h", Duration(hours=36)),
     ("1y2m3d4h", Duration(1, 2, 3, 4)), ("2Y", Duration(years=2))],
)
def test_durations_parse(text: str, expected: Duration) -> None:
    assert Duration.parse(text) == expected
    assert Duration.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "1d1d", "1w", "-1d", "1d 2h", "1.5d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Duration.parse(text)


def test_group_by_fields() -> None:
    assert parse_group_by("host,paths") == ("host", "paths")
    assert parse_group_by("") == ()
    with pytest.raises(ValueError, match="cannot group by"):
        parse_group_by("host,colour")


def test_counts_below_unlimited_are_refused() -> None:
    with pytest.raises(ValueError):
        Policy(daily=-2)
