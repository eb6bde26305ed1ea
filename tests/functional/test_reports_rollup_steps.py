"""The rollup adds ``received_at`` five minutes at a time (``ROLLUP_STEP``), ``ROLLUP_GRACE`` after
each step ends; every report reads the rows received since the watermark raw, so that is what one costs.

With whole hours and a 10-minute grace a report read up to 70 minutes of a site's ingest raw: past the
statement timeout for a site at its quota (a review), seconds per report for a busy one.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from app.db import reports as queries
from app.domains.reports.services import (
    DIMENSION_VALUES_PER_HOUR,
    OTHER_VALUE,
    ROLLUP_GRACE,
    ROLLUP_STEP,
    ReportService,
    resolve_range,
)
from tests.factories import scalar
from tests.functional.test_reports_zones import insert_view

HOUR = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(14), UTC)
"""An hour of yesterday, which the retention keeps (the test passes the rollup its ``now``)."""


async def rolled_up_views(db: AsyncConnection[Any], site_id: int) -> int:
    views: int = await scalar(
        db, "select coalesce(sum(pageviews), 0) from page_view_hourly where site_id = %s", site_id
    )
    return views


async def test_the_watermark_follows_the_clock_by_the_grace_and_a_step_at_most(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    await pageview_queries.ensure_partitions(db, from_day=HOUR.date() - timedelta(days=1), days=3)
    minutes = range(13)
    for minute in minutes:
        await insert_view(db, site_id, HOUR + timedelta(minutes=minute, seconds=30), visitor_id=minute)
    now = HOUR + timedelta(minutes=13) + ROLLUP_GRACE

    assert await reports.rollup(now=now) == 10
    watermark = await queries.get_watermark(db)
    assert watermark == HOUR + 2 * ROLLUP_STEP
    assert now - watermark < ROLLUP_GRACE + ROLLUP_STEP
    assert await rolled_up_views(db, site_id) == 10

    day = resolve_range("custom", HOUR.date(), HOUR.date(), "UTC")
    summary = await reports.summary(site_id, day)
    assert (summary.pageviews, summary.visitors) == (len(minutes), len(minutes)), "the raw half adds the rest"
    series = await reports.timeseries(site_id, day, "hour")
    assert [point.pageviews for point in series.points if point.start == HOUR] == [len(minutes)]

    assert await reports.rollup(now=now + ROLLUP_STEP) == 3
    assert await rolled_up_views(db, site_id) == len(minutes)
    assert (await reports.summary(site_id, day)).pageviews == len(minutes), "each view counted once"


async def insert_views(db: AsyncConnection[Any], site_id: int, at: datetime, paths: list[str]) -> None:
    """One view per path, at ``at`` (received then), each by a visitor of its own."""
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " select %s, %s, %s, n, p, 'desktop', 'firefox', 'linux'"
        " from unnest(%s::text[]) with ordinality as t (p, n)",
        (site_id, at, at, paths),
    )


async def dimension_rows(db: AsyncConnection[Any], site_id: int, hour: datetime) -> int:
    query = "select count(*) from page_view_dimension_hourly where site_id = %s and dimension = 'path'"
    rows: int = await scalar(db, query + " and hour = %s", site_id, hour)
    return rows


async def test_an_hour_is_ranked_once_it_has_ended_not_at_every_step(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    """Ranked at every step, a page that missed the first step's top values could never enter them:
    each later step offered its few new views against the kept values' running totals (a review:
    /home, the hour's most viewed page, was all in "(other)"). An open hour keeps more values
    (DIMENSION_VALUES_OPEN_HOUR) and is ranked to DIMENSION_VALUES_PER_HOUR once it has ended, on
    every view of it, even when nothing arrives after it."""
    await pageview_queries.ensure_partitions(db, from_day=HOUR.date() - timedelta(days=1), days=3)
    tails = [f"/tail-{n:03}" for n in range(DIMENSION_VALUES_PER_HOUR)]
    await insert_views(db, site_id, HOUR + timedelta(seconds=10), [*tails, *tails, "/home"])
    for step in range(1, 11):
        await insert_views(db, site_id, HOUR + step * ROLLUP_STEP + timedelta(seconds=10), ["/home"])
    for step in range(1, 12):  # up to minute 55: the hour is still open
        await reports.rollup(now=HOUR + step * ROLLUP_STEP + ROLLUP_GRACE)

    await reports.rollup(now=HOUR + timedelta(hours=3))  # nothing received since minute 51
    day = resolve_range("custom", HOUR.date(), HOUR.date(), "UTC")
    top = await reports.breakdown(site_id, day, "path", 3)
    # The last tail value is folded: "(other)" holds its 2 views (and sorts before "/tail-").
    assert [(item.value, item.views) for item in top.items] == [
        ("/home", 11),
        (OTHER_VALUE, 2),
        ("/tail-000", 2),
    ]
    assert await dimension_rows(db, site_id, HOUR) == DIMENSION_VALUES_PER_HOUR + 1, (
        "folded: the top and (other)"
    )
    kept = "select sum(views) from page_view_dimension_hourly where site_id = %s and dimension = 'path'"
    assert await scalar(db, kept, site_id) == 2 * len(tails) + 11, "every view is kept"
