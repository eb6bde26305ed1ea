"""The summary and the time series read their visitors and visits from counts, not from visitor rows.

They counted distinct visitors over every visitor row of their period and their visits over every
visit: a holder of a site's public ingest key, sending views with a new user agent each, made every
report of that site slower, without bound (an 89-day series of a site with 60,000 visitors a day took
8.3 s). Now the rollup's triggers keep each UTC day's visitors with the first and last quarter hour
they were seen in, and per quarter hour how many were first and last seen in it and how many visits
started in it; a report sums those counts. What it read is counted in the transaction's own table
statistics (``pg_stat_get_xact_tuples_returned`` of the tables and their indexes), which no
machine's speed changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from app.db import reports as report_queries
from app.db.reports import ReportTimeseriesRow
from app.domains.reports.schemas import ReportRange
from app.domains.reports.services import BUCKET_STEP, ReportService, resolve_range
from tests.functional.test_reports_zones import insert_view, insert_views

PER_DAY = 200
DAYS = 3
PER_VISITOR = ("page_view_hourly_visitors", "page_view_daily_visitors", "page_view_visits")
PROBES = 5
"""What a report may read of those tables, whatever the period: the views not rolled up yet find their
visits and visitors by primary key (none here), and a join's plan may read a row to learn its input is
empty. Was: each of the period's 1,200 visitor rows, or 600 visitors, and every one of its visits."""


async def rows_read(db: AsyncConnection[Any], tables: tuple[str, ...] = PER_VISITOR) -> dict[str, int]:
    """The rows this transaction has read so far of ``tables`` (by default those kept per visitor):
    sequential scans and index entries, index-only scans included."""
    cursor = await db.execute(
        "select c.relname::text, pg_stat_get_xact_tuples_returned(c.oid) + coalesce(("
        "    select sum(pg_stat_get_xact_tuples_returned(i.indexrelid))"
        "    from pg_index i where i.indrelid = c.oid"
        "), 0)"
        " from pg_class c where c.relname = any(%s) and c.relkind = 'r'",
        (list(tables),),
    )
    return {name: int(read) for name, read in await cursor.fetchall()}


@pytest.fixture
async def rolled_up(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> list[tuple[datetime, int]]:
    """PER_DAY visitors on each of the DAYS UTC days before yesterday, each with two views 20 minutes
    apart (one visit) from one of the day's first 90 quarter hours (none crosses midnight), another
    id each day (the daily salt); all rolled up. The views, as (ts, visitor)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = today - timedelta(days=DAYS + 1)
    await pageview_queries.ensure_partitions(db, from_day=first_day.date(), days=DAYS + 2)
    views = [
        (first_day + timedelta(days=day, minutes=15 * (n % 90) + 2 + 20 * second), day * PER_DAY + n)
        for day in range(DAYS)
        for n in range(PER_DAY)
        for second in (0, 1)
    ]
    await insert_views(db, site_id, [(ts, visitor, "/") for ts, visitor in views])
    assert await reports.rollup(now=today) == len(views)
    await analyze_counts(db)
    return views


async def analyze_counts(db: AsyncConnection[Any]) -> None:
    """Statistics of this test's rows: the suite truncates the tables before each test but keeps their
    statistics, and with another test's a probe of (site, day, visitor) was once planned on the day's
    index, which reads every visitor of the day (1,800 rows for 6 probes)."""
    await db.execute(
        "analyze page_view_daily_visitors, page_view_hourly_visitors, page_view_quarters, page_view_hourly"
    )


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
async def test_a_summary_reads_no_visitor_rows(
    db: AsyncConnection[Any], site_id: int, rolled_up: list[tuple[datetime, int]], tz: str
) -> None:
    """Three local days of 600 visitors: the summary reads none of their rows (at most PROBES), in a
    zone whose days are UTC days, one whose days are cut at an hour (Berlin) and one cut at a half
    hour (Kolkata), and counts them exactly. Was: every visitor row and every visit of the period."""
    first = rolled_up[0][0].astimezone(UTC).date()
    rng = resolve_range("custom", first, first + timedelta(days=DAYS - 1), tz)
    inside = [(ts, visitor) for ts, visitor in rolled_up if rng.start <= ts < rng.end]
    async with db.transaction(force_rollback=True):
        before = await rows_read(db)
        summary = await report_queries.report_summary(
            db, site_id=site_id, range_from=rng.start, range_to=rng.end
        )
        read = await rows_read(db)
    read = {name: read[name] - before[name] for name in read}
    assert summary is not None
    assert summary.pageviews == len(inside)
    assert summary.visitors == len({visitor for _, visitor in inside})
    started = {
        visitor: ts for ts, visitor in reversed(rolled_up)
    }  # a visitor's one visit, from its first view
    assert summary.visits == sum(rng.start <= ts < rng.end for ts in started.values())
    assert sum(read.values()) <= PROBES, read


async def series(
    db: AsyncConnection[Any], site_id: int, rng: ReportRange, unit: str, *, planned_as_at_volume: bool = False
) -> tuple[list[ReportTimeseriesRow], dict[str, int]]:
    """The series' points, and the rows it read of the tables kept per visitor (``rows_read``);
    ``planned_as_at_volume``: with the index scans and nested loops PostgreSQL chooses over millions
    of rows (over a few hundred it may read a whole table once instead)."""
    async with db.transaction(force_rollback=True):
        if planned_as_at_volume:
            for method in ("seqscan", "hashjoin", "mergejoin"):
                await db.execute(f"set local enable_{method} = off")
        before = await rows_read(db)
        points = await report_queries.report_timeseries(
            db,
            unit=unit,
            tz=rng.tz,
            site_id=site_id,
            range_from=rng.start,
            range_to=rng.end,
            step=BUCKET_STEP[unit],
        )
        read = await rows_read(db)
    return points, {name: read[name] - before[name] for name in read}


def visitors_per_point(
    points: list[ReportTimeseriesRow], end: datetime, views: list[tuple[datetime, int]]
) -> list[int]:
    ends = [point.bucket for point in points[1:]] + [end]
    return [
        len({visitor for ts, visitor in views if point.bucket <= ts < until})
        for point, until in zip(points, ends, strict=True)
    ]


@pytest.mark.parametrize(
    ("tz", "unit"), [("UTC", "day"), ("Europe/Berlin", "day"), ("Asia/Kolkata", "day"), ("UTC", "hour")]
)
async def test_a_series_reads_no_visitor_rows(
    db: AsyncConnection[Any], site_id: int, rolled_up: list[tuple[datetime, int]], tz: str, unit: str
) -> None:
    """The same days as a series of local days, or of UTC hours: no visitor row read, every point
    exact."""
    first = rolled_up[0][0].astimezone(UTC).date()
    rng = resolve_range("custom", first, first + timedelta(days=DAYS - 1), tz)
    points, read = await series(db, site_id, rng, unit)
    expected = visitors_per_point(points, rng.end, rolled_up)
    assert [point.visitors for point in points] == expected
    assert sum(expected) > 0
    assert sum(read.values()) <= PROBES, read


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Asia/Kathmandu"])
async def test_an_hourly_series_in_a_fractional_zone_reads_no_visitor_rows(
    db: AsyncConnection[Any], site_id: int, rolled_up: list[tuple[datetime, int]], tz: str
) -> None:
    """A local hour of Kolkata (+05:30) or Kathmandu (+05:45) lies across two UTC hours: it is read from
    the count of the day's visitors seen in the hour starting at its quarter (hour_visitors), every
    point exact. Was: each hour's visitor rows, read by both local hours it lies in (a 31-day series
    took 1.8 s at 30,000 visitors a day); planned as at volume, as that statement once read the site's
    visitor rows to the last one kept for each hour."""
    first = rolled_up[0][0].astimezone(UTC).date()
    rng = resolve_range("custom", first, first + timedelta(days=DAYS - 1), tz)
    points, read = await series(db, site_id, rng, "hour", planned_as_at_volume=True)
    expected = visitors_per_point(points, rng.end, rolled_up)
    assert [point.visitors for point in points] == expected
    assert sum(expected) > 0
    assert sum(read.values()) <= PROBES, read


async def test_views_not_rolled_up_yet_find_their_fractional_hours_by_probes(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    """Yesterday's Kolkata hour [03:30, 04:30) UTC holds visitors 1, 3 and 4; visitor 2 was seen earlier
    that day only, 2,000 others later. Views not rolled up yet of 1, 2, 4 and a new 5 in that hour:
    each pending visitor finds whether the hour's count holds it by one probe of its day's row, and the
    hour counts 5."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = today - timedelta(days=1)
    await pageview_queries.ensure_partitions(db, from_day=day.date(), days=2)
    stored = [(day + timedelta(hours=3, minutes=31), 1), (day + timedelta(hours=2, minutes=10), 2)]
    stored += [(day + timedelta(hours=3, minutes=50), 3), (day + timedelta(hours=4, minutes=20), 4)]
    for ts, visitor in stored:
        await insert_view(db, site_id, ts, visitor)
    others = [(day + timedelta(hours=8, seconds=10 * n), 100 + n) for n in range(2000)]  # the day's bulk
    await insert_views(db, site_id, [(ts, visitor, "/") for ts, visitor in others])
    assert await reports.rollup(now=today) == len(stored) + len(others)
    await analyze_counts(db)
    pending = [(day + timedelta(hours=3, minutes=40 + n), visitor) for n, visitor in enumerate([1, 2, 4, 5])]
    for ts, visitor in pending:  # received after the watermark, within a day of ``ts`` as ingest keeps them
        await insert_view(db, site_id, ts, visitor, received_at=today)
    rng = resolve_range("custom", day.date(), day.date(), "Asia/Kolkata")
    points, read = await series(db, site_id, rng, "hour", planned_as_at_volume=True)
    assert [point.visitors for point in points] == visitors_per_point(
        points, rng.end, stored + others + pending
    )
    assert [point.visitors for point in points if point.bucket == day + timedelta(hours=3, minutes=30)] == [5]
    assert read["page_view_daily_visitors"] <= len(pending) + PROBES, read
    assert read["page_view_hourly_visitors"] <= PROBES, read


async def test_views_not_rolled_up_yet_find_their_visitors_by_probes(
    db: AsyncConnection[Any], site_id: int, rolled_up: list[tuple[datetime, int]]
) -> None:
    """Today's views are not rolled up yet: each finds whether its day's counts hold its visitor by
    one probe of the primary key. Was: an anti join that read every visitor row of every day kept."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    pending = [(today + timedelta(minutes=n), 10**6 + n % 3) for n in range(6)]
    for ts, visitor in pending:
        await insert_view(db, site_id, ts, visitor, received_at=datetime.now(UTC))
    first = rolled_up[0][0].astimezone(UTC).date()
    rng = resolve_range("custom", first, today.date(), "UTC")
    points, read = await series(db, site_id, rng, "day")
    assert [point.visitors for point in points] == visitors_per_point(points, rng.end, rolled_up + pending)
    assert points[-1].visitors == 3
    assert read["page_view_daily_visitors"] <= len(pending) + PROBES, read
