"""HTTP for orders (``/api/orders``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIHeader, OpenAPIResponse, OpenAPIType, Schema
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from app.core.auth import Caller, requires_admin, requires_user
from app.core.errors import Problem
from app.core.idempotency import REPLAYED_HEADER, DocumentsIdempotency, idempotency_key_header
from app.core.openapi import BEARER, documents_json_body, problems
from app.core.pagination import BEFORE_EVERY_ID, CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.routing import Controller
from app.core.types import MAX_ID, IdPath
from app.db.models import OrderStatus
from app.domains.orders.payments import (
    SIGNATURE_HEADER,
    WEBHOOK_MAX_BODY,
    PaymentEventDocumented,
    PaymentEventOut,
)
from app.domains.orders.schemas import (
    OrderCreate,
    OrderCursor,
    OrderOut,
    PaymentRefundCreate,
    PaymentRefundOut,
    RefundCursor,
)
from app.domains.orders.services import OrderService

Orders = NamedDependency[OrderService]
Restock = Annotated[
    bool,
    QueryParameter(
        description="A paid order an administrator cancels: whether its units go back on sale (default "
        "`true`); `false` when the goods are damaged or missing, so that units that do not exist are "
        "not sold. A pending or reserved order's units always come back (they were held, not shipped).",
    ),
]
"""A query parameter, not an optional JSON body: the route takes no body today (buyers and
administrators post nothing), and our strict body decoding (``app.core.routing``) decodes a Struct,
not ``Struct | None``, which falls back to Litestar's lax conversion (``{"restock": 0}`` accepted)."""
WEBHOOK_BODY_LIMIT = f"The body may hold at most {WEBHOOK_MAX_BODY:,} bytes (64 KiB)"


@dataclass
class DocumentsPlacement(DocumentsIdempotency):
    """``operation_class=`` of ``place_order``: its 202 carries ``Location`` besides
    ``Idempotent-Replayed`` (documented here for the same reason: a ``ResponseSpec`` answer)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        accepted = (self.responses or {}).get(str(HTTP_202_ACCEPTED))
        if isinstance(accepted, OpenAPIResponse):
            accepted.headers = {
                **(accepted.headers or {}),
                "Location": OpenAPIHeader(
                    schema=Schema(type=OpenAPIType.STRING),
                    description="The order's path (`/api/orders/{id}`): poll it for `reserved` or "
                    "`rejected`. Sent with the replay of a placement too.",
                ),
            }


class OrdersController(Controller):
    path = "/api/orders"
    tags = ["commerce"]
    guards = [requires_user]
    security = BEARER

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Place an order (stock is reserved in the background)",
        description="Needs an `Idempotency-Key` header (kept 24 h per user): the same key and body replay "
        "the first answer with `Idempotent-Replayed: true`; a different body is 422; a concurrent "
        "duplicate is 409 (a request that never finished holds its key for at most a minute). Answers "
        "202 with the pending order and its `Location`; poll it for `reserved` or `rejected`.",
        responses={
            **problems(400, 401, 409, 422, 429),
            202: ResponseSpec(OrderOut, description="Accepted"),
        },
        operation_class=DocumentsPlacement,
    )
    async def place_order(
        self,
        data: JSONBody[OrderCreate],
        orders: Orders,
        current_user: Caller,
        idempotency_key: Annotated[
            str, idempotency_key_header("Printable ASCII, unique per intended order (a UUID, say)")
        ],
    ) -> Response[bytes]:
        placed = await orders.place(current_user.id, data, idempotency_key)
        return Response(
            placed.body,
            status_code=placed.status_code,
            media_type=MediaType.JSON,
            headers={
                "Location": f"/api/orders/{placed.order_id}",
                REPLAYED_HEADER: "true" if placed.replayed else "false",
            },
        )

    @get(
        "/", summary="Your orders (admins: everyone's, filterable by user)", responses=problems(400, 401, 429)
    )
    async def list_orders(
        self,
        orders: Orders,
        current_user: Caller,
        status: Annotated[
            OrderStatus | None, QueryParameter(description="Only orders in this status")
        ] = None,
        user_id: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID, description="Admins only")] = None,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[OrderOut]:
        owner = user_id if current_user.is_admin else current_user.id
        before_id = decode_cursor(cursor, OrderCursor).before_id if cursor else BEFORE_EVERY_ID
        rows = await orders.list_orders(
            user_id=owner, status=status, before_id=before_id, row_limit=limit + 1
        )
        return paginate(rows, limit, lambda row: OrderCursor(row.id))

    @get(
        "/{order_id:int}",
        summary="An order with its history (yours; admins: any)",
        responses=problems(401, 404, 429),
    )
    async def get_order(self, order_id: IdPath, orders: Orders, current_user: Caller) -> OrderOut:
        return await orders.get(order_id, current_user.id, current_user.is_admin)

    @post(
        "/{order_id:int}/cancel",
        status_code=HTTP_200_OK,
        summary="Cancel an order (yours while pending or reserved; admins: any, paid ones too)",
        description="A buyer cancels their own order while it is `pending` or `reserved` (a reserved "
        "order's stock comes back); a paid, fulfilled or settled order is 409 `illegal-transition`. An "
        "administrator (the account's row decides, not the token's role: otherwise the caller is "
        "answered as any other, 404 for another's order) cancels anyone's pending or reserved order, "
        "and a `paid` one whose goods cannot ship: its units go back to stock, and the payment that "
        "paid it becomes a refund due (outcome `refund-due`, listed at "
        "`/api/admin/payments/refunds-due`, marked at `/api/admin/payments/refunded`); the order's "
        "history records the administrator and the payment. `restock=false` (administrators, paid "
        "orders) keeps the units off sale when the goods are damaged or missing; the history says "
        "whether they were restocked, and units not restocked are recorded as a stock adjustment "
        "(a removal, reason `written off: order N cancelled`). An order paid before payment ids "
        "were recorded is cancelled too, but no refund can be listed (the operators' log says to "
        "return it at the provider by hand). A fulfilled order cannot be cancelled (409). Cancelled "
        "is final: a second cancel is 409 and gives nothing back again. No request body.",
        responses={
            **problems(401, 404, 429),
            409: ResponseSpec(
                Problem,
                description="`illegal-transition`: the order is past what the caller may cancel (a "
                "buyer's paid order; anyone's fulfilled, rejected, expired or cancelled one)",
                media_type="application/problem+json",
            ),
        },
    )
    async def cancel_order(
        self, order_id: IdPath, orders: Orders, current_user: Caller, restock: Restock = True
    ) -> OrderOut:
        return await orders.cancel(order_id, current_user.id, current_user.is_admin, restock=restock)

    @post(
        "/{order_id:int}/fulfil",
        status_code=HTTP_200_OK,
        guards=[requires_admin],
        summary="Mark a paid order fulfilled (admins)",
        responses=problems(401, 403, 404, 409, 429),
    )
    async def fulfil_order(self, order_id: IdPath, orders: Orders, current_user: Caller) -> OrderOut:
        return await orders.fulfil(order_id, current_user.id)


class PaymentWebhookController(Controller):
    """The payment provider's webhook. Public (no bearer token): the HMAC signature is the proof.

    Not rate-limited (``opt={"rate_limit": None}``): the provider delivers every buyer's events from
    a few addresses at its own pace, and the per-address ``default`` limit answered them 429 in a
    sales peak, so a payment redelivered after the reservation window expired its order (a refund
    instead of a sale). Flooding it costs little: a body over ``WEBHOOK_MAX_BODY`` (64 KiB, not
    MAX_BODY_BYTES) is 413, not processed (read and dropped, so a proxy gets the answer; the gateway,
    ``deploy/nginx.conf``, refuses it before), and a delivery without a valid signature is
    refused by the HMAC check, whose cost that limit bounds, before any database work."""

    path = "/api/payments/webhook"
    tags = ["commerce"]

    @post(
        "/",
        status_code=HTTP_200_OK,
        summary="Payment provider webhook (marks orders paid)",
        description="Signed Stripe-style: `Payment-Signature: t=<unix seconds>,v1=<hex>` where v1 is "
        "HMAC-SHA256 of `<t>.<raw body>` with PAYMENT_WEBHOOK_SECRET; refused (400) when no signature "
        "matches or `t` is more than PAYMENT_WEBHOOK_TOLERANCE_S from the server's clock. Each event id "
        "is processed once (a redelivery answers `duplicate`). Only `payment.succeeded` for a reserved "
        "order whose amount and currency match makes it paid (`paid`); each is stored with its payment "
        "id, amount and currency. Money no order keeps is a refund due (listed at "
        "`/api/admin/payments/refunds-due`): `mismatch` (amount or currency differ; not paid), "
        "`expired` (too late: the exact amount for a reservation past its window expires the order; "
        "any amount for an order expired already), `refund-due` (an order that does not exist, or is "
        "cancelled, rejected, fulfilled or paid by another payment). A payment id an earlier event "
        "brought (a redelivery under a new event id) answers `ignored`, as does any other event "
        "type. A `payment.succeeded` for an order still "
        "`pending` (its stock not reserved yet: our worker is behind) reserves it first, as the worker "
        "would, then is applied as to a reserved order: `paid` (the history shows pending, reserved, "
        "paid), `mismatch` (the order stays reserved), or `refund-due` when the stock is short (the "
        "order is rejected, with its shortfall). The handler reads "
        "the raw body itself: the signature covers its exact bytes. 404 while no "
        "PAYMENT_WEBHOOK_SECRET is configured. Not rate-limited: the provider sends every shop's "
        "events from a few addresses at its own pace (a per-address limit refused payments in a "
        "sales peak, and their late redelivery found the reservation expired); a body over 64 KiB is "
        "413 and a delivery without a valid signature is refused by the HMAC check (its cost bounded "
        "by that limit), both before any database work. Fields the provider adds to its events are "
        "accepted (and not read); a `payment.succeeded` whose `data` lacks a field above, or has "
        "one of the wrong type, is 422.",
        opt={"rate_limit": None},
        request_max_body_size=WEBHOOK_MAX_BODY,
        operation_class=documents_json_body(PaymentEventDocumented),
        responses={
            **problems(400, 404, 413, 422),
            413: ResponseSpec(
                Problem,
                description=f"{WEBHOOK_BODY_LIMIT}; a larger one is not processed nor recorded (its bytes "
                "are read and dropped, so that a proxy gets this answer; the gateway refuses it before)",
                media_type="application/problem+json",
            ),
        },
    )
    async def payment_webhook(
        self,
        request: Request[Any, Any, Any],
        orders: Orders,
        signature: Annotated[
            str | None,
            HeaderParameter(name=SIGNATURE_HEADER, max_length=2048, description="t=<unix>,v1=<hex>"),
        ] = None,
    ) -> PaymentEventOut:
        return await orders.confirm_payment(await request.body(), signature)


class PaymentRefundsController(Controller):
    """The refunds due: payments the webhook recorded whose money no order keeps (administrators)."""

    path = "/api/admin/payments"
    tags = ["commerce"]
    guards = [requires_admin]
    security = BEARER

    @get(
        "/refunds-due",
        summary="Payments to return, not marked refunded yet (admins)",
        description="Payment events whose money must go back (outcomes `refund-due`, `expired`, "
        "`mismatch`; `refund-due` too for the payment of a paid order an administrator cancelled, "
        "`POST /api/orders/{id}/cancel`) and that nobody marked refunded, newest payment first (by "
        "when the payment arrived, not when its refund became due: a cancelled paid order's payment "
        "takes its arrival's place, possibly on a page already read; walk the list to the end). "
        "`payment_id`, `amount` and `currency` are what the provider reported (null for events "
        "recorded before they were stored).",
        responses=problems(400, 401, 403, 429),
    )
    async def list_refunds_due(
        self, orders: Orders, cursor: CursorParam = None, limit: PageSize = 50
    ) -> Page[PaymentRefundOut]:
        before_id = decode_cursor(cursor, RefundCursor).before_id if cursor else BEFORE_EVERY_ID
        rows = await orders.list_refunds_due(before_id=before_id, row_limit=limit + 1)
        return paginate(rows, limit, lambda row: RefundCursor(row.id), PaymentRefundOut.from_row)

    @post(
        "/refunded",
        status_code=HTTP_200_OK,
        summary="Mark a refund due as returned (admins)",
        description='The body names the provider\'s event id (`{"event_id": "..."}`): any printable '
        "ASCII, `/`, `.` and `..` included, which a path segment could not carry. Records who marked "
        "it and when. Idempotent: marking it again answers the same record. 404 for an unknown event "
        "id or an event whose money is not to be returned.",
        responses=problems(400, 401, 403, 404, 429),
    )
    async def mark_refunded(
        self, data: JSONBody[PaymentRefundCreate], orders: Orders, current_user: Caller
    ) -> PaymentRefundOut:
        return await orders.mark_refunded(data.event_id, current_user.id)
