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


async def reserve_stale_orders(ctx: Context) -> int:
    """Every 10 s: orders pending for longer than twice the job timeout are reserved directly."""
    settings = ctx["resources"].settings
    return await _orders(ctx).reserve_stale(older_than_s=2 * settings.job_timeout_s)


async def expire_reservations(ctx: Context) -> int:
    return await _orders(ctx).expire_reservations()
