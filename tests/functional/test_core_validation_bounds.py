"""What a refused body may cost: naming its bad fields is bounded work, and the rate limit bounds
how often a client may be refused for its body (core review: validation DoS).

The work is shown by counting, never timed: the calls the naming walk (``app.core.validation``)
makes to msgspec's ``convert`` and ``inspect.type_info``, through a wrapper of msgspec's own
functions. Before the fix a body of 1,000 bad views cost ~3,000 conversions (20,000 views: 12 s of
CPU on the event loop), a list over its ``max_length`` was walked item by item, every Struct object
visited was introspected again, and a request over quota was walked in full before its 429.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.domains.orders.schemas import MAX_LINES
from app.domains.pageviews.schemas import MAX_BATCH
from tests.factories import Actor, Client, Served, assert_problem, make_user, serve_in_loop

WALK = "app.core.validation"
JSON = {"content-type": "application/json"}


class Calls:
    """Calls of a msgspec function made from the naming walk's module."""

    def __init__(self) -> None:
        self.count = 0


def count_walk_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> Calls:
    calls = Calls()
    real: Callable[..., Any] = getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_globals.get("__name__") == WALK:
            calls.count += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


@pytest.fixture
def converts(monkeypatch: pytest.MonkeyPatch) -> Calls:
    return count_walk_calls(monkeypatch, msgspec, "convert")


@pytest.fixture
def introspections(monkeypatch: pytest.MonkeyPatch) -> Calls:
    return count_walk_calls(monkeypatch, msgspec.inspect, "type_info")


@pytest.fixture
async def buyer(app: Litestar, db: AsyncConnection[Any]) -> Actor:
    return await make_user(db, app)


def order_headers(buyer: Actor, key: str = "k") -> dict[str, str]:
    return {**buyer.headers, **JSON, "Idempotency-Key": key}


BAD_LINE = {"product_id": 0, "quantity": 0}  # two errors per line
BAD_VIEW = {"url": 0, "site_key": 0}


async def test_naming_stops_one_error_past_those_listed(
    client: Client, buyer: Actor, converts: Calls
) -> None:
    """50 lines of two errors each: 20 are listed, the walk stops at the 21st (line 10)."""
    body = msgspec.json.encode({"lines": [BAD_LINE] * MAX_LINES})
    response = await client.post("/api/orders", content=body, headers=order_headers(buyer))
    problem = assert_problem(response, 400, "validation")
    assert [e["field"] for e in problem["errors"]][:3] == [
        "lines[0].product_id",
        "lines[0].quantity",
        "lines[1].product_id",
    ]
    assert len(problem["errors"]) == 20
    assert problem["detail"].endswith("; and more errors, not counted (the first 20 are listed)")
    assert converts.count <= 40, converts.count  # 11 lines; all 50 lines and 100 fields before


async def test_an_anonymous_batch_of_bad_views_is_named_in_bounded_work(
    client: Client, db: AsyncConnection[Any], converts: Calls
) -> None:
    body = msgspec.json.encode({"views": [BAD_VIEW] * MAX_BATCH})
    response = await client.post("/api/page-views/batch", content=body, headers=JSON)
    problem = assert_problem(response, 400, "validation", {"views[0].url", "views[0].site_key"})
    assert len(problem["errors"]) == 20
    assert converts.count <= 40, converts.count  # ~3,000 before


async def test_a_list_over_its_length_is_one_error_and_not_walked(
    client: Client, buyer: Actor, converts: Calls
) -> None:
    body = msgspec.json.encode({"lines": [BAD_LINE] * (MAX_LINES + 1)})
    response = await client.post("/api/orders", content=body, headers=order_headers(buyer))
    problem = assert_problem(response, 400, "validation")
    assert problem["errors"] == [{"field": "lines", "message": f"Expected `array` of length <= {MAX_LINES}"}]
    assert converts.count <= 3, converts.count

    views = msgspec.json.encode({"views": [BAD_VIEW] * (MAX_BATCH + 1)})
    ingest = await client.post("/api/page-views/batch", content=views, headers=JSON)
    problem = assert_problem(ingest, 400, "validation")
    assert problem["errors"] == [{"field": "views", "message": f"Expected `array` of length <= {MAX_BATCH}"}]


async def test_each_type_is_introspected_once_not_per_object(
    client: Client, buyer: Actor, introspections: Calls
) -> None:
    body = msgspec.json.encode({"lines": [BAD_LINE, {"product_id": 1, "quantity": 1, "x": 1}] * 10})
    for _ in range(3):
        response = await client.post("/api/orders", content=body, headers=order_headers(buyer))
        assert_problem(response, 400, "validation", {"lines[1].x"})
    assert introspections.count <= 4, introspections.count  # OrderCreate, OrderLine, their field types


async def test_many_unknown_fields_are_still_counted_exactly(client: Client, buyer: Actor) -> None:
    """Unknown keys come out of the dict already in hand: counting them costs no walk."""
    body = msgspec.json.encode(
        {f"k{i}": 1 for i in range(30_000)} | {"lines": [{"product_id": 1, "quantity": 1}]}
    )
    response = await client.post("/api/orders", content=body, headers=order_headers(buyer))
    problem = assert_problem(response, 400, "validation")
    assert [e["field"] for e in problem["errors"]][:2] == ["k0", "k1"]
    assert "; and 29980 more errors (the first 20 are listed)" in problem["detail"]


# -- the rate limit ---------------------------------------------------------------------------------


QUOTA = 3


@pytest.fixture
async def limited(settings: Any, db: AsyncConnection[Any], valkey: Valkey) -> AsyncIterator[Served]:
    """The app with a default quota of 3 a minute and 3 an hour: no window resets within a test."""
    async with serve_in_loop(
        settings, rate_limit_default_per_minute=QUOTA, rate_limit_default_per_hour=QUOTA
    ) as served:
        yield served


async def test_a_request_refused_for_its_body_spends_its_token(
    limited: Served, db: AsyncConnection[Any]
) -> None:
    """A refused body was refunded: a client could be refused without end, each time walked."""
    buyer = await make_user(db, limited.app)
    bad = msgspec.json.encode({"lines": []})
    for remaining in range(QUOTA - 1, -1, -1):
        refused = await limited.client.post("/api/orders", content=bad, headers=order_headers(buyer))
        assert_problem(refused, 400, "validation", {"lines"})
        assert f";r={remaining};" in refused.headers["ratelimit"], refused.headers["ratelimit"]
    listed = await limited.client.get("/api/orders", headers=buyer.headers)
    assert_problem(listed, 429, "rate-limited")


async def test_a_request_refused_for_its_parameters_is_still_refunded(
    limited: Served, db: AsyncConnection[Any]
) -> None:
    buyer = await make_user(db, limited.app)
    for _ in range(QUOTA + 2):
        refused = await limited.client.get("/api/orders", params={"limit": 0}, headers=buyer.headers)
        assert_problem(refused, 400, "validation", {"query.limit"})
        assert f";r={QUOTA};" in refused.headers["ratelimit"], refused.headers["ratelimit"]
    assert (await limited.client.get("/api/orders", headers=buyer.headers)).status_code == 200


async def test_over_quota_a_bad_body_is_refused_without_the_walk(
    limited: Served, db: AsyncConnection[Any], converts: Calls
) -> None:
    """Over quota a bad body still learns what is wrong (the contract: a 429 never hides a 400), but
    only msgspec's first fault, found in its one pass: no per-field walk for a client over quota."""
    buyer = await make_user(db, limited.app)
    for _ in range(QUOTA):
        assert (await limited.client.get("/api/orders", headers=buyer.headers)).status_code == 200
    body = msgspec.json.encode({"lines": [BAD_LINE] * MAX_LINES})
    for _ in range(3):
        refused = await limited.client.post("/api/orders", content=body, headers=order_headers(buyer))
        problem = assert_problem(refused, 400, "validation")
        assert [e["field"] for e in problem["errors"]] == ["body"], problem
    assert converts.count == 0, converts.count
    well_formed = msgspec.json.encode({"lines": [{"product_id": 1, "quantity": 1}]})
    over = await limited.client.post("/api/orders", content=well_formed, headers=order_headers(buyer))
    assert_problem(over, 429, "rate-limited")


# -- no body at all -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/projects", "/api/orders", "/api/auth/login"])
async def test_a_request_without_a_body_is_told_so(client: Client, buyer: Actor, path: str) -> None:
    response = await client.post(path, headers=order_headers(buyer))
    problem = assert_problem(response, 400, "validation")
    assert problem["errors"] == [{"field": "body", "message": "Required: a JSON body"}]
