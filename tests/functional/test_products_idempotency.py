"""An administrator's creations in the catalogue take ``Idempotency-Key`` as every creating route does
(``app/core/idempotency.py``): a product created once, a stock adjustment applied once, whatever the
retries. The key was ignored on both: a retried adjustment moved the stock twice, a retried creation
answered 409 "SKU exists" instead of its first answer."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Litestar
from psycopg import AsyncConnection

from tests.factories import Client, assert_problem, make_user, scalar


async def test_a_retried_product_creation_creates_one_and_replays_its_answer(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers | {"Idempotency-Key": str(uuid.uuid4())}
    body = {"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "Widget", "price": "10.00", "stock": 5}
    first = await client.post("/api/products", json=body, headers=admin)
    again = await client.post("/api/products", json=body, headers=admin)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.content == first.content
    assert (first.headers["idempotent-replayed"], again.headers["idempotent-replayed"]) == ("false", "true")
    for answer in (first, again):
        assert answer.headers["etag"] == '"1"'
        assert answer.headers["cache-control"] == "no-store"
    assert await scalar(db, "select count(*) from products where sku = %s", body["sku"]) == 1
    other = await client.post("/api/products", json=body | {"name": "Other"}, headers=admin)
    assert_problem(other, 422, "idempotency-key-reused")


async def test_a_retried_stock_adjustment_is_applied_once(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    created = await client.post(
        "/api/products",
        json={"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "W", "price": "1.00"},
        headers=admin,
    )
    url = f"/api/products/{created.json()['id']}/stock-adjustments"
    keyed = admin | {"Idempotency-Key": str(uuid.uuid4())}
    body = {"delta": 7, "reason": "delivery"}
    first = await client.post(url, json=body, headers=keyed)
    again = await client.post(url, json=body, headers=keyed)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert first.json()["stock"] == again.json()["stock"] == 7
    assert again.headers["idempotent-replayed"] == "true"
    assert await scalar(db, "select stock from products where id = %s", created.json()["id"]) == 7
    assert (
        await scalar(db, "select count(*) from stock_adjustments where product_id = %s", created.json()["id"])
        == 1
    )
    unkeyed = await client.post(url, json=body, headers=admin)
    assert unkeyed.json()["stock"] == 14  # without a key, every request applies


async def test_a_refused_adjustment_leaves_its_key_for_a_corrected_retry(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    created = await client.post(
        "/api/products",
        json={"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "W", "price": "1.00", "stock": 2},
        headers=admin,
    )
    url = f"/api/products/{created.json()['id']}/stock-adjustments"
    keyed = admin | {"Idempotency-Key": str(uuid.uuid4())}
    stale = await client.post(url, json={"delta": 1, "reason": "r", "expected_stock": 9}, headers=keyed)
    assert_problem(stale, 409, "stock-changed")
    corrected = await client.post(url, json={"delta": 1, "reason": "r", "expected_stock": 2}, headers=keyed)
    assert (corrected.status_code, corrected.json()["stock"]) == (201, 3)
