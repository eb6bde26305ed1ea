"""The upkeep of ingest state on real PostgreSQL: claimed event ids live two days, salts one, and a
deleted site's raw page views and claims are purged once nothing of it can still be in flight."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.pageviews.services import (
    DELETED_SITE_GRACE,
    DELETED_SITE_RETENTION,
    EVENT_ID_RETENTION,
    PageViewService,
)
from app.modules import MODULES
from tests.factories import create_user, make_site


@pytest.fixture
async def pageviews(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[PageViewService]:
    async with open_services(settings, MODULES) as services:
        yield services[PageViewService]


async def rows(db: AsyncConnection[Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return await (await db.execute(sql, params)).fetchall()


async def test_event_ids_live_two_days_and_salts_one(
    pageviews: PageViewService, db: AsyncConnection[Any]
) -> None:
    site = await make_site(db, await create_user(db))
    now = datetime.now(UTC)
    kept, old = uuid.uuid4(), uuid.uuid4()
    await db.execute(
        "insert into page_view_event_ids (site_id, event_id, seen_at) values (%s, %s, %s), (%s, %s, %s)",
        (
            site.id,
            kept,
            now - EVENT_ID_RETENTION + timedelta(hours=1),
            site.id,
            old,
            now - EVENT_ID_RETENTION - timedelta(hours=1),
        ),
    )
    await db.execute(
        "insert into analytics_salts (day, salt) values (%s, 'today'), (%s, 'yesterday'), (%s, 'older')",
        (now.date(), now.date() - timedelta(days=1), now.date() - timedelta(days=2)),
    )
    assert await pageviews.purge(now) == (1, 1)
    assert await rows(db, "select event_id from page_view_event_ids") == [(kept,)]
    salts = await rows(db, "select salt from analytics_salts order by day")
    assert salts == [(b"yesterday",), (b"today",)]


async def test_a_deleted_sites_data_is_purged_after_the_grace_and_its_tombstone_later(
    pageviews: PageViewService, db: AsyncConnection[Any]
) -> None:
    owner = await create_user(db)
    gone, kept = await make_site(db, owner), await make_site(db, owner)
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    for site_id in (gone.id, kept.id):
        for ts in ("now()", "now() - interval '20 hours'"):
            await db.execute(
                "insert into page_views (site_id, ts, event_id, visitor_id, path, device, browser, os)"
                f" values (%s, {ts}, %s, 1, '/', 'desktop', 'x', 'y')",
                (site_id, uuid.uuid4()),
            )
        await db.execute(
            "insert into page_view_event_ids (site_id, event_id) values (%s, %s)", (site_id, uuid.uuid4())
        )
    await db.execute("delete from sites where id = %s", (gone.id,))
    (deleted_at,) = (await rows(db, "select deleted_at from deleted_sites where site_id = %s", gone.id))[0]

    assert await pageviews.purge_deleted_sites(deleted_at + DELETED_SITE_GRACE / 2) == 0, "within the grace"
    assert await pageviews.purge_deleted_sites(deleted_at + DELETED_SITE_GRACE * 2) == 2
    assert await rows(db, "select distinct site_id from page_views") == [(kept.id,)]
    assert await rows(db, "select distinct site_id from page_view_event_ids") == [(kept.id,)]
    assert await rows(db, "select site_id from deleted_sites") == [(gone.id,)], "tombstone kept"

    assert await pageviews.purge_deleted_sites(deleted_at + DELETED_SITE_RETENTION * 2) == 0
    assert await rows(db, "select site_id from deleted_sites") == []
