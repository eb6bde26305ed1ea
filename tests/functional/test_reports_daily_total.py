"""The daily monitoring report's page views: every view counted once across consecutive reports.

The report used to sum ``page_view_hourly`` over its period: the hour before the report time was not
rolled up yet (the rollup lags ``now - ROLLUP_GRACE``) and the next report started after it, and a
late beacon (``ts`` up to 24 h old) reached its hour after that hour's report was sent. Monitoring
now asks the reports domain (``ReportService.total_pageviews``), which counts views by when they
were received: each falls in exactly one report.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import Services, open_services
from app.db import monitoring as monitoring_queries
from app.db import pageviews as pageview_queries
from app.domains.monitoring.services import MonitoringService
from app.domains.reports.services import DAILY_TOTAL_LAG, ReportService
from app.modules import MODULES
from tests.factories import create_user, make_site


async def insert_view(
    db: AsyncConnection[Any], site_id: int, ts: datetime, received_at: datetime, *, is_bot: bool = False
) -> None:
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os, is_bot)"
        " values (%s, %s, %s, 1, '/', 'desktop', 'firefox', 'linux', %s)",
        (site_id, ts, received_at, is_bot),
    )


@pytest.fixture
async def services(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[Services]:
    """Every module, the monitoring report due at 08:00 UTC. Its background checks stay idle: the
    hourly checks' slot is taken first (after ``db`` emptied the tables), and the next one too, should
    the hour turn during the test (``ClaimTick`` leaves a slot one ahead alone). They ran a second
    after the start and sent the latest report due, yesterday's, and this test's reports of earlier
    days then counted as sent (a flaky failure: ``alert_id is None``)."""
    await monitoring_queries.claim_tick(db, name="checks", interval_s=3600.0)
    await db.execute("update monitoring_ticks set slot = slot + 1 where name = 'checks'")
    tuned = msgspec.structs.replace(
        settings,
        monitoring_enabled=True,
        monitoring_report_time="08:00",
        monitoring_report_timezone="UTC",
        monitoring_check_interval_s=3600.0,
        monitoring_ship_interval_s=600.0,
        monitoring_delivery_fallback_s=86_400.0,
    )
    async with open_services(tuned, MODULES) as opened:
        yield opened


async def report_text(db: AsyncConnection[Any], alert_id: int) -> str:
    row = await (
        await db.execute("select text_plain from monitoring_alerts where id = %s", (alert_id,))
    ).fetchone()
    assert row is not None
    text: str = row[0]
    return text


async def test_consecutive_daily_reports_count_every_view_once(
    services: Services, db: AsyncConnection[Any]
) -> None:
    owner = await create_user(db)
    site = await make_site(db, owner)
    today = datetime.now(UTC).date()
    await pageview_queries.ensure_partitions(db, from_day=today - timedelta(days=5), days=6)
    # Two and three days ago: never the report that the session app's own checks may send (today's
    # or yesterday's).
    day = today - timedelta(days=3)
    first_at = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
    second_at = first_at + timedelta(days=1)
    views = [
        (first_at - timedelta(hours=5), first_at - timedelta(hours=5)),  # rolled up before 08:00
        (first_at - timedelta(minutes=40), first_at - timedelta(minutes=40)),  # the hour not rolled up
        (first_at - timedelta(hours=2), first_at + timedelta(minutes=30)),  # a late beacon: after the report
        (first_at - timedelta(minutes=3), first_at - timedelta(minutes=3)),  # stamped within the grace
        (first_at + timedelta(hours=3), first_at + timedelta(hours=3)),
    ]
    for ts, received_at in views:
        await insert_view(db, site.id, ts, received_at)
    await insert_view(db, site.id, first_at - timedelta(hours=1), first_at - timedelta(hours=1), is_bot=True)
    reports, monitoring = services[ReportService], services[MonitoringService]

    counted = []
    for report_at in (first_at, second_at):
        await reports.rollup(now=report_at)  # where the every-minute cron has got to by then
        alert_id = await monitoring.send_report_if_due(report_at.timestamp() + 60)
        assert alert_id is not None
        match = re.search(r"page views (\d+)", await report_text(db, alert_id))
        assert match is not None
        counted.append(int(match.group(1)))
    # By receipt, shifted back by the grace: [07:50 the day before, 07:50) and [07:50, 07:50 the day after).
    assert counted == [2, 3], counted
    assert monitoring.reports is reports, "monitoring asks the reports domain, wired in its module"


async def test_the_total_counts_views_received_in_the_period_shifted_by_the_grace(
    services: Services, db: AsyncConnection[Any]
) -> None:
    owner = await create_user(db)
    site = await make_site(db, owner)
    other = await make_site(db, owner, domain="example.org")
    today = datetime.now(UTC).date()
    await pageview_queries.ensure_partitions(db, from_day=today - timedelta(days=3), days=4)
    until = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=1)
    since = until - timedelta(days=1)
    edges = (since - DAILY_TOTAL_LAG, until - DAILY_TOTAL_LAG - timedelta(microseconds=1))
    for received_at in (*edges, until - DAILY_TOTAL_LAG, since - DAILY_TOTAL_LAG - timedelta(microseconds=1)):
        await insert_view(db, site.id, received_at - timedelta(hours=20), received_at)
    await insert_view(db, other.id, since + timedelta(hours=1), since + timedelta(hours=1))
    async with services.db.transaction() as uow:
        assert await services[ReportService].total_pageviews(uow, since, until) == 3
