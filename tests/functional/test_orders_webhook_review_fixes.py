"""Review fixes of the payment webhook and order placement.

- A provider adds fields to its events (Stripe's envelopes carry ``object``, ``api_version``,
  ``livemode``, ``pending_webhooks``): the webhook must keep paying orders, not answer every
  ``payment.succeeded`` 422 (each reservation would expire and each sale become a refund due).
- Any event type other than ``payment.succeeded`` is ``ignored`` whatever its ``data``, as the
  OpenAPI text says, and recorded once (a redelivery is a ``duplicate``).
- The unauthenticated webhook reads at most ``WEBHOOK_MAX_BODY`` bytes: a larger body is 413 before
  the HMAC is computed.
- ``POST /api/orders`` sends and documents its 202's ``Location``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db.models import OrderStatus
from app.domains.orders.services import OrderService
from tests.factories import Actor, assert_problem, make_product, make_user
from tests.fakes import payments

Client = httpx.AsyncClient
WEBHOOK = "/api/payments/webhook"
WEBHOOK_LIMIT = 64 * 1024


async def place(client: Client, buyer: Actor, product_id: int, key: str) -> httpx.Response:
    return await client.post(
        "/api/orders",
        json={"lines": [{"product_id": product_id, "quantity": 1}]},
        headers=buyer.headers | {"Idempotency-Key": key},
    )


async def reserved(app: Litestar, client: Client, buyer: Actor, product_id: int) -> int:
    response = await place(client, buyer, product_id, f"k-{time.time_ns()}")
    assert response.status_code == 202, response.text
    order_id = int(response.json()["id"])
    assert await app.state.services[OrderService].reserve(order_id) == OrderStatus.RESERVED
    return order_id


def signed(event: dict[str, Any]) -> payments.Delivery:
    return payments.delivery(json.dumps(event, separators=(",", ":")).encode())


async def order_status(db: AsyncConnection[Any], order_id: int) -> str:
    row = await (await db.execute("select status::text from orders where id = %s", (order_id,))).fetchone()
    assert row is not None
    return str(row[0])


async def test_fields_the_provider_adds_do_not_stop_payments(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """Stripe-style envelope fields, and a field added inside ``data``: the order is paid."""
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="10.00"))
    event = json.loads(payments.event_body(order_id, "10.00"))
    event |= {"object": "event", "api_version": "2026-11-01", "livemode": True, "pending_webhooks": 1}
    event["data"]["payment_method"] = {"type": "card", "last4": "4242"}
    sent = signed(event)
    response = await client.post(WEBHOOK, content=sent.body, headers=sent.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"event_id": event["id"], "outcome": "paid", "order_id": order_id}
    assert await order_status(db, order_id) == "paid"


@pytest.mark.parametrize(
    "data",
    [{"customer_id": "cus_1"}, {"object": {"id": "in_1", "amount_due": 1200}}, None, "a string", []],
    ids=["other-fields", "nested-object", "null", "string", "list"],
)
async def test_another_event_type_is_ignored_whatever_its_data(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], data: Any
) -> None:
    """Recorded once, as ``ignored`` (its redelivery is a ``duplicate``), without reading ``data``."""
    _, client = shop
    event_id = f"evt_{uuid.uuid4().hex}"
    event = {"id": event_id, "type": "customer.created", "created": int(time.time()), "data": data}
    event["livemode"] = False
    for outcome in ("ignored", "duplicate"):
        sent = signed(event)
        response = await client.post(WEBHOOK, content=sent.body, headers=sent.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"event_id": event_id, "outcome": outcome, "order_id": None}
    recorded = await (
        await db.execute(
            "select outcome, order_id, payment_id from payment_events where event_id = %s", (event_id,)
        )
    ).fetchall()
    assert recorded == [("ignored", None, None)]


async def test_another_event_type_without_data_is_ignored(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    _, client = shop
    event = {"id": f"evt_{uuid.uuid4().hex}", "type": "account.updated", "created": int(time.time())}
    sent = signed(event)
    response = await client.post(WEBHOOK, content=sent.body, headers=sent.headers)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "ignored"


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 10},  # a JSON number: not exact
        {"amount": "10.001"},
        {"currency": "eur"},
        {"order_id": "1"},
        {"order_id": 0},
        {"payment_id": ""},
        {"payment_id": None},
    ],
)
async def test_a_payment_with_malformed_known_fields_is_still_422(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], change: dict[str, Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="10.00"))
    event = json.loads(payments.event_body(order_id, "10.00"))
    event["data"] |= change
    event["data"]["extra"] = "kept apart"
    sent = signed(event)
    assert_problem(await client.post(WEBHOOK, content=sent.body, headers=sent.headers), 422, "unprocessable")
    assert await order_status(db, order_id) == "reserved"
    recorded = await (
        await db.execute("select count(*) from payment_events where event_id = %s", (event["id"],))
    ).fetchone()
    assert recorded == (0,)


@pytest.mark.parametrize("data", ["missing", None, "not an object", {"order_id": 1}])
async def test_a_payment_without_payment_data_is_422(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], data: Any
) -> None:
    _, client = shop
    event: dict[str, Any] = {"id": f"evt_{uuid.uuid4().hex}", "type": "payment.succeeded", "created": 1}
    event["created"] = int(time.time())
    if data != "missing":
        event["data"] = data
    sent = signed(event)
    assert_problem(await client.post(WEBHOOK, content=sent.body, headers=sent.headers), 422, "unprocessable")


@pytest.mark.parametrize(
    "envelope",
    [{"created": "now"}, {"id": ""}, {"type": 7}, {"created": -1}],
    ids=["created-string", "empty-id", "type-number", "created-negative"],
)
async def test_a_malformed_envelope_is_422_whatever_its_type(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any], envelope: dict[str, Any]
) -> None:
    _, client = shop
    event: dict[str, Any] = {"id": "evt-x", "type": "customer.created", "created": int(time.time())}
    sent = signed(event | envelope | {"data": {}})
    assert_problem(await client.post(WEBHOOK, content=sent.body, headers=sent.headers), 422, "unprocessable")


async def test_a_body_over_the_webhooks_limit_is_413(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    """Signed or not, announced or streamed: the unauthenticated webhook reads at most 64 KiB."""
    app, client = shop
    buyer = await make_user(db, app)
    order_id = await reserved(app, client, buyer, await make_product(db, stock=5, price="10.00"))
    event = json.loads(payments.event_body(order_id, "10.00"))
    event["padding"] = "x" * (65 * 1024)
    sent = signed(event)
    assert len(sent.body) > WEBHOOK_LIMIT
    assert_problem(await client.post(WEBHOOK, content=sent.body, headers=sent.headers), 413)

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for start in range(0, len(sent.body), 8192):
            yield sent.body[start : start + 8192]

    resent = payments.delivery(sent.body)
    response = await client.post(WEBHOOK, content=streamed(), headers=resent.headers)
    assert_problem(response, 413)
    assert await order_status(db, order_id) == "reserved"
    # just under the limit, the same event is processed
    event["padding"] = "x" * (65 * 1024 - (len(sent.body) - WEBHOOK_LIMIT))
    fits = signed(event)
    assert len(fits.body) == WEBHOOK_LIMIT
    response = await client.post(WEBHOOK, content=fits.body, headers=fits.headers)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "paid"


async def test_the_webhooks_openapi_documents_its_body_and_limit(shop: tuple[Litestar, Client]) -> None:
    _, client = shop
    operation = (await client.get("/schema/openapi.json")).json()["paths"][WEBHOOK]["post"]
    assert "65,536" in operation["responses"]["413"]["description"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) >= {"id", "type", "created"}
    assert schema.get("additionalProperties") is not False
    assert "payment_id" in json.dumps(schema["properties"]["data"])


async def test_a_placed_order_sends_and_documents_its_location(
    shop: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = shop
    buyer = await make_user(db, app)
    product_id = await make_product(db, stock=5, price="1.00")
    key = f"k-{time.time_ns()}"
    for replayed in ("false", "true"):
        response = await place(client, buyer, product_id, key)
        assert response.status_code == 202, response.text
        assert response.headers["Idempotent-Replayed"] == replayed
        assert response.headers["Location"] == f"/api/orders/{response.json()['id']}"
        assert (await client.get(response.headers["Location"], headers=buyer.headers)).status_code == 200
    operation = (await client.get("/schema/openapi.json")).json()["paths"]["/api/orders"]["post"]
    headers = operation["responses"]["202"]["headers"]
    assert set(headers) >= {"Location", "Idempotent-Replayed"}
    assert headers["Location"]["schema"]["type"] == "string"
