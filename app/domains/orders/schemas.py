"""Wire shapes of orders."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, cast

import msgspec

from app.core.types import Id
from app.db.models import Order, OrderEvent, OrderItem, OrderStatus, PaymentEvent
from app.domains.orders.payments import EventId, RefundOutcome

MAX_LINES = 50
MAX_TOTAL = Decimal("999999999999.99")
"""What ``orders.total numeric(14, 2)`` holds."""


class OrderLine(msgspec.Struct, forbid_unknown_fields=True):
    product_id: Id
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1000)]


class OrderCreate(msgspec.Struct, forbid_unknown_fields=True):
    lines: Annotated[list[OrderLine], msgspec.Meta(min_length=1, max_length=MAX_LINES)]


class OrderItemOut(msgspec.Struct, frozen=True):
    product_id: int
    quantity: int
    unit_price: Decimal


class ShortLine(msgspec.Struct, frozen=True):
    product_id: int
    requested: int
    available: int


class OrderEventOut(msgspec.Struct, frozen=True):
    from_status: OrderStatus | None
    to_status: OrderStatus
    reason: str
    actor_id: int | None
    created_at: datetime


class OrderOut(msgspec.Struct, frozen=True):
    id: int
    user_id: int
    status: OrderStatus
    total: Decimal
    currency: str
    items: list[OrderItemOut]
    reserved_until: datetime | None
    shortfall: list[ShortLine] | None
    created_at: datetime
    updated_at: datetime
    events: list[OrderEventOut] | None = None

    @classmethod
    def build(cls, order: Order, items: list[OrderItem], events: list[OrderEvent] | None = None) -> OrderOut:
        shortfall: Any = order.shortfall
        return cls(
            id=order.id,
            user_id=order.user_id,
            status=order.status,
            total=order.total,
            currency=order.currency,
            items=[OrderItemOut(i.product_id, i.quantity, i.unit_price) for i in items],
            reserved_until=order.reserved_until,
            shortfall=msgspec.convert(shortfall, list[ShortLine]) if shortfall is not None else None,
            created_at=order.created_at,
            updated_at=order.updated_at,
            events=None
            if events is None
            else [
                OrderEventOut(e.from_status, e.to_status, e.reason, e.actor_id, e.created_at) for e in events
            ],
        )


class OrderCursor(msgspec.Struct, frozen=True):
    before_id: Annotated[int, msgspec.Meta(ge=0)]


class PaymentRefundOut(msgspec.Struct, frozen=True):
    """A payment whose money must go back (taken for an order that could not keep it, or paying an
    order an administrator cancelled since): what the provider's event reported it took (null for an
    event recorded before payments were stored) and, once an administrator returned it, who and when."""

    event_id: Annotated[str, msgspec.Meta(description="The provider's event id")]
    order_id: Annotated[int | None, msgspec.Meta(description="Null: the order does not exist")]
    claimed_order_id: Annotated[
        int | None,
        msgspec.Meta(
            description="The order the payment named, as the provider sent it (also when no such order "
            "exists; null for an event recorded before it was kept)"
        ),
    ]
    payment_id: str | None
    amount: Decimal | None
    currency: str | None
    outcome: RefundOutcome
    received_at: datetime
    refunded_at: datetime | None
    refunded_by: int | None

    @classmethod
    def from_row(cls, row: PaymentEvent) -> PaymentRefundOut:
        return cls(
            event_id=row.event_id,
            order_id=row.order_id,
            claimed_order_id=row.claimed_order_id,
            payment_id=row.payment_id,
            amount=row.amount,
            currency=row.currency,
            outcome=cast("RefundOutcome", row.outcome),
            received_at=row.received_at,
            refunded_at=row.refunded_at,
            refunded_by=row.refunded_by,
        )


class PaymentRefundCreate(msgspec.Struct, forbid_unknown_fields=True):
    """An administrator's record that the money of a refund due was returned."""

    event_id: EventId


class RefundCursor(msgspec.Struct, frozen=True):
    """The position in the refunds due: the last row's (internal) sequence number."""

    before_id: Annotated[int, msgspec.Meta(ge=0)]
