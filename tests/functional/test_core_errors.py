"""Every error is RFC 9457 problem+json: stable type, title, status, request_id; never internals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
import pytest
from litestar import Litestar, Request, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import Services
from app.db import outbox as outbox_queries
from app.main import create_app
from tests.factories import assert_problem, client_across_tests


class Line(msgspec.Struct, forbid_unknown_fields=True):
    product_id: Annotated[int, msgspec.Meta(ge=1)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=100)]


class Order(msgspec.Struct, forbid_unknown_fields=True):
    note: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    line: Line


@post("/probe/orders", status_code=201)
async def create_order(data: JSONBody[Order]) -> Order:
    return data


@get("/probe/boom")
async def boom() -> None:
    raise RuntimeError("connection string postgresql://user:hunter2@db/app")


@get("/probe/page")
async def page(limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10) -> dict[str, int]:
    return {"limit": limit}


@post("/probe/outbox/{fail:int}", status_code=201)
async def write_outbox(fail: FromPath[int], request: Request[Any, Any, Any]) -> None:
    services: Services = request.app.state.services
    async with services.db.transaction() as uow:
        await outbox_queries.insert_outbox(
            uow.conn, queue="default", task="purge_outbox", payload={}, request_id=None
        )
        if fail:
            raise RuntimeError("fails after the insert")


@pytest.fixture(scope="module")
async def probe_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The real app plus the probe routes above (its own app: the session app stays as shipped)."""
    app = create_app(settings)
    for handler in (create_order, boom, page, write_outbox):
        app.register(handler)
    async with client_across_tests(app) as client:
        yield client


@pytest.fixture
async def client(
    probe_client: AsyncTestClient[Litestar], db: AsyncConnection[Any], valkey: Valkey
) -> AsyncTestClient[Litestar]:
    probe_client.headers.clear()
    return probe_client


async def post_raw(client: AsyncTestClient[Litestar], body: bytes) -> Any:
    return await client.post("/probe/orders", content=body, headers={"content-type": "application/json"})


async def test_malformed_json_is_a_400_naming_the_body(client: AsyncTestClient[Litestar]) -> None:
    body = assert_problem(await post_raw(client, b'{"note": "a", "line": '), 400, "validation", {"body"})
    assert [e["field"] for e in body["errors"]] == ["body"]
    assert "malformed json" in body["errors"][0]["message"].lower()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/probe/orders", b"[" * 5000 + b"]" * 5000),
        ("/probe/orders", b'{"note": "a", "line": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("/api/auth/register", b"[" * 5000 + b"]" * 5000),
        ("/api/page-views", b'{"site_key": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("/api/page-views/batch", b'{"views": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ],
)
async def test_json_nested_too_deeply_is_a_400_naming_the_body(
    client: AsyncTestClient[Litestar], path: str, body: bytes
) -> None:
    """A few KB of brackets: the slow paths that name every bad field walk the decoded value."""
    response = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "validation", {"body"})


async def test_wrong_type_is_a_400_naming_the_field(client: AsyncTestClient[Litestar]) -> None:
    response = await post_raw(client, b'{"note": "a", "line": {"product_id": "seven", "quantity": 1}}')
    body = assert_problem(response, 400, "validation")
    assert [e["field"] for e in body["errors"]] == ["line.product_id"]
    assert "int" in body["errors"][0]["message"]


async def test_every_bad_field_is_listed(client: AsyncTestClient[Litestar]) -> None:
    response = await post_raw(client, b'{"note": "", "line": {"product_id": 0, "quantity": 500}, "extra": 1}')
    body = assert_problem(response, 400, "validation")
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"note", "line.product_id", "line.quantity", "extra"}


async def test_missing_fields_are_listed(client: AsyncTestClient[Litestar]) -> None:
    body = assert_problem(await post_raw(client, b"{}"), 400, "validation")
    assert {e["field"] for e in body["errors"]} == {"note", "line"}
    assert all(e["message"] == "Field is required" for e in body["errors"])


async def test_valid_body_passes(client: AsyncTestClient[Litestar]) -> None:
    response = await post_raw(client, b'{"note": "ok", "line": {"product_id": 1, "quantity": 2}}')
    assert response.status_code == 201
    assert response.json() == {"note": "ok", "line": {"product_id": 1, "quantity": 2}}


async def test_query_parameter_errors_name_the_parameter(client: AsyncTestClient[Litestar]) -> None:
    for query in ("limit=1000", "limit=abc"):
        body = assert_problem(await client.get(f"/probe/page?{query}"), 400, "validation")
        assert [e["field"] for e in body["errors"]] == ["query.limit"]


async def test_a_parameter_with_a_pattern_is_told_which_of_its_rules_it_broke(
    client: AsyncTestClient[Litestar],
) -> None:
    """Every error on a parameter declaring a pattern used to be worded as the pattern's rule: a
    search too long was told it must not contain NUL characters."""
    too_long = assert_problem(await client.get("/api/products/", params={"q": "a" * 101}), 400, "validation")
    assert too_long["errors"] == [{"field": "query.q", "message": "Expected `str` of length <= 100"}]
    with_nul = assert_problem(await client.get("/api/products/", params={"q": "a\x00b"}), 400, "validation")
    assert [e["field"] for e in with_nul["errors"]] == ["query.q"]
    assert "NUL" in with_nul["errors"][0]["message"]


async def test_unexpected_error_is_a_500_without_internals(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/probe/boom")
    body = assert_problem(response, 500, "internal")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert "detail" not in body


async def test_unknown_route_and_method(client: AsyncTestClient[Litestar]) -> None:
    assert_problem(await client.get("/no/such/route"), 404, "not-found")
    assert_problem(await client.delete("/health/live"), 405, "method-not-allowed")


async def test_body_over_the_limit_is_413(client: AsyncTestClient[Litestar], settings: Settings) -> None:
    too_big = b"x" * (settings.max_body_bytes + 1)
    assert_problem(await post_raw(client, too_big), 413, "payload-too-large")


async def test_a_transaction_rolls_back_when_the_request_fails(
    client: AsyncTestClient[Litestar], db: Any
) -> None:
    assert_problem(await client.post("/probe/outbox/1"), 500, "internal")
    assert await (await db.execute("select count(*) from outbox")).fetchone() == (0,)
    assert (await client.post("/probe/outbox/0")).status_code == 201
    assert await (await db.execute("select count(*) from outbox")).fetchone() == (1,)
