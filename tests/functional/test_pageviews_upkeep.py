"""The upkeep of ingest state on real PostgreSQL: claimed event ids live two days, salts one, and a
deleted site's raw page views and claims are purged once nothing of it can still be in flight; the
daily partitions reach ``PARTITION_DAYS_AHEAD`` days ahead, and keeping them never holds up the
ingest, even while a reader holds ``page_views``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg.errors import QueryCanceled

from app.config import Settings
from app.core.services import open_services
from app.db import pageviews as queries
from app.domains.pageviews.jobs import purge_ingest_state
from app.domains.pageviews.services import (
    DELETED_SITE_GRACE,
    DELETED_SITE_RETENTION,
    EVENT_ID_RETENTION,
    PARTITION_DAYS_AHEAD,
    PageViewService,
    PartitionUpkeep,
)
from app.modules import MODULES
from tests.factories import captured_logs, create_user, make_site, serve_in_loop, wait_until


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


async def test_event_ids_are_purged_in_bounded_chunks_until_none_is_left(
    pageviews: PageViewService, db: AsyncConnection[Any]
) -> None:
    """A day of claims is too many rows for one DELETE under the statement timeout: the table is
    swept a few pages per statement, until every expired claim is gone and no recent one."""
    site = await make_site(db, await create_user(db))
    now = datetime.now(UTC)
    recent = now - EVENT_ID_RETENTION + timedelta(hours=1)
    await db.execute(  # recent claims first too: the rows are not stored in seen_at order
        "insert into page_view_event_ids (site_id, event_id, seen_at)"
        " select %s, gen_random_uuid(), case when g %% 100 = 0 then %s else %s + g * interval '1 ms' end"
        " from generate_series(1, 500) g",
        (site.id, recent, now - EVENT_ID_RETENTION - timedelta(hours=1)),
    )
    statements: list[tuple[int, int]] = []
    original = queries.purge_event_ids

    async def counted(*args: Any, **kwargs: Any) -> int:
        statements.append((kwargs["from_page"], kwargs["to_page"]))
        return await original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(queries, "purge_event_ids", counted)
        assert await pageviews.purge(now, chunk_pages=1) == (495, 0)
    assert len(statements) >= 3, "500 claims fill several pages: one statement each"
    assert statements == [(page, page + 1) for page in range(len(statements))]
    left = await rows(db, "select seen_at = %s from page_view_event_ids", recent)
    assert left == [(True,)] * 5, "the recent claims are kept"


async def test_a_failing_event_id_purge_does_not_stop_the_deleted_sites_purge(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    owner = await create_user(db)
    gone = await make_site(db, owner)
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    await db.execute(
        "insert into page_views (site_id, ts, event_id, visitor_id, path, device, browser, os)"
        " values (%s, now(), %s, 1, '/', 'desktop', 'x', 'y')",
        (gone.id, uuid.uuid4()),
    )
    await db.execute(
        "insert into page_view_event_ids (site_id, event_id, seen_at) values (%s, %s, now() - %s)",
        (gone.id, uuid.uuid4(), EVENT_ID_RETENTION * 2),
    )
    await db.execute("delete from sites where id = %s", (gone.id,))
    await db.execute("update deleted_sites set deleted_at = now() - %s", (DELETED_SITE_GRACE * 2,))

    async def cancelled(*args: Any, **kwargs: Any) -> Any:
        raise QueryCanceled("canceling statement due to statement timeout")

    async with open_services(settings, MODULES) as services:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(queries, "purge_event_ids", cancelled)
            with pytest.raises(QueryCanceled):
                await purge_ingest_state({"services": services})
    assert await rows(db, "select count(*) from page_views where site_id = %s", gone.id) == [(0,)]


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


def partition(day: date) -> str:
    return f"page_views_{day:%Y%m%d}"


async def exists(db: AsyncConnection[Any], table: str) -> bool:
    found = await (await db.execute("select to_regclass(%s) is not null", (table,))).fetchone()
    return bool(found and found[0])


async def test_partitions_reach_partition_days_ahead(
    pageviews: PageViewService, db: AsyncConnection[Any]
) -> None:
    """The upkeep keeps a partition for yesterday, today and each of the next PARTITION_DAYS_AHEAD."""
    today = datetime.now(UTC).date()
    newest = today + timedelta(days=PARTITION_DAYS_AHEAD)
    await db.execute(f"drop table if exists {partition(newest)}")
    try:
        await pageviews.maintain_partitions(today)
        days = [today + timedelta(days=offset) for offset in range(-1, PARTITION_DAYS_AHEAD + 1)]
        missing = [partition(day) for day in days if not await exists(db, partition(day))]
        assert missing == [], "from yesterday to PARTITION_DAYS_AHEAD days ahead"
    finally:
        await db.execute("select ensure_page_view_partitions(%s, 1)", (newest,))


async def test_creating_a_partition_takes_no_lock_that_readers_or_inserts_wait_for(
    db: AsyncConnection[Any], database_url: str
) -> None:
    """CREATE TABLE ... PARTITION OF takes ACCESS EXCLUSIVE on ``page_views``; attaching a table
    made standalone takes SHARE UPDATE EXCLUSIVE, which neither readers nor inserts conflict with."""
    day = datetime.now(UTC).date() + timedelta(days=30)
    async with await AsyncConnection.connect(database_url) as upkeep:
        await upkeep.execute("select ensure_page_view_partitions(%s, 1)", (day,))
        held = await rows(
            db,
            "select mode from pg_locks where pid = %s and relation = 'page_views'::regclass",
            upkeep.info.backend_pid,
        )
        assert {mode for (mode,) in held} <= {"AccessShareLock", "ShareUpdateExclusiveLock"}, held
        await upkeep.rollback()


async def ingest_while_a_reader_holds_page_views(
    settings: Settings, db: AsyncConnection[Any], database_url: str, today: date, missing: str | None = None
) -> tuple[int, PartitionUpkeep]:
    """Open a reader's transaction on ``page_views`` (a report, the rollup), run the partition upkeep
    until it is done or waits for the reader, then send a view: its status, and the upkeep's outcome
    once the reader has ended. ``missing``: a partition dropped first, once the app has started (its
    start makes the days' partitions)."""
    site = await make_site(db, await create_user(db))
    async with serve_in_loop(settings) as served:
        if missing is not None:
            await db.execute(f"drop table if exists {missing}")
        pageviews = served.app.state.services[PageViewService]
        async with await AsyncConnection.connect(database_url) as reader:
            await reader.execute("select count(*) from page_views")
            upkeep = asyncio.create_task(pageviews.maintain_partitions(today))

            async def done_or_waiting() -> bool:
                waiting = await rows(
                    db,
                    "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                    reader.info.backend_pid,
                )
                return upkeep.done() or waiting[0][0] > 0

            await wait_until(done_or_waiting, 30, "the upkeep is done or waits for the reader")
            response = await served.client.post(
                "/api/page-views", json={"site_key": site.ingest_key, "url": "https://example.com/"}
            )
            await reader.rollback()
        return response.status_code, await upkeep


async def test_a_partition_is_created_while_a_reader_holds_page_views_and_views_are_still_stored(
    settings: Settings, db: AsyncConnection[Any], database_url: str
) -> None:
    today = datetime.now(UTC).date()
    tomorrow = today + timedelta(days=1)
    try:
        status, upkeep = await ingest_while_a_reader_holds_page_views(
            settings, db, database_url, today, missing=partition(tomorrow)
        )
        assert status == 202, "the view waited behind the upkeep, which waited for the reader"
        assert upkeep.created == 1
    finally:
        await db.execute("select ensure_page_view_partitions(%s, 1)", (tomorrow,))


async def test_a_partition_past_retention_in_use_is_dropped_later_and_views_are_still_stored(
    settings: Settings, db: AsyncConnection[Any], database_url: str
) -> None:
    today = datetime.now(UTC).date()
    expired = today - timedelta(days=settings.analytics_retention_days + 3)
    await db.execute("select ensure_page_view_partitions(%s, 1)", (expired,))
    status, upkeep = await ingest_while_a_reader_holds_page_views(settings, db, database_url, today)
    assert status == 202, "the view waited behind the drop, which waited for the reader"
    assert (upkeep.dropped, upkeep.busy) == (0, 1), "left for the next run"
    async with open_services(settings, MODULES) as services:
        upkeep = await services[PageViewService].maintain_partitions(today)
    assert (upkeep.dropped, upkeep.busy) == (1, 0)
    assert not await exists(db, partition(expired))


async def test_a_process_makes_the_days_partitions_when_it_starts(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """Partitions were made only by the hourly upkeep: on a database whose upkeep had not run for
    days (restored from a backup, every worker down) every view was refused, and a beacon is never
    sent again, until the next run (the time reviewer). A process makes sure of them as it starts."""
    today = datetime.now(UTC).date()
    site = await make_site(db, await create_user(db))
    await db.execute(f"drop table if exists {partition(today)}")
    try:
        async with serve_in_loop(settings) as served:
            assert await exists(db, partition(today))
            response = await served.client.post(
                "/api/page-views", json={"site_key": site.ingest_key, "url": "https://example.com/"}
            )
            assert response.status_code == 202, response.text
    finally:
        await db.execute("select ensure_page_view_partitions(%s, 1)", (today,))


async def test_a_write_that_finds_its_partition_missing_makes_it_and_stores_the_views(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """A process that runs past the days its start made (its worker's upkeep down meanwhile): the
    write that finds the day's partition missing makes it, says so, and stores its views."""
    today = datetime.now(UTC).date()
    site = await make_site(db, await create_user(db))
    try:
        async with serve_in_loop(settings) as served:
            await db.execute(f"drop table {partition(today)}")
            with captured_logs() as logs:
                response = await served.client.post(
                    "/api/page-views", json={"site_key": site.ingest_key, "url": "https://example.com/"}
                )
            assert response.status_code == 202, response.text
            assert [line["level"] for line in logs.events("page_view_partition_missing")] == ["error"]
        assert await rows(db, "select count(*) from page_views") == [(1,)]
    finally:
        await db.execute("select ensure_page_view_partitions(%s, 1)", (today,))
