"""The catalogue over HTTP: admin changes, validation, visibility, filters, paging, cache, stock."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import msgspec
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import Services
from app.domains.products.schemas import ProductUpdate
from app.domains.products.services import ProductService
from tests.factories import COMMERCE, Client, assert_problem, captured_logs, make_user, wait_until


async def create(client: Client, admin: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "Widget", "price": "10.00", "stock": 5} | fields
    response = await client.post("/api/products", json=body, headers=admin)
    assert response.status_code == 201, response.text
    product: dict[str, Any] = response.json()
    return product


async def ids_of(client: Client, headers: dict[str, str] | None = None, **params: Any) -> list[int]:
    response = await client.get("/api/products", params=params, headers=headers or {})
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# -- creation and its permissions ------------------------------------------------------------


async def test_admin_creates_a_product(client: Client, app: Litestar, db: AsyncConnection[Any]) -> None:
    admin = (await make_user(db, app, "admin")).headers
    response = await client.post(
        "/api/products",
        json={"sku": "BOLT-1", "name": "  Bolt  ", "price": "2.50", "stock": 12, "description": "M6"},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert {k: body[k] for k in ("sku", "name", "stock", "active", "description", "currency")} == {
        "sku": "BOLT-1",
        "name": "Bolt",
        "stock": 12,
        "active": True,
        "description": "M6",
        "currency": "EUR",
    }
    assert Decimal(str(body["price"])) == Decimal("2.50")
    row = await (
        await db.execute("select sku, price, stock from products where id = %s", (body["id"],))
    ).fetchone()
    assert row == ("BOLT-1", Decimal("2.50"), 12)


async def test_a_duplicate_sku_is_409(client: Client, app: Litestar, db: AsyncConnection[Any]) -> None:
    admin = (await make_user(db, app, "admin")).headers
    await create(client, admin, sku="DUP-1")
    response = await client.post(
        "/api/products", json={"sku": "DUP-1", "name": "Other", "price": "1.00"}, headers=admin
    )
    assert_problem(response, 409, "conflict")
    count = await (await db.execute("select count(*) from products where sku = 'DUP-1'")).fetchone()
    assert count == (1,)


async def test_members_and_anonymous_callers_cannot_create(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    member = (await make_user(db, app)).headers
    body = {"sku": "NOPE-1", "name": "Nope", "price": "1.00"}
    assert_problem(await client.post("/api/products", json=body, headers=member), 403, "forbidden")
    assert_problem(await client.post("/api/products", json=body), 401, "unauthorized")
    assert await (await db.execute("select count(*) from products")).fetchone() == (0,)


async def test_members_cannot_update_or_adjust(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    member = (await make_user(db, app)).headers
    product = await create(client, admin)
    patch = await client.patch(f"/api/products/{product['id']}", json={"name": "Hacked"}, headers=member)
    assert_problem(patch, 403, "forbidden")
    adjust = await client.post(
        f"/api/products/{product['id']}/stock-adjustments", json={"delta": 5, "reason": "x"}, headers=member
    )
    assert_problem(adjust, 403, "forbidden")
    anonymous = await client.patch(f"/api/products/{product['id']}", json={"name": "Hacked"})
    assert_problem(anonymous, 401, "unauthorized")
    anonymous_adjust = await client.post(
        f"/api/products/{product['id']}/stock-adjustments", json={"delta": 5, "reason": "x"}
    )
    assert_problem(anonymous_adjust, 401, "unauthorized")
    row = await (
        await db.execute("select name, stock from products where id = %s", (product["id"],))
    ).fetchone()
    assert row == ("Widget", 5)


async def test_prices_must_be_non_negative_with_two_decimals(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    for price in ("-1.00", "1.234", -1, 1.234, "NaN"):
        response = await client.post(
            "/api/products", json={"sku": "PRICE-1", "name": "Priced", "price": price}, headers=admin
        )
        assert_problem(response, 400, "validation", {"price"})
    assert await (await db.execute("select count(*) from products")).fetchone() == (0,)
    product = await create(client, admin, price="0")
    for price in ("-0.01", "3.001"):
        response = await client.patch(f"/api/products/{product['id']}", json={"price": price}, headers=admin)
        assert_problem(response, 400, "validation", {"price"})
    row = await (await db.execute("select price from products where id = %s", (product["id"],))).fetchone()
    assert row == (Decimal("0.00"),)


# -- visibility ------------------------------------------------------------------------------------


async def test_lists_show_active_products_and_inactive_ones_only_to_admins(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    member = (await make_user(db, app)).headers
    active = await create(client, admin, name="Active")
    hidden = await create(client, admin, name="Hidden")
    response = await client.patch(f"/api/products/{hidden['id']}", json={"active": False}, headers=admin)
    assert response.status_code == 200 and response.json()["active"] is False

    assert await ids_of(client) == [active["id"]]
    assert await ids_of(client, member) == [active["id"]]
    assert await ids_of(client, member, include_inactive="true") == [active["id"]]
    assert await ids_of(client, include_inactive="true") == [active["id"]]
    assert await ids_of(client, admin) == [active["id"]]
    assert await ids_of(client, admin, include_inactive="true") == [active["id"], hidden["id"]]


async def test_an_inactive_product_is_404_except_for_admins(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    member = (await make_user(db, app)).headers
    product = await create(client, admin)
    path = f"/api/products/{product['id']}"
    assert (await client.get(path, headers=member)).status_code == 200
    assert (await client.patch(path, json={"active": False}, headers=admin)).status_code == 200
    assert_problem(await client.get(path, headers=member), 404, "not-found")
    assert_problem(await client.get(path), 404, "not-found")
    seen = await client.get(path, headers=admin)
    assert seen.status_code == 200 and seen.json()["active"] is False
    assert (await client.patch(path, json={"active": True}, headers=admin)).status_code == 200
    assert (await client.get(path, headers=member)).status_code == 200


async def test_unknown_products_are_404(client: Client, app: Litestar, db: AsyncConnection[Any]) -> None:
    admin = (await make_user(db, app, "admin")).headers
    assert_problem(await client.get("/api/products/999999"), 404, "not-found")
    assert_problem(await client.get("/api/products/999999", headers=admin), 404, "not-found")
    response = await client.patch("/api/products/999999", json={"name": "X"}, headers=admin)
    assert_problem(response, 404, "not-found")


# -- filters and paging ------------------------------------------------------------------------------


async def test_filters_by_name_sku_price_and_stock(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    cheap = await create(client, admin, sku="CHEAP-1", name="Blue Mug", price="3.00", stock=0)
    middle = await create(client, admin, sku="MID-1", name="Red Mug", price="10.00", stock=4)
    dear = await create(client, admin, sku="DEAR-1", name="Teapot", price="45.50", stock=1)

    assert await ids_of(client, q="mug") == [cheap["id"], middle["id"]]
    assert await ids_of(client, q="TEA") == [dear["id"]]
    assert await ids_of(client, q="MID-1") == [middle["id"]]
    assert await ids_of(client, q="MID") == [], "a SKU matches exactly, not by prefix"
    assert await ids_of(client, min_price="10.00") == [middle["id"], dear["id"]]
    assert await ids_of(client, max_price="10") == [cheap["id"], middle["id"]]
    assert await ids_of(client, min_price="3.01", max_price="45.49") == [middle["id"]]
    assert await ids_of(client, in_stock="true") == [middle["id"], dear["id"]]
    assert await ids_of(client, in_stock="true", q="mug", max_price="20") == [middle["id"]]
    assert await ids_of(client, min_price="100") == []
    assert_problem(
        await client.get("/api/products", params={"min_price": "cheap"}),
        400,
        "validation",
        {"query.min_price"},
    )


async def test_the_name_search_is_literal(client: Client, app: Litestar, db: AsyncConnection[Any]) -> None:
    """`%` and `_` in `q` are characters a name may contain, not wildcards matching any name."""
    admin = (await make_user(db, app, "admin")).headers
    sale = await create(client, admin, name="50% off mug")
    plain = await create(client, admin, name="plain mug")
    snake = await create(client, admin, name="snake_case MUG")

    assert await ids_of(client, q="%") == [sale["id"]]
    assert await ids_of(client, q="_") == [snake["id"]]
    assert await ids_of(client, q="0% OFF") == [sale["id"]], "still case-insensitive"
    assert await ids_of(client, q="e_c") == [snake["id"]]
    assert await ids_of(client, q="n%m") == []
    assert await ids_of(client, q="\\") == []
    assert await ids_of(client, q="Mug") == [sale["id"], plain["id"], snake["id"]]


async def test_keyset_pages_cover_every_product_once(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    created = [(await create(client, admin, name=f"Item {i}"))["id"] for i in range(7)]
    hidden = created[3]
    await client.patch(f"/api/products/{hidden}", json={"active": False}, headers=admin)

    seen: list[int] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/products", params=params)).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 2
    assert seen == [i for i in created if i != hidden]

    everything: list[int] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 3, "include_inactive": "true"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/products", params=params, headers=admin)).json()
        everything += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert everything == created
    assert_problem(await client.get("/api/products", params={"cursor": "garbage!"}), 400, "invalid-cursor")
    assert_problem(
        await client.get("/api/products", params={"limit": 101}), 400, "validation", {"query.limit"}
    )


# -- the cache is invalidated on change -----------------------------------------------------------


async def test_changes_are_visible_on_the_next_read(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    member = (await make_user(db, app)).headers
    product = await create(client, admin, name="Old name", price="5.00", stock=3)
    path = f"/api/products/{product['id']}"

    # warm both cached reads (item and list), twice so the second is certainly a cache hit
    for _ in range(2):
        assert (await client.get(path, headers=member)).json()["name"] == "Old name"
        assert [p["name"] for p in (await client.get("/api/products", headers=member)).json()["items"]] == [
            "Old name"
        ]

    response = await client.patch(path, json={"name": "New name", "price": "6.00"}, headers=admin)
    assert response.status_code == 200
    item = (await client.get(path, headers=member)).json()
    assert (item["name"], Decimal(str(item["price"]))) == ("New name", Decimal("6.00"))
    listed = (await client.get("/api/products", headers=member)).json()["items"]
    assert [p["name"] for p in listed] == ["New name"]

    adjusted = await client.post(
        f"{path}/stock-adjustments", json={"delta": 4, "reason": "delivery"}, headers=admin
    )
    assert adjusted.status_code == 201
    assert (await client.get(path, headers=member)).json()["stock"] == 7
    assert [p["stock"] for p in (await client.get("/api/products", headers=member)).json()["items"]] == [7]

    second = await create(client, admin, name="Second")
    assert await ids_of(client, member) == [product["id"], second["id"]]

    assert (await client.patch(path, json={"active": False}, headers=admin)).status_code == 200
    assert_problem(await client.get(path, headers=member), 404, "not-found")
    assert await ids_of(client, member) == [second["id"]]


# -- stock adjustments --------------------------------------------------------------------------------


async def test_an_adjustment_with_the_expected_stock_is_applied_once_when_retried(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    product = await create(client, admin, stock=10)
    path = f"/api/products/{product['id']}/stock-adjustments"
    adjustment = {"delta": 5, "reason": "delivery", "expected_stock": 10}
    first = await client.post(path, json=adjustment, headers=admin)
    assert first.json() == {"product_id": product["id"], "stock": 15}
    retried = await client.post(path, json=adjustment, headers=admin)  # the first answer was lost
    assert_problem(retried, 409, "stock-changed")
    assert "15" in retried.json()["detail"]
    stock, adjustments = await (
        await db.execute(
            "select stock, (select count(*) from stock_adjustments a where a.product_id = p.id)"
            " from products p where id = %s",
            (product["id"],),
        )
    ).fetchone() or (None, None)
    assert (stock, adjustments) == (15, 1)
    unconditional = await client.post(path, json={"delta": 5, "reason": "delivery"}, headers=admin)
    assert unconditional.json()["stock"] == 20


async def test_stock_adjustments_are_recorded_with_their_reason(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    root = await make_user(db, app, "admin")
    admin_id, admin = root.id, root.headers
    product = await create(client, admin, stock=5)
    path = f"/api/products/{product['id']}/stock-adjustments"

    added = await client.post(path, json={"delta": 10, "reason": "delivery"}, headers=admin)
    assert added.status_code == 201, added.text
    assert added.json() == {"product_id": product["id"], "stock": 15}
    removed = await client.post(path, json={"delta": -15, "reason": "broken"}, headers=admin)
    assert removed.status_code == 201, removed.text
    assert removed.json()["stock"] == 0

    rows = await (
        await db.execute(
            "select delta, reason, actor_id, stock_after from stock_adjustments"
            " where product_id = %s order by id",
            (product["id"],),
        )
    ).fetchall()
    assert rows == [(10, "delivery", admin_id, 15), (-15, "broken", admin_id, 0)]
    stock = await (await db.execute("select stock from products where id = %s", (product["id"],))).fetchone()
    assert stock == (0,)


async def test_removing_more_than_there_is_is_409_and_changes_nothing(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    product = await create(client, admin, stock=3)
    path = f"/api/products/{product['id']}/stock-adjustments"
    response = await client.post(path, json={"delta": -4, "reason": "theft"}, headers=admin)
    assert_problem(response, 409, "conflict")
    stock = await (await db.execute("select stock from products where id = %s", (product["id"],))).fetchone()
    assert stock == (3,)
    assert await (await db.execute("select count(*) from stock_adjustments")).fetchone() == (0,)
    assert (await client.get(f"/api/products/{product['id']}")).json()["stock"] == 3


async def test_adjusting_an_unknown_product_is_404(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    for delta in (5, -5):
        response = await client.post(
            "/api/products/424242/stock-adjustments", json={"delta": delta, "reason": "x"}, headers=admin
        )
        assert_problem(response, 404, "not-found")
    assert await (await db.execute("select count(*) from stock_adjustments")).fetchone() == (0,)


async def test_an_adjustment_needs_a_reason(client: Client, app: Litestar, db: AsyncConnection[Any]) -> None:
    admin = (await make_user(db, app, "admin")).headers
    product = await create(client, admin)
    path = f"/api/products/{product['id']}/stock-adjustments"
    for body, field in (
        ({"delta": 1, "reason": ""}, "reason"),
        ({"delta": 1}, "reason"),
        ({"delta": "many", "reason": "x"}, "delta"),
    ):
        assert_problem(await client.post(path, json=body, headers=admin), 400, "validation", {field})
    assert await (await db.execute("select count(*) from stock_adjustments")).fetchone() == (0,)


# -- regressions of bugs found while writing these tests ------------------------------------------


async def test_a_zero_adjustment_is_a_validation_error(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    product = await create(client, admin)
    response = await client.post(
        f"/api/products/{product['id']}/stock-adjustments", json={"delta": 0, "reason": "noop"}, headers=admin
    )
    assert_problem(response, 400, "validation")


async def test_a_zero_adjustment_names_the_delta_field(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """Every bad field is named in ``errors``. Fails today: the zero check runs in the schema's
    ``__post_init__``, whose error msgspec reports for the whole body, so the problem names ``body``."""
    admin = (await make_user(db, app, "admin")).headers
    product = await create(client, admin)
    response = await client.post(
        f"/api/products/{product['id']}/stock-adjustments", json={"delta": 0, "reason": "noop"}, headers=admin
    )
    assert_problem(response, 400, "validation", {"delta"})


async def test_a_blank_name_is_a_validation_error(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = (await make_user(db, app, "admin")).headers
    response = await client.post(
        "/api/products", json={"sku": "BLANK-1", "name": "   ", "price": "1.00"}, headers=admin
    )
    assert_problem(response, 400, "validation", {"name"})
    product = await create(client, admin, name="Kept")
    response = await client.patch(f"/api/products/{product['id']}", json={"name": "  "}, headers=admin)
    assert_problem(response, 400, "validation", {"name"})


async def test_a_name_of_invisible_format_characters_is_a_validation_error(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """Zero-width space, joiners, word joiner, byte order mark (Unicode format characters, Cf): a
    name of them alone shows nothing, as a name of spaces, and is refused as one."""
    admin = (await make_user(db, app, "admin")).headers
    product = await create(client, admin, name="Kept")
    path = f"/api/products/{product['id']}"
    for invisible in ("\u200b", "\ufeff", "\u200c\u200d\u2060", " \ufeff\t\u200b "):
        response = await client.post(
            "/api/products", json={"sku": "BLANK-2", "name": invisible, "price": "1.00"}, headers=admin
        )
        assert_problem(response, 400, "validation", {"name"})
        assert_problem(
            await client.patch(path, json={"name": invisible}, headers=admin), 400, "validation", {"name"}
        )
        adjusted = await client.post(
            f"{path}/stock-adjustments", json={"delta": 1, "reason": invisible}, headers=admin
        )
        assert_problem(adjusted, 400, "validation", {"reason"})
    assert await ids_of(client, admin, include_inactive=True) == [product["id"]]
    assert (await client.get(path)).json()["name"] == "Kept"
    # Beside a visible character they are kept, as written.
    joined = await client.patch(path, json={"name": "Kept\u200d"}, headers=admin)
    assert (joined.status_code, joined.json()["name"]) == (200, "Kept\u200d")


async def test_the_cache_is_invalidated_after_the_change_commits(
    client: Client, app: Litestar, db: AsyncConnection[Any], settings: Settings
) -> None:
    """A reader that caches the old row while an update is in flight (here: waiting on a row lock
    held elsewhere) does not hide the change: the next read after the commit sees it.

    The update runs through a second ProductService on the same database and Valkey (the test
    client serves the app on its own event loop), like another worker process would.
    """
    admin = await make_user(db, app, "admin")
    product = await create(client, admin.headers, name="Before")
    path = f"/api/products/{product['id']}"
    assert (await client.get(path)).json()["name"] == "Before"
    other_process = Services(msgspec.structs.replace(settings, product_cache_ttl_s=60.0), COMMERCE)
    await other_process.start()
    products = other_process[ProductService]
    try:
        async with await AsyncConnection.connect(settings.database_url) as blocker:
            await blocker.execute("select id from products where id = %s for update", (product["id"],))
            update = asyncio.create_task(
                products.update(admin.id, product["id"], ProductUpdate(name="After"))
            )

            async def update_waits_on_the_lock() -> bool:
                assert not update.done(), update
                row = await (
                    await db.execute(
                        "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                        " and datname = current_database()"
                        " and (query ilike 'update products%%'"
                        " or query ilike 'select%%from products%%for no key update%%')"
                    )
                ).fetchone()
                return row is not None and row[0] == 1

            await wait_until(update_waits_on_the_lock, 30, "the update waits on the row lock")
            await products.cache.invalidate(f"id:{product['id']}")  # a reader reloads mid-update
            assert (await client.get(path)).json()["name"] == "Before"
            await blocker.commit()
        await asyncio.wait_for(update, 5)
        assert (await client.get(path)).json()["name"] == "After"
    finally:
        await other_process.close()


async def test_an_administrators_changes_to_the_catalogue_are_logged_with_what_changed(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """The admin reviewer: a price change or a deactivation left only the access log's PATCH line."""
    admin = await make_user(db, app, "admin")
    with captured_logs() as logs:
        product = await create(client, admin.headers, price="5.00")
        changed = await client.patch(
            f"/api/products/{product['id']}",
            json={"price": "0.01", "active": False, "description": "new text"},
            headers=admin.headers,
        )
        assert changed.status_code == 200, changed.text
    [created] = logs.events("product_created")
    assert (created["product_id"], created["by"], created["price"]) == (product["id"], admin.id, "5.00")
    [updated] = logs.events("product_updated")
    assert updated["by"] == admin.id and updated["product_id"] == product["id"]
    assert (updated["price"], updated["active"], updated["description_changed"]) == (
        ["5.00", "0.01"],
        [True, False],
        True,
    )
    assert "name" not in updated and "new text" not in logs.text
