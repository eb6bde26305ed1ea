"""Orders: placement with idempotency keys, reservation by the worker, and every later transition.

pending → reserved → paid → fulfilled; pending → rejected (short stock); pending | reserved →
cancelled; reserved → expired. Each transition happens under the order's row lock, is recorded in
``order_events`` and emitted to the activity feed; reserved stock is given back exactly once
(cancel or expiry), because only a transition out of ``reserved`` releases it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.core.db import UnitOfWork, transaction
from app.core.errors import AppError, ConflictError, NotFoundError, TooManyRequestsError, UnprocessableError
from app.core.outbox import enqueue
from app.db import orders as queries
from app.db import products as product_queries
from app.db.models import Order, OrderStatus
from app.domains.activity.events import emit
from app.domains.orders.schemas import MAX_TOTAL, OrderCreate, OrderOut, ShortLine

log = structlog.get_logger("app.orders")

ALLOWED: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.RESERVED, OrderStatus.REJECTED, OrderStatus.CANCELLED}),
    OrderStatus.RESERVED: frozenset({OrderStatus.PAID, OrderStatus.CANCELLED, OrderStatus.EXPIRED}),
    OrderStatus.PAID: frozenset({OrderStatus.FULFILLED}),
}
RESERVE_TASK = "reserve_order"


class IllegalTransitionError(ConflictError):
    slug = "illegal-transition"
    title = "Illegal order transition"


class IdempotencyKeyReusedError(UnprocessableError):
    slug = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class IdempotencyKeyInFlightError(ConflictError):
    slug = "idempotency-key-in-flight"
    title = "A request with this idempotency key is still being processed"


class PlacedOrder(msgspec.Struct, frozen=True):
    status_code: int
    body: bytes
    order_id: int
    replayed: bool


async def _transition(
    uow: UnitOfWork,
    order: Order,
    to: OrderStatus,
    *,
    reason: str,
    actor: int | None,
    reserved_until: datetime | None = None,
    shortfall: list[ShortLine] | None = None,
) -> Order:
    if to not in ALLOWED.get(order.status, frozenset()):
        raise IllegalTransitionError(f"An order that is {order.status.value} cannot become {to.value}.")
    updated = await queries.set_order_status(
        uow.conn,
        status=to,
        reserved_until=reserved_until,
        shortfall=msgspec.to_builtins(shortfall) if shortfall is not None else None,
        id=order.id,
    )
    assert updated is not None
    await queries.record_order_event(
        uow.conn, order_id=order.id, from_status=order.status, to_status=to, reason=reason, actor_id=actor
    )
    await emit(
        uow,
        actor=actor if actor is not None else order.user_id,
        verb=f"order.{to.value}",
        obj=("order", order.id),
        project_id=None,
        data={"from": order.status.value, "reason": reason, "total": str(order.total)},
    )
    return updated


async def _release_stock(conn: AsyncConnection[Any], order_id: int) -> None:
    for item in await queries.get_order_items(conn, order_id=order_id):
        await product_queries.release_stock(conn, quantity=item.quantity, id=item.product_id)


class OrderService:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.settings = settings
        self.pool = pool

    # -- placement (HTTP) ------------------------------------------------------------------

    async def place(self, user_id: int, data: OrderCreate, idempotency_key: str) -> PlacedOrder:
        """Store the order as pending and its reservation request in one transaction.

        The idempotency key is claimed first in its own committed transaction: a concurrent
        duplicate then sees the claim (409), a later one the stored response (replayed), and a
        different body under the same key is refused (422). A failure releases the claim.
        """
        request_hash = hashlib.sha256(msgspec.json.encode(data)).digest()
        async with transaction(self.pool) as uow:
            await queries.delete_expired_idempotency_key(uow.conn, user_id=user_id, key=idempotency_key)
            claimed = await queries.claim_idempotency_key(
                uow.conn, user_id=user_id, key=idempotency_key, request_hash=request_hash
            )
            if claimed is None:
                existing = await queries.get_idempotency_key(uow.conn, user_id=user_id, key=idempotency_key)
                assert existing is not None
                if existing.request_hash != request_hash:
                    raise IdempotencyKeyReusedError("This Idempotency-Key was used with a different body.")
                if existing.response_status is None or existing.response_body is None:
                    raise IdempotencyKeyInFlightError("Retry when the first request has finished.")
                return PlacedOrder(
                    status_code=existing.response_status,
                    body=existing.response_body,
                    order_id=existing.resource_id or 0,
                    replayed=True,
                )
        try:
            async with transaction(self.pool) as uow:
                placed = await self._place(uow, user_id, data)
                await queries.complete_idempotency_key(
                    uow.conn,
                    response_status=placed.status_code,
                    response_body=placed.body,
                    resource_id=placed.order_id,
                    user_id=user_id,
                    key=idempotency_key,
                )
        except BaseException:
            async with transaction(self.pool) as uow:
                await queries.release_idempotency_key(uow.conn, user_id=user_id, key=idempotency_key)
            raise
        return placed

    async def _place(self, uow: UnitOfWork, user_id: int, data: OrderCreate) -> PlacedOrder:
        await queries.lock_user(uow.conn, id=user_id)
        open_orders = await queries.count_open_orders(uow.conn, user_id=user_id) or 0
        if open_orders >= self.settings.max_open_orders:
            raise TooManyRequestsError(
                f"At most {self.settings.max_open_orders} orders may be pending or reserved at once.",
                headers={"Retry-After": "60"},
            )
        wanted = {line.product_id: line.quantity for line in data.lines}
        if len(wanted) != len(data.lines):
            raise UnprocessableError("Each product may appear on one line only.")
        products = {p.id: p for p in await product_queries.get_products_by_ids(uow.conn, ids=sorted(wanted))}
        unavailable = sorted(pid for pid in wanted if pid not in products or not products[pid].active)
        if unavailable:
            raise UnprocessableError(f"Unknown or inactive products: {unavailable}.")
        total = sum((products[pid].price * qty for pid, qty in wanted.items()), start=Decimal(0))
        if total > MAX_TOTAL:
            raise UnprocessableError(f"The order total {total} exceeds {MAX_TOTAL}; split the order.")
        order = await queries.create_order(
            uow.conn, user_id=user_id, total=total, currency=self.settings.currency
        )
        assert order is not None
        for product_id in sorted(wanted):
            await queries.add_order_item(
                uow.conn,
                order_id=order.id,
                product_id=product_id,
                quantity=wanted[product_id],
                unit_price=products[product_id].price,
            )
        await queries.record_order_event(
            uow.conn,
            order_id=order.id,
            from_status=None,
            to_status=OrderStatus.PENDING,
            reason="placed",
            actor_id=user_id,
        )
        await enqueue(uow, "orders", RESERVE_TASK, {"order_id": order.id})
        await emit(
            uow,
            actor=user_id,
            verb="order.placed",
            obj=("order", order.id),
            project_id=None,
            data={"total": str(total), "lines": len(wanted)},
        )
        items = await queries.get_order_items(uow.conn, order_id=order.id)
        body = msgspec.json.encode(OrderOut.build(order, items))
        return PlacedOrder(status_code=202, body=body, order_id=order.id, replayed=False)

    # -- reservation (worker) ----------------------------------------------------------------

    async def reserve(self, order_id: int) -> OrderStatus | None:
        """Reserve every line or none, in product-id order; idempotent (a non-pending order is left
        alone, so a redelivered job changes stock once)."""
        async with transaction(self.pool) as uow:
            order = await queries.get_order_for_update(uow.conn, id=order_id)
            if order is None or order.status != OrderStatus.PENDING:
                return order.status if order else None
            items = await queries.get_order_items(uow.conn, order_id=order_id)
            try:
                async with uow.conn.transaction():  # a savepoint: all lines or none
                    for item in items:
                        left = await product_queries.reserve_stock(
                            uow.conn, quantity=item.quantity, id=item.product_id
                        )
                        if left is None:
                            raise _ShortStockError
            except _ShortStockError:
                stock = {
                    p.id: p.stock
                    for p in await product_queries.get_products_by_ids(
                        uow.conn, ids=[i.product_id for i in items]
                    )
                }
                shortfall = [
                    ShortLine(
                        product_id=i.product_id, requested=i.quantity, available=stock.get(i.product_id, 0)
                    )
                    for i in items
                    if stock.get(i.product_id, 0) < i.quantity
                ]
                await _transition(
                    uow,
                    order,
                    OrderStatus.REJECTED,
                    reason="insufficient stock",
                    actor=None,
                    shortfall=shortfall,
                )
                return OrderStatus.REJECTED
            until = datetime.now(UTC) + timedelta(seconds=self.settings.reservation_window_s)
            await _transition(
                uow, order, OrderStatus.RESERVED, reason="stock reserved", actor=None, reserved_until=until
            )
            return OrderStatus.RESERVED

    async def reserve_stale(self, older_than_s: float, batch_size: int = 200) -> int:
        """Reconciliation: reserve orders still pending long after placement.

        The outbox makes the reservation job durable, but a worker killed mid-job leaves it to SAQ's
        sweeper, and a job that ran out of retries is gone; this makes progress independent of both.
        ``reserve`` is idempotent, so racing a late job is harmless.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with transaction(self.pool) as uow:
            stale = await queries.list_stale_pending_orders(
                uow.conn, created_before=cutoff, batch_size=batch_size
            )
        for order_id in stale:
            await self.reserve(order_id)
        if stale:
            log.warning("stale_pending_orders_reserved", count=len(stale))
        return len(stale)

    async def expire_reservations(self, batch_size: int = 100) -> int:
        """Expire reservations past their window and give their stock back (cron)."""
        async with transaction(self.pool) as uow:
            expired = 0
            for order_id in await queries.claim_expired_reservations(uow.conn, batch_size=batch_size):
                order = await queries.get_order_for_update(uow.conn, id=order_id)
                if order is None or order.status != OrderStatus.RESERVED:
                    continue
                await _release_stock(uow.conn, order_id)
                await _transition(
                    uow, order, OrderStatus.EXPIRED, reason="reservation window passed", actor=None
                )
                expired += 1
        if expired:
            log.info("reservations_expired", count=expired)
        return expired

    # -- the buyer's and the admin's actions ------------------------------------------------------

    async def _locked(self, uow: UnitOfWork, order_id: int, actor: int, is_admin: bool) -> Order:
        order = await queries.get_order_for_update(uow.conn, id=order_id)
        if order is None or (order.user_id != actor and not is_admin):
            raise NotFoundError("No such order.")
        return order

    async def cancel(self, order_id: int, actor: int, is_admin: bool) -> OrderOut:
        async with transaction(self.pool) as uow:
            order = await self._locked(uow, order_id, actor, is_admin)
            if order.status == OrderStatus.RESERVED:
                await _release_stock(uow.conn, order_id)
            order = await _transition(uow, order, OrderStatus.CANCELLED, reason="cancelled", actor=actor)
            return await self._out(uow, order)

    async def pay(self, order_id: int, actor: int, is_admin: bool) -> OrderOut:
        """Simulated payment. A reservation whose window has passed is expired now instead (409)."""
        lapsed = False
        async with transaction(self.pool) as uow:
            order = await self._locked(uow, order_id, actor, is_admin)
            if (
                order.status == OrderStatus.RESERVED
                and order.reserved_until
                and order.reserved_until <= datetime.now(UTC)
            ):
                await _release_stock(uow.conn, order_id)
                await _transition(
                    uow, order, OrderStatus.EXPIRED, reason="reservation window passed", actor=None
                )
                lapsed = True
            else:
                order = await _transition(
                    uow, order, OrderStatus.PAID, reason="payment received", actor=actor
                )
                return await self._out(uow, order)
        assert lapsed
        raise IllegalTransitionError("The reservation expired before payment; place the order again.")

    async def fulfil(self, order_id: int, actor: int) -> OrderOut:
        async with transaction(self.pool) as uow:
            order = await self._locked(uow, order_id, actor, is_admin=True)
            order = await _transition(uow, order, OrderStatus.FULFILLED, reason="fulfilled", actor=actor)
            return await self._out(uow, order)

    async def get(self, order_id: int, actor: int, is_admin: bool) -> OrderOut:
        async with transaction(self.pool) as uow:
            order = await queries.get_order(uow.conn, id=order_id)
            if order is None or (order.user_id != actor and not is_admin):
                raise NotFoundError("No such order.")
            return await self._out(uow, order, with_events=True)

    async def list(
        self, *, user_id: int | None, status: OrderStatus | None, before_id: int, limit: int
    ) -> list[OrderOut]:
        async with transaction(self.pool) as uow:
            orders = await queries.list_orders(
                uow.conn, user_id=user_id, status=status, before_id=before_id, row_limit=limit
            )
            items = await queries.get_items_for_orders(uow.conn, order_ids=[o.id for o in orders])
        by_order: dict[int, list[Any]] = {}
        for item in items:
            by_order.setdefault(item.order_id, []).append(item)
        return [OrderOut.build(order, by_order.get(order.id, [])) for order in orders]

    async def _out(self, uow: UnitOfWork, order: Order, *, with_events: bool = False) -> OrderOut:
        items = await queries.get_order_items(uow.conn, order_id=order.id)
        events = await queries.get_order_events(uow.conn, order_id=order.id) if with_events else None
        return OrderOut.build(order, items, events)


class _ShortStockError(AppError):
    """Internal: a line could not be reserved (rolls the savepoint back)."""
