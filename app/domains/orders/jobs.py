"""Jobs of the orders domain (queue ``orders``): reservation, reconciliation, expiry."""

from __future__ import annotations

from saq.types import Context

from app.core.services import services_of
from app.domains.orders.services import OrderService


async def reserve_order(ctx: Context, *, order_id: int, outbox_id: int | None = None) -> str | None:
    """Published by the outbox for every placed order (``RESERVE_TASK``)."""
    status = await services_of(ctx)[OrderService].reserve(order_id)
    return status.value if status else None


async def reserve_stale_orders(ctx: Context) -> int:
    """Every 10 s: orders pending for longer than twice the job timeout are reserved directly (the
    whole backlog, for at most ``STALE_RUN_BUDGET_S``)."""
    services = services_of(ctx)
    return await services[OrderService].reserve_stale(older_than_s=2 * services.settings.job_timeout_s)


async def expire_reservations(ctx: Context) -> int:
    """Every minute: reservations past their window give their stock back (the whole backlog, for at
    most ``EXPIRY_RUN_BUDGET_S``)."""
    return await services_of(ctx)[OrderService].expire_reservations()
