"""Numbers, names and texts past what PostgreSQL stores are a 4xx naming the field, never a 500,
and never break another client's later writes (issue 9 section 4; security review L5 and M8)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import Settings
from app.core.types import MAX_ID
from app.db import products as product_queries
from app.db.models import UserRole
from app.domains.products.schemas import MAX_STOCK
from app.domains.tasks.schemas import MAX_POSITION
from app.main import create_app
from tests.factories import Actor, Client, assert_problem, generous_client, make_project, make_user

BIGINT_PAST = 2**63
BIGINT_MAX = 2**63 - 1


def assert_names(response: httpx.Response, status: int, field: str) -> dict[str, Any]:
    """A problem+json of ``status`` whose ``errors`` name ``field``."""
    return assert_problem(response, status, fields={field})


@pytest.fixture
async def member(app: Litestar, db: AsyncConnection[Any]) -> Actor:
    return await make_user(db, app)


@pytest.fixture
async def admin(app: Litestar, db: AsyncConnection[Any]) -> Actor:
    return await make_user(db, app, UserRole.ADMIN)


# -- a task position past bigint poisoned every later task creation in its project ------------------


@pytest.mark.parametrize("position", [BIGINT_MAX, BIGINT_PAST, MAX_POSITION + 1, -1])
async def test_out_of_range_positions_are_refused_and_later_creations_still_work(
    client: Client, db: AsyncConnection[Any], member: Actor, position: int
) -> None:
    project = await make_project(db, member)
    tasks = f"/api/projects/{project}/tasks"
    first = await client.post(tasks, json={"title": "first"}, headers=member.headers)
    assert first.status_code == 201, first.text
    refused = await client.patch(
        f"/api/tasks/{first.json()['id']}", json={"position": position}, headers=member.headers
    )
    assert_names(refused, 400, "position")
    later = await client.post(tasks, json={"title": "later"}, headers=member.headers)
    assert later.status_code == 201, later.text
    assert later.json()["position"] == first.json()["position"] + 1


# -- ids: path, query, body ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/tasks/{big}", "path.task_id"),
        ("/api/tasks/{big}/comments", "path.task_id"),
        ("/api/projects/{big}", "path.project_id"),
        ("/api/projects/{big}/tasks", "path.project_id"),
        ("/api/projects/{big}/members", "path.project_id"),
        ("/api/projects/{big}/files", "path.project_id"),
        ("/api/projects/1/files/{big}", "path.file_id"),
        ("/api/products/{big}", "path.product_id"),
        ("/api/orders/{big}", "path.order_id"),
        ("/api/sites/{big}", "path.site_id"),
        ("/api/sites/{big}/summary", "path.site_id"),
        ("/api/sites/{big}/current-visitors", "path.site_id"),
    ],
)
@pytest.mark.parametrize("big", [BIGINT_PAST, MAX_ID + 1, 0])
async def test_ids_in_the_path_are_bounded(
    client: Client, member: Actor, path: str, field: str, big: int
) -> None:
    assert_names(await client.get(path.format(big=big), headers=member.headers), 400, field)


async def test_ids_in_the_query_are_bounded(client: Client, db: AsyncConnection[Any], member: Actor) -> None:
    project = await make_project(db, member)
    for path, params, field in (
        ("/api/orders", {"user_id": BIGINT_PAST}, "query.user_id"),
        (f"/api/projects/{project}/tasks", {"assignee_id": BIGINT_PAST}, "query.assignee_id"),
    ):
        assert_names(await client.get(path, params=params, headers=member.headers), 400, field)


async def test_ids_in_bodies_are_bounded(client: Client, db: AsyncConnection[Any], member: Actor) -> None:
    project = await make_project(db, member)
    order = await client.post(
        "/api/orders",
        json={"lines": [{"product_id": BIGINT_PAST, "quantity": 1}]},
        headers={**member.headers, "Idempotency-Key": "big-product"},
    )
    assert_names(order, 400, "lines[0].product_id")
    task = await client.post(
        f"/api/projects/{project}/tasks",
        json={"title": "t", "assignee_id": BIGINT_PAST},
        headers=member.headers,
    )
    assert_names(task, 400, "assignee_id")


# -- cursors ----------------------------------------------------------------------------------------


async def test_cursors_past_bigint_are_refused_by_their_documented_grammar(
    client: Client, db: AsyncConnection[Any], member: Actor
) -> None:
    project = await make_project(db, member)
    for path, cursor in (
        ("/api/projects", str(BIGINT_PAST)),
        ("/api/me/tasks", str(BIGINT_MAX)),
        ("/api/orders", str(2**64)),
        (f"/api/projects/{project}/tasks", f"created.{BIGINT_PAST}.1"),
        (f"/api/projects/{project}/tasks", f"created.0.{BIGINT_PAST}"),
        (f"/api/projects/{project}/members", "-1"),
    ):
        response = await client.get(path, params={"cursor": cursor}, headers=member.headers)
        assert_names(response, 400, "query.cursor")


async def test_issued_cursors_still_page_through_a_list(
    client: Client, db: AsyncConnection[Any], member: Actor
) -> None:
    project = await make_project(db, member)
    for title in ("a", "b", "c"):
        await client.post(f"/api/projects/{project}/tasks", json={"title": title}, headers=member.headers)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 1, "sort": "priority"}
    for _ in range(5):
        page = await client.get(f"/api/projects/{project}/tasks", params=params, headers=member.headers)
        assert page.status_code == 200, page.text
        seen += [item["title"] for item in page.json()["items"]]
        if page.json()["next_cursor"] is None:
            break
        params["cursor"] = page.json()["next_cursor"]
    assert sorted(seen) == ["a", "b", "c"]


# -- numbers and names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_price": "1e5000"}, "query.min_price"),
        ({"max_price": "1e5000"}, "query.max_price"),
        ({"min_price": "NaN"}, "query.min_price"),
        ({"min_price": "-1"}, "query.min_price"),
        ({"max_price": "99999999999"}, "query.max_price"),
        ({"q": "a\x00b"}, "query.q"),
    ],
)
async def test_product_filters_are_bounded(client: Client, params: dict[str, str], field: str) -> None:
    assert_names(await client.get("/api/products", params=params), 400, field)


async def test_prices_filter_within_their_bounds(client: Client, admin: Actor) -> None:
    created = await client.post(
        "/api/products", json={"sku": "CHEAP-1", "name": "Cheap", "price": "0.10"}, headers=admin.headers
    )
    assert created.status_code == 201, created.text
    for params, found in (({"min_price": "0.1"}, True), ({"max_price": "0.09"}, False)):
        response = await client.get("/api/products", params=params)
        assert response.status_code == 200, response.text
        assert (created.json()["id"] in [item["id"] for item in response.json()["items"]]) is found


# CET, EET, MET, WET: PostgreSQL reads them as fixed-offset abbreviations, not as the zones Python's
# tzdata has (a report's summer days were an hour off): refused, their regions' names are not.
@pytest.mark.parametrize(
    "timezone", ["America", "../../etc/passwd", "Mars/Olympus_Mons", "localtime", "CET", "EET", "MET", "WET"]
)
async def test_an_unknown_site_timezone_is_refused(client: Client, member: Actor, timezone: str) -> None:
    response = await client.post(
        "/api/sites", json={"domain": "tz.example", "timezone": timezone}, headers=member.headers
    )
    assert_names(response, 400, "timezone")


async def test_an_unknown_report_timezone_is_refused(client: Client, member: Actor) -> None:
    site = await client.post(
        "/api/sites", json={"domain": "tz.example", "timezone": "Europe/Berlin"}, headers=member.headers
    )
    assert site.status_code == 201, site.text
    for tz in ("America", "CET"):
        response = await client.get(
            f"/api/sites/{site.json()['id']}/summary", params={"tz": tz}, headers=member.headers
        )
        assert_names(response, 400, "query.tz")


async def test_nul_characters_never_reach_a_text_column(
    client: Client, db: AsyncConnection[Any], member: Actor, admin: Actor
) -> None:
    project = await make_project(db, member)
    task = await client.post(f"/api/projects/{project}/tasks", json={"title": "ok"}, headers=member.headers)
    for path, body, field, headers in (
        ("/api/projects", {"name": "a\x00b"}, "name", member.headers),
        ("/api/projects", {"name": "ok", "description": "\x00"}, "description", member.headers),
        (f"/api/projects/{project}/tasks", {"title": "a\x00"}, "title", member.headers),
        (f"/api/tasks/{task.json()['id']}/comments", {"body": "\x00"}, "body", member.headers),
        ("/api/products", {"sku": "NUL-1", "name": "a\x00", "price": "1.00"}, "name", admin.headers),
    ):
        assert_names(await client.post(path, json=body, headers=headers), 400, field)
    search = await client.get(f"/api/projects/{project}/tasks", params={"q": "\x00"}, headers=member.headers)
    assert_names(search, 400, "query.q")
    names = await client.patch("/api/auth/me", json={"display_name": " \x00 "}, headers=member.headers)
    assert_names(names, 400, "display_name")


async def test_an_order_total_past_its_column_is_refused_not_an_error(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    # The per-user holding limits would refuse this order first: raise them to reach the total.
    limits = {"order_max_units_per_product": 10**6, "order_max_units_held": 10**7}
    async for client in generous_client(settings, **limits):
        admin = await make_user(db, client.app, UserRole.ADMIN)
        member = await make_user(db, client.app)
        await _refuse_a_total_past_its_column(client, admin, member)


async def _refuse_a_total_past_its_column(client: Client, admin: Actor, member: Actor) -> None:
    lines = []
    for index in range(20):
        product = await client.post(
            "/api/products",
            json={"sku": f"DEAR-{index}", "name": "Dear", "price": "9999999999.99", "stock": 1000},
            headers=admin.headers,
        )
        assert product.status_code == 201, product.text
        lines.append({"product_id": product.json()["id"], "quantity": 1000})
    response = await client.post(
        "/api/orders", json={"lines": lines}, headers={**member.headers, "Idempotency-Key": "too-dear"}
    )
    assert "total" in assert_problem(response, 422, "unprocessable")["detail"]
    assert (await client.get("/api/orders", headers=member.headers)).json()["items"] == []


async def test_stock_cannot_be_pushed_past_its_bound(client: Client, admin: Actor) -> None:
    product = await client.post(
        "/api/products",
        json={"sku": "FULL-1", "name": "Full", "price": "1.00", "stock": MAX_STOCK},
        headers=admin.headers,
    )
    assert product.status_code == 201, product.text
    adjust = f"/api/products/{product.json()['id']}/stock-adjustments"
    refused = await client.post(adjust, json={"delta": 1, "reason": "one more"}, headers=admin.headers)
    assert_problem(refused, 409, "conflict")
    taken = await client.post(adjust, json={"delta": -MAX_STOCK, "reason": "all out"}, headers=admin.headers)
    assert (taken.status_code, taken.json()["stock"]) == (201, 0)


async def test_a_product_above_its_bound_can_still_shed_units(
    client: Client, db: AsyncConnection[Any], admin: Actor
) -> None:
    """Reservations given back (a cancel, an expiry) are not bounded by MAX_STOCK: a product filled to
    it while units were reserved ends above it, and removing units must still work."""
    product = await client.post(
        "/api/products",
        json={"sku": "OVER-1", "name": "Over", "price": "1.00", "stock": MAX_STOCK},
        headers=admin.headers,
    )
    assert product.status_code == 201, product.text
    product_id = product.json()["id"]
    await product_queries.release_stock(db, quantity=5, id=product_id)
    adjust = f"/api/products/{product_id}/stock-adjustments"
    removed = await client.post(adjust, json={"delta": -1, "reason": "one broken"}, headers=admin.headers)
    assert removed.status_code == 201, removed.text
    assert removed.json()["stock"] == MAX_STOCK + 4
    refused = await client.post(adjust, json={"delta": 1, "reason": "one more"}, headers=admin.headers)
    assert_problem(refused, 409, "conflict")


async def test_idempotency_keys_are_printable_ascii(client: Client, member: Actor) -> None:
    response = await client.post(
        "/api/orders",
        json={"lines": [{"product_id": 1, "quantity": 1}]},
        headers={**member.headers, "Idempotency-Key": "caf\u00e9".encode("latin-1")},
    )
    assert_names(response, 400, "header.Idempotency-Key")


# -- the backstop -----------------------------------------------------------------------------------


async def test_a_value_postgresql_refuses_is_a_400_not_a_500(settings: Settings) -> None:
    """Should a bound ever be missing, PostgreSQL's refusal is the client's 400, not a 500."""

    @get("/probe/limits/int4")
    async def overflow(state: State) -> None:
        async with state.services.db.transaction() as uow:
            await uow.conn.execute("select %s::integer", (2**40,))

    app = create_app(settings)
    app.register(overflow)
    async with AsyncTestClient(app=app) as probe:
        response = await probe.get("/probe/limits/int4")
    assert_problem(response, 400, "unstorable-value")


# -- /metrics only at its exact path ----------------------------------------------------------------


async def test_metrics_are_served_only_at_the_exact_path(client: Client) -> None:
    """Litestar routes every spelling below to the metrics controller (it normalises paths)."""
    base = httpx.URL(str(client.base_url))

    async def fetch(raw_path: bytes) -> httpx.Response:
        return await client.request("GET", base.copy_with(raw_path=raw_path))

    exact = await fetch(b"/metrics")
    assert exact.status_code == 200
    assert "python_gc_objects" in exact.text
    assert (await fetch(b"/metrics?format=text")).status_code == 200  # a query is not another path
    for spelling in (b"/metrics/", b"//metrics", b"/metrics//", b"/%6detrics", b"/metrics%2F"):
        response = await fetch(spelling)
        assert response.status_code == 404, (spelling, response.status_code)
        assert "python_gc_objects" not in response.text
