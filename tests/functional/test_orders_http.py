"""Orders over HTTP: placement with idempotency keys, ownership, listing and every transition."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.idempotency import CLAIM_LEASE_S, Idempotency
from app.core.services import open_services
from app.db.models import OrderStatus
from app.domains.orders.schemas import OrderCreate, OrderLine
from app.domains.orders.services import OrderService
from tests.factories import (
    COMMERCE,
    Actor,
    answer_racing,
    assert_problem,
    create_user,
    make_product,
    make_user,
    scalar,
    serve_in_loop,
    wait_until,
)
from tests.fakes import payments

Client = httpx.AsyncClient
MAX_OPEN = 3


@pytest.fixture(scope="module")
async def orders_app(settings: Settings) -> AsyncIterator[tuple[Litestar, Client]]:
    """The app served in the test's own event loop, so that requests really run concurrently and the
    app's order service can be called from the test."""
    async with serve_in_loop(
        settings,
        rate_limit_default_per_minute=100_000,
        max_open_orders=MAX_OPEN,
        payment_webhook_secret=payments.TEST_SECRET,
    ) as served:
        yield served.app, served.client


@pytest.fixture
async def shop(
    orders_app: tuple[Litestar, Client], db: AsyncConnection[Any], valkey: Valkey
) -> tuple[Litestar, Client]:
    """The module's app on a clean database and Valkey."""
    app, client = orders_app
    client.headers.clear()
    return app, client


def body(*lines: tuple[int, int]) -> dict[str, Any]:
    return {"lines": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


async def place(
    client: Client, who: Actor, *lines: tuple[int, int], key: str | None = None, expect: int | None = 202
) -> Any:
    headers = who.headers | {"Idempotency-Key": key or uuid.uuid4().hex}
    response = await client.post("/api/orders", json=body(*lines), headers=headers)
    if expect is not None:
        assert response.status_code == expect, response.text
    return response


async def stock_of(db: AsyncConnection[Any], product_id: int) -> int:
    return int(await scalar(db, "select stock from products where id = %s", product_id))


async def status_of(db: AsyncConnection[Any], order_id: int) -> str:
    return str(await scalar(db, "select status::text from orders where id = %s", order_id))


async def pay(client: Client, db: AsyncConnection[Any], order_id: int, *, event_id: str | None = None) -> str:
    """The payment provider reports the order's total paid (a signed webhook); returns the outcome."""
    total = await scalar(db, "select total from orders where id = %s", order_id)
    sent = payments.delivery(payments.event_body(order_id, total, event_id=event_id))
    response = await client.post("/api/payments/webhook", content=sent.body, headers=sent.headers)
    assert response.status_code == 200, response.text
    outcome: str = response.json()["outcome"]
    return outcome


async def reserved_order(app: Litestar, client: Client, who: Actor, *lines: tuple[int, int]) -> int:
    order_id = int((await place(client, who, *lines)).json()["id"])
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.RESERVED
    return order_id


async def lapse(db: AsyncConnection[Any], order_id: int, seconds_ago: int = 1) -> None:
    """The order's reservation window ended ``seconds_ago`` seconds ago (expiry takes the oldest first)."""
    await db.execute(
        "update orders set reserved_until = now() - make_interval(secs => %s) where id = %s",
        (seconds_ago, order_id),
    )


# -- placement --------------------------------------------------------------------------------------------


async def test_placing_answers_202_with_the_pending_order(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    cheap, dear = await make_product(db, price="2.50"), await make_product(db, price="10.00")
    response = await place(client, buyer, (dear, 1), (cheap, 3))
    order = response.json()
    assert response.headers["location"] == f"/api/orders/{order['id']}"
    assert response.headers["idempotent-replayed"] == "false"
    assert order["status"] == "pending" and order["user_id"] == buyer.id
    assert Decimal(str(order["total"])) == Decimal("17.50") and order["currency"] == "EUR"
    assert [(i["product_id"], i["quantity"]) for i in order["items"]] == sorted([(cheap, 3), (dear, 1)])
    assert order["reserved_until"] is None and order["shortfall"] is None
    assert await stock_of(db, cheap) == 10, "placing reserves nothing: the worker does"

    outbox = await (
        await db.execute("select queue, payload from outbox where task = 'reserve_order'")
    ).fetchall()
    assert outbox == [("orders", {"order_id": order["id"]})]
    # One transaction wrote the order, its first event, its outbox row and the stored response.
    xmins = await (
        await db.execute(
            "select (select xmin::text from orders where id = %(id)s),"
            " (select xmin::text from order_events where order_id = %(id)s),"
            " (select xmin::text from outbox where task = 'reserve_order'),"
            " (select xmin::text from idempotency_keys where resource_id = %(id)s)",
            {"id": order["id"]},
        )
    ).fetchone()
    assert xmins is not None and len(set(xmins)) == 1 and None not in xmins, xmins


async def test_the_idempotency_key_header_is_required(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db)
    response = await client.post("/api/orders", json=body((pid, 1)), headers=buyer.headers)
    assert_problem(response, 400, "validation", {"header.Idempotency-Key"})
    assert await scalar(db, "select count(*) from orders") == 0


async def test_anonymous_callers_cannot_order(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    pid = await make_product(db)
    response = await client.post("/api/orders", json=body((pid, 1)), headers={"Idempotency-Key": "k"})
    assert_problem(response, 401, "unauthorized")
    assert_problem(await client.get("/api/orders"), 401, "unauthorized")
    order_id = (await place(client, await make_user(db, app), (pid, 1))).json()["id"]
    assert_problem(await client.get(f"/api/orders/{order_id}"), 401, "unauthorized")
    for action in ("cancel", "fulfil"):
        assert_problem(await client.post(f"/api/orders/{order_id}/{action}"), 401, "unauthorized")
    assert await status_of(db, order_id) == "pending"


async def test_the_same_key_and_body_replay_the_first_answer(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db)
    first = await place(client, buyer, (pid, 2), key="k-1")
    again = await place(client, buyer, (pid, 2), key="k-1")
    assert again.status_code == first.status_code == 202
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert await scalar(db, "select count(*) from orders") == 1
    assert await scalar(db, "select count(*) from outbox where task = 'reserve_order'") == 1


async def test_a_retry_listing_the_same_lines_in_another_order_replays(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    first_product, second_product = await make_product(db), await make_product(db)
    first = await place(client, buyer, (first_product, 2), (second_product, 1), key="k-1")
    again = await place(client, buyer, (second_product, 1), (first_product, 2), key="k-1")
    assert again.status_code == first.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert await scalar(db, "select count(*) from orders") == 1


async def test_the_same_key_with_another_body_is_422(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db)
    await place(client, buyer, (pid, 2), key="k-1")
    response = await place(client, buyer, (pid, 3), key="k-1", expect=422)
    assert_problem(response, 422, "idempotency-key-reused")
    assert await scalar(db, "select count(*) from orders") == 1


async def test_keys_belong_to_one_user(shop: tuple[Litestar, Client], db: AsyncConnection[Any]) -> None:
    app, client = shop
    alice, bob = await make_user(db, app), await make_user(db, app)
    pid = await make_product(db)
    first = (await place(client, alice, (pid, 1), key="shared")).json()
    second = await place(client, bob, (pid, 1), key="shared")
    assert second.headers["idempotent-replayed"] == "false"
    assert second.json()["id"] != first["id"] and second.json()["user_id"] == bob.id
    owners = await (await db.execute("select user_id from orders order by id")).fetchall()
    assert owners == [(alice.id,), (bob.id,)]


async def test_a_concurrent_duplicate_is_409_and_the_first_completes(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db)
    async with await AsyncConnection.connect(database_url) as locker:
        # Placement locks the user's row after claiming the key: the request that claims the key
        # waits there, so the other one meets an unfinished claim. (NO KEY UPDATE, so the claim's
        # foreign-key check on the user is not blocked too.)
        await locker.execute("select id from users where id = %s for no key update", (buyer.id,))
        requests = [
            asyncio.create_task(place(client, buyer, (pid, 1), key="race", expect=None)) for _ in "ab"
        ]
        done, waiting = await asyncio.wait(requests, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(waiting) == 1, "one request must be held by the lock"
        refused = done.pop().result()
        assert_problem(refused, 409, "idempotency-key-in-flight")
        await locker.rollback()
    accepted = await asyncio.wait_for(waiting.pop(), 30)
    assert accepted.status_code == 202, accepted.text
    assert await scalar(db, "select count(*) from orders") == 1
    replay = await place(client, buyer, (pid, 1), key="race")
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == accepted.content


@asynccontextmanager
async def placement_held_after_its_claim(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str, key: str
) -> AsyncIterator[tuple[asyncio.Task[Any], int]]:
    """(the request, its buyer's id): a placement that has claimed ``key`` and waits for its user's
    row, held by another transaction until the block ends."""
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db)
    async with await AsyncConnection.connect(database_url) as locker:
        await locker.execute("select id from users where id = %s for no key update", (buyer.id,))
        request = asyncio.create_task(place(client, buyer, (pid, 1), key=key, expect=None))

        async def claimed() -> bool:
            return bool(await scalar(db, "select count(*) from idempotency_keys where key = %s", key))

        await wait_until(claimed, 30, "the request claimed its key")
        yield request, buyer.id
        await locker.rollback()


async def test_a_claim_is_a_short_lease_until_the_order_is_placed(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str
) -> None:
    """A request that dies after its claim (a killed worker) blocks retries for the lease, not a day."""
    lease = "select extract(epoch from expires_at - now()) from idempotency_keys where key = 'lease'"
    async with placement_held_after_its_claim(shop, db, database_url, "lease") as (request, _):
        assert 0 < await scalar(db, lease) <= CLAIM_LEASE_S
    assert (await asyncio.wait_for(request, 30)).status_code == 202
    assert await scalar(db, lease) > 23 * 3600, "a placed order's key is kept for a day"


async def test_a_placement_that_outlived_its_claim_is_rolled_back(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str
) -> None:
    """Its lease ended and a retry claimed the key meanwhile: only one of them may place the order."""
    async with placement_held_after_its_claim(shop, db, database_url, "outlived") as (request, buyer_id):
        await db.execute(  # what a retry does after the lease: its own claim in place of this one
            "update idempotency_keys set expires_at = now() + interval '60 seconds', created_at = now()"
            " where key = 'outlived'"
        )
    answer = await asyncio.wait_for(request, 30)
    assert_problem(answer, 409, "idempotency-key-in-flight")
    assert await scalar(db, "select count(*) from orders where user_id = %s", buyer_id) == 0
    assert await scalar(db, "select count(*) from idempotency_keys where key = 'outlived'") == 1, (
        "the retry's claim is left alone"
    )


async def test_an_expired_key_can_be_used_again(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db)
    first = (await place(client, buyer, (pid, 1), key="old")).json()
    await db.execute("update idempotency_keys set expires_at = now() - interval '1 second'")
    second = await place(client, buyer, (pid, 5), key="old")
    assert second.headers["idempotent-replayed"] == "false"
    assert second.json()["id"] != first["id"]
    assert await scalar(db, "select count(*) from orders") == 2
    assert await scalar(db, "select count(*) from idempotency_keys where expires_at > now()") == 1


async def test_unknown_inactive_and_duplicate_products_are_422_and_free_the_key(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    good, retired = await make_product(db), await make_product(db, active=False)
    for lines in ([(good, 1), (999_999, 1)], [(retired, 1)], [(good, 1), (good, 2)]):
        response = await place(client, buyer, *lines, key="retry-me", expect=422)
        assert_problem(response, 422, "unprocessable")
    assert await scalar(db, "select count(*) from orders") == 0
    assert await scalar(db, "select count(*) from outbox") == 0
    assert await scalar(db, "select count(*) from idempotency_keys") == 0
    # a failed attempt released its key: a corrected request under it is accepted
    await place(client, buyer, (good, 1), key="retry-me")


async def test_bad_lines_are_400(shop: tuple[Litestar, Client], db: AsyncConnection[Any]) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db)
    headers = buyer.headers | {"Idempotency-Key": "k"}
    for bad, field in (
        ({"lines": []}, "lines"),
        (body((pid, 0)), "lines[0].quantity"),
        (body((pid, 1001)), "lines[0].quantity"),
        ({"lines": [{"product_id": pid}]}, "lines[0].quantity"),
    ):
        assert_problem(
            await client.post("/api/orders", json=bad, headers=headers), 400, "validation", {field}
        )
    assert await scalar(db, "select count(*) from orders") == 0


async def test_too_many_open_orders_is_429(shop: tuple[Litestar, Client], db: AsyncConnection[Any]) -> None:
    app, client = shop
    buyer, other = await make_user(db, app), await make_user(db, app)
    pid = await make_product(db, stock=100)
    orders = [(await place(client, buyer, (pid, 1))).json()["id"] for _ in range(MAX_OPEN - 1)]
    assert (
        await app.state.services[OrderService].reserve(orders[0]) == OrderStatus.RESERVED
    )  # reserved ones count too
    orders.append((await place(client, buyer, (pid, 1))).json()["id"])
    refused = await place(client, buyer, (pid, 1), expect=429)
    assert_problem(refused, 429, "rate-limited")
    assert refused.headers["retry-after"]
    assert "pending or reserved" in refused.json()["detail"]
    assert await scalar(db, "select count(*) from orders where user_id = %s", buyer.id) == MAX_OPEN
    await place(client, other, (pid, 1))  # the limit is per user
    # a closed order frees a slot
    assert (await client.post(f"/api/orders/{orders[0]}/cancel", headers=buyer.headers)).status_code == 200
    await place(client, buyer, (pid, 1))


# -- reading ---------------------------------------------------------------------------------------------


async def test_an_order_is_visible_to_its_owner_and_admins_only(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    owner, stranger, admin = (
        await make_user(db, app),
        await make_user(db, app),
        await make_user(db, app, "admin"),
    )
    pid = await make_product(db)
    order_id = (await place(client, owner, (pid, 1))).json()["id"]
    path = f"/api/orders/{order_id}"
    mine = await client.get(path, headers=owner.headers)
    assert mine.status_code == 200 and mine.json()["id"] == order_id
    assert_problem(await client.get(path, headers=stranger.headers), 404, "not-found")
    assert (await client.get(path, headers=admin.headers)).json()["user_id"] == owner.id
    assert_problem(await client.get("/api/orders/999999", headers=admin.headers), 404, "not-found")
    assert_problem(await client.post(f"{path}/cancel", headers=stranger.headers), 404, "not-found")
    assert_problem(await client.post("/api/orders/999999/fulfil", headers=admin.headers), 404, "not-found")
    assert await status_of(db, order_id) == "pending"


async def test_lists_show_own_orders_and_admins_filter_everyone(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    alice, bob, admin = await make_user(db, app), await make_user(db, app), await make_user(db, app, "admin")
    pid = await make_product(db, stock=100)
    alices = [(await place(client, alice, (pid, 1))).json()["id"] for _ in range(3)]
    bobs = [(await place(client, bob, (pid, 1))).json()["id"] for _ in range(2)]
    await app.state.services[OrderService].reserve(alices[1])

    def ids(response: Any) -> list[int]:
        assert response.status_code == 200, response.text
        return [o["id"] for o in response.json()["items"]]

    assert ids(await client.get("/api/orders", headers=alice.headers)) == alices[::-1]
    # a member's user_id filter cannot reach someone else's orders
    assert (
        ids(await client.get("/api/orders", params={"user_id": bob.id}, headers=alice.headers))
        == alices[::-1]
    )
    assert ids(await client.get("/api/orders", headers=admin.headers)) == sorted(alices + bobs, reverse=True)
    assert (
        ids(await client.get("/api/orders", params={"user_id": bob.id}, headers=admin.headers)) == bobs[::-1]
    )
    reserved = await client.get("/api/orders", params={"status": "reserved"}, headers=admin.headers)
    assert ids(reserved) == [alices[1]]
    pending = await client.get("/api/orders", params={"status": "pending"}, headers=alice.headers)
    assert ids(pending) == [alices[2], alices[0]]
    lost = await client.get("/api/orders", params={"status": "lost"}, headers=alice.headers)
    assert_problem(lost, 400, "validation", {"query.status"})

    pages: list[int] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/orders", params=params, headers=admin.headers)).json()
        pages += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == sorted(alices + bobs, reverse=True)


# -- transitions ------------------------------------------------------------------------------------------


async def test_cancelling_a_pending_order(shop: tuple[Litestar, Client], db: AsyncConnection[Any]) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5)
    order_id = (await place(client, buyer, (pid, 2))).json()["id"]
    response = await client.post(f"/api/orders/{order_id}/cancel", headers=buyer.headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert await stock_of(db, pid) == 5
    # the queued reservation then finds a cancelled order and changes nothing
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.CANCELLED
    assert await stock_of(db, pid) == 5


async def test_cancelling_a_reserved_order_returns_its_stock(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    first, second = await make_product(db, stock=5), await make_product(db, stock=4)
    order_id = await reserved_order(app, client, buyer, (first, 2), (second, 4))
    assert (await stock_of(db, first), await stock_of(db, second)) == (3, 0)
    response = await client.post(f"/api/orders/{order_id}/cancel", headers=buyer.headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert (await stock_of(db, first), await stock_of(db, second)) == (5, 4)
    again = await client.post(f"/api/orders/{order_id}/cancel", headers=buyer.headers)
    assert_problem(again, 409, "illegal-transition")
    assert (await stock_of(db, first), await stock_of(db, second)) == (5, 4), "stock is returned once"


async def test_a_paid_order_cannot_be_cancelled(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5)
    order_id = await reserved_order(app, client, buyer, (pid, 2))
    assert await pay(client, db, order_id) == "paid"
    assert await status_of(db, order_id) == "paid"
    response = await client.post(f"/api/orders/{order_id}/cancel", headers=buyer.headers)
    assert_problem(response, 409, "illegal-transition")
    assert await status_of(db, order_id) == "paid"
    assert await stock_of(db, pid) == 3


async def test_a_payment_for_a_pending_order_reserves_and_pays_it(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The worker is behind: the payment reserves the order as the job would, then pays it
    (tests/functional/test_orders_payment_before_reservation.py has the other outcomes)."""
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5)
    order_id = (await place(client, buyer, (pid, 1))).json()["id"]
    assert await pay(client, db, order_id) == "paid"
    assert await status_of(db, order_id) == "paid"
    assert await stock_of(db, pid) == 4
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.PAID
    assert await stock_of(db, pid) == 4, "the late job changes nothing"


async def test_paying_after_the_window_expires_the_order(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5)
    order_id = await reserved_order(app, client, buyer, (pid, 3))
    await db.execute(
        "update orders set reserved_until = now() - interval '1 second' where id = %s", (order_id,)
    )
    assert await pay(client, db, order_id, event_id="evt-late") == "expired"
    assert await status_of(db, order_id) == "expired"
    assert await stock_of(db, pid) == 5
    assert await pay(client, db, order_id, event_id="evt-late") == "duplicate"
    assert await pay(client, db, order_id) == "expired", "another payment needs a refund too"
    assert await status_of(db, order_id) == "expired"
    assert await stock_of(db, pid) == 5


async def test_short_stock_rejects_the_order_and_names_the_lines(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    plenty, scarce = await make_product(db, stock=10), await make_product(db, stock=1)
    order_id = (await place(client, buyer, (plenty, 2), (scarce, 3))).json()["id"]
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.REJECTED
    order = (await client.get(f"/api/orders/{order_id}", headers=buyer.headers)).json()
    assert order["status"] == "rejected"
    assert order["shortfall"] == [{"product_id": scarce, "requested": 3, "available": 1}]
    assert (await stock_of(db, plenty), await stock_of(db, scarce)) == (10, 1), "all lines or none"


async def test_only_admins_fulfil_paid_orders_and_every_step_is_recorded(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, "admin")
    pid = await make_product(db, stock=5)
    order_id = await reserved_order(app, client, buyer, (pid, 1))
    path = f"/api/orders/{order_id}"
    early = await client.post(f"{path}/fulfil", headers=admin.headers)
    assert_problem(early, 409, "illegal-transition")
    assert await pay(client, db, order_id) == "paid"
    assert_problem(await client.post(f"{path}/fulfil", headers=buyer.headers), 403, "forbidden")
    assert await status_of(db, order_id) == "paid"
    done = await client.post(f"{path}/fulfil", headers=admin.headers)
    assert done.status_code == 200 and done.json()["status"] == "fulfilled"
    assert await stock_of(db, pid) == 4

    events = (await client.get(path, headers=buyer.headers)).json()["events"]
    assert [(e["from_status"], e["to_status"], e["actor_id"]) for e in events] == [
        (None, "pending", buyer.id),
        ("pending", "reserved", None),
        ("reserved", "paid", None),  # the payment provider, not the buyer
        ("paid", "fulfilled", admin.id),
    ]
    assert all(e["reason"] for e in events)


async def test_the_daily_revenue_is_the_money_paid_in_the_period_per_currency(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The monitoring report's revenue (``totals_between``) counted every order placed in the period
    that was reserved, paid or fulfilled: an unpaid reservation was revenue, and the report is sent
    once, so one that expired later was never taken back. It is the total of the orders paid in the
    period (a fulfilled order was paid first), whenever they were placed, one figure per currency."""
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, "admin")
    pid = await make_product(db, stock=20, price="1.25")
    unpaid = await reserved_order(app, client, buyer, (pid, 1))
    paid = await reserved_order(app, client, buyer, (pid, 2))
    fulfilled = await reserved_order(app, client, buyer, (pid, 4))
    assert await pay(client, db, paid) == "paid"
    assert await pay(client, db, fulfilled) == "paid"
    assert (await client.post(f"/api/orders/{fulfilled}/fulfil", headers=admin.headers)).status_code == 200
    in_dollars = await reserved_order(app, client, buyer, (pid, 8))  # placed under CURRENCY=USD
    await db.execute("update orders set currency = 'USD' where id = %s", (in_dollars,))
    sent = payments.delivery(payments.event_body(in_dollars, "10.00", currency="USD"))
    answer = await client.post("/api/payments/webhook", content=sent.body, headers=sent.headers)
    assert answer.json()["outcome"] == "paid", answer.text
    since = await scalar(db, "select now() - interval '1 hour'")
    until = await scalar(db, "select now() + interval '1 hour'")
    orders = app.state.services[OrderService]

    async with orders.db.read() as uow:
        placed, revenue = await orders.totals_between(uow, since, until)
    assert placed == 4
    assert revenue == {"EUR": Decimal("7.50"), "USD": Decimal("10.00")}, f"{unpaid} is not paid"

    await db.execute(  # placed two days ago, paid in the period: that period's money
        "update orders set created_at = created_at - interval '2 days' where id = %s", (paid,)
    )
    await db.execute(  # paid before the period: that earlier report's money
        "update order_events set created_at = created_at - interval '2 days'"
        " where order_id = %s and to_status = 'paid'",
        (in_dollars,),
    )
    async with orders.db.read() as uow:
        assert await orders.totals_between(uow, since, until) == (3, {"EUR": Decimal("7.50")})


async def test_cancel_and_expiry_are_recorded_in_the_history(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, "admin")
    pid = await make_product(db, stock=5)
    cancelled = await reserved_order(app, client, buyer, (pid, 1))
    assert (await client.post(f"/api/orders/{cancelled}/cancel", headers=admin.headers)).status_code == 200
    expired = await reserved_order(app, client, buyer, (pid, 2))
    await db.execute(
        "update orders set reserved_until = now() - interval '1 second' where id = %s", (expired,)
    )
    assert await app.state.services[OrderService].expire_reservations() == 1
    assert await stock_of(db, pid) == 5

    def history(order: Any) -> list[tuple[str | None, str]]:
        return [(e["from_status"], e["to_status"]) for e in order.json()["events"]]

    assert history(await client.get(f"/api/orders/{cancelled}", headers=buyer.headers)) == [
        (None, "pending"),
        ("pending", "reserved"),
        ("reserved", "cancelled"),
    ]
    assert history(await client.get(f"/api/orders/{expired}", headers=buyer.headers)) == [
        (None, "pending"),
        ("pending", "reserved"),
        ("reserved", "expired"),
    ]
    listed = (await client.get("/api/orders", headers=buyer.headers)).json()["items"]
    assert all(o["events"] is None for o in listed), "lists carry no history"


async def test_expiring_a_batch_never_holds_one_orders_stock_while_waiting_for_anothers(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str
) -> None:
    """Each lapsed order is expired in a transaction of its own, so the expiry locks products in id
    order like every other transaction. Orders A [p1, p4] and B [p2, p3] have lapsed; a cancel of an
    order [p3, p4] has given p3 back and goes on to p4. One transaction for the whole batch would hold
    p4 (A's) while waiting for p3 (B's): a deadlock, and PostgreSQL aborts the cancel or the batch."""
    app, client = shop
    buyer = await make_user(db, app)
    p1, p2, p3, p4 = [await make_product(db, stock=5) for _ in range(4)]
    first = await reserved_order(app, client, buyer, (p1, 1), (p4, 1))
    second = await reserved_order(app, client, buyer, (p2, 1), (p3, 1))
    await lapse(db, first, seconds_ago=2)
    await lapse(db, second, seconds_ago=1)
    give_back = "update products set stock = stock + 1, updated_at = now() where id = %s"
    async with await AsyncConnection.connect(database_url) as cancel:
        await cancel.execute(give_back, (p3,))
        expiry = asyncio.create_task(app.state.services[OrderService].expire_reservations())

        async def expiry_waits_for_the_cancel() -> bool:
            waiting = "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))"
            return bool(await scalar(db, waiting, cancel.info.backend_pid))

        await wait_until(expiry_waits_for_the_cancel, 30, "the expiry waits for p3")
        assert await status_of(db, first) == "expired", "the first order's expiry committed on its own"
        await cancel.execute(give_back, (p4,))  # nobody holds p4 any more: no deadlock
        await cancel.rollback()
    assert await asyncio.wait_for(expiry, 30) == 2
    assert [await status_of(db, order) for order in (first, second)] == ["expired", "expired"]
    assert [await stock_of(db, pid) for pid in (p1, p2, p3, p4)] == [5, 5, 5, 5]


async def test_an_order_paid_while_the_expiry_waits_for_it_is_left_alone(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str
) -> None:
    """The expiry re-checks each order under its lock: a payment (a cancel, another expiry run) that
    committed meanwhile leaves nothing to expire, and no stock is given back twice."""
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5)
    order_id = await reserved_order(app, client, buyer, (pid, 2))
    await lapse(db, order_id)
    paid = "update orders set status = 'paid', reserved_until = null, updated_at = now() where id = %s"
    expire = app.state.services[OrderService].expire_reservations
    assert await answer_racing(database_url, paid, order_id, expire) == 0
    assert await status_of(db, order_id) == "paid"
    assert await stock_of(db, pid) == 3


async def test_concurrent_expiry_runs_expire_each_order_once(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=10)
    lapsed = [await reserved_order(app, client, buyer, (pid, 2)) for _ in range(MAX_OPEN)]
    for order_id in lapsed:
        await lapse(db, order_id)
    orders = app.state.services[OrderService]
    runs = await asyncio.gather(*(orders.expire_reservations() for _ in range(3)))
    assert sum(runs) == MAX_OPEN
    assert await stock_of(db, pid) == 10
    expiries = "select count(*) from order_events where to_status = 'expired' and order_id = any(%s)"
    assert await scalar(db, expiries, lapsed) == MAX_OPEN


async def test_orders_left_pending_are_reserved_by_the_reconciliation(
    app: Litestar, db: AsyncConnection[Any], settings: Settings
) -> None:
    """An order whose reservation job was lost is reserved by reserve_stale once it is old enough."""
    async with open_services(settings, COMMERCE) as services:
        orders = services[OrderService]
        buyer = await create_user(db)
        stale = await make_product(db, stock=5, price="1")
        lines = OrderCreate(lines=[OrderLine(product_id=stale, quantity=2)])
        placed = await orders.place(buyer.id, lines, "stale-1")
        assert await orders.reserve_stale(older_than_s=3600) == 0, "a fresh order is left to its job"
        await db.execute(
            "update orders set created_at = now() - interval '2 hours' where id = %s", (placed.order_id,)
        )
        assert await orders.reserve_stale(older_than_s=3600) == 1
        status = await (
            await db.execute("select status from orders where id = %s", (placed.order_id,))
        ).fetchone()
        assert status == ("reserved",)
        assert await orders.reserve_stale(older_than_s=3600) == 0


async def test_open_orders_cannot_hoard_a_products_stock(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], settings: Settings
) -> None:
    """Review M6 (probe P7): free accounts cannot hold the stock hostage. A user's open orders hold at
    most ORDER_MAX_UNITS_PER_PRODUCT units of one product and ORDER_MAX_UNITS_HELD in all; another
    buyer still gets the product; a settled (cancelled) order frees the allowance."""
    app, client = shop
    per_product, held = settings.order_max_units_per_product, settings.order_max_units_held
    assert (per_product, held) == (10, 100)
    hoarder, other = await make_user(db, app), await make_user(db, app)
    pid = await make_product(db, stock=1000)
    assert_problem(await place(client, hoarder, (pid, 1000), expect=422), 422, "holding-limit")
    first = (await place(client, hoarder, (pid, per_product - 1))).json()["id"]
    await place(client, hoarder, (pid, 1))
    assert_problem(await place(client, hoarder, (pid, 1), expect=422), 422, "holding-limit")
    await place(client, other, (pid, per_product))  # the cap is per user
    assert await scalar(db, "select count(*) from orders where user_id = %s", hoarder.id) == 2
    assert (await client.post(f"/api/orders/{first}/cancel", headers=hoarder.headers)).status_code == 200
    await place(client, hoarder, (pid, per_product - 1))
    products = [await make_product(db, stock=1000) for _ in range(held // per_product + 1)]
    everything = [(p, per_product) for p in products]
    assert_problem(await place(client, other, *everything, expect=422), 422, "holding-limit")
    assert await scalar(db, "select count(*) from orders where user_id = %s", other.id) == 1


async def test_expired_idempotency_keys_are_purged(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """Review L3: the daily job deletes idempotency keys past their 24 hours, and only those."""
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=10)
    await place(client, buyer, (pid, 1), key="old-key")
    await place(client, buyer, (pid, 1), key="new-key")
    await db.execute(
        "update idempotency_keys set expires_at = now() - interval '1 second' where key = 'old-key'"
    )
    assert await app.state.services[Idempotency].purge_expired() == 1
    keys = await (
        await db.execute("select key from idempotency_keys where user_id = %s", (buyer.id,))
    ).fetchall()
    assert keys == [("new-key",)]


async def test_an_orders_reservation_job_carries_the_request_id_of_its_placement(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The outbox row the placement writes keeps the request's id, so the reservation job's lines can
    be found from the request that placed the order. The first version read it from a context the
    request layer never binds: every row had none (the diff reviewer)."""
    app, client = shop
    buyer = await make_user(db, app)
    headers = buyer.headers | {"Idempotency-Key": uuid.uuid4().hex, "X-Request-ID": "order-trace-1"}
    response = await client.post("/api/orders", json=body((await make_product(db), 1)), headers=headers)
    assert response.status_code == 202, response.text
    row = await (
        await db.execute(
            "select request_id from outbox where task = 'reserve_order' and payload->>'order_id' = %s",
            (str(response.json()["id"]),),
        )
    ).fetchone()
    assert row == ("order-trace-1",)
