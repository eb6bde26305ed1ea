"""Products' optimistic concurrency: a version per product (its name, description, price and `active`,
not its stock), its strong ETag, If-Match on PATCH and on stock adjustments (RFC 9110 13.1.1).

The lost update it prevents: an administrator saving a form loaded before another's change (taking a
product off sale) silently undid it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import Services
from app.db import products as product_queries
from app.domains.products.services import ProductService
from tests.factories import COMMERCE, Client, answer_racing, assert_problem, make_user


async def stored(db: AsyncConnection[Any], product_id: int) -> tuple[str, Decimal, bool, int, int]:
    """(name, price, active, stock, version) of the product."""
    cursor = await db.execute(
        "select name, price, active, stock, version from products where id = %s", (product_id,)
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


async def create(client: Client, admin: dict[str, str], **fields: Any) -> Any:
    body = {"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "Widget", "price": "10.00", "stock": 5} | fields
    return await client.post("/api/products", json=body, headers=admin)


@pytest.fixture
async def admin(db: AsyncConnection[Any], app: Litestar) -> dict[str, str]:
    return (await make_user(db, app, "admin")).headers


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """Another process's services on the same database and Valkey (orders reserve stock there)."""
    other = Services(msgspec.structs.replace(settings, product_cache_ttl_s=60.0), COMMERCE)
    await other.start()
    try:
        yield other
    finally:
        await other.close()


# -- the version and its ETag -------------------------------------------------------------------------


async def test_a_product_answers_its_version_as_a_strong_etag(
    client: Client, app: Litestar, db: AsyncConnection[Any], admin: dict[str, str]
) -> None:
    created = await create(client, admin)
    assert created.status_code == 201, created.text
    assert (created.headers["etag"], created.json()["version"]) == ('"1"', 1)
    url = f"/api/products/{created.json()['id']}"

    member = (await make_user(db, app)).headers
    for headers in (admin, member, {}):
        read = await client.get(url, headers=headers)
        assert read.status_code == 200, read.text
        assert (read.headers["etag"], read.json()["version"]) == ('"1"', 1)
        # the tag versions the details, not the stock that moves under it: no cache keeps the answer
        # (with no-cache, a shared cache answered 304 to a client holding an older stock)
        assert read.headers["cache-control"] == "no-store"
    listed = await client.get("/api/products", headers=member)
    assert [item["version"] for item in listed.json()["items"]] == [1]

    changed = await client.patch(url, json={"price": "11.00"}, headers=admin)
    assert (changed.status_code, changed.headers["etag"], changed.json()["version"]) == (200, '"2"', 2)
    assert (created.headers["cache-control"], changed.headers["cache-control"]) == ("no-store", "no-store")
    assert (await client.get(url, headers=admin)).headers["etag"] == '"2"'
    # A change that changes nothing keeps the version and updated_at (an equal price in another scale
    # included), and still answers the product; no such product is still a 404.
    for body in ({"price": "11.00", "name": "Widget"}, {"price": "11.0"}, {}, {"active": True}):
        same = await client.patch(url, json=body, headers=admin)
        assert (same.status_code, same.headers["etag"]) == (200, '"2"'), (body, same.text)
        assert same.json() == changed.json(), body
    assert_problem(await client.patch("/api/products/999999999", json={}, headers=admin), 404)


# -- If-Match on PATCH --------------------------------------------------------------------------------


async def test_a_form_loaded_before_another_admins_change_does_not_undo_it(
    client: Client, app: Litestar, db: AsyncConnection[Any], admin: dict[str, str]
) -> None:
    other_admin = (await make_user(db, app, "admin")).headers
    product_id = (await create(client, admin, name="Lamp")).json()["id"]
    url = f"/api/products/{product_id}"
    form_a = (await client.get(url, headers=admin)).headers["etag"]
    form_b = (await client.get(url, headers=other_admin)).headers["etag"]

    off_sale = await client.patch(url, json={"active": False}, headers=other_admin | {"If-Match": form_b})
    assert (off_sale.status_code, off_sale.headers["etag"]) == (200, '"2"')

    # A saves their whole form (as loaded: active) with a new price.
    stale = await client.patch(
        url, json={"name": "Lamp", "price": "12.00", "active": True}, headers=admin | {"If-Match": form_a}
    )
    assert_problem(stale, 412, "precondition-failed")
    assert await stored(db, product_id) == ("Lamp", Decimal("10.00"), False, 5, 2)

    current = (await client.get(url, headers=admin)).headers["etag"]
    fresh = await client.patch(url, json={"price": "12.00"}, headers=admin | {"If-Match": current})
    assert fresh.status_code == 200, fresh.text
    assert (fresh.headers["etag"], fresh.json()["version"], fresh.json()["active"]) == ('"3"', 3, False)
    assert await stored(db, product_id) == ("Lamp", Decimal("12.00"), False, 5, 3)


async def test_if_match_is_compared_under_the_row_lock(
    client: Client, db: AsyncConnection[Any], admin: dict[str, str], settings: Settings
) -> None:
    """A change committed while the PATCH waits for the product's row is seen by its comparison."""
    product_id = (await create(client, admin)).json()["id"]
    url = f"/api/products/{product_id}"
    answer = await answer_racing(
        settings.database_url,
        "update products set price = 99 where id = %s",
        product_id,
        lambda: client.patch(url, json={"name": "Mine"}, headers=admin | {"If-Match": '"1"'}),
    )
    assert_problem(answer, 412, "precondition-failed")
    assert await stored(db, product_id) == ("Widget", Decimal("99.00"), True, 5, 2)


async def test_the_if_match_lock_lets_orders_refer_to_the_product(
    client: Client, db: AsyncConnection[Any], admin: dict[str, str], database_url: str
) -> None:
    """The lock an If-Match change holds (``LockProduct``) is the one a plain update takes (``FOR NO KEY
    UPDATE``): an order placed meanwhile takes ``FOR KEY SHARE`` on the product for its item's foreign
    key, which ``FOR UPDATE`` would have made wait for the administrator's commit (review)."""
    product_id = (await create(client, admin)).json()["id"]
    async with await AsyncConnection.connect(database_url) as admin_tx:
        assert await product_queries.lock_product(admin_tx, id=product_id) is not None
        # as an order item's foreign-key check locks the product; NOWAIT: refused at once if it conflicts
        cursor = await db.execute("select id from products where id = %s for key share nowait", (product_id,))
        assert await cursor.fetchone() == (product_id,)
        await admin_tx.rollback()


async def test_if_match_lists_any_malformed_and_unknown(
    client: Client, db: AsyncConnection[Any], admin: dict[str, str]
) -> None:
    product_id = (await create(client, admin)).json()["id"]
    url = f"/api/products/{product_id}"
    anything = await client.patch(url, json={"name": "any"}, headers=admin | {"If-Match": "*"})
    assert (anything.status_code, anything.headers["etag"]) == (200, '"2"')
    listed = await client.patch(url, json={"name": "listed"}, headers=admin | {"If-Match": '"9", "2"'})
    assert (listed.status_code, listed.headers["etag"]) == (200, '"3"')
    weak = await client.patch(url, json={"name": "weak"}, headers=admin | {"If-Match": 'W/"3"'})
    assert_problem(weak, 412, "precondition-failed")
    malformed = await client.patch(url, json={"name": "bad"}, headers=admin | {"If-Match": "3"})
    assert_problem(malformed, 400, "validation", {"header.If-Match"})
    assert (await stored(db, product_id))[0] == "listed"
    unknown = await client.patch(
        f"/api/products/{product_id + 1000}", json={"name": "x"}, headers=admin | {"If-Match": '"1"'}
    )
    assert_problem(unknown, 404, "not-found")


# -- stock does not move the version ------------------------------------------------------------------


async def test_reservations_releases_and_adjustments_keep_the_version(
    client: Client, db: AsyncConnection[Any], admin: dict[str, str], services: Services
) -> None:
    product_id = (await create(client, admin, stock=10)).json()["id"]
    url = f"/api/products/{product_id}"
    form = (await client.get(url, headers=admin)).headers["etag"]

    products = services[ProductService]
    async with products.db.transaction() as uow:
        assert await products.reserve_stock(uow, product_id, 3) == 7
    async with products.db.transaction() as uow:
        await products.release_stock(uow, product_id, 1)
    adjusted = await client.post(
        f"{url}/stock-adjustments", json={"delta": 5, "reason": "delivery"}, headers=admin
    )
    assert adjusted.status_code == 201, adjusted.text
    assert await stored(db, product_id) == ("Widget", Decimal("10.00"), True, 13, 1)
    assert (await client.get(url, headers=admin)).headers["etag"] == form == '"1"'

    # The form loaded before all that stock moving is still current.
    saved = await client.patch(url, json={"name": "Renamed"}, headers=admin | {"If-Match": form})
    assert (saved.status_code, saved.headers["etag"]) == (200, '"2"')


# -- If-Match on a stock adjustment: honoured, against the product's version ---------------------------


async def test_a_stock_adjustment_honours_if_match(
    client: Client, db: AsyncConnection[Any], admin: dict[str, str]
) -> None:
    product_id = (await create(client, admin, stock=10)).json()["id"]
    url = f"/api/products/{product_id}"
    loaded = (await client.get(url, headers=admin)).headers["etag"]
    assert (await client.patch(url, json={"active": False}, headers=admin)).status_code == 200

    stale = await client.post(
        f"{url}/stock-adjustments",
        json={"delta": 5, "reason": "delivery"},
        headers=admin | {"If-Match": loaded},
    )
    assert_problem(stale, 412, "precondition-failed")
    assert await stored(db, product_id) == ("Widget", Decimal("10.00"), False, 10, 2)
    count = await db.execute("select count(*) from stock_adjustments where product_id = %s", (product_id,))
    assert await count.fetchone() == (0,)

    current = (await client.get(url, headers=admin)).headers["etag"]
    applied = await client.post(
        f"{url}/stock-adjustments",
        json={"delta": 5, "reason": "delivery", "expected_stock": 10},
        headers=admin | {"If-Match": current},
    )
    assert applied.status_code == 201, applied.text
    assert applied.json() == {"product_id": product_id, "stock": 15}
    # Stock is not what the version covers: the same ETag still matches after the adjustment.
    again = await client.post(
        f"{url}/stock-adjustments",
        json={"delta": -1, "reason": "breakage"},
        headers=admin | {"If-Match": current},
    )
    assert again.status_code == 201, again.text
    assert await stored(db, product_id) == ("Widget", Decimal("10.00"), False, 14, 2)

    malformed = await client.post(
        f"{url}/stock-adjustments", json={"delta": 1, "reason": "x"}, headers=admin | {"If-Match": "2"}
    )
    assert_problem(malformed, 400, "validation", {"header.If-Match"})
    unknown = await client.post(
        f"/api/products/{product_id + 1000}/stock-adjustments",
        json={"delta": 1, "reason": "x"},
        headers=admin | {"If-Match": '"1"'},
    )
    assert_problem(unknown, 404, "not-found")


async def test_the_schema_documents_if_match_the_412_and_the_etag(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    product = paths["/api/products/{product_id}"]
    adjustments = paths["/api/products/{product_id}/stock-adjustments"]
    for operation in (product["patch"], adjustments["post"]):
        headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
        assert headers["If-Match"]["required"] is False
        # A plain string, its grammar told in words: fuzzers then send valid If-Match values.
        assert headers["If-Match"]["schema"] == {"type": "string"}
        assert "`*`" in headers["If-Match"]["description"]
        assert "412" in operation["responses"]
    for method in ("get", "patch"):
        assert "ETag" in product[method]["responses"]["200"]["headers"], method
    assert "ETag" in paths["/api/products"]["post"]["responses"]["201"]["headers"]
