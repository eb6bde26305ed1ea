"""The purge of deleted sites' raw data on real PostgreSQL (ingest review): a site's page views and
claimed event ids are deleted in bounded chunks, one transaction each, and a site whose purge fails
does not stop the purge of the sites after it.

Before the fix each was one DELETE per site (per day, for page views): a 10M-view day outlasted the
statement timeout, and the first failure left the loop, so no later site was purged and no tombstone
forgotten. Here a site's purge is made to fail by a lock on its last row, held by another
connection, and a short statement timeout: the chunks before that row are committed (the rows are
gone), the row's chunk waits for it and is cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection
from psycopg.errors import QueryCanceled

from app.config import Settings
from app.core.services import open_services
from app.db import pageviews as pageview_queries
from app.domains.pageviews.services import DELETED_SITE_RETENTION, PageViewService
from app.modules import MODULES
from tests.factories import captured_logs, create_user, make_site

ROWS = 10
CHUNK = 3


@pytest.fixture
async def pageviews(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[PageViewService]:
    """The service on sessions whose statements are cancelled after half a second."""
    async with open_services(
        msgspec.structs.replace(settings, statement_timeout_ms=500), MODULES
    ) as services:
        yield services[PageViewService]


async def count(db: AsyncConnection[Any], table: str, site_id: int) -> int:
    found = await (
        await db.execute(f"select count(*) from {table} where site_id = %s", (site_id,))
    ).fetchone()
    assert found is not None
    return int(found[0])


async def deleted_sites(
    db: AsyncConnection[Any], settings: Settings, sites: int
) -> tuple[list[int], datetime]:
    """``sites`` deleted sites with ``ROWS`` page views (one a second, ending now) and claims each;
    and a time at which their data is due for purging and their tombstones for forgetting."""
    owner = await create_user(db)
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    ids = []
    for _ in range(sites):
        site = await make_site(db, owner)
        await db.execute(
            "insert into page_views (site_id, ts, visitor_id, path, device, browser, os)"
            " select %s, now() - g * interval '1 second', 1, '/', 'desktop', 'x', 'y'"
            " from generate_series(0, %s) g",
            (site.id, ROWS - 1),
        )
        await db.execute(
            "insert into page_view_event_ids (site_id, event_id) select %s, gen_random_uuid()"
            " from generate_series(1, %s)",
            (site.id, ROWS),
        )
        await db.execute("delete from sites where id = %s", (site.id,))
        ids.append(site.id)
    row = await (await db.execute("select max(deleted_at) from deleted_sites")).fetchone()
    assert row is not None
    return ids, row[0] + DELETED_SITE_RETENTION * 2


async def locked(settings: Settings, sql: str, site_id: int) -> AsyncConnection[Any]:
    """Another session, in a transaction that holds ``sql``'s row locks until it is closed."""
    conn = await AsyncConnection.connect(settings.database_url or "")
    await conn.execute(sql, (site_id,))
    assert conn.info.transaction_status.name == "INTRANS"
    return conn


@pytest.mark.parametrize(
    ("table", "last_row"),
    [
        ("page_views", "select 1 from page_views where site_id = %s order by ts desc limit 1 for update"),
        (
            "page_view_event_ids",
            "select 1 from page_view_event_ids where site_id = %s order by event_id desc limit 1 for update",
        ),
    ],
    ids=["page views", "event ids"],
)
async def test_a_site_is_purged_in_chunks_and_its_failure_does_not_stop_the_next(
    pageviews: PageViewService, settings: Settings, db: AsyncConnection[Any], table: str, last_row: str
) -> None:
    (failing, purged), due = await deleted_sites(db, settings, 2)
    holder = await locked(settings, last_row, failing)
    try:
        with captured_logs() as logs, pytest.raises(QueryCanceled):
            await pageviews.purge_deleted_sites(due, chunk_rows=CHUNK)
    finally:
        await holder.close()
    assert await count(db, "page_views", purged) == 0, "the next site was purged"
    assert await count(db, "page_view_event_ids", purged) == 0
    assert 0 < await count(db, table, failing) < ROWS, "the chunks before the locked row were committed"
    tombstones = await (await db.execute("select site_id from deleted_sites order by site_id")).fetchall()
    assert tombstones == [(failing,)], "only the purged site's tombstone is forgotten"
    (failure,) = logs.events("deleted_site_purge_failed")
    assert failure["site_id"] == failing

    assert await pageviews.purge_deleted_sites(due, chunk_rows=CHUNK) >= 0, "the next run retries it"
    assert await count(db, "page_views", failing) == 0
    assert await count(db, "page_view_event_ids", failing) == 0
    assert (await (await db.execute("select count(*) from deleted_sites")).fetchone()) == (0,)


async def test_a_deleted_sites_views_are_deleted_chunk_by_chunk_until_none_is_left(
    pageviews: PageViewService, settings: Settings, db: AsyncConnection[Any]
) -> None:
    """Views of one second, several chunks of them per day, none left: the count is every view."""
    (gone,), due = await deleted_sites(db, settings, 1)
    await db.execute(
        "insert into page_views (site_id, ts, visitor_id, path, device, browser, os)"
        " select %s, now() - interval '1 hour', 1, '/same-second', 'desktop', 'x', 'y'"
        " from generate_series(1, %s)",
        (gone, CHUNK * 2 + 1),
    )
    assert await pageviews.purge_deleted_sites(due, chunk_rows=CHUNK) == ROWS + CHUNK * 2 + 1
    assert await count(db, "page_views", gone) == 0
    assert await count(db, "page_view_event_ids", gone) == 0


async def test_a_chunk_holds_at_most_its_size_or_one_instants_views(
    pageviews: PageViewService, settings: Settings, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten views a second apart and seven sharing one instant (a batch sent without ts): every chunk
    deletes at most CHUNK views, but the instant's seven, which go together; none is left. (Views of
    one instant are told apart by nothing an index holds: they are one statement.)"""
    (gone,), due = await deleted_sites(db, settings, 1)
    await db.execute(
        "insert into page_views (site_id, ts, visitor_id, path, device, browser, os)"
        " select %s, now() - interval '1 hour', 1, '/same-instant', 'desktop', 'x', 'y'"
        " from generate_series(1, 7)",
        (gone,),
    )
    chunks: list[int] = []
    purge = pageview_queries.purge_site_page_views

    async def recorded(conn: AsyncConnection[Any], **kwargs: Any) -> int:
        deleted = await purge(conn, **kwargs)
        chunks.append(deleted)
        return deleted

    monkeypatch.setattr(pageview_queries, "purge_site_page_views", recorded)
    assert await pageviews.purge_deleted_sites(due, chunk_rows=CHUNK) == ROWS + 7
    assert await count(db, "page_views", gone) == 0
    assert sorted(chunks, reverse=True)[:2] == [7, CHUNK], chunks
    assert sum(chunks) == ROWS + 7


async def test_the_purge_walks_the_partitions_that_exist_and_every_one_of_them(
    pageviews: PageViewService, settings: Settings, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted site's views were looked for on every day a retention could hold, one transaction
    each (3,662 at ``ANALYTICS_RETENTION_DAYS``' bound, nearly all on days no partition holds), and
    missed any in a partition outside that window. Now each partition that exists is walked once:
    here one ten days ahead, beyond the days ``maintain_partitions`` keeps, holds a view too."""
    (gone,), due = await deleted_sites(db, settings, 1)
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date + 10, 1)")
    await db.execute(
        "insert into page_views (site_id, ts, visitor_id, path, device, browser, os)"
        " values (%s, now() + interval '10 days', 1, '/ahead', 'desktop', 'x', 'y')",
        (gone,),
    )
    partitions = await (
        await db.execute("select count(*) from pg_inherits where inhparent = 'page_views'::regclass")
    ).fetchone()
    assert partitions is not None
    walked: list[datetime] = []
    chunk = pageview_queries.site_page_view_chunk

    async def recorded(conn: AsyncConnection[Any], **kwargs: Any) -> Any:
        walked.append(kwargs["to_ts"])  # the end of the day walked
        return await chunk(conn, **kwargs)

    monkeypatch.setattr(pageview_queries, "site_page_view_chunk", recorded)
    assert await pageviews.purge_deleted_sites(due, chunk_rows=ROWS * 10) == ROWS + 1
    assert await count(db, "page_views", gone) == 0
    days = set(walked)
    assert len(days) == partitions[0], "each partition walked, and nothing else"
