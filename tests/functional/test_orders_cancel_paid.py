"""An administrator takes a paid order out of ``paid`` (``POST /api/orders/{id}/cancel``): goods that
cannot ship. The order is cancelled, its units go back to stock once, and the payment that paid it
becomes a refund due (listed at ``/api/admin/payments/refunds-due``, markable refunded). A buyer still
cannot cancel their paid order, a token's admin claim that the row does not back cancels nothing of
another's, and a fulfilled order stays fulfilled."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from litestar import Litestar
from psycopg import AsyncConnection

from app.db.models import UserRole
from app.domains.orders.services import OrderService
from tests.factories import (
    Actor,
    assert_problem,
    captured_logs,
    create_user,
    make_product,
    make_user,
    mint_headers,
    scalar,
)
from tests.fakes import payments
from tests.functional.test_orders_http import Client, pay, reserved_order, status_of, stock_of

REFUNDS_DUE = "/api/admin/payments/refunds-due"
REFUNDED = "/api/admin/payments/refunded"


async def paid_order(app: Litestar, client: Client, db: AsyncConnection[Any], buyer: Actor, pid: int) -> int:
    """An order of two units of ``pid``, paid by the provider's event ``evt-<order id>``."""
    order_id = await reserved_order(app, client, buyer, (pid, 2))
    assert await pay(client, db, order_id, event_id=f"evt-{order_id}") == "paid"
    return order_id


async def a_paid_order(
    app: Litestar, client: Client, db: AsyncConnection[Any]
) -> tuple[Actor, Actor, int, int]:
    """A buyer, an administrator, a product of 5 units and the buyer's paid order of two of them."""
    buyer, admin = await make_user(db, app), await make_user(db, app, UserRole.ADMIN)
    pid = await make_product(db, stock=5)
    return buyer, admin, pid, await paid_order(app, client, db, buyer, pid)


async def as_the_previous_release_stored_it(db: AsyncConnection[Any], order_id: int) -> None:
    """The order's payment recorded without its payment id, amount and currency (paid through the
    release before they were stored)."""
    await db.execute(
        "update payment_events set payment_id = null, amount = null, currency = null where order_id = %s",
        (order_id,),
    )


async def refunds_due(client: Client, admin: Actor) -> list[dict[str, Any]]:
    listed = await client.get(REFUNDS_DUE, headers=admin.headers)
    assert listed.status_code == 200, listed.text
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


async def last_event(client: Client, who: Actor, order_id: int) -> dict[str, Any]:
    order = await client.get(f"/api/orders/{order_id}", headers=who.headers)
    assert order.status_code == 200, order.text
    event: dict[str, Any] = order.json()["events"][-1]
    return event


async def test_an_administrator_cancels_a_paid_order_its_stock_returns_once_and_its_payment_is_due(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin, pid, order_id = await a_paid_order(app, client, db)
    assert await stock_of(db, pid) == 3
    assert await refunds_due(client, admin) == []

    with captured_logs() as logs:
        answer = await client.post(f"/api/orders/{order_id}/cancel", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert await stock_of(db, pid) == 5, "the paid order's units are back in stock"
    (logged,) = logs.events("paid_order_cancelled")
    assert logged["refund_due"] is True and logged["event_id"] == f"evt-{order_id}", logged

    event = await last_event(client, buyer, order_id)
    assert (event["from_status"], event["to_status"], event["actor_id"]) == ("paid", "cancelled", admin.id)
    assert "refund" in event["reason"], event
    activity = await scalar(
        db,
        "select count(*) from outbox where payload->>'verb' = 'order.cancelled'"
        " and (payload->>'object_id')::bigint = %s and (payload->>'actor_id')::bigint = %s",
        order_id,
        admin.id,
    )
    assert activity == 1

    (due,) = await refunds_due(client, admin)
    assert due["event_id"] == f"evt-{order_id}" and due["order_id"] == order_id, due
    assert (due["outcome"], due["amount"], due["currency"]) == ("refund-due", "5.00", "EUR"), due
    assert due["payment_id"].startswith("pay_") and due["payment_id"] in event["reason"], (due, event)
    assert due["refunded_at"] is None

    again = await client.post(f"/api/orders/{order_id}/cancel", headers=admin.headers)
    assert_problem(again, 409, "illegal-transition")
    assert await stock_of(db, pid) == 5, "stock is returned once"
    assert len(await refunds_due(client, admin)) == 1, "the refund is queued once"

    # the provider redelivering the same payment under a new event id is the same money, no second refund
    paid = payments.event_body(order_id, "5.00", payment_id=due["payment_id"])
    sent = payments.delivery(paid)
    redelivered = await client.post("/api/payments/webhook", content=sent.body, headers=sent.headers)
    assert redelivered.status_code == 200 and redelivered.json()["outcome"] == "ignored", redelivered.text
    assert len(await refunds_due(client, admin)) == 1

    marked = await client.post(REFUNDED, json={"event_id": f"evt-{order_id}"}, headers=admin.headers)
    assert marked.status_code == 200, marked.text
    assert marked.json()["refunded_by"] == admin.id and marked.json()["order_id"] == order_id
    assert await refunds_due(client, admin) == []
    assert await status_of(db, order_id) == "cancelled"


async def test_a_buyer_cannot_cancel_their_paid_order(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin, pid, order_id = await a_paid_order(app, client, db)
    answer = await client.post(f"/api/orders/{order_id}/cancel", headers=buyer.headers)
    assert_problem(answer, 409, "illegal-transition")
    assert (await status_of(db, order_id), await stock_of(db, pid)) == ("paid", 3)
    assert await refunds_due(client, admin) == []


async def test_a_member_claiming_admin_cancels_nothing_of_anothers(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """A token issued before its user's demotion: the row decides, and for another's order the answer
    is the one any other caller gets (404)."""
    app, client = shop
    _buyer, admin, pid, order_id = await a_paid_order(app, client, db)
    demoted = await create_user(db, role=UserRole.MEMBER)
    events = await scalar(db, "select count(*) from order_events where order_id = %s", order_id)
    answer = await client.post(
        f"/api/orders/{order_id}/cancel", headers=mint_headers(app, demoted.id, UserRole.ADMIN)
    )
    assert_problem(answer, 404, "not-found")
    assert (await status_of(db, order_id), await stock_of(db, pid)) == ("paid", 3)
    assert await scalar(db, "select count(*) from order_events where order_id = %s", order_id) == events
    assert await refunds_due(client, admin) == []


async def test_a_fulfilled_order_cannot_be_cancelled(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    _buyer, admin, pid, order_id = await a_paid_order(app, client, db)
    fulfilled = await client.post(f"/api/orders/{order_id}/fulfil", headers=admin.headers)
    assert fulfilled.status_code == 200, fulfilled.text
    answer = await client.post(f"/api/orders/{order_id}/cancel", headers=admin.headers)
    assert_problem(answer, 409, "illegal-transition")
    assert (await status_of(db, order_id), await stock_of(db, pid)) == ("fulfilled", 3)
    assert await refunds_due(client, admin) == []


async def test_a_paid_order_whose_payment_id_is_unknown_is_cancelled_without_a_refund_queued(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """Paid through the previous release during a deploy: its event recorded no payment id, so nothing
    can be listed to return. The cancel still goes through (the goods cannot ship either way), and the
    order's history and the log say that the refund must be made by hand."""
    app, client = shop
    _buyer, admin, pid, order_id = await a_paid_order(app, client, db)
    await as_the_previous_release_stored_it(db, order_id)
    with captured_logs() as logs:
        answer = await client.post(f"/api/orders/{order_id}/cancel", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert await stock_of(db, pid) == 5
    (logged,) = logs.events("paid_order_cancelled")
    assert logged["refund_due"] is False and logged["level"] == "warning", logged
    event = await last_event(client, admin, order_id)
    assert (event["from_status"], event["to_status"]) == ("paid", "cancelled")
    assert event["reason"] == "cancelled by an administrator; units restocked", event
    assert "by hand" in logged["action"], logged
    assert await refunds_due(client, admin) == []


async def test_the_cancel_route_documents_the_administrators_paid_cancel(
    shop: tuple[Litestar, Client],
) -> None:
    _, client = shop
    schema = (await client.get("/schema/openapi.json")).json()
    operation = schema["paths"]["/api/orders/{order_id}/cancel"]["post"]
    assert "refund due" in operation["description"] and "refunds-due" in operation["description"]
    assert "illegal-transition" in operation["responses"]["409"]["description"]
    assert {"401", "404", "409", "429"} <= set(operation["responses"])


async def test_a_paid_then_cancelled_orders_money_is_refunded_after_payment_in_the_report(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The report of the cancel's period subtracts the money refunded after payment (its own figure):
    a report sent before the cancel never changes, the next one says the money went back."""
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, UserRole.ADMIN)
    pid = await make_product(db, stock=5, price="5.00")
    order_id = await paid_order(app, client, db, buyer, pid)
    since = await scalar(db, "select now() - interval '1 hour'")
    until = await scalar(db, "select now() + interval '1 hour'")
    orders = app.state.services[OrderService]
    async with orders.db.read() as uow:
        assert (await orders.totals_between(uow, since, until))[1] == {"EUR": Decimal("10.00")}
    answer = await client.post(f"/api/orders/{order_id}/cancel", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    async with orders.db.read() as uow:
        _, revenue = await orders.totals_between(uow, since, until)
    assert revenue == {"EUR": Decimal("0.00")}, f"the refunded money is reported as revenue: {revenue}"
    # a period holding the cancel but not the payment: the refund only, negative
    cancelled_at = await scalar(
        db, "select created_at from order_events where order_id = %s and to_status = 'cancelled'", order_id
    )
    async with orders.db.read() as uow:
        _, later = await orders.totals_between(uow, cancelled_at, until)
    assert later == {"EUR": Decimal("-10.00")}, later


async def test_old_release_payment_redelivered_after_the_cancel_is_ignored(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """Paid through the previous release (no payment id stored): a payment id it brings is ignored
    while the order is paid (it may be the same money), and still after an administrator's cancel
    (returned by hand already: never listed as a second refund)."""
    app, client = shop
    _buyer, admin, _pid, order_id = await a_paid_order(app, client, db)
    payment_id = await scalar(db, "select payment_id from payment_events where order_id = %s", order_id)
    await as_the_previous_release_stored_it(db, order_id)
    total = await scalar(db, "select total from orders where id = %s", order_id)
    answer = await client.post(f"/api/orders/{order_id}/cancel", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    sent = payments.delivery(payments.event_body(order_id, total, payment_id=payment_id))
    after = await client.post("/api/payments/webhook", content=sent.body, headers=sent.headers)
    assert after.status_code == 200, after.text
    assert after.json()["outcome"] == "ignored", "refunded by hand per the log, and now listed again"
    assert await refunds_due(client, admin) == []


async def test_a_reserved_then_cancelled_order_still_refunds_a_late_payment(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """The ``ignored`` above is for an order that was paid without a payment id only: a payment for
    an order cancelled while reserved is money it does not keep."""
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, UserRole.ADMIN)
    pid = await make_product(db, stock=5)
    order_id = await reserved_order(app, client, buyer, (pid, 1))
    answer = await client.post(f"/api/orders/{order_id}/cancel", headers=buyer.headers)
    assert answer.status_code == 200, answer.text
    assert await pay(client, db, order_id, event_id=f"late-{order_id}") == "refund-due"
    assert len(await refunds_due(client, admin)) == 1


async def test_an_administrator_may_cancel_a_paid_order_without_restocking(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """Goods damaged or missing: ``?restock=false`` keeps their units off sale; the history says so."""
    app, client = shop
    buyer, admin, pid, order_id = await a_paid_order(app, client, db)
    answer = await client.post(f"/api/orders/{order_id}/cancel?restock=false", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert await stock_of(db, pid) == 3, "units that do not exist are not put back on sale"
    event = await last_event(client, buyer, order_id)
    assert "not restocked" in event["reason"] and "refund" in event["reason"], event
    assert len(await refunds_due(client, admin)) == 1
    cur = await db.execute(
        "select delta, reason, actor_id, stock_after from stock_adjustments where product_id = %s", (pid,)
    )
    assert await cur.fetchall() == [(-2, f"written off: order {order_id} cancelled", admin.id, 3)], (
        "the units leave the books as a removal, so stock + held = initial + adjustments"
    )


async def test_a_paid_cancel_restocks_by_default_and_with_restock_true(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin = await make_user(db, app), await make_user(db, app, UserRole.ADMIN)
    pid = await make_product(db, stock=9)
    first = await paid_order(app, client, db, buyer, pid)
    second = await paid_order(app, client, db, buyer, pid)
    assert await stock_of(db, pid) == 5
    answer = await client.post(f"/api/orders/{first}/cancel?restock=true", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    assert await stock_of(db, pid) == 7
    event = await last_event(client, buyer, first)
    assert "restocked" in event["reason"] and "not restocked" not in event["reason"], event
    answer = await client.post(f"/api/orders/{second}/cancel", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    assert await stock_of(db, pid) == 9
    bad = await client.post(f"/api/orders/{second}/cancel?restock=maybe", headers=admin.headers)
    assert bad.status_code == 400, bad.text


async def test_a_buyers_cancel_ignores_nothing_and_restocks(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """``restock`` is for a paid order's goods: a reserved order's units are held, not shipped, and
    always come back, whatever the parameter says."""
    app, client = shop
    buyer = await make_user(db, app)
    pid = await make_product(db, stock=5)
    order_id = await reserved_order(app, client, buyer, (pid, 2))
    assert await stock_of(db, pid) == 3
    answer = await client.post(f"/api/orders/{order_id}/cancel?restock=false", headers=buyer.headers)
    assert answer.status_code == 200, answer.text
    assert await stock_of(db, pid) == 5


async def test_the_buyer_never_reads_the_operators_refund_by_hand_note(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer, admin, _pid, order_id = await a_paid_order(app, client, db)
    await as_the_previous_release_stored_it(db, order_id)
    with captured_logs() as logs:
        answer = await client.post(f"/api/orders/{order_id}/cancel", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    event = await last_event(client, buyer, order_id)
    assert "by hand" not in event["reason"] and "cancelled by an administrator" in event["reason"], event
    (logged,) = logs.events("paid_order_cancelled")
    assert "by hand" in logged["action"], logged
    feed = await scalar(
        db,
        "select payload->'data'->>'reason' from outbox where payload->>'verb' = 'order.cancelled'"
        " and (payload->>'object_id')::bigint = %s",
        order_id,
    )
    assert "by hand" not in feed, feed


async def test_the_cancel_route_documents_restock(shop: tuple[Litestar, Client]) -> None:
    _, client = shop
    schema = (await client.get("/schema/openapi.json")).json()
    operation = schema["paths"]["/api/orders/{order_id}/cancel"]["post"]
    (restock,) = [p for p in operation["parameters"] if p["name"] == "restock"]
    assert restock["in"] == "query" and restock["required"] is False, restock
    assert "damaged" in restock["description"], restock
