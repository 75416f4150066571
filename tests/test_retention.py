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
    # restic marks it so (since 0.17.2): kept only because it is the oldest.
    assert reasons(january, Policy(monthly=4))["2024-01-02 13:42"] == ("oldest monthly snapshot",)
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
    # The whole group is inside a year: the oldest snapshot is kept too, marked as such.
    assert kept(DAYS, Policy(within_weekly=Duration(years=1))) == ["2024-01-10 21:00", "2024-01-07 21:00", "2024-01-01 09:00"]
    assert reasons(DAYS, Policy(within_weekly=Duration(years=1)))["2024-01-01 09:00"] == ("oldest weekly within 1y",)


def test_keep_within_hourly() -> None:
    history = [
        at("2024-05-10 12:40"), at("2024-05-10 12:10"), at("2024-05-10 11:55"), at("2024-05-10 11:05"),
        at("2024-05-10 10:30"), at("2024-05-10 09:59"), at("2024-05-10 09:30"), at("2024-05-10 08:00"),
        at("2024-05-09 12:00"),
    ]
    # Window: after 09:40 (12:40 minus 3 h). Hours 12, 11, 10 and 9 keep their newest; 09:30 is
    # outside, though its hour is not; the oldest snapshot is outside too, so it goes.
    policy = Policy(within_hourly=Duration(hours=3))
    assert kept(history, policy) == ["2024-05-10 12:40", "2024-05-10 11:55", "2024-05-10 10:30", "2024-05-10 09:59"]
    assert set(reasons(history, policy).values()) == {("hourly within 3h",)}
    # A count reaches past the window: --keep-hourly 6 takes the next two hours that have one.
    assert kept(history, Policy(hourly=6)) == [
        "2024-05-10 12:40", "2024-05-10 11:55", "2024-05-10 10:30", "2024-05-10 09:59", "2024-05-10 08:00", "2024-05-09 12:00",
    ]
    # With the whole group inside the window, the oldest is kept as well, and says why.
    one_hour = [at("2024-05-10 10:50"), at("2024-05-10 10:20"), at("2024-05-10 10:05")]
    assert reasons(one_hour, Policy(within_hourly=Duration(days=1))) == {
        "2024-05-10 10:50": ("hourly within 1d",), "2024-05-10 10:05": ("oldest hourly within 1d",),
    }


def test_keep_within_monthly_from_a_month_end() -> None:
    history = [
        at("2024-08-31 10:00"), at("2024-08-01 10:00"), at("2024-07-15 10:00"), at("2024-06-30 23:00"),
        at("2024-06-01 10:00"), at("2024-03-02 11:00"), at("2024-03-02 09:00"), at("2024-03-01 10:00"),
        at("2024-02-29 10:00"),
    ]
    # 31 August minus 6 months is "31 February", which Go normalises to 2 March (2024 is a leap
    # year): the window starts at 2 March 10:00, so 1 March is outside although it is in March.
    assert kept(history, Policy(within_monthly=Duration(months=6))) == [
        "2024-08-31 10:00", "2024-07-15 10:00", "2024-06-30 23:00", "2024-03-02 11:00",
    ]
    # The count rule has no window: six months that have a snapshot, the sixth being February.
    assert kept(history, Policy(monthly=6)) == [
        "2024-08-31 10:00", "2024-07-15 10:00", "2024-06-30 23:00", "2024-03-02 11:00", "2024-02-29 10:00",
    ]


def test_keep_within_yearly() -> None:
    history = [
        at("2025-03-15 12:00"), at("2025-01-01 00:00"), at("2024-12-31 23:59"), at("2024-06-01 12:00"),
        at("2023-03-16 00:00"), at("2023-03-15 12:00"), at("2022-12-31 12:00"),
    ]
    # Window: after 2023-03-15 12:00; the snapshot exactly at the bound is outside. The newest of
    # 2025, 2024 and (inside the window) 2023 stay.
    policy = Policy(within_yearly=Duration(years=2))
    assert kept(history, policy) == ["2025-03-15 12:00", "2024-12-31 23:59", "2023-03-16 00:00"]
    assert reasons(history, policy)["2024-12-31 23:59"] == ("yearly within 2y",)
    # --keep-yearly 4 goes on to 2022, and keeps the newest of 2023 (at the bound).
    assert kept(history, Policy(yearly=4)) == ["2025-03-15 12:00", "2024-12-31 23:59", "2023-03-16 00:00", "2022-12-31 12:00"]


def test_keep_within_combined_with_count_rules() -> None:
    # Window: after 2024-01-09 21:00 (one day before the newest): only the two of 10 January.
    # The counts run on their own: 3 days (10, 9, 8), 2 ISO weeks (W02 from Monday 8 January,
    # then W01, whose newest is Sunday 7 January), 3 months (only January has snapshots, so
    # the oldest is kept for the count left).
    policy = Policy(within=Duration(days=1), daily=3, weekly=2, monthly=3)
    assert reasons(DAYS, policy) == {
        "2024-01-10 21:00": ("within 1d", "daily snapshot", "weekly snapshot", "monthly snapshot"),
        "2024-01-10 09:00": ("within 1d",),
        "2024-01-09 21:00": ("daily snapshot",),  # exactly one day older: outside the window
        "2024-01-08 21:00": ("daily snapshot",),
        "2024-01-07 21:00": ("weekly snapshot",),
        "2024-01-01 09:00": ("oldest monthly snapshot",),
    }
    assert kept(DAYS, policy) == list(reasons(DAYS, policy))  # newest first


def zoned(decisions_of: list[Point], policy: Policy) -> list[str]:
    """Kept snapshots as local time and UTC offset, for groups whose local times repeat."""
    return [d.point.id.decode() for d in apply(decisions_of, policy) if d.keep]


def test_the_end_of_daylight_saving_time_inside_one_group() -> None:
    # Berlin, 27 October 2024: at 03:00 CEST (+2) clocks go back to 02:00 CET (+1), so the wall
    # clock shows 02:00-03:00 twice. Snapshots are bucketed by the wall clock they recorded.
    night = [
        at("2024-10-27 03:30", 1),  # 02:30 UTC
        at("2024-10-27 02:45", 1),  # 01:45 UTC, the second 02:xx hour
        at("2024-10-27 02:15", 1),  # 01:15 UTC
        at("2024-10-27 02:45", 2),  # 00:45 UTC, the first 02:xx hour
        at("2024-10-27 02:15", 2),  # 00:15 UTC
        at("2024-10-27 01:30", 2),  # 23:30 UTC on the 26th
        at("2024-10-26 23:30", 2),  # 21:30 UTC
    ]
    # Both 02:xx hours are one hourly bucket (restic buckets by year, month, day and hour of the
    # local time): four snapshots from two real hours yield one.
    assert zoned(night, Policy(hourly=10)) == [
        "2024-10-27 03:30 +1", "2024-10-27 02:45 +1", "2024-10-27 01:30 +2", "2024-10-26 23:30 +2",
    ]
    assert zoned(night, Policy(hourly=2)) == ["2024-10-27 03:30 +1", "2024-10-27 02:45 +1"]
    # Days are local too: 01:30 CEST is the 27th there (the 26th in UTC), so the 26th's newest
    # is 23:30.
    assert zoned(night, Policy(daily=2)) == ["2024-10-27 03:30 +1", "2024-10-26 23:30 +2"]
    # A duration is measured on the newest snapshot's recorded offset (+1): one day before
    # 27 October 12:00 CET is 26 October 11:00 UTC, which was 13:00 on the CEST clocks of the
    # day before. (restic agrees unless forget itself runs in Berlin time, where Go steps the
    # named zone's wall clock and that day lasts 25 hours.)
    day = [at("2024-10-27 12:00", 1), at("2024-10-26 13:30", 2), at("2024-10-26 13:00", 2), at("2024-10-26 12:30", 2)]
    assert zoned(day, Policy(within=Duration(days=1))) == ["2024-10-27 12:00 +1", "2024-10-26 13:30 +2"]


def test_durations_ignore_snapshots_from_the_future() -> None:
    # A host whose clock ran years ahead: its snapshot must not push the others out of a window.
    history = [at("2030-01-01 00:00"), at("2024-01-10 12:00"), at("2024-01-09 12:00"), at("2023-12-01 12:00")]
    now = at("2024-06-01 00:00").time_ns
    got = [d.point.id.decode().rsplit(" ", 1)[0] for d in apply(history, Policy(within=Duration(days=7)), now) if d.keep]
    # Window: 7 days before 10 January; the snapshot from the future is inside any window.
    assert got == ["2030-01-01 00:00", "2024-01-10 12:00", "2024-01-09 12:00"]
    # Without `now` (the pure default), the newest point is the reference.
    assert kept(history, Policy(within=Duration(days=7))) == ["2030-01-01 00:00"]
    # Every snapshot in the future: there is no reference, and every one is within.
    everything = apply(history, Policy(within_daily=Duration(days=1)), at("2000-01-01 00:00").time_ns)
    assert all(d.keep for d in everything)


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
