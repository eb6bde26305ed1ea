"""A parameter that holds one value is sent once, and a query value is UTF-8 (``app.core.parameters``).

Review inputrev: two ``Idempotency-Key`` lines were stored under the first (a retry carrying the
second created again), ``?limit=abc&limit=1`` was a 200 (the last value read, the first never
validated), and ``?q=%ff`` searched for U+FFFD. Repeated header lines go through httpx's own ASGI
transport (``serve_in_loop``): the test client's joins them into one.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import Client, Team, assert_problem, serve_in_loop


async def count_projects(db: AsyncConnection[Any]) -> int:
    row = await (await db.execute("select count(*) from projects")).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_header_that_holds_one_value_sent_twice_is_refused_and_creates_nothing(
    settings: Settings, team: Team, db: AsyncConnection[Any]
) -> None:
    before = await count_projects(db)
    async with serve_in_loop(settings) as served:
        signed_in = list(team.editor.headers.items())
        twice = [*signed_in, ("Idempotency-Key", "first"), ("Idempotency-Key", "second")]
        refused = await served.client.post("/api/projects", json={"name": "Twice"}, headers=twice)
        body = assert_problem(refused, 400, "validation", fields={"header.Idempotency-Key"})
        assert "more than once" in body["errors"][0]["message"]
        assert await count_projects(db) == before

        once = [*signed_in, ("Idempotency-Key", "second")]
        assert (
            await served.client.post("/api/projects", json={"name": "Once"}, headers=once)
        ).status_code == 201

        url = f"/api/projects/{team.project}"  # If-Match holds a list (RFC 9110 13.1.1): lines join
        etag = (await served.client.get(url, headers=signed_in)).headers["etag"]
        lines = [*signed_in, ("If-Match", '"999999"'), ("If-Match", etag)]
        assert (await served.client.get(url, headers=lines)).status_code == 200


async def test_a_query_parameter_that_holds_one_value_given_twice_is_refused(
    client: Client, team: Team
) -> None:
    for query in ("limit=abc&limit=1", "limit=1&limit=2"):
        twice = await client.get(f"/api/projects?{query}", headers=team.editor.headers)
        assert_problem(twice, 400, "validation", fields={"query.limit"})
    assert (await client.get("/api/projects?limit=1", headers=team.editor.headers)).status_code == 200
    unknown = await client.get("/api/projects?utm=a&utm=b", headers=team.editor.headers)
    assert unknown.status_code == 200, "a parameter the route does not take is ignored, however often"


async def test_a_query_value_that_is_not_utf8_is_refused(client: Client, team: Team) -> None:
    for query in ("q=%ff", "q=%c0%80", "q=%ed%a0%80"):
        bad = await client.get(f"/api/products?{query}", headers=team.editor.headers)
        assert_problem(bad, 400, "validation", fields={"query.q"})
    accented = await client.get("/api/products?q=caf%C3%A9", headers=team.editor.headers)
    assert accented.status_code == 200, accented.text
