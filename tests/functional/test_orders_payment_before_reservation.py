"""A payment that arrives before the worker reserved its order (the worker is late or down).

The provider's ``payment.succeeded`` for an order still ``pending`` used to be refused (409
``order-not-ready``, nothing recorded): the provider redelivers with backoff, and a backoff that
carried it past the reservation window after the job did reserve expired the order, so a customer who
paid lost the sale (a refund due) because our worker was slow. The webhook now reserves the order
itself, in the transaction that holds the payment id's lock and the order's row lock, exactly as the
worker would, and applies the payment to it: paid when the stock is there (both transitions in the
history), rejected with its shortfall and a refund due when it is not, a mismatch (still reserved)
when the amount or currency differ. The reservation job that runs later changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db.models import OrderStatus, UserRole
from app.domains.orders.services import OrderService
from tests.factories import Actor, captured_logs, make_product, make_user, wait_until
from tests.fakes import payments

Client = httpx.AsyncClient
WEBHOOK = "/api/payments/webhook"


async def pending_order(client: Client, buyer: Actor, *lines: tuple[int, int]) -> tuple[int, Decimal]:
    """A placed order (the worker does not run in these tests: it stays pending) and its total."""
    placed = await client.post(
        "/api/orders",
        json={"lines": [{"product_id": pid, "quantity": qty} for pid, qty in lines]},
        headers=buyer.headers | {"Idempotency-Key": uuid.uuid4().hex},
    )
    assert placed.status_code == 202, placed.text
    assert placed.json()["status"] == "pending"
    return int(placed.json()["id"]), Decimal(placed.json()["total"])


async def deliver(client: Client, body: bytes) -> dict[str, Any]:
    """The provider's signed delivery of ``body``; its 200 answer."""
    sent = payments.delivery(body)
    response = await client.post(WEBHOOK, content=sent.body, headers=sent.headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def row(db: AsyncConnection[Any], sql: str, *params: Any) -> tuple[Any, ...]:
    found = await (await db.execute(sql, params)).fetchone()
    assert found is not None
    return tuple(found)


async def stock_of(db: AsyncConnection[Any], product_id: int) -> int:
    return int((await row(db, "select stock from products where id = %s", product_id))[0])


async def snapshot(db: AsyncConnection[Any], order_id: int, *product_ids: int) -> tuple[Any, ...]:
    """What a later reservation job must leave alone: the order, its history and the stock."""
    order = await row(
        db, "select status::text, reserved_until, shortfall, updated_at from orders where id = %s", order_id
    )
    events = await row(db, "select count(*) from order_events where order_id = %s", order_id)
    return (order, events, [await stock_of(db, pid) for pid in product_ids])


async def history(client: Client, who: Actor, order_id: int) -> list[tuple[str | None, str, str]]:
    order = await client.get(f"/api/orders/{order_id}", headers=who.headers)
    assert order.status_code == 200, order.text
    return [(e["from_status"], e["to_status"], e["reason"]) for e in order.json()["events"]]


async def refunds_due(client: Client, admin: Actor) -> list[dict[str, Any]]:
    listed = await client.get("/api/admin/payments/refunds-due", headers=admin.headers)
    assert listed.status_code == 200, listed.text
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


async def test_a_payment_before_the_reservation_reserves_and_pays_the_order(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    first, second = await make_product(db, stock=5, price="10.00"), await make_product(db, stock=2)
    order_id, total = await pending_order(client, buyer, (first, 2), (second, 2))
    body = payments.event_body(order_id, total, event_id=f"evt-early-{order_id}")

    with captured_logs() as logs:
        answer = await deliver(client, body)
    assert answer == {"event_id": f"evt-early-{order_id}", "outcome": "paid", "order_id": order_id}
    assert (await stock_of(db, first), await stock_of(db, second)) == (3, 0)
    steps = await history(client, buyer, order_id)
    assert [(f, t) for f, t, _ in steps] == [(None, "pending"), ("pending", "reserved"), ("reserved", "paid")]
    assert steps[1][2] == "stock reserved", "reserved exactly as the worker does"
    assert await row(db, "select status::text from orders where id = %s", order_id) == ("paid",)
    outcome = await row(db, "select outcome from payment_events where event_id = %s", f"evt-early-{order_id}")
    assert outcome == ("paid",)
    (early,) = logs.events("payment_event_before_reservation")
    assert (early["order_id"], early["reservation"]) == (order_id, "reserved"), early

    # the reservation job (and the stale-order cron) that run later change nothing
    before = await snapshot(db, order_id, first, second)
    orders = app.state.services[OrderService]
    assert await orders.reserve(order_id) == OrderStatus.PAID
    assert await orders.reserve_stale(older_than_s=0) == 0
    assert await snapshot(db, order_id, first, second) == before
    # and the provider's redelivery of the event is a duplicate
    assert (await deliver(client, body))["outcome"] == "duplicate"
    assert await snapshot(db, order_id, first, second) == before


async def test_a_payment_before_the_reservation_of_an_order_short_of_stock_is_a_refund_due(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, UserRole.ADMIN)
    plenty, scarce = await make_product(db, stock=10), await make_product(db, stock=1)
    order_id, total = await pending_order(client, buyer, (plenty, 2), (scarce, 3))
    body = payments.event_body(order_id, total, event_id=f"evt-short-{order_id}")

    answer = await deliver(client, body)
    assert answer == {"event_id": f"evt-short-{order_id}", "outcome": "refund-due", "order_id": order_id}
    assert (await stock_of(db, plenty), await stock_of(db, scarce)) == (10, 1), "all lines or none"
    order = (await client.get(f"/api/orders/{order_id}", headers=buyer.headers)).json()
    assert order["status"] == "rejected"
    assert order["shortfall"] == [{"product_id": scarce, "requested": 3, "available": 1}]
    assert [(e["from_status"], e["to_status"]) for e in order["events"]] == [
        (None, "pending"),
        ("pending", "rejected"),
        ("rejected", "rejected"),  # the payment it did not keep, noted
    ]
    assert order["events"][1]["reason"] == "insufficient stock"
    assert "not kept (the order is rejected): refund due" in order["events"][2]["reason"]
    (due,) = await refunds_due(client, admin)
    assert (due["event_id"], due["order_id"], due["outcome"]) == (
        f"evt-short-{order_id}",
        order_id,
        "refund-due",
    )
    assert (due["amount"], due["currency"]) == (str(total), "EUR")

    before = await snapshot(db, order_id, plenty, scarce)
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.REJECTED
    assert await snapshot(db, order_id, plenty, scarce) == before


@pytest.mark.parametrize("wrong", ["amount", "currency"])
async def test_a_mismatched_payment_before_the_reservation_leaves_the_order_reserved(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], wrong: str
) -> None:
    """As for an order the worker reserved: ``mismatch``, a refund due, and the reservation stays (the
    buyer may still pay the right amount within its window)."""
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, UserRole.ADMIN)
    pid = await make_product(db, stock=5, price="4.00")
    order_id, total = await pending_order(client, buyer, (pid, 2))
    amount, currency = (total - Decimal("0.01"), "EUR") if wrong == "amount" else (total, "USD")

    answer = await deliver(client, payments.event_body(order_id, amount, currency))
    assert answer["outcome"] == "mismatch"
    status, reserved_until = await row(
        db, "select status::text, reserved_until from orders where id = %s", order_id
    )
    assert status == "reserved" and reserved_until is not None
    assert await stock_of(db, pid) == 3
    assert [(f, t) for f, t, _ in await history(client, buyer, order_id)] == [
        (None, "pending"),
        ("pending", "reserved"),
        ("reserved", "reserved"),  # the payment it did not keep, noted
    ]
    (due,) = await refunds_due(client, admin)
    assert (due["order_id"], due["outcome"]) == (order_id, "mismatch")

    before = await snapshot(db, order_id, pid)
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.RESERVED
    assert await snapshot(db, order_id, pid) == before
    assert (await deliver(client, payments.event_body(order_id, total)))["outcome"] == "paid"
    assert await stock_of(db, pid) == 3


@pytest.mark.parametrize("first", ["payment", "job"])
async def test_a_payment_racing_the_reservation_job_reserves_the_stock_once(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str, first: str
) -> None:
    """The webhook and the worker's job both lock the order first. Both are made to wait behind a
    transaction holding the order's row, ``first`` queued first: the second then finds the order paid
    (the job does nothing) or reserved (the payment pays it)."""
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5, price="3.00")
    order_id, total = await pending_order(client, buyer, (pid, 2))
    orders = app.state.services[OrderService]
    body = payments.event_body(order_id, total)
    async with (
        await AsyncConnection.connect(database_url) as holder,
        await AsyncConnection.connect(database_url, autocommit=True) as probe,
    ):

        def waiting(count: int) -> Callable[[], Awaitable[bool]]:
            async def enough() -> bool:
                cursor = await probe.execute(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                    " and datname = current_database()"
                )
                found = await cursor.fetchone()
                return found is not None and found[0] >= count

            return enough

        await holder.execute("select id from orders where id = %s for update", (order_id,))
        starts: dict[str, Callable[[], Awaitable[Any]]] = {
            "payment": lambda: deliver(client, body),
            "job": lambda: orders.reserve(order_id),
        }
        second = "job" if first == "payment" else "payment"
        started = {first: asyncio.ensure_future(starts[first]())}
        await wait_until(waiting(1), 10, f"the {first} waits for the order")
        started[second] = asyncio.ensure_future(starts[second]())
        await wait_until(waiting(2), 10, f"the {second} waits too")
        await holder.rollback()
        answer, reserved = await started["payment"], await started["job"]
    assert answer["outcome"] == "paid"
    assert reserved == (OrderStatus.PAID if first == "payment" else OrderStatus.RESERVED)
    assert await stock_of(db, pid) == 3
    assert [(f, t) for f, t, _ in await history(client, buyer, order_id)] == [
        (None, "pending"),
        ("pending", "reserved"),
        ("reserved", "paid"),
    ]


async def test_the_webhooks_openapi_no_longer_documents_order_not_ready(
    shop: tuple[Litestar, Client],
) -> None:
    _, client = shop
    operation = (await client.get("/schema/openapi.json")).json()["paths"][WEBHOOK]["post"]
    assert "409" not in operation["responses"]
    assert "order-not-ready" not in operation["description"]
    assert "pending" in operation["description"]
