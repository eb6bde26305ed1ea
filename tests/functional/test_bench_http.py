"""The load-test routes (``/bench/*``): out of the route table unless ``BENCH_ROUTES`` is set; when
set, ``noop`` decodes like the ingest route and stores nothing, ``naive`` stores one row per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from tests.factories import Client, assert_problem, create_user, generous_client, make_site

BENCH_PATHS = ("/bench/noop", "/bench/naive")


@pytest.fixture(scope="module")
async def bench_module_client(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, bench_routes=True):
        yield client


@pytest.fixture
async def bench(bench_module_client: Client, db: AsyncConnection[Any], valkey: Valkey) -> Client:
    return bench_module_client


async def site_key(db: AsyncConnection[Any]) -> tuple[int, str]:
    site = await make_site(db, await create_user(db))
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    return site.id, site.ingest_key


async def stored(db: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
    return await (await db.execute("select site_id, path from page_views order by path")).fetchall()


async def test_without_the_setting_there_are_no_bench_routes(app: Litestar, client: Client) -> None:
    assert not app.state.settings.bench_routes
    assert not [route.path for route in app.routes if route.path.startswith("/bench")]
    for path in BENCH_PATHS:
        response = await client.post(path, json={"site_key": "k" * 20, "url": "https://a.example/"})
        assert response.status_code == 404, response.text


async def test_noop_decodes_the_ingest_body_and_stores_nothing(
    bench: Client, db: AsyncConnection[Any]
) -> None:
    _, key = await site_key(db)
    response = await bench.post("/bench/noop", json={"site_key": key, "url": "https://a.example/x"})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1}
    refused = await bench.post("/bench/noop", json={"site_key": key, "url": "https://a/", "title": "\u0000"})
    assert_problem(refused, 400, "validation", fields={"title"})
    assert await stored(db) == []


async def test_naive_stores_one_row_per_request(bench: Client, db: AsyncConnection[Any]) -> None:
    site_id, key = await site_key(db)
    for path in ("/a", "/b", "/c"):
        response = await bench.post("/bench/naive", json={"site_key": key, "url": f"https://a.example{path}"})
        assert response.status_code == 202, response.text
    assert await stored(db) == [(site_id, "/a"), (site_id, "/b"), (site_id, "/c")]
