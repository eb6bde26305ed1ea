"""The payment provider's webhook (review M6): only a signed, fresh, first delivery of an event makes a
reserved order (or a pending one, which it reserves first) paid, and only for its exact amount;
buyers have no way to mark an order paid. Money that no order keeps is recorded as a refund due,
listed for administrators, who mark it refunded."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, cast

import httpx
import pytest
from litestar import Litestar
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.logging import OncePerInterval
from app.db import orders as order_queries
from app.db.models import OrderStatus
from app.domains.orders import services as orders_services
from app.domains.orders.schemas import OrderCreate, OrderLine
from app.domains.orders.services import OrderService
from tests.factories import (
    Actor,
    assert_problem,
    captured_logs,
    create_user,
    make_product,
    make_user,
    serve_in_loop,
)
from tests.fakes import payments

Client = httpx.AsyncClient
WEBHOOK = "/api/payments/webhook"


async def reserved(app: Litestar, client: Client, buyer: Actor, product_id: int, quantity: int) -> int:
    response = await client.post(
        "/api/orders",
        json={"lines": [{"product_id": product_id, "quantity": quantity}]},
        headers=buyer.headers | {"Idempotency-Key": f"k-{time.time_ns()}"},
    )
    assert response.status_code == 202, response.text
    order_id = int(response.json()["id"])
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.RESERVED
    return order_id


async def state(db: AsyncConnection[Any], order_id: int) -> tuple[str, int]:
    """The order's status and the number of its transitions (a payment it did not keep adds a note
    to its history, no transition)."""
    row = await (
        await db.execute(
            "select o.status::text, count(e.id) filter (where e.from_status is distinct from e.to_status)"
            " from orders o join order_events e on e.order_id = o.id where o.id = %s group by o.status",
            (order_id,),
        )
    ).fetchone()
    assert row is not None
    return row[0], row[1]


async def send(client: Client, body: bytes, headers: Any) -> Any:
    """POST a delivery to the webhook; ``headers`` may carry forged (non-ASCII, bytes) values."""
    return await client.post(WEBHOOK, content=body, headers=headers)


async def test_the_buyer_cannot_mark_an_order_paid(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """Probe P7: the buyer's own `/pay` is gone; their token does not help at the webhook either."""
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="10.00"), 1)
    response = await client.post(f"/api/orders/{order_id}/pay", headers=buyer.headers)
    assert response.status_code in (404, 405), response.text
    unsigned = payments.event_body(order_id, "10.00")
    assert_problem(await send(client, unsigned, buyer.headers), 400, "invalid-signature")
    assert await state(db, order_id) == ("reserved", 2)


async def test_a_signed_event_pays_once_and_replays_change_nothing(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="2.50"), 2)
    sent = payments.delivery(payments.event_body(order_id, "5.00", event_id="evt-once"))
    first = await send(client, sent.body, sent.headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"event_id": "evt-once", "outcome": "paid", "order_id": order_id}
    assert await state(db, order_id) == ("paid", 3)
    for _ in range(2):  # the same delivery replayed, and the provider's redelivery with a new signature
        again = await send(client, sent.body, sent.headers)
        assert again.json()["outcome"] == "duplicate"
        resent = payments.delivery(sent.body)
        assert (await send(client, resent.body, resent.headers)).json()["outcome"] == "duplicate"
    assert await state(db, order_id) == ("paid", 3)
    history = (await client.get(f"/api/orders/{order_id}", headers=buyer.headers)).json()["events"]
    assert history[-1]["to_status"] == "paid" and history[-1]["actor_id"] is None


async def test_a_payment_before_the_reservation_reserves_and_pays_at_once(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The buyer pays (the total is in the 202) before the worker reserved the order (Valkey down,
    a backlog): the delivery reserves the order as the worker would and pays it, recorded once, so
    the provider's redelivery is a duplicate and the late job changes nothing. (Refusing it with a
    retryable 409 let the provider's backoff outlast the reservation window: a refund, not a sale.)"""
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5, price="10.00")
    placed = await client.post(
        "/api/orders",
        json={"lines": [{"product_id": pid, "quantity": 1}]},
        headers=buyer.headers | {"Idempotency-Key": f"k-{time.time_ns()}"},
    )
    assert placed.status_code == 202 and placed.json()["status"] == "pending", placed.text
    order_id = int(placed.json()["id"])
    body = payments.event_body(order_id, "10.00", event_id="evt-early")
    early = payments.delivery(body)
    paid = await send(client, early.body, early.headers)
    assert paid.status_code == 200, paid.text
    assert paid.json() == {"event_id": "evt-early", "outcome": "paid", "order_id": order_id}
    assert await state(db, order_id) == ("paid", 3)
    again = payments.delivery(body)  # the provider's redelivery
    assert (await send(client, again.body, again.headers)).json()["outcome"] == "duplicate"
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.PAID
    assert await state(db, order_id) == ("paid", 3)


@pytest.mark.parametrize(
    "forge",
    [
        "wrong secret",
        "stale",
        "future",
        "tampered body",
        "no header",
        "no v1",
        "garbage",
        "non-ASCII digit",
        "non-ASCII v1",
    ],
)
async def test_forged_or_stale_deliveries_are_refused(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], forge: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orders_services, "WEBHOOK_WARNINGS", OncePerInterval(60.0))  # this test's warning
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="1.00"), 1)
    body = payments.event_body(order_id, "1.00")
    now = int(time.time())
    headers = {
        "wrong secret": {payments.HEADER: payments.signature(body, "whsec_another_secret_0123456789")},
        "stale": {payments.HEADER: payments.signature(body, timestamp=now - 360)},  # the edges:
        "future": {payments.HEADER: payments.signature(body, timestamp=now + 360)},  # a unit test
        "tampered body": {payments.HEADER: payments.signature(body)},
        "no header": {},
        "no v1": {payments.HEADER: f"t={now}"},
        "garbage": {payments.HEADER: "v1=zz,t=abc"},
        # header bytes are latin-1 to the app: "\xb2" is "²", a digit to str.isdigit, not to int()
        "non-ASCII digit": {payments.HEADER: b"t=\xb2,v1=ab"},
        "non-ASCII v1": {payments.HEADER: f"t={now},v1=\xe9".encode("latin-1")},
    }[forge]
    sent_body = body.replace(b'"amount":"1.00"', b'"amount":"0.01"') if forge == "tampered body" else body
    assert sent_body != body or forge != "tampered body"
    with captured_logs() as logs:
        assert_problem(await send(client, sent_body, headers), 400, "invalid-signature")
    assert await state(db, order_id) == ("reserved", 2)
    (refused,) = logs.events("payment_webhook_refused")
    assert refused["level"] == "warning" and refused["reason"], refused
    assert payments.TEST_SECRET not in logs.text and str(headers) not in logs.text
    # none of them used up the event id: the genuine delivery still pays
    genuine = payments.delivery(body)
    assert (await send(client, genuine.body, genuine.headers)).json()["outcome"] == "paid"


async def test_only_the_exact_amount_for_a_reserved_order_pays(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5, price="3.00")
    order_id = await reserved(app, client, buyer, pid, 1)
    for amount, currency in (("2.99", "EUR"), ("3.01", "EUR"), ("3.00", "USD")):
        sent = payments.delivery(payments.event_body(order_id, amount, currency))
        assert (await send(client, sent.body, sent.headers)).json()["outcome"] == "mismatch"
    assert await state(db, order_id) == ("reserved", 2)
    other = payments.delivery(payments.event_body(order_id, "3.00", type="payment.failed"))
    assert (await send(client, other.body, other.headers)).json()["outcome"] == "ignored"
    unknown = payments.delivery(payments.event_body(2**52, "3.00"))
    assert (await send(client, unknown.body, unknown.headers)).json()["outcome"] == "refund-due"
    assert await state(db, order_id) == ("reserved", 2)


async def test_a_payment_after_the_expiry_cron_answers_expired(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """A payment for a lapsed reservation needs a refund whether it comes before the minute's expiry
    cron (it expires the order itself) or after it, and whatever the amount it reports."""
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5, price="4.00")
    order_id = await reserved(app, client, buyer, pid, 2)
    await db.execute(
        "update orders set reserved_until = now() - interval '1 second' where id = %s", (order_id,)
    )
    assert await app.state.services[OrderService].expire_reservations() == 1
    assert await state(db, order_id) == ("expired", 3)
    for event_id, amount in (("evt-exact", "8.00"), ("evt-short", "7.99")):
        sent = payments.delivery(payments.event_body(order_id, amount, event_id=event_id))
        answer = await send(client, sent.body, sent.headers)
        assert answer.json() == {"event_id": event_id, "outcome": "expired", "order_id": order_id}
    recorded = await (
        await db.execute(
            "select event_id, outcome from payment_events where order_id = %s order by event_id", (order_id,)
        )
    ).fetchall()
    assert recorded == [("evt-exact", "expired"), ("evt-short", "expired")]
    assert await state(db, order_id) == ("expired", 3)
    stock = await (await db.execute("select stock from products where id = %s", (pid,))).fetchone()
    assert stock == (5,), "the stock came back once, with the expiry"


async def test_a_signed_body_that_is_not_an_event_is_422(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    _, client = shop
    for body in (b"{not json", b'{"id":"e","type":"payment.succeeded"}', b'{"id":"e","extra":1}'):
        sent = payments.delivery(body)
        response = await send(client, sent.body, sent.headers)
        assert_problem(response, 422, "unprocessable")


async def test_without_a_configured_secret_the_webhook_does_not_exist(settings: Settings) -> None:
    async with serve_in_loop(settings, payment_webhook_secret="") as served:
        sent = payments.delivery(payments.event_body(1, "1.00"))
        response = await served.client.post(WEBHOOK, content=sent.body, headers=sent.headers)
        assert_problem(response, 404, "not-found")


async def test_refused_deliveries_are_counted_and_warned_of_once_a_minute(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook is public and not rate-limited: each refused call wrote a warning, so any client
    could flood the log (the operability reviewer: 50 calls, 50 warnings). Each is counted
    (``app_payment_webhook_refused_total``); one warning a minute per reason says so."""
    monkeypatch.setattr(orders_services, "WEBHOOK_WARNINGS", OncePerInterval(60.0))

    def refused(reason: str) -> float:
        return REGISTRY.get_sample_value("app_payment_webhook_refused_total", {"reason": reason}) or 0.0

    before = refused("not_configured")
    async with serve_in_loop(settings, payment_webhook_secret="") as served:
        sent = payments.delivery(payments.event_body(1, "1.00"))
        with captured_logs() as logs:
            for _ in range(20):
                response = await served.client.post(WEBHOOK, content=sent.body, headers=sent.headers)
                assert response.status_code == 404
    assert refused("not_configured") - before == 20
    assert len(logs.events("payment_webhook_not_configured")) == 1


# -- refunds due ---------------------------------------------------------------------------------------

REFUNDS_DUE = "/api/admin/payments/refunds-due"
REFUNDED = "/api/admin/payments/refunded"


async def deliver(client: Client, order_id: int, amount: str, **event: Any) -> Any:
    """A signed ``payment.succeeded`` (or ``type=...``) for ``order_id``; its 200 answer."""
    sent = payments.delivery(payments.event_body(order_id, amount, **event))
    answer = await send(client, sent.body, sent.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def refunds_due(client: Client, admin: Actor, **params: Any) -> Any:
    response = await client.get(REFUNDS_DUE, params=params, headers=admin.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def mark_refunded(client: Client, admin: Actor, event_id: str) -> Any:
    """The administrator marks the refund due of ``event_id`` returned (the id in the body)."""
    return await client.post(REFUNDED, json={"event_id": event_id}, headers=admin.headers)


def due(
    event_id: str,
    order_id: int | None,
    payment_id: str,
    amount: str,
    outcome: str,
    claimed: int | None = None,
) -> dict[str, Any]:
    """A refund due as listed (``received_at`` aside), not marked refunded; ``claimed``, the order
    the payment named, is ``order_id`` unless said."""
    return {
        "event_id": event_id,
        "order_id": order_id,
        "claimed_order_id": order_id if claimed is None else claimed,
        "payment_id": payment_id,
        "amount": amount,
        "currency": "EUR",
        "outcome": outcome,
        "refunded_at": None,
        "refunded_by": None,
    }


def without_received_at(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert all(item["received_at"] for item in items), items
    return [{k: v for k, v in item.items() if k != "received_at"} for item in items]


@pytest.mark.parametrize("case", ["cancelled", "rejected", "fulfilled", "paid by another payment", "unknown"])
async def test_money_taken_for_an_order_that_cannot_keep_it_is_a_refund_due(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], case: str
) -> None:
    """A payment.succeeded for an order that is cancelled, rejected, fulfilled, paid by another
    payment, or does not exist took money: ``refund-due`` (not ``ignored``), stored with its payment
    id, amount and currency, and listed for administrators; the order is left as it was."""
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, "admin")
    pid = await make_product(db, stock=2, price="5.00")
    if case == "unknown":
        order_id = 2**52 - 7
    elif case == "rejected":
        placed = await client.post(
            "/api/orders",
            json={"lines": [{"product_id": pid, "quantity": 3}]},
            headers=buyer.headers | {"Idempotency-Key": f"k-{time.time_ns()}"},
        )
        assert placed.status_code == 202, placed.text
        order_id = int(placed.json()["id"])
        assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.REJECTED
    else:
        order_id = await reserved(app, client, buyer, pid, 1)
        if case == "cancelled":
            cancelled = await client.post(f"/api/orders/{order_id}/cancel", headers=buyer.headers)
            assert cancelled.status_code == 200, cancelled.text
        else:
            paid = await deliver(client, order_id, "5.00", event_id="evt-pays", payment_id="pay-pays")
            assert paid["outcome"] == "paid"
            if case == "fulfilled":
                done = await client.post(f"/api/orders/{order_id}/fulfil", headers=admin.headers)
                assert done.status_code == 200, done.text
    before = None if case == "unknown" else await state(db, order_id)
    answer = await deliver(client, order_id, "5.00", event_id="evt-refund", payment_id="pay-refund")
    assert answer == {"event_id": "evt-refund", "outcome": "refund-due", "order_id": order_id}
    if before is not None:
        assert await state(db, order_id) == before
    listed = await refunds_due(client, admin)
    assert without_received_at(listed["items"]) == [
        due(
            "evt-refund",
            None if case == "unknown" else order_id,
            "pay-refund",
            "5.00",
            "refund-due",
            order_id,
        )
    ]
    assert listed["next_cursor"] is None
    if case != "unknown":  # the order's history says so too (the second commerce reviewer: it did not)
        [note] = [e for e in (await order_events(db, order_id)) if "pay-refund" in e[2]]
        assert note[0] == note[1] and "not kept" in note[2] and "refund due" in note[2], note


async def test_a_payment_redelivered_under_a_new_event_id_is_not_a_second_payment(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The provider may send a payment again under a new event id: the payment that paid an order
    stays ``ignored`` (paid or fulfilled since, nothing is due), and a refund due is listed once."""
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, "admin")
    pid = await make_product(db, stock=5, price="2.00")
    paid_id = await reserved(app, client, buyer, pid, 1)
    assert (await deliver(client, paid_id, "2.00", event_id="evt-1", payment_id="pay-1"))["outcome"] == "paid"
    assert (await deliver(client, paid_id, "2.00", event_id="evt-2", payment_id="pay-1"))[
        "outcome"
    ] == "ignored"
    assert await state(db, paid_id) == ("paid", 3)
    assert (await client.post(f"/api/orders/{paid_id}/fulfil", headers=admin.headers)).status_code == 200
    assert (await deliver(client, paid_id, "2.00", event_id="evt-3", payment_id="pay-1"))[
        "outcome"
    ] == "ignored"
    assert await state(db, paid_id) == ("fulfilled", 4)

    cancelled_id = await reserved(app, client, buyer, pid, 1)
    assert (await client.post(f"/api/orders/{cancelled_id}/cancel", headers=buyer.headers)).status_code == 200
    first = await deliver(client, cancelled_id, "2.00", event_id="evt-4", payment_id="pay-2")
    again = await deliver(client, cancelled_id, "2.00", event_id="evt-5", payment_id="pay-2")
    assert (first["outcome"], again["outcome"]) == ("refund-due", "ignored")

    stored = await (
        await db.execute(
            "select event_id, payment_id, amount::text, currency, outcome"
            " from payment_events order by event_id"
        )
    ).fetchall()
    assert stored == [
        ("evt-1", "pay-1", "2.00", "EUR", "paid"),
        ("evt-2", "pay-1", "2.00", "EUR", "ignored"),
        ("evt-3", "pay-1", "2.00", "EUR", "ignored"),
        ("evt-4", "pay-2", "2.00", "EUR", "refund-due"),
        ("evt-5", "pay-2", "2.00", "EUR", "ignored"),
    ]
    listed = await refunds_due(client, admin)
    assert without_received_at(listed["items"]) == [due("evt-4", cancelled_id, "pay-2", "2.00", "refund-due")]


async def test_rows_from_the_release_before_payment_ids_are_not_taken_for_refunds(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """During a rolling deploy the previous release records payments without their payment id. An
    order it marked paid cannot tell a redelivery of its payment from another: a new payment id for
    it is ``ignored``, not a refund due; and its old refund outcomes (nothing recorded to return,
    maybe refunded by hand) are not listed as owed."""
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, "admin")
    pid = await make_product(db, stock=5, price="4.00")
    paid_id = await reserved(app, client, buyer, pid, 1)
    assert (await deliver(client, paid_id, "4.00", event_id="evt-old", payment_id="pay-old"))[
        "outcome"
    ] == "paid"
    late = await reserved(app, client, buyer, pid, 1)
    await db.execute(
        "insert into payment_events (event_id, order_id, outcome) values ('evt-old-expired', %s, 'expired')",
        (late,),
    )
    await db.execute(  # as the previous release wrote them: no payment id, amount or currency
        "update payment_events set payment_id = null, amount = null, currency = null"
        " where event_id in ('evt-old', 'evt-old-expired')"
    )

    answer = await deliver(client, paid_id, "4.00", event_id="evt-new", payment_id="pay-resent")

    assert answer["outcome"] == "ignored"
    assert (await refunds_due(client, admin))["items"] == []
    assert_problem(await mark_refunded(client, admin, "evt-old-expired"), 404, "not-found")


async def test_expired_and_mismatched_payments_are_listed_with_what_was_paid(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, "admin")
    pid = await make_product(db, stock=5, price="3.00")
    short = await reserved(app, client, buyer, pid, 1)
    answer = await deliver(client, short, "2.99", event_id="evt-short", payment_id="pay-short")
    assert answer["outcome"] == "mismatch"
    dollars = await deliver(client, short, "3.00", currency="USD", event_id="evt-usd", payment_id="pay-usd")
    assert dollars["outcome"] == "mismatch"
    late = await reserved(app, client, buyer, pid, 1)
    await db.execute("update orders set reserved_until = now() - interval '1 second' where id = %s", (late,))
    answer = await deliver(client, late, "3.00", event_id="evt-late", payment_id="pay-late")
    assert answer["outcome"] == "expired"
    listed = await refunds_due(client, admin)
    assert without_received_at(listed["items"]) == [  # newest first
        due("evt-late", late, "pay-late", "3.00", "expired"),
        due("evt-usd", short, "pay-usd", "3.00", "mismatch") | {"currency": "USD"},
        due("evt-short", short, "pay-short", "2.99", "mismatch"),
    ]
    received = [item["received_at"] for item in listed["items"]]
    assert received == sorted(received, reverse=True)
    history = [reason for _, _, reason in await order_events(db, short)]
    assert any("pay-short of 2.99 EUR not kept" in reason for reason in history), history
    assert any("pay-usd of 3.00 USD not kept" in reason for reason in history), history
    expired = [(f, t, reason) for f, t, reason in await order_events(db, late) if t == "expired"]
    assert expired == [
        ("reserved", "expired", "payment pay-late arrived after the reservation window: refund due")
    ]


async def order_events(db: AsyncConnection[Any], order_id: int) -> list[tuple[str | None, str, str]]:
    rows = await (
        await db.execute(
            "select from_status::text, to_status::text, reason from order_events"
            " where order_id = %s order by id",
            (order_id,),
        )
    ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


async def test_the_refunds_due_are_paginated_newest_first(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    admin = await make_user(db, app, "admin")
    for i in range(5):
        assert (await deliver(client, 2**52 - i, "1.00", event_id=f"evt-{i}"))["outcome"] == "refund-due"
    await deliver(client, 2**52, "1.00", type="payment.failed")  # not money taken: never listed
    seen: list[list[str]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = await refunds_due(client, admin, **params)
        seen.append([item["event_id"] for item in page["items"]])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [["evt-4", "evt-3"], ["evt-2", "evt-1"], ["evt-0"]]
    assert [i["event_id"] for i in (await refunds_due(client, admin, limit=100))["items"]] == [
        "evt-4",
        "evt-3",
        "evt-2",
        "evt-1",
        "evt-0",
    ]
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "x"}, {"cursor": "1.2"}):
        response = await client.get(REFUNDS_DUE, params=bad, headers=admin.headers)
        assert response.status_code == 400, (bad, response.text)


async def test_marking_a_refund_done_is_recorded_once_and_removes_it_from_the_list(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    admin, other_admin = await make_user(db, app, "admin"), await make_user(db, app, "admin")
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="4.00"), 1)
    assert (await deliver(client, order_id, "4.00", event_id="evt-paid"))["outcome"] == "paid"
    assert (await deliver(client, order_id, "4.00", event_id="evt-twice"))["outcome"] == "refund-due"
    assert (await deliver(client, 2**52, "4.00", event_id="evt-kept"))["outcome"] == "refund-due"
    assert (await deliver(client, 2**52, "4.00", event_id="evt-other", type="payment.failed"))[
        "outcome"
    ] == "ignored"
    listed = (await refunds_due(client, admin))["items"]
    assert [item["event_id"] for item in listed] == ["evt-kept", "evt-twice"]

    marked = await mark_refunded(client, admin, "evt-twice")
    assert marked.status_code == 200, marked.text
    record = marked.json()
    assert record["refunded_by"] == admin.id and record["refunded_at"] is not None
    assert {k: v for k, v in record.items() if k not in ("refunded_at", "refunded_by")} == {
        k: v for k, v in listed[1].items() if k not in ("refunded_at", "refunded_by")
    }
    assert [item["event_id"] for item in (await refunds_due(client, admin))["items"]] == ["evt-kept"]

    again = await mark_refunded(client, other_admin, "evt-twice")
    assert again.status_code == 200, again.text
    assert again.json() == record, "marking again answers the first marking"
    stored = await (
        await db.execute("select refunded_by from payment_events where event_id = 'evt-twice'")
    ).fetchone()
    assert stored == (admin.id,)

    for event_id in ("evt-paid", "evt-other", "evt-unknown"):
        assert_problem(await mark_refunded(client, admin, event_id), 404, "not-found")
    unmarked = await (
        await db.execute("select count(*) from payment_events where refunded_at is not null")
    ).fetchone()
    assert unmarked == (1,)


@pytest.mark.parametrize("event_id", ["evt/1", ".", ".."])
async def test_an_event_id_no_path_could_carry_is_marked_refunded(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], event_id: str
) -> None:
    """The provider's event id is any printable ASCII: one with a ``/``, or ``.`` or ``..``, is a
    genuine payment, recorded and listed like any other. It used to be marked through a path segment
    that routing splits (``/``) or normalises away (``.``, ``..``): listed for ever, never markable.
    The id travels in the body now."""
    app, client = shop
    admin = await make_user(db, app, "admin")
    answer = await deliver(client, 2**52, "1.00", event_id=event_id, payment_id=f"pay-{event_id}")
    assert answer["outcome"] == "refund-due"
    assert [item["event_id"] for item in (await refunds_due(client, admin))["items"]] == [event_id]
    marked = await mark_refunded(client, admin, event_id)
    assert marked.status_code == 200, marked.text
    assert marked.json()["event_id"] == event_id and marked.json()["refunded_by"] == admin.id
    assert (await refunds_due(client, admin))["items"] == []
    assert (await mark_refunded(client, admin, event_id)).json() == marked.json(), "idempotent"


async def test_marking_a_refund_takes_a_well_formed_event_id_in_the_body(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    admin = await make_user(db, app, "admin")
    assert (await deliver(client, 2**52, "1.00", event_id="evt-body"))["outcome"] == "refund-due"
    for bad in ({}, {"event_id": ""}, {"event_id": "evt 1"}, {"event_id": "x" * 256}, {"event_id": 1}):
        response = await client.post(REFUNDED, json=bad, headers=admin.headers)
        assert response.status_code == 400, (bad, response.text)
    unknown_field = {"event_id": "evt-body", "note": "x"}
    response = await client.post(REFUNDED, json=unknown_field, headers=admin.headers)
    assert response.status_code == 400, response.text
    old_route = await client.post("/api/admin/payments/evt-body/refunded", headers=admin.headers)
    assert old_route.status_code in (404, 405), old_route.text
    assert [item["event_id"] for item in (await refunds_due(client, admin))["items"]] == ["evt-body"]


async def test_only_administrators_see_and_mark_refunds(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, "admin")
    assert (await deliver(client, 2**52, "1.00", event_id="evt-due"))["outcome"] == "refund-due"
    for headers, status, slug in ((buyer.headers, 403, "forbidden"), ({}, 401, "unauthorized")):
        assert_problem(await client.get(REFUNDS_DUE, headers=headers), status, slug)
        marked = await client.post(REFUNDED, json={"event_id": "evt-due"}, headers=headers)
        assert_problem(marked, status, slug)
    assert [item["event_id"] for item in (await refunds_due(client, admin))["items"]] == ["evt-due"]


def skew_app_clock(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """The orders module's host clock off by ``by`` from the database's (NTP off on one host)."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Skewed:
            return cast("Skewed", datetime.now(tz) + by)

    monkeypatch.setattr(orders_services, "datetime", Skewed)


async def test_a_reservation_window_is_the_databases_whatever_the_hosts_clock(
    shop: tuple[Litestar, Client],
    db: AsyncConnection[Any],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The expiry cron ends reservations by PostgreSQL's clock: a window set by a host 10 minutes
    behind was 10 minutes short of RESERVATION_WINDOW_S."""
    app, client = shop
    buyer = await make_user(db, app)
    skew_app_clock(monkeypatch, -timedelta(minutes=10))
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="1.00"), 1)
    left = "select extract(epoch from reserved_until - now()) from orders where id = %s"
    row = await (await db.execute(left, (order_id,))).fetchone()
    assert row is not None
    assert abs(float(row[0]) - settings.reservation_window_s) < 60, row


async def test_a_payment_in_time_by_the_databases_clock_pays_whatever_the_hosts_clock(
    shop: tuple[Litestar, Client],
    db: AsyncConnection[Any],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A web host whose clock runs past the window judged a payment made in time as late (expired,
    a refund due) while the order was still reserved for the expiry cron."""
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="1.00"), 1)
    skew_app_clock(monkeypatch, timedelta(seconds=settings.reservation_window_s + 60))
    answer = await deliver(client, order_id, "1.00", event_id="evt-in-time", payment_id="pay-in-time")
    assert answer["outcome"] == "paid"
    assert (await state(db, order_id))[0] == "paid"


async def test_the_providers_deliveries_are_not_rate_limited_per_address(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The provider delivers every shop's events from a few addresses, at its own pace: under the
    per-address ``default`` limit a sales peak got its deliveries 429, and a payment redelivered after
    the reservation window turned into an expired order and a refund. The webhook is exempt (a
    delivery without a valid signature is refused before any database work); the buyers' routes keep
    their limit."""
    allowed = 2
    async with serve_in_loop(  # as many an hour: no window resets within the test
        settings,
        rate_limit_default_per_minute=allowed,
        rate_limit_default_per_hour=allowed,
        payment_webhook_secret=payments.TEST_SECRET,
    ) as served:
        app, client = served.app, served.client
        buyer = await create_user(db)
        product = await make_product(db, stock=5, price="5.00")
        orders = app.state.services[OrderService]
        placed = await orders.place(
            buyer.id, OrderCreate(lines=[OrderLine(product_id=product, quantity=1)]), "k"
        )
        assert await orders.reserve(placed.order_id) == OrderStatus.RESERVED
        for _ in range(3 * allowed):  # other shoppers' events, from the same address
            answer = await deliver(client, placed.order_id, "5.00", type="charge.updated")
            assert answer["outcome"] == "ignored"
        for _ in range(allowed):
            unsigned = await send(client, payments.event_body(placed.order_id, "5.00"), {})
            assert_problem(unsigned, 400, "invalid-signature")
        assert (await deliver(client, placed.order_id, "5.00"))["outcome"] == "paid"
        assert (await state(db, placed.order_id))[0] == "paid"
        limited = [(await client.get("/api/products")).status_code for _ in range(allowed + 1)]
        assert limited[-1] == 429, f"other anonymous routes keep the default limit: {limited}"


async def test_junk_signatures_cannot_hide_the_warning_of_a_drifting_clock(
    shop: tuple[Litestar, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bad signature was one reason, ``refused``, under one warning a minute: a flood of junk
    to the public route hid the one saying that the clock drifts (the diff reviewer). Each reason
    is counted and warned of on its own."""
    monkeypatch.setattr(orders_services, "WEBHOOK_WARNINGS", OncePerInterval(60.0))
    _, client = shop

    def refused(reason: str) -> float:
        return REGISTRY.get_sample_value("app_payment_webhook_refused_total", {"reason": reason}) or 0.0

    body = payments.event_body(1, "1.00")
    before = {reason: refused(f"refused_{reason}") for reason in ("malformed", "stale")}
    with captured_logs() as logs:
        for _ in range(20):
            await send(client, body, {payments.HEADER: "v1=zz,t=abc"})
        stale = {payments.HEADER: payments.signature(body, timestamp=int(time.time()) - 3600)}
        assert_problem(await send(client, body, stale), 400, "invalid-signature")
    assert refused("refused_malformed") - before["malformed"] == 20
    assert refused("refused_stale") - before["stale"] == 1
    warned = [line["reason"] for line in logs.events("payment_webhook_refused")]
    assert warned == ["refused_malformed", "refused_stale"]


async def test_a_payment_a_paid_order_refuses_is_no_revenue_again(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The third diff reviewer: the note of a second payment on a paid order (paid to paid) was read
    as a payment by the daily report, which counted the order's total again in the note's period."""
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=2, price="5.00"), 1)
    assert (await deliver(client, order_id, "5.00", event_id="evt-first", payment_id="pay-first"))[
        "outcome"
    ] == "paid"
    await db.execute(
        "update order_events set created_at = created_at - interval '3 days'"
        " where order_id = %s and to_status = 'paid'",
        (order_id,),
    )
    second = await deliver(client, order_id, "5.00", event_id="evt-second", payment_id="pay-second")
    assert second["outcome"] == "refund-due"

    now = datetime.now(UTC)
    today = await order_queries.revenue_between(
        db, since=now - timedelta(hours=1), until=now + timedelta(hours=1)
    )
    assert today == []
    then = await order_queries.revenue_between(
        db, since=now - timedelta(days=4), until=now - timedelta(days=2)
    )
    assert [(row.currency, row.revenue) for row in then] == [("EUR", Decimal("5.00"))]


async def test_a_payment_after_the_crons_expiry_is_noted_in_the_history(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The third diff reviewer: the commonest late payment, after the expiry cron, left no note."""
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=2, price="5.00"), 1)
    await db.execute(
        "update orders set reserved_until = now() - interval '1 second' where id = %s", (order_id,)
    )
    assert await app.state.services[OrderService].expire_reservations() == 1
    late = await deliver(client, order_id, "5.00", event_id="evt-after-cron", payment_id="pay-after-cron")
    assert late["outcome"] == "expired"
    notes = [e for e in await order_events(db, order_id) if "pay-after-cron" in e[2]]
    assert notes == [("expired", "expired", notes[0][2])] and "the order expired before it" in notes[0][2]
