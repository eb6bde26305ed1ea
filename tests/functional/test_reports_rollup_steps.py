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
from app.domains.reports.services import ROLLUP_GRACE, ROLLUP_STEP, ReportService, resolve_range
from tests.functional.test_reports_zones import insert_view

HOUR = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(14), UTC)
"""An hour of yesterday, which the retention keeps (the test passes the rollup its ``now``)."""


async def rolled_up_views(db: AsyncConnection[Any], site_id: int) -> int:
    cursor = await db.execute(
        "select coalesce(sum(pageviews), 0) from page_view_hourly where site_id = %s", (site_id,)
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


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
