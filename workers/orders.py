"""Jobs of the ``orders`` queue: reservation, and the expiry of unpaid reservations."""

from __future__ import annotations

from saq.types import Context

from app.domains.orders.services import OrderService
from workers.context import pool_of


def _orders(ctx: Context) -> OrderService:
    return OrderService(ctx["resources"].settings, pool_of(ctx))


async def reserve_order(ctx: Context, *, order_id: int, outbox_id: int | None = None) -> str | None:
    status = await _orders(ctx).reserve(order_id)
    return status.value if status else None


async def expire_reservations(ctx: Context) -> int:
    return await _orders(ctx).expire_reservations()
