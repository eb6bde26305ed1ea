"""A ranked report's walk (its first page, then each page's ``next_cursor``) reads the counts as of its
first page (``_ranked_page``, ``WALK_PINNED_FOR``).

Each page used to read the counts of the moment: a value whose count grew between two pages moved
before the cursor and was never listed (a review: 180 of 400 values missed by a walk under steady
ingest). The tests add views between the pages and drop the report cache, as its TTL would.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from app.domains.reports.services import WALK_PINNED_FOR, ReportService, resolve_range

VALUES = 150
"""More than the first rows a report caches (RANKED_ROWS): the later pages are queries."""
LIMIT = 50

Page = tuple[list[tuple[str, int]], str | None]
Walker = Callable[[ReportService, int, str | None], Awaitable[Page]]


async def breakdown_page(reports: ReportService, site_id: int, cursor: str | None) -> Page:
    today = datetime.now(UTC).date()
    page = await reports.breakdown(
        site_id, resolve_range("custom", today, today, "UTC"), "path", LIMIT, cursor
    )
    return [(item.value, item.views) for item in page.items], page.next_cursor


async def entry_page(reports: ReportService, site_id: int, cursor: str | None) -> Page:
    today = datetime.now(UTC).date()
    page = await reports.entry_pages(site_id, resolve_range("custom", today, today, "UTC"), LIMIT, cursor)
    return [(item.path, item.visits) for item in page.items], page.next_cursor


async def add_views(
    db: AsyncConnection[Any], site_id: int, paths: range, each: int, first_visitor: int
) -> None:
    """``each`` views of every path ``/p<n>``, each by a visitor of its own (a visit each)."""
    now = datetime.now(UTC)
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " select %s, %s, %s, %s + n * %s + k, '/p' || lpad(n::text, 3, '0'), 'desktop', 'firefox', 'linux'"
        " from generate_series(%s::int, %s::int) n, generate_series(1, %s::int) k",
        (site_id, now, now, first_visitor, each, paths.start, paths.stop - 1, each),
    )


async def walk(
    reports: ReportService, walker: Walker, site_id: int, cursor: str | None
) -> list[tuple[str, int]]:
    rows: list[tuple[str, int]] = []
    while cursor is not None:
        await reports.cache.invalidate_all()  # the first rows' cache expired meanwhile
        items, cursor = await walker(reports, site_id, cursor)
        rows += items
    return rows


@pytest.mark.parametrize("walker", [breakdown_page, entry_page], ids=["breakdown", "entry-pages"])
async def test_a_walk_lists_every_value_once_as_of_its_first_page_while_views_arrive(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, walker: Walker
) -> None:
    today = datetime.now(UTC).date()
    await pageview_queries.ensure_partitions(db, from_day=today - timedelta(days=1), days=3)
    await add_views(db, site_id, range(VALUES), 2, 0)
    first, cursor = await walker(reports, site_id, None)
    assert first == [(f"/p{n:03}", 2) for n in range(LIMIT)]

    await add_views(db, site_id, range(LIMIT, VALUES), 3, 10_000)  # each would now rank first
    rest = await walk(reports, walker, site_id, cursor)

    assert first + rest == [(f"/p{n:03}", 2) for n in range(VALUES)]
    fresh, _ = await walker(reports, site_id, None)
    assert fresh[0] == (f"/p{LIMIT:03}", 5), "a new walk reads the new counts"


async def test_a_walk_older_than_its_pinned_time_or_of_an_earlier_release_reads_the_counts_of_the_moment(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    today = datetime.now(UTC).date()
    await pageview_queries.ensure_partitions(db, from_day=today - timedelta(days=1), days=3)
    await add_views(db, site_id, range(VALUES), 2, 0)
    _, cursor = await breakdown_page(reports, site_id, None)
    assert cursor is not None
    await add_views(db, site_id, range(LIMIT, VALUES), 3, 10_000)
    match = re.fullmatch(r"t([0-9]+)\.(.*)", cursor)
    assert match is not None, cursor
    stale = datetime.now(UTC) - WALK_PINNED_FOR - timedelta(seconds=1)
    old_walk = f"t{(stale - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)}.{match[2]}"

    for resumed in (old_walk, match[2]):
        await reports.cache.invalidate_all()
        items, _ = await breakdown_page(reports, site_id, resumed)
        # Read live, every value after the cursor grew and now ranks before it: none is left to list.
        assert items == [], (resumed, items)
