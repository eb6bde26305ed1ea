"""The counts of the reports' visitors and visits are filled for the rollups an upgrade finds.

Migration 20261206230000 adds the counts (kept by triggers from then on); 20261206230100 counts the
rollups already stored, one site's UTC day per transaction under the rollup's lock. Without it every
report of the days before the upgrade would answer no visitors and no visits.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from app.domains.reports.schemas import Interval
from app.domains.reports.services import ReportService, resolve_range
from tests.factories import migration_down, migration_up, scalar
from tests.functional.test_reports_zones import insert_view


async def answers(reports: ReportService, site_id: int, tz: str) -> list[Any]:
    """The summary and both series of the two days before yesterday, in ``tz``."""
    await reports.cache.invalidate_all()
    first = datetime.now(UTC).date() - timedelta(days=3)
    rng = resolve_range("custom", first, first + timedelta(days=1), tz)
    interval: Interval
    found: list[Any] = [await reports.summary(site_id, rng)]
    for interval in ("day", "hour"):
        found.append((await reports.timeseries(site_id, rng, interval)).points)
    return found


async def roll_up_three_days(reports: ReportService, db: AsyncConnection[Any], site_id: int) -> None:
    """120 views 37 minutes apart from four days ago (two a visitor, another id each day), rolled up."""
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=4)
    await pageview_queries.ensure_partitions(db, from_day=start.date(), days=5)
    for n in range(120):
        ts = start + timedelta(minutes=37 * n)
        await insert_view(db, site_id, ts, (n // 2) * 10 + ts.toordinal() % 10)
    await reports.rollup(now=start + timedelta(days=4))


async def forget_hour_counts(db: AsyncConnection[Any], site_id: int) -> None:
    """The site's quarters and hour counts as 20261207050000 leaves them for the rollups it finds."""
    await db.execute("update page_view_daily_visitors set quarters = null where site_id = %s", (site_id,))
    await db.execute("update page_view_quarters set hour_visitors = 0 where site_id = %s", (site_id,))


async def test_the_fill_counts_what_the_previous_release_rolled_up(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, database_url: str
) -> None:
    """Views of three days rolled up; the counts then emptied as before the upgrade (the answers drop
    to no visitors); the fills, run twice each, bring back the same answers in three kinds of zone."""
    await roll_up_three_days(reports, db, site_id)
    zones = ("UTC", "Europe/Berlin", "Asia/Kolkata")
    before = [await answers(reports, site_id, tz) for tz in zones]
    assert before[0][0].visitors > 0 and before[0][0].visits > 0

    await db.execute("delete from page_view_daily_visitors where site_id = %s", (site_id,))
    await db.execute("delete from page_view_quarters where site_id = %s", (site_id,))
    await db.execute("update page_view_hourly set visitors = 0 where site_id = %s", (site_id,))
    emptied = await answers(reports, site_id, "UTC")
    assert emptied[0].visitors == 0 and emptied[0].visits == 0

    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in ("analytics_day_rollups_filled", "analytics_shifted_hours_filled"):  # as an upgrade does
            conn.execute(migration_up(name))
            conn.execute(migration_up(name))
    assert [await answers(reports, site_id, tz) for tz in zones] == before


async def test_the_fill_gives_the_visitors_their_quarters_and_the_hours_off_the_hour_their_counts(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, database_url: str
) -> None:
    """Migration 20261207050000 keeps each daily visitor's quarters and the visitors of each hour that
    starts off the hour; 20261207050100 fills them for the visitors an upgrade finds. Emptied as before
    the upgrade, the hourly series of Kolkata and Kathmandu lose their visitors; the fill, run twice,
    brings back the same answers, and leaves no visitor without its quarters."""
    await roll_up_three_days(reports, db, site_id)
    zones = ("Asia/Kolkata", "Asia/Kathmandu")
    before = [await answers(reports, site_id, tz) for tz in zones]

    await forget_hour_counts(db, site_id)
    assert [await answers(reports, site_id, tz) for tz in zones] != before

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("analytics_shifted_hours_filled"))
        conn.execute(migration_up("analytics_shifted_hours_filled"))
    assert [await answers(reports, site_id, tz) for tz in zones] == before
    assert (
        await scalar(
            db,
            "select count(*) from page_view_daily_visitors where site_id = %s and quarters is null",
            site_id,
        )
        == 0
    )


async def test_until_the_fill_has_run_the_reports_read_per_visitor(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, database_url: str
) -> None:
    """The reports start reading the hour counts only in 20261207050200, after 20261207050100 filled
    them: with the counts as 20261207050000 leaves them (no quarters, no hour counts for the days rolled
    up before), the reader of the releases before, which serves through the deploy and the fill, still
    answers Kolkata's and Kathmandu's hourly series exactly. Read from 20261207050000 on, the days not
    filled yet answered too few visitors (a reviewer's finding)."""
    await roll_up_three_days(reports, db, site_id)
    zones = ("Asia/Kolkata", "Asia/Kathmandu")
    before = [await answers(reports, site_id, tz) for tz in zones]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_down("analytics_shifted_hours_read"))
    try:
        await forget_hour_counts(db, site_id)
        assert [await answers(reports, site_id, tz) for tz in zones] == before
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(migration_up("analytics_shifted_hours_read"))
