"""Breakdowns and entry pages are paged by a keyset cursor on their order (count desc, value).

They used to stop at 100 rows with no way to the next ones. A cursor is the last row's count and
value (base64url: values hold dots, any character, or nothing: direct traffic).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from tests.factories import Actor, Client, assert_problem, make_site, make_user

# (path, referrer source, visitor): per path 3, 2, 2, 2, 1, 1 views; referrers 4 direct, 4 "b.example".
VIEWS = [
    ("/a", "", 1),
    ("/a", "", 2),
    ("/a", "", 3),
    ("/b", "b.example", 4),
    ("/b", "b.example", 5),
    ("/c.d", "b.example", 6),
    ("/c.d", "b.example", 7),
    ("/ü", "a.example", 8),
    ("/ü", "", 9),
    ("/", "a.example", 10),
    ("/z", "c.example", 11),
]


async def world(db: AsyncConnection[Any], app: Litestar) -> tuple[int, Actor]:
    owner = await make_user(db, app)
    site = await make_site(db, owner.id)
    now = datetime.now(UTC)
    await pageview_queries.ensure_partitions(db, from_day=now.date() - timedelta(days=1), days=3)
    for path, referrer, visitor in VIEWS:
        await db.execute(
            "insert into page_views (site_id, ts, received_at, visitor_id, path, referrer_source, device,"
            " browser, os) values (%s, %s, %s, %s, %s, %s, 'desktop', 'firefox', 'linux')",
            (site.id, now, now, visitor, path, referrer),
        )
    return site.id, owner


async def walk(client: Client, url: str, headers: dict[str, str], limit: int) -> list[list[Any]]:
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        params = {"period": "today", "tz": "UTC", "limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 20, "the walk never ends"


@pytest.mark.parametrize(
    ("report", "key", "expected"),
    [
        ("pages", ("value", "views"), [("/a", 3), ("/b", 2), ("/c.d", 2), ("/ü", 2), ("/", 1), ("/z", 1)]),
        ("referrers", ("value", "views"), [("", 4), ("b.example", 4), ("a.example", 2), ("c.example", 1)]),
        (
            "entry-pages",
            ("path", "visits"),
            [("/a", 3), ("/b", 2), ("/c.d", 2), ("/ü", 2), ("/", 1), ("/z", 1)],
        ),
    ],
)
async def test_pages_walk_every_row_once_in_order(
    client: Client,
    app: Litestar,
    db: AsyncConnection[Any],
    report: str,
    key: tuple[str, str],
    expected: list[tuple[str, int]],
) -> None:
    site_id, owner = await world(db, app)
    url = f"/api/sites/{site_id}/{report}"
    whole = await walk(client, url, owner.headers, 100)
    assert [[(item[key[0]], item[key[1]]) for item in page] for page in whole] == [expected]
    for limit in (1, 2, 3):
        pages = await walk(client, url, owner.headers, limit)
        assert all(len(page) == limit for page in pages[:-1]) and 1 <= len(pages[-1]) <= limit
        assert [(item[key[0]], item[key[1]]) for page in pages for item in page] == expected, limit


@pytest.mark.parametrize("cursor", ["abc", "1", "1.a.b", "01.YQ", "1.!!", "1.A", "1./w", "1.gA", "1.AA"])
async def test_a_cursor_that_is_no_position_is_a_400_invalid_cursor(
    client: Client, app: Litestar, db: AsyncConnection[Any], cursor: str
) -> None:
    site_id, owner = await world(db, app)
    response = await client.get(
        f"/api/sites/{site_id}/pages", params={"period": "today", "cursor": cursor}, headers=owner.headers
    )
    assert_problem(response, 400, fields={"query.cursor"})


async def test_the_routes_document_the_cursor(app: Litestar) -> None:
    schema = app.openapi_schema.to_schema()
    for report in ("pages", "referrers", "campaigns", "devices", "browsers", "entry-pages"):
        operation = schema["paths"][f"/api/sites/{{site_id}}/{report}"]["get"]
        assert "cursor" in {p["name"] for p in operation["parameters"]}, report
        assert "next_cursor" in operation["description"], report
        item = schema["components"]["schemas"]
        assert any("next_cursor" in (s.get("properties") or {}) for s in item.values()), report
