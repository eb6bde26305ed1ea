"""A breakdown's cost is bounded by the rollup, not by how many distinct values a third party sends.

The ingest key is public: anyone can send a site views with unique paths, referrers or campaigns.
``page_view_dimension_hourly`` used to keep one row per distinct value per hour, so a breakdown over
a long period re-aggregated an unbounded number of rows (hundreds of millions over the retention:
the statement timeout, a 503, for the owner). The rollup now keeps the ``DIMENSION_VALUES_PER_HOUR``
most viewed values of each (site, dimension, hour) and folds the rest into one ``(other)`` row, the
views summed: the totals are unchanged. And one ranked list per (site, dimension, period, zone) is
cached and sliced for every ``limit`` and ``cursor`` within it, instead of one query per variant.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from app.domains.pageviews.schemas import MAX_DIMENSION_BYTES
from app.domains.reports import services as report_services
from app.domains.reports.services import DIMENSION_VALUES_PER_HOUR, OTHER_VALUE, ReportService
from tests.factories import Actor, Client, make_site, make_user

N = DIMENSION_VALUES_PER_HOUR


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def insert_views(
    db: AsyncConnection[Any],
    site_id: int,
    rows: list[tuple[str, str, str]],
    *,
    ts: datetime,
    received_at: datetime,
) -> None:
    """One view per (path, referrer source, campaign), each by its own visitor."""
    async with db.cursor() as cursor:
        await cursor.executemany(
            "insert into page_views (site_id, ts, received_at, visitor_id, path, referrer_source,"
            " utm_campaign, device, browser, os)"
            " values (%s, %s, %s, %s, %s, %s, %s, 'desktop', 'firefox', 'linux')",
            [
                (site_id, ts, received_at, visitor, path, referrer, campaign)
                for visitor, (path, referrer, campaign) in enumerate(rows)
            ],
        )


async def stored(db: AsyncConnection[Any], site_id: int, dimension: str, hour: datetime) -> dict[str, int]:
    cursor = await db.execute(
        "select value, views from page_view_dimension_hourly where site_id = %s and dimension = %s"
        " and hour = %s",
        (site_id, dimension, hour),
    )
    return {value: views for value, views in await cursor.fetchall()}


async def setup(db: AsyncConnection[Any], app: Litestar) -> tuple[int, Actor, datetime]:
    owner = await make_user(db, app)
    site = await make_site(db, owner)
    hour = _hour(datetime.now(UTC)) - timedelta(hours=3)
    await pageview_queries.ensure_partitions(db, from_day=hour.date() - timedelta(days=1), days=4)
    return site.id, owner, hour


async def get(client: Client, owner: Actor, site_id: int, report: str, **params: str) -> Any:
    response = await client.get(
        f"/api/sites/{site_id}/{report}",
        params={"period": "7d", "tz": "UTC", **params},
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


async def walk(client: Client, owner: Actor, site_id: int, report: str, limit: int) -> list[tuple[str, int]]:
    items: list[tuple[str, int]] = []
    cursor: str | None = None
    for _ in range(100):
        params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        body = await get(client, owner, site_id, report, **params)
        items += [(item["value"], item["views"]) for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the walk never ends")


async def test_an_hour_keeps_the_top_values_and_folds_the_rest_into_other(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """N + 50 distinct paths in one hour: N rows and ``(other)``, the views all kept; a late batch for
    the same hour (new paths, and more views of a folded one) is ranked with the stored rows."""
    site_id, owner, hour = await setup(db, app)
    reports = app.state.services[ReportService]
    at = hour + timedelta(minutes=10)
    # /p000../p009: 3 views each; /p010../p149: 1 view each (170 views, N + 50 paths).
    first = [(f"/p{i:03}", "", "") for i in range(N + 50)] + [(f"/p{i:03}", "", "") for i in range(10)] * 2
    await insert_views(db, site_id, first, ts=at, received_at=at)
    await reports.rollup(now=hour + timedelta(hours=1, minutes=10))  # rolls up [hour, hour + 1 h)

    paths = await stored(db, site_id, "path", hour)
    assert len(paths) <= N + 1, f"{len(paths)} rows for one hour"
    assert sum(paths.values()) == 170
    # Kept: the 10 paths of 3 views, then the 1-view paths in value order up to N; the rest folded.
    assert paths[OTHER_VALUE] == 50
    assert all(paths[f"/p{i:03}"] == 3 for i in range(10))
    assert f"/p{N - 1:03}" in paths and f"/p{N:03}" not in paths

    # Late views of the same hour, received in the next one: 30 new paths, 5 views of a folded one.
    late = [(f"/q{i:03}", "", "") for i in range(30)] + [(f"/p{N + 49:03}", "", "")] * 5
    received = hour + timedelta(hours=1, minutes=20)
    await insert_views(db, site_id, late, ts=hour + timedelta(minutes=30), received_at=received)
    await reports.rollup(now=hour + timedelta(hours=2, minutes=10))

    paths = await stored(db, site_id, "path", hour)
    assert len(paths) <= N + 1, f"{len(paths)} rows for one hour"
    assert sum(paths.values()) == 205
    assert paths[f"/p{N + 49:03}"] == 5, "its earlier view stays in (other)"
    # Kept now: /p149 (5), /p000../p009 (3), 89 one-view paths; folded: /p099 and the 30 /q paths.
    assert paths[OTHER_VALUE] == 50 + 31

    summary = await get(client, owner, site_id, "summary")
    assert summary["pageviews"] == 205, "the totals are unchanged"
    pages = await walk(client, owner, site_id, "pages", 100)
    assert (OTHER_VALUE, 81) in pages
    assert sum(views for _, views in pages) == 205
    assert pages[:2] == [(OTHER_VALUE, 81), (f"/p{N + 49:03}", 5)]
    assert len(pages) == N + 1


async def test_every_dimension_is_bounded_and_no_value_is_never_folded(
    client: Client, app: Litestar, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The empty value means "none" (no campaign, direct traffic): never folded into ``(other)``,
    where a campaigns report (which skips it) would count it."""
    monkeypatch.setattr(report_services, "DIMENSION_VALUES_PER_HOUR", 2)
    site_id, owner, hour = await setup(db, app)
    at = hour + timedelta(minutes=5)
    # campaigns a: 6, b: 5, c: 2, d: 1, none: 1; referrers likewise (no ties: collations differ).
    spec = [("a", 6), ("b", 5), ("c", 2), ("d", 1), ("", 1)]
    rows = [(f"/{value or 'none'}", value, value) for value, count in spec for _ in range(count)]
    await insert_views(db, site_id, rows, ts=at, received_at=at)
    await app.state.services[ReportService].rollup(now=hour + timedelta(hours=1, minutes=10))

    expected = {"a": 6, "b": 5, "": 1, OTHER_VALUE: 3}
    assert await stored(db, site_id, "utm_campaign", hour) == expected
    assert await stored(db, site_id, "referrer_source", hour) == expected
    assert await stored(db, site_id, "path", hour) == {"/a": 6, "/b": 5, OTHER_VALUE: 4}
    assert await stored(db, site_id, "device", hour) == {"desktop": 15}
    campaigns = await walk(client, owner, site_id, "campaigns", 10)
    assert campaigns == [("a", 6), ("b", 5), (OTHER_VALUE, 3)]
    referrers = await walk(client, owner, site_id, "referrers", 1)
    assert referrers == [("a", 6), ("b", 5), (OTHER_VALUE, 3), ("", 1)]


async def test_one_ranked_list_serves_every_limit_and_cursor(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """Asked with any ``limit`` or a cursor inside it, a breakdown is sliced from one cached list per
    (site, dimension, period, zone): it shows the same counts until that list expires."""
    site_id, owner, _ = await setup(db, app)
    now = datetime.now(UTC)
    await insert_views(
        db, site_id, [("/a", "", "")] * 3 + [("/b", "", "")] * 2 + [("/c", "", "")], ts=now, received_at=now
    )
    first = await get(client, owner, site_id, "pages", limit="10")
    assert [(i["value"], i["views"]) for i in first["items"]] == [("/a", 3), ("/b", 2), ("/c", 1)]

    await insert_views(db, site_id, [("/c", "", "")] * 5, ts=now, received_at=now)
    for limit in ("1", "2", "100"):
        body = await get(client, owner, site_id, "pages", limit=limit)
        assert [i["value"] for i in body["items"]] == ["/a", "/b", "/c"][: int(limit)], limit
    page = await get(client, owner, site_id, "pages", limit="1")
    rest = await get(client, owner, site_id, "pages", limit="1", cursor=page["next_cursor"])
    assert [(i["value"], i["views"]) for i in rest["items"]] == [("/b", 2)]


def test_the_breakdown_routes_document_other(app: Litestar) -> None:
    schema = app.openapi_schema.to_schema()
    for report in ("pages", "referrers", "campaigns", "devices", "browsers"):
        description = schema["paths"][f"/api/sites/{{site_id}}/{report}"]["get"]["description"]
        assert f"`{OTHER_VALUE}`" in description and f" {N} most viewed" in description, report


async def test_a_value_too_long_for_a_rollup_key_is_counted_in_other_and_the_rollup_goes_on(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """A btree entry holds at most 2704 bytes. A view stored with a 6 KB referrer source (the ingest
    took a referrer host of 2,000 CJK characters before it bounded hosts) failed every run of the
    hourly rollup, for every site, and its watermark never moved; the ingest now refuses such a host
    (``tests/unit/test_pageviews_derive.py``), and a row stored before is counted in ``(other)``, by
    the breakdowns and by the entry pages' counts."""
    site_id, owner, hour = await setup(db, app)
    at = hour + timedelta(minutes=5)
    chance = random.Random(1988)
    huge = "".join(chr(0x4E00 + chance.randrange(20_000)) for _ in range(1988))  # 5,964 bytes, random
    longest = "/" + "é" * ((MAX_DIMENSION_BYTES - 1) // 2)
    rows = [("/a", huge, ""), (huge, "", huge), (longest, "", ""), ("/a", "news.example", "")]
    await insert_views(db, site_id, rows, ts=at, received_at=at)

    await app.state.services[ReportService].rollup(now=hour + timedelta(hours=1, minutes=10))

    assert await stored(db, site_id, "referrer_source", hour) == {OTHER_VALUE: 1, "": 2, "news.example": 1}
    assert await stored(db, site_id, "path", hour) == {"/a": 2, OTHER_VALUE: 1, longest: 1}
    assert await stored(db, site_id, "utm_campaign", hour) == {"": 3, OTHER_VALUE: 1}
    assert (await get(client, owner, site_id, "summary"))["pageviews"] == 4
    entry_pages = await get(client, owner, site_id, "entry-pages")
    entries = {item["path"]: item["visits"] for item in entry_pages["items"]}
    assert entries == {"/a": 2, OTHER_VALUE: 1, longest: 1}  # each view is a visit, counted by its path
