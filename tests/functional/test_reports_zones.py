"""One time-zone database for the reports: PostgreSQL's.

The buckets are PostgreSQL's ``date_trunc(unit, ts, tz)``; the period's instants and the buckets'
labels used to be Python's (``zoneinfo``, its own tzdata). Where the two disagree (America/Asuncion:
permanent -03 since tzdata 2024b, -04 in winter in older data) a one-day period had two buckets, the
first labelled with the day before. Now every piece of zone arithmetic is PostgreSQL's, so a report
is consistent whatever tzdata either side has: one bucket per local day, labelled with that day,
starting at the period's start, and the summary agrees with the series.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db import pageviews as pageview_queries
from app.domains.reports.services import ReportService, resolve_range
from app.modules import MODULES
from tests.factories import create_user, make_site


async def insert_view(db: AsyncConnection[Any], site_id: int, ts: datetime) -> None:
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " values (%s, %s, %s, 1, '/', 'desktop', 'firefox', 'linux')",
        (site_id, ts, ts),
    )


@pytest.fixture
async def reports(settings: Settings) -> AsyncIterator[ReportService]:
    async with open_services(settings, MODULES) as services:
        yield services[ReportService]


@pytest.fixture
async def site_id(db: AsyncConnection[Any]) -> int:
    owner = await create_user(db)
    return (await make_site(db, owner)).id


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
