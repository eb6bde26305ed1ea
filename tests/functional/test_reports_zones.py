"""One time-zone database for the reports: PostgreSQL's.

The buckets are PostgreSQL's ``date_trunc(unit, ts, tz)``; the period's instants and the buckets'
labels used to be Python's (``zoneinfo``, its own tzdata). Where the two disagree (America/Asuncion:
permanent -03 since tzdata 2024b, -04 in winter in older data) a one-day period had two buckets, the
first labelled with the day before. Now every piece of zone arithmetic is PostgreSQL's, so a report
is consistent whatever tzdata either side has: one bucket per local day, labelled with that day,
starting at the period's start, and the summary agrees with the series.

A local day starts at its first instant (``local_day_start``). Where the clocks go back at 01:00 to
00:00 (America/Havana, Atlantic/Azores) local midnight happens twice, and PostgreSQL's own reading
(``day::timestamp at time zone tz``, ``date_trunc``) is the later instant: the day's first local hour
was counted in the day before (a one-day period showed a bucket of the next date) and the series
disagreed with the summary.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from app.domains.reports.services import ReportService, resolve_range
from tests.factories import create_user, make_site

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


async def insert_view(
    db: AsyncConnection[Any],
    site_id: int,
    ts: datetime,
    visitor_id: int = 1,
    *,
    received_at: datetime | None = None,
) -> None:
    """A view at ``ts``, received then (or at ``received_at``: a late one)."""
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " values (%s, %s, %s, %s, '/', 'desktop', 'firefox', 'linux')",
        (site_id, ts, received_at or ts, visitor_id),
    )


View = tuple[datetime, int, str]
"""A view: when, by which visitor, of which path."""


async def insert_views(
    db: AsyncConnection[Any], site_id: int, views: list[View], received_at: datetime | None = None
) -> None:
    """Views in one statement, each received at its ts (or all at ``received_at``)."""
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " select %s, v.ts, coalesce(%s, v.ts), v.visitor_id, v.path, 'desktop', 'firefox', 'linux'"
        " from unnest(%s::timestamptz[], %s::bigint[], %s::text[]) as v (ts, visitor_id, path)",
        (site_id, received_at, [v[0] for v in views], [v[1] for v in views], [v[2] for v in views]),
    )


async def postgres_midnight(db: AsyncConnection[Any], day: date, tz: str) -> datetime:
    row = await (await db.execute("select (%s::date)::timestamp at time zone %s", (day, tz))).fetchone()
    assert row is not None
    moment: datetime = row[0]
    return moment


@pytest.mark.parametrize("tz", ["America/Asuncion", "Europe/Berlin", "Asia/Kathmandu"])
async def test_a_local_day_is_one_bucket_labelled_with_that_day(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, tz: str
) -> None:
    day = date(2027, 7, 1)
    await pageview_queries.ensure_partitions(db, from_day=day - timedelta(days=1), days=3)
    start = await postgres_midnight(db, day, tz)
    end = await postgres_midnight(db, day + timedelta(days=1), tz)
    # Both databases' midnights for Asunción (03:00 or 04:00 UTC) lie between these; the end is outside.
    views = (datetime(2027, 7, 1, 3, 30, tzinfo=UTC), datetime(2027, 7, 1, 4, 30, tzinfo=UTC))
    for moment in (*views, end):
        await insert_view(db, site_id, moment)
    inside = sum(1 for moment in views if start <= moment < end)
    rng = resolve_range("custom", day, day, tz)
    series = await reports.timeseries(site_id, rng, "day")
    summary = await reports.summary(site_id, rng)
    assert [(p.local, p.start, p.pageviews) for p in series.points] == [("2027-07-01", start, inside)]
    assert (series.range.start, series.range.end) == (start, end)
    assert (summary.range.start, summary.range.end) == (start, end)
    assert summary.pageviews == inside


@pytest.mark.parametrize("tz", ["America/St_Johns", "Asia/Kathmandu", "UTC", "Europe/Berlin"])
async def test_hour_labels_are_local_times_with_their_offset(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, tz: str
) -> None:
    """Zones both databases agree on (fractional, negative, none): the labels read as before."""
    day = datetime.now(UTC).date() - timedelta(days=1)
    rng = resolve_range("custom", day, day, tz)
    series = await reports.timeseries(site_id, rng, "hour")
    zone = ZoneInfo(tz)
    assert [p.local for p in series.points] == [
        p.start.astimezone(zone).isoformat(timespec="minutes") for p in series.points
    ]
    assert series.points[0].local.startswith(f"{day.isoformat()}T00:00")


# (zone, a local day on which the clocks go back, the UTC instant they do)
REPEATED_HOURS = [
    ("Australia/Lord_Howe", date(2027, 4, 4), datetime(2027, 4, 3, 15, tzinfo=UTC)),  # 02:00 -> 01:30
    ("Europe/Berlin", date(2026, 10, 25), datetime(2026, 10, 25, 1, tzinfo=UTC)),  # 03:00 -> 02:00
]


@pytest.mark.parametrize(("tz", "day", "back"), REPEATED_HOURS)
async def test_an_hour_bucket_starts_at_its_first_instant_where_the_clocks_go_back(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, tz: str, day: date, back: datetime
) -> None:
    """Views every ten minutes from 90 minutes before the clocks go back to 90 after: each bucket
    counts exactly the views from its start to the next one's, and is labelled at its start. In
    Lord Howe the half hour after the change is a bucket of its own; its start was reported half an
    hour early (date_trunc's key, read with the offset before the change), an instant counted in the
    bucket before."""
    await pageview_queries.ensure_partitions(db, from_day=day - timedelta(days=2), days=4)
    views = [back + timedelta(minutes=minutes) for minutes in range(-90, 90, 10)]
    for n, moment in enumerate(views):
        await insert_view(db, site_id, moment, visitor_id=n)
    series = await reports.timeseries(site_id, resolve_range("custom", day, day, tz), "hour")

    points = series.points
    ends = [p.start for p in points[1:]] + [series.range.end]
    assert [p.pageviews for p in points] == [
        sum(1 for moment in views if p.start <= moment < end) for p, end in zip(points, ends, strict=True)
    ]
    zone = ZoneInfo(tz)
    assert [p.local for p in points] == [
        p.start.astimezone(zone).isoformat(timespec="minutes") for p in points
    ]


def first_instant(day: date, zone: ZoneInfo) -> datetime:
    """Python's first instant whose local date in ``zone`` is ``day``, found minute by minute (every
    offset and transition of the tz database falls on a whole minute) from 15 hours before the UTC
    midnight of ``day`` (no zone is ahead by more than 14)."""
    moment = datetime.combine(day, datetime.min.time(), UTC) - timedelta(hours=15)
    while moment.astimezone(zone).date() < day:
        moment += timedelta(minutes=1)
    return moment


@pytest.mark.parametrize(
    ("tz", "day"),
    [
        ("America/Havana", date(2026, 11, 1)),  # back 01:00 -> 00:00: midnight twice
        ("America/Havana", date(2027, 11, 7)),
        ("Atlantic/Azores", date(2027, 10, 31)),
        ("America/Havana", date(2027, 3, 14)),  # forward 00:00 -> 01:00: no midnight
        ("Africa/Cairo", date(2026, 4, 24)),
        ("America/Santiago", date(2026, 9, 6)),
        ("Asia/Beirut", date(2026, 3, 29)),
        ("Australia/Lord_Howe", date(2026, 4, 5)),  # thirty-minute shifts, at 02:00
        ("Australia/Lord_Howe", date(2026, 10, 4)),
        ("Antarctica/Troll", date(2026, 10, 25)),  # two-hour shift, at 03:00 local
        ("Europe/Berlin", date(2026, 10, 25)),
        ("Asia/Kathmandu", date(2027, 7, 1)),
        ("Pacific/Kiritimati", date(2027, 7, 1)),  # +14
        ("Pacific/Pago_Pago", date(2027, 7, 1)),  # -11
    ],
)
async def test_local_day_start_is_the_first_instant_of_the_local_date(
    db: AsyncConnection[Any], tz: str, day: date
) -> None:
    row = await (
        await db.execute(
            "select local_day_start(%(day)s, %(tz)s), local_day_start(%(day)s + 1, %(tz)s),"
            " (local_day_start(%(day)s, %(tz)s) at time zone %(tz)s)::date,"
            " ((local_day_start(%(day)s, %(tz)s) - interval '1 microsecond') at time zone %(tz)s)::date",
            {"day": day, "tz": tz},
        )
    ).fetchone()
    assert row is not None
    zone = ZoneInfo(tz)
    assert (row[0], row[1]) == (first_instant(day, zone), first_instant(day + timedelta(days=1), zone))
    assert (row[2], row[3]) == (day, day - timedelta(days=1))


# (zone, the day whose local midnight happens twice: back from 01:00 to 00:00)
AMBIGUOUS_MIDNIGHTS = [("America/Havana", date(2026, 11, 1)), ("Atlantic/Azores", date(2027, 10, 31))]


@pytest.mark.parametrize("rolled_up", [False, True], ids=["raw", "rolled-up"])
@pytest.mark.parametrize(("tz", "day"), AMBIGUOUS_MIDNIGHTS)
async def test_a_day_whose_midnight_happens_twice_starts_at_the_first(
    reports: ReportService, db: AsyncConnection[Any], tz: str, day: date, rolled_up: bool
) -> None:
    zone = ZoneInfo(tz)
    eve, morrow = day - timedelta(days=1), day + timedelta(days=1)
    first = datetime.combine(day, datetime.min.time(), zone).astimezone(UTC)  # fold=0: the earlier
    second = datetime.combine(day, datetime.min.time(), zone).replace(fold=1).astimezone(UTC)
    assert second - first == timedelta(hours=1)
    eve_start = datetime.combine(eve, datetime.min.time(), zone).astimezone(UTC)
    morrow_start = datetime.combine(morrow, datetime.min.time(), zone).astimezone(UTC)
    owner = await create_user(db)
    site_id = (await make_site(db, owner, timezone=tz)).id
    await pageview_queries.ensure_partitions(db, from_day=eve - timedelta(days=1), days=4)
    # the eve at noon; 00:30 of the day twice (the first one before PostgreSQL's reading of midnight)
    for visitor, moment in enumerate(
        (first - timedelta(hours=12), first + timedelta(minutes=30), second + timedelta(minutes=30))
    ):
        await insert_view(db, site_id, moment, visitor_id=visitor + 1)
    if rolled_up:
        assert await reports.rollup(now=morrow_start + timedelta(days=1)) == 3

    eve_only = resolve_range("custom", eve, eve, tz)
    summary = await reports.summary(site_id, eve_only)
    series = await reports.timeseries(site_id, eve_only, "day")
    assert (summary.range.start, summary.range.end) == (eve_start, first)
    assert [(p.local, p.start, p.pageviews) for p in series.points] == [(eve.isoformat(), eve_start, 1)]
    assert summary.pageviews == 1

    day_only = resolve_range("custom", day, day, tz)
    summary = await reports.summary(site_id, day_only)
    series = await reports.timeseries(site_id, day_only, "day")
    assert (summary.range.start, summary.range.end) == (first, morrow_start)
    assert [(p.local, p.start, p.pageviews, p.visitors) for p in series.points] == [
        (day.isoformat(), first, 2, 2)
    ]
    assert (summary.pageviews, summary.visitors) == (2, 2)
    hours = await reports.timeseries(site_id, day_only, "hour")
    starts = [first + timedelta(hours=n) for n in range(25)]  # a 25-hour day
    assert [(p.start, p.local) for p in hours.points] == [
        (start, start.astimezone(zone).isoformat(timespec="minutes")) for start in starts
    ]
    assert [p.local[11:] for p in hours.points[:2]] == [
        "00:00" + first.astimezone(zone).isoformat()[-6:],
        "00:00" + second.astimezone(zone).isoformat()[-6:],
    ]
    assert [p.pageviews for p in hours.points[:3]] == [1, 1, 0]
    assert sum(p.pageviews for p in hours.points) == 2

    both = resolve_range("custom", eve, day, tz)
    summary = await reports.summary(site_id, both)
    series = await reports.timeseries(site_id, both, "day")
    assert [(p.local, p.start, p.pageviews) for p in series.points] == [
        (eve.isoformat(), eve_start, 1),
        (day.isoformat(), first, 2),
    ]
    assert summary.pageviews == 3
    hours = await reports.timeseries(site_id, both, "hour")
    assert (hours.points[0].start, hours.points[-1].start) == (eve_start, morrow_start - timedelta(hours=1))
    assert len(hours.points) == 24 + 25


async def test_sites_stored_with_cet_eet_met_or_wet_get_the_regions_those_names_mean(
    reports: ReportService, db: AsyncConnection[Any]
) -> None:
    """Names refused since they were read as fixed offsets, still stored on older sites: the data
    migration (run here as written in its file) gives those sites the regions, summer time included."""
    owner = await create_user(db)
    stored = ["CET", "EET", "MET", "WET", "Europe/Berlin", "UTC"]
    sites = [(await make_site(db, owner, timezone=tz)).id for tz in stored]
    day = date(2027, 7, 1)
    before = await reports.summary(sites[0], resolve_range("custom", day, day, "CET"))
    assert before.range.start == datetime(2027, 6, 30, 23, tzinfo=UTC)  # PostgreSQL's CET: +01:00 in July
    [migration] = MIGRATIONS.glob("*_sites_timezone_regions.sql")
    up = migration.read_text().split("-- migrate:up", 1)[1].split("-- migrate:down", 1)[0]
    async with db.transaction():
        await db.execute(up)
    found = await db.execute("select timezone from sites where id = any(%s) order by id", (sites,))
    regions = [row[0] for row in await found.fetchall()]
    assert regions == [
        "Europe/Brussels",
        "Europe/Athens",
        "Europe/Brussels",
        "Europe/Lisbon",
        "Europe/Berlin",
        "UTC",
    ]
    for site_id, tz, summer_offset in zip(sites[:4], regions[:4], (2, 3, 2, 1), strict=True):
        after = await reports.summary(site_id, resolve_range("custom", day, day, tz))
        assert after.range.start == datetime(2027, 7, 1, tzinfo=UTC) - timedelta(hours=summer_offset)
