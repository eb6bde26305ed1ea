"""The watermark rule's one assumption about the ingest: a page view commits within the rollup's grace
of its ``received_at`` stamp (``ROLLUP_GRACE``, ``app.reports.services``).

The ingest stamps ``received_at`` when it handles the request (the same clock reading clamps ``ts``,
which the rollup's partition pruning relies on), then the row waits in the sink's queue and in its
write. A row that commits after the rollup moved the watermark past its stamp is in neither half of a
report: not rolled up, and older than the watermark. The sink answers 503, unwritten, a request queued
too long (``SINK_MAX_QUEUE_S``), so only a write deadline (``DATABASE_TIMEOUT_S``) could make the
wait that long (``app.config.sink_commit_bound_s``); such a deadline is refused at start.

The test holds the sink's write with a real lock on ``page_views`` and runs the rollup at the instant
the held write could have reached under such settings (the rollup takes ``now``; the ingest's clock is
a ``FakeClock``): no sleep, no wall clock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection

from app.config import Settings, SettingsError, load_settings
from app.core.modules import Module
from app.core.services import open_services
from app.db import pageviews as pageview_queries
from app.domains.pageviews.schemas import PageView
from app.domains.pageviews.services import PageViewService
from app.domains.reports.services import ROLLUP_GRACE, ReportService, resolve_range
from app.domains.sites.services import SiteService
from app.modules import MODULES
from tests.factories import create_user, make_site, wait_until
from tests.fakes.clock import FakeClock

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
SLOW_WRITES = {"DATABASE_TIMEOUT_S": "900"}
"""A write may wait 15 minutes for the database: longer than the grace, by one write alone."""


async def sink_waiting_for_a_lock(db: AsyncConnection[Any]) -> bool:
    cursor = await db.execute(
        "select count(*) from pg_stat_activity where datname = current_database()"
        " and application_name like '%%pageview-sink' and wait_event_type = 'Lock'"
    )
    row = await cursor.fetchone()
    return row is not None and row[0] > 0


async def test_a_view_committed_past_the_grace_is_lost_from_reports_so_such_settings_are_refused(
    settings: Settings, database_url: str, db: AsyncConnection[Any]
) -> None:
    """One view stamped a second before an hour ends; its write waits (a lock on ``page_views``)
    while the rollup, the grace and a minute later (within the write's 15-minute deadline), moves the
    watermark past that stamp. The write then commits and is acknowledged: the view is stored, yet no report
    counts it. A view stamped after the hour and committed at once is counted (the control)."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    await pageview_queries.ensure_partitions(db, from_day=hour.date() - timedelta(days=1), days=3)
    site = await make_site(db, await create_user(db))
    clock = FakeClock(hour - timedelta(seconds=1))
    clocked = Module(
        name="pageviews",
        service=lambda s: PageViewService(s.db, s.settings, s[SiteService], s.valkey, clock=clock),
    )
    modules = [clocked if module.name == "pageviews" else module for module in MODULES]
    slow = msgspec.structs.replace(settings, database_timeout_s=float(SLOW_WRITES["DATABASE_TIMEOUT_S"]))

    def view(path: str) -> PageView:
        return PageView(site_key=site.ingest_key, url=f"https://example.com/{path}")

    async with open_services(slow, modules) as services:
        pageviews, reports = services[PageViewService], services[ReportService]
        async with await AsyncConnection.connect(database_url) as locker:
            await locker.execute("lock table page_views in share mode")
            held = asyncio.create_task(pageviews.record_one(view("held"), "203.0.113.9", FIREFOX))
            await wait_until(lambda: sink_waiting_for_a_lock(db), 30, "the sink's write waits for the lock")
            assert await reports.rollup(now=clock.now + ROLLUP_GRACE + timedelta(minutes=1)) == 0
            await locker.rollback()
        await held  # acknowledged: committed
        clock.now = hour + timedelta(seconds=1)
        await pageviews.record_one(view("control"), "203.0.113.9", FIREFOX)
        day = resolve_range("custom", hour.date(), hour.date(), "UTC")
        summary = await reports.summary(site.id, day)

    watermark = await (await db.execute("select rolled_up_to from analytics_rollup_state")).fetchone()
    assert watermark == (hour,), "the rollup moved the watermark past the held view's hour"
    cursor = await db.execute(
        "select path, received_at from page_views where site_id = %s order by path", (site.id,)
    )
    assert await cursor.fetchall() == [
        ("/control", hour + timedelta(seconds=1)),
        ("/held", hour - timedelta(seconds=1)),
    ]
    assert summary.pageviews == 1, "the held view is stored, in neither the rollup nor the raw half"

    with pytest.raises(SettingsError, match="DATABASE_TIMEOUT_S"):
        load_settings({"APP_ENV": "test", **SLOW_WRITES})
