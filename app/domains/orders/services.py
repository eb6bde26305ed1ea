"""Orders: placement with idempotency keys, reservation by the worker (or by a payment that came
first: ``confirm_payment``), and every later transition.

pending → reserved → paid → fulfilled; pending → rejected (short stock); pending | reserved →
cancelled; reserved → expired; paid → cancelled by an administrator only (goods that cannot ship:
the payment that paid it becomes a refund due). Only the payment provider's signed webhook makes an
order paid (``confirm_payment``); buyers cannot. Each transition happens under the order's row lock,
is recorded in ``order_events`` and emitted to the activity feed; held stock is given back exactly
once (cancel or expiry), because only a transition out of ``reserved`` into cancelled or expired, or
from ``paid`` to cancelled (unless the administrator says the goods are gone: ``restock=False``),
releases it (paid → fulfilled does not), and cancelled and expired are final.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import structlog
from prometheus_client import Counter

from app.config import Settings
from app.core.db import Database, UnitOfWork
from app.core.errors import (
    ConflictError,
    NotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
    UnprocessableError,
    database_down,
)
from app.core.idempotency import Idempotency, StoredAnswer
from app.core.logging import OncePerInterval
from app.core.outbox import enqueue
from app.db import orders as queries
from app.db.models import Order, OrderStatus, PaymentEvent
from app.domains.accounts.services import AccountService
from app.domains.activity.events import emit
from app.domains.orders.payments import (
    PAYMENT_SUCCEEDED,
    REFUND_OUTCOMES,
    InvalidSignatureError,
    Outcome,
    PaymentData,
    PaymentEventIn,
    PaymentEventOut,
    verify_signature,
)
from app.domains.orders.schemas import MAX_TOTAL, OrderCreate, OrderOut, PaymentRefundOut, ShortLine
from app.domains.products.services import ProductService

log = structlog.get_logger("app.orders")

WEBHOOK_REFUSED = Counter(
    "app_payment_webhook_refused", "Payment webhook deliveries refused before any effect", ["reason"]
)
WEBHOOK_WARNINGS = OncePerInterval(60.0)
"""The webhook is public: one warning a minute per reason, every refusal counted in
``app_payment_webhook_refused_total`` (a client's requests wrote one warning each)."""


def _refused_webhook(reason: str, **fields: object) -> None:
    """Count the refusal under ``reason`` (``not_configured``, ``refused_missing``, ``_malformed``,
    ``_stale``, ``_mismatch``); warn of it once a minute per reason, so that junk sent to the public
    route cannot hide the warning of a drifting clock or a rotated secret."""
    WEBHOOK_REFUSED.labels(reason).inc()
    if WEBHOOK_WARNINGS.due(reason):
        event = "payment_webhook_not_configured" if reason == "not_configured" else "payment_webhook_refused"
        log.warning(event, reason=reason, once_per_s=WEBHOOK_WARNINGS.interval_s, **fields)


ALLOWED: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.RESERVED, OrderStatus.REJECTED, OrderStatus.CANCELLED}),
    OrderStatus.RESERVED: frozenset({OrderStatus.PAID, OrderStatus.CANCELLED, OrderStatus.EXPIRED}),
    OrderStatus.PAID: frozenset({OrderStatus.FULFILLED, OrderStatus.CANCELLED}),  # cancelled: admins only
}
RESERVE_TASK = "reserve_order"
EXPIRY_RUN_BUDGET_S = 30
"""How long one run of the expiry cron starts new batches: half its job's timeout (``module.py``), so
the batch started last finishes well within it."""
STALE_RUN_BUDGET_S = 30
"""How long one run of the reconciliation cron (``reserve_stale``) starts new batches: half its job's
timeout (``module.py``), as the expiry's."""
FAILED_IDS_LOGGED = 20
"""The ids of failed orders a cron's end-of-run line names at most (each failure is logged on its own)."""


class IllegalTransitionError(ConflictError):
    slug = "illegal-transition"
    title = "Illegal order transition"


class PlacedOrder(msgspec.Struct, frozen=True):
    status_code: int
    body: bytes
    order_id: int
    replayed: bool


def _body_of(placed: PlacedOrder) -> bytes:
    return placed.body


async def _database_now(uow: UnitOfWork) -> datetime:
    """The clock every order deadline is set and judged by: the database's (the expiry cron compares
    ``reserved_until`` with ``now()``; an app host's clock off by minutes set windows that the cron
    ended early, or judged payments made in time as late)."""
    now = await queries.database_now(uow.conn)
    assert now is not None
    return now


async def _note_payment_not_kept(uow: UnitOfWork, order: Order, payment: PaymentData, why: str) -> None:
    """An event in the order's history that changes no status (from and to are the order's status):
    a payment it did not keep, and why (a buyer who paid the wrong amount, or after a cancel, saw
    nothing; an administrator could not tell from the order that a refund was due). A statement that
    counts transitions must require from to differ from to (``RevenueBetween``: a note on a paid
    order counted its total again)."""
    await queries.record_order_event(
        uow.conn,
        order_id=order.id,
        from_status=order.status,
        to_status=order.status,
        reason=f"payment {payment.payment_id} of {payment.amount} {payment.currency} not kept ({why}): "
        "refund due",
        actor_id=None,
    )


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
        audience_user_id=order.user_id,
    )
    return updated


PLACED_STATUS = 202
"""The status of a placement's answer (the order is pending: the worker reserves its stock)."""


def request_fingerprint(data: OrderCreate) -> bytes:
    """What a retry under the same idempotency key must repeat: the cart, whatever the order of its
    lines (a client rebuilding the same cart from a set retries it in another order)."""
    lines = sorted(data.lines, key=lambda line: (line.product_id, line.quantity))
    return hashlib.sha256(msgspec.json.encode(msgspec.structs.replace(data, lines=lines))).digest()


class OrderService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        products: ProductService,
        idempotency: Idempotency,
        accounts: AccountService,
    ) -> None:
        self.db = db
        self.settings = settings
        self.products = products
        self.idempotency = idempotency
        self.accounts = accounts
        """An administrator's action takes the actor's row first (``lock_admin``): the token's role
        is a claim, the row decides."""

    # -- placement (HTTP) ------------------------------------------------------------------

    async def place(self, user_id: int, data: OrderCreate, idempotency_key: str) -> PlacedOrder:
        """Store the order as pending and its reservation request in one transaction.

        The idempotency key (``app.core.idempotency``) is claimed first in its own committed
        transaction: a concurrent duplicate then sees the claim (409), a later one the stored response
        (replayed), and a different cart under the same key is refused (422). The placement completes
        the claim in its own transaction, so the order and the stored answer commit together; a
        failure releases the claim. The claim is a short lease: a request that died holds its key
        that long, not a day, and a placement that outlived it is rolled back.
        """
        claimed = await self.idempotency.claim(
            user_id, idempotency_key, request_fingerprint(data), status_code=PLACED_STATUS, encode=_body_of
        )
        if isinstance(claimed, StoredAnswer):
            return PlacedOrder(
                status_code=claimed.status_code,
                body=claimed.body,
                order_id=claimed.resource_id or 0,
                replayed=True,
            )
        async with self.idempotency.releasing(claimed), self.db.transaction() as uow:
            placed = await self._place(uow, user_id, data)
            await claimed.complete(uow, placed, resource_id=placed.order_id)
        return placed

    async def _place(self, uow: UnitOfWork, user_id: int, data: OrderCreate) -> PlacedOrder:
        if not await queries.lock_user(uow.conn, id=user_id):  # deactivated since it signed the request
            raise UnauthorizedError.token_refused("This account was deactivated.")
        open_orders = await queries.count_open_orders(uow.conn, user_id=user_id) or 0
        if open_orders >= self.settings.max_open_orders:
            raise TooManyRequestsError(
                f"At most {self.settings.max_open_orders} orders may be pending or reserved at once.",
                headers={"Retry-After": "60"},
            )
        wanted = {line.product_id: line.quantity for line in data.lines}
        if len(wanted) != len(data.lines):
            raise UnprocessableError("Each product may appear on one line only.")
        await self._refuse_hoarding(uow, user_id, wanted)
        products = {p.id: p for p in await self.products.hold_for_placement(uow, sorted(wanted))}
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
        lines = sorted(wanted)
        items = await queries.add_order_items(
            uow.conn,
            order_id=order.id,
            product_ids=lines,
            quantities=[wanted[pid] for pid in lines],
            unit_prices=[products[pid].price for pid in lines],
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
        items.sort(key=lambda item: item.product_id)  # RETURNING keeps no order by itself
        body = msgspec.json.encode(OrderOut.build(order, items))
        return PlacedOrder(status_code=PLACED_STATUS, body=body, order_id=order.id, replayed=False)

    async def _refuse_hoarding(self, uow: UnitOfWork, user_id: int, wanted: dict[int, int]) -> None:
        """Free accounts must not hold a product's stock hostage (review M6): a user's open orders
        (pending or reserved) hold at most ORDER_MAX_UNITS_PER_PRODUCT units of one product and
        ORDER_MAX_UNITS_HELD units in all. Checked under the user's lock (``_place``)."""
        held = {
            row.product_id: row.held for row in await queries.units_held_by_user(uow.conn, user_id=user_id)
        }
        per_product = self.settings.order_max_units_per_product
        over = sorted(pid for pid, qty in wanted.items() if held.get(pid, 0) + qty > per_product)
        if over:
            raise HoldingLimitError(
                f"Open orders may hold at most {per_product} units of one product; "
                f"over the limit with this order: products {over}."
            )
        total = sum(held.values()) + sum(wanted.values())
        if total > self.settings.order_max_units_held:
            raise HoldingLimitError(
                f"Open orders may hold at most {self.settings.order_max_units_held} units in all "
                f"({total} with this order); pay for or cancel an open order first."
            )

    # -- reservation (worker) ----------------------------------------------------------------

    async def reserve(self, order_id: int) -> OrderStatus | None:
        """Reserve every line or none, in product-id order; idempotent (a non-pending order is left
        alone, so a redelivered job changes stock once: the webhook may have reserved it already,
        ``confirm_payment``)."""
        async with self.db.transaction() as uow:
            order = await queries.get_order_for_update(uow.conn, id=order_id)
            if order is None or order.status != OrderStatus.PENDING:
                return order.status if order else None
            return (await self._reserve_pending(uow, order)).status

    async def _reserve_pending(self, uow: UnitOfWork, order: Order) -> Order:
        """Reserve a pending order whose row lock the caller holds: every line or none. Its products are
        locked first, in id order (order, then products, as cancelling, expiring and paying do), and
        their stock read under that lock decides: reserved for ``RESERVATION_WINDOW_S`` from now, or
        rejected with its shortfall, the stock that was short when it was rejected. (The shortfall was
        read after a failed attempt, once the attempt's locks were let go: a release landing between
        the two could leave it empty.) The worker's job (``reserve``) and a payment that came first
        (``confirm_payment``) both use it, so an order is reserved one way whoever gets to it."""
        items = await queries.get_order_items(uow.conn, order_id=order.id)
        stock = await self.products.lock_stock(uow, [item.product_id for item in items])
        shortfall = [
            ShortLine(product_id=i.product_id, requested=i.quantity, available=stock.get(i.product_id, 0))
            for i in items
            if stock.get(i.product_id, 0) < i.quantity
        ]
        if shortfall:
            return await _transition(
                uow, order, OrderStatus.REJECTED, reason="insufficient stock", actor=None, shortfall=shortfall
            )
        for item in items:
            if await self.products.reserve_stock(uow, item.product_id, item.quantity) is None:
                raise RuntimeError(f"product {item.product_id}'s stock changed under its lock")
        until = await _database_now(uow) + timedelta(seconds=self.settings.reservation_window_s)
        return await _transition(
            uow, order, OrderStatus.RESERVED, reason="stock reserved", actor=None, reserved_until=until
        )

    async def reserve_stale(
        self, older_than_s: float, budget_s: float = STALE_RUN_BUDGET_S, batch_size: int = 200
    ) -> int:
        """Reconciliation: reserve orders still pending long after placement; returns how many were
        handled (reserved, rejected for short stock, or found handled meanwhile).

        The outbox makes the reservation job durable, but a worker killed mid-job leaves it to SAQ's
        sweeper, and a job that ran out of retries is gone; this makes progress independent of both.
        ``reserve`` is idempotent, so racing a late job is harmless.

        Batch after batch until one comes back short or ``budget_s`` is spent (the caller gives part
        of its job timeout, so a run is never cut off mid-way); what is left waits for the next run.
        One cutoff, taken when the run starts, judges every batch.

        Each order is handled on its own (``_each_order``): one that fails is logged with its id and
        passed over, and each batch is listed after the previous one's last order, so an order that
        stays pending because it failed is not listed again in this run. A run was one batch, oldest
        first: a batch's worth of orders that fail every time (a product row the database refuses)
        led every run, and no stale order behind them was ever reserved (before that, the first
        failure ended the run, and the log named none). A failure that says the database is down
        stops the run and is raised.
        """
        deadline = time.monotonic() + budget_s
        async with self.db.read() as uow:
            cutoff = await _database_now(uow) - timedelta(seconds=older_than_s)
        listed = batches = 0
        outcomes: dict[str, int] = {}
        failed: list[int] = []
        after_id = 0
        while True:
            async with self.db.read() as uow:
                stale = await queries.list_stale_pending_orders(
                    uow.conn, after_id=after_id, created_before=cutoff, batch_size=batch_size
                )
            batches += 1
            listed += len(stale)
            for order_id in stale:
                async with _each_order("stale_order_reservation_failed", order_id, failed):
                    status = await self.reserve(order_id)
                    outcome = status.value if status is not None else "gone"
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if len(stale) < batch_size:
                break
            after_id = stale[-1]
            if time.monotonic() >= deadline:
                log.warning("stale_pending_orders_backlog_left", count=listed - len(failed), batches=batches)
                break
        if listed:
            async with self.db.read() as uow:
                oldest = await queries.oldest_pending_order(uow.conn)
            log.warning(
                "stale_pending_orders_reserved",
                count=listed - len(failed),
                outcomes=outcomes,
                batches=batches,
                failed=len(failed),
                failed_ids=failed[:FAILED_IDS_LOGGED],
                oldest_pending_s=round(oldest) if oldest is not None else None,
            )
        return listed - len(failed)

    async def expire_reservations(self, budget_s: float = EXPIRY_RUN_BUDGET_S, batch_size: int = 100) -> int:
        """Expire reservations past their window and give their stock back (cron); returns how many.

        Batch after batch until one comes back short (the backlog is drained: past one batch a
        minute, lapsed orders kept their stock for ever) or ``budget_s`` is spent (the caller gives
        part of its job timeout, so a run is never cut off mid-way); what is left waits for the next
        run, and meanwhile counts against nobody's limits (``CountOpenOrders``, ``UnitsHeldByUser``).

        Each order is expired in a transaction of its own, which locks the order and then its
        products in id order, as reserving, cancelling and paying do. One transaction for the batch
        would hold the products of the orders already expired while it waits for the next one's: a
        cancel or payment holding that product and waiting for one of those would deadlock with it.
        A concurrent run (or a cancel or payment meanwhile) is harmless: each order is re-checked
        under its lock.

        An order that fails is logged with its id and passed over (``_each_order``): each batch is
        listed after the previous one's last order, so an order that stays lapsed because it failed
        is not listed again in this run (the run stopped at the first failure, and a failure that
        repeats kept every lapsed order behind it holding its stock). A failure that says the
        database is down stops the run and is raised.
        """
        deadline = time.monotonic() + budget_s
        expired = batches = 0
        failed: list[int] = []
        after_until, after_id = datetime.min.replace(tzinfo=UTC), 0
        while True:
            async with self.db.read() as uow:
                lapsed = await queries.list_lapsed_reservations(
                    uow.conn, after_until=after_until, after_id=after_id, batch_size=batch_size
                )
            batches += 1
            for row in lapsed:
                async with _each_order("reservation_expiry_failed", row.id, failed):
                    expired += await self._expire(row.id)
            if len(lapsed) < batch_size:
                break
            last = lapsed[-1]
            assert last.reserved_until is not None  # a lapsed reservation has its window's end
            after_until, after_id = last.reserved_until, last.id
            if time.monotonic() >= deadline:
                log.warning("reservations_expiry_backlog_left", expired=expired, batches=batches)
                break
        if expired or failed:
            async with self.db.read() as uow:
                oldest = await queries.oldest_lapsed_reservation(uow.conn)
            (log.warning if failed else log.info)(
                "reservations_expired",
                count=expired,
                batches=batches,
                failed=len(failed),
                failed_ids=failed[:FAILED_IDS_LOGGED],
                oldest_lapsed_s=round(oldest) if oldest is not None else None,
            )
        return expired

    async def _expire(self, order_id: int) -> bool:
        """Expire one order if it is still reserved past its window; whether it was."""
        async with self.db.transaction() as uow:
            order = await queries.lock_lapsed_reservation(uow.conn, id=order_id)
            if order is None:
                return False
            await self._release_stock(uow, order_id)
            await _transition(uow, order, OrderStatus.EXPIRED, reason="reservation window passed", actor=None)
            return True

    async def totals_between(
        self, uow: UnitOfWork, since: datetime, until: datetime
    ) -> tuple[int, dict[str, Decimal]]:
        """Orders placed in [since, until), and the money kept in it per currency: paid in the period
        minus refunded after payment in it, in the caller's transaction (the daily report, sent once
        per period).

        Revenue is counted when it is paid (the order's transition to paid), whenever the order was
        placed: a reservation may still expire, so it is no revenue, and a report sent once cannot
        take it back later; and an order placed before a report and paid after it counts in the next
        one, where counting by placement would have lost it. Orders carry the currency they were
        placed in (``CURRENCY`` when placed, which a deployment may change), so the money is
        reported per currency, never summed across them.

        Refunded after payment: a paid order an administrator cancels gives its total back, in the
        period of the cancel (its transition from paid to cancelled), subtracted there, since the
        report that counted its payment was sent already and never changes. A period may then keep
        less than nothing in a currency (a negative figure: more given back than paid)."""
        placed = await queries.count_orders_placed_between(uow.conn, since=since, until=until) or 0
        revenue = {
            row.currency: row.revenue
            for row in await queries.revenue_between(uow.conn, since=since, until=until)
        }
        for row in await queries.refunded_after_payment_between(uow.conn, since=since, until=until):
            revenue[row.currency] = revenue.get(row.currency, Decimal("0.00")) - row.refunded
        return placed, revenue

    # -- the buyer's and the admin's actions ------------------------------------------------------

    async def _release_stock(self, uow: UnitOfWork, order_id: int) -> None:
        for item in await queries.get_order_items(uow.conn, order_id=order_id):
            await self.products.release_stock(uow, item.product_id, item.quantity)

    async def _locked(self, uow: UnitOfWork, order_id: int, actor: int, is_admin: bool) -> Order:
        order = await queries.get_order_for_update(uow.conn, id=order_id)
        if order is None or (order.user_id != actor and not is_admin):
            raise NotFoundError("No such order.")
        return order

    async def cancel(self, order_id: int, actor: int, is_admin: bool, *, restock: bool = True) -> OrderOut:
        """The buyer's own pending or reserved order, or (``is_admin``: the token's claim) anyone's if
        the actor's row is an active administrator's, checked first, under its lock (otherwise the
        caller is answered as any other: 404 for another's order). A reserved order's stock comes back.

        A paid order is cancelled by an administrator only (its goods cannot ship; the buyer gets 409
        ``illegal-transition``, as for any order past its reservation): its units go back to stock
        and the payment that paid it becomes a refund due (``_cancel_paid``). ``restock=False`` keeps a
        paid order's units off sale (goods damaged or missing: they do not exist to sell again); it
        applies to a paid order only (a reserved order's units are held, not shipped, and come back)."""
        async with self.db.transaction() as uow:
            admin = is_admin and await self.accounts.holds_admin(uow, actor)
            order = await self._locked(uow, order_id, actor, admin)
            if order.status == OrderStatus.PAID:
                if not admin:
                    raise IllegalTransitionError("A paid order can be cancelled by an administrator only.")
                return await self._out(uow, await self._cancel_paid(uow, order, actor, restock=restock))
            if order.status == OrderStatus.RESERVED:
                await self._release_stock(uow, order_id)
            order = await _transition(uow, order, OrderStatus.CANCELLED, reason="cancelled", actor=actor)
            return await self._out(uow, order)

    async def _cancel_paid(self, uow: UnitOfWork, order: Order, actor: int, *, restock: bool) -> Order:
        """An administrator's cancel of a paid order, under its lock: its units go back to stock unless
        ``restock`` is false (it leaves ``paid`` once: cancelled is final), and the event whose payment
        paid it becomes a ``refund-due`` (``QueueRefundOfPayingPayment``), so that the refunds-due list
        names it and ``mark_refunded`` marks it, unchanged; the order's history says why it is due and
        whether the units were restocked; units not restocked are recorded as a removal in the stock
        adjustments (``write_off``), the books' record of stock that leaves otherwise. An order paid
        through the release before payment ids were stored (``PayingPaymentKnown`` false) is
        cancelled all the same, since its goods cannot ship either way, but no list can name its
        payment: the log says that no refund was queued, to be made at the provider by hand (the
        order's history, which its buyer reads, says only that an administrator cancelled it).
        Logged (a warning: money to return) once committed.

        The payment event is updated before the products are locked (``_release_stock``), so the
        products' locks are held for the stock updates only."""
        paying = await queries.queue_refund_of_paying_payment(uow.conn, order_id=order.id)
        if restock:
            await self._release_stock(uow, order.id)
        else:
            items = await queries.get_order_items(uow.conn, order_id=order.id)
            units = {item.product_id: item.quantity for item in items}
            await self.products.write_off(uow, units, actor, f"written off: order {order.id} cancelled")
        refund_due = paying is not None and paying.payment_id is not None
        stock = "units restocked" if restock else "units not restocked (goods damaged or missing)"
        if paying is not None and refund_due:
            reason = f"cancelled by an administrator; payment {paying.payment_id} is a refund due; {stock}"
            action = "refund listed at /api/admin/payments/refunds-due"
        else:
            reason = f"cancelled by an administrator; {stock}"
            action = (
                "no refund queued: the payment that paid it is not recorded with its payment id "
                "(return it at the provider by hand)"
            )
        cancelled = await _transition(uow, order, OrderStatus.CANCELLED, reason=reason, actor=actor)
        fields: dict[str, Any] = {
            "order_id": order.id,
            "actor": actor,
            "refund_due": refund_due,
            "restocked": restock,
            "action": action,
        }
        if paying is not None:
            fields |= {
                "event_id": paying.event_id,
                "payment_id": paying.payment_id,
                "amount": str(paying.amount) if paying.amount is not None else None,
                "currency": paying.currency,
            }
        else:
            fields |= {"total": str(order.total), "currency": order.currency}

        async def logged() -> None:
            log.warning("paid_order_cancelled", **fields)

        uow.after_commit(logged)
        return cancelled

    async def confirm_payment(self, body: bytes, signature: str | None) -> PaymentEventOut:
        """A payment provider's signed webhook delivery (``payments.py``): the only way an order
        becomes paid. Idempotent: each event id is processed once, whatever its outcome, and a
        ``payment.succeeded`` is stored with its payment id, amount and currency, so that money no
        order keeps (``refund-due``, ``expired``, ``mismatch``) can be returned from our data
        (``list_refunds_due``).

        A payment for an order still ``pending`` (its reservation job has not run: the worker is late
        or down) reserves it here, as the job would (``_reserve_pending``), in this transaction, which
        holds the payment id's lock and then the order's row lock (then its products', in id order),
        and is then applied as to any reserved order: ``paid`` when the stock was there (the history
        shows pending → reserved → paid), ``mismatch`` (the order stays reserved) when the amount or
        currency differ, and ``refund-due`` when the stock was short (the order is rejected with its
        shortfall). Refusing it instead let the provider's backoff carry the redelivery past the
        reservation window: the order expired and a customer who paid lost the sale. The job that runs
        later finds the order no longer pending and changes nothing."""
        secret = self.settings.payment_webhook_secret
        if not secret:  # no provider is connected: the webhook does not exist (not a server fault)
            _refused_webhook("not_configured")
            raise NotFoundError("No payment provider is configured (PAYMENT_WEBHOOK_SECRET).")
        try:
            verify_signature(secret, signature, body, tolerance_s=self.settings.payment_webhook_tolerance_s)
        except InvalidSignatureError as exc:  # a rotated secret or a drifting clock stops every payment
            _refused_webhook(f"refused_{exc.reason}", detail=exc.detail, body_bytes=len(body))
            raise
        try:  # a third party's event: lenient about fields it adds, strict about the ones we read
            event = msgspec.json.decode(body, type=PaymentEventIn)
            payment = event.payment_data() if event.type == PAYMENT_SUCCEEDED else None
        except msgspec.ValidationError as exc:
            raise UnprocessableError(f"Not a payment event: {exc}") from None
        except msgspec.DecodeError:
            raise UnprocessableError("The body is not JSON.") from None
        order_id = payment.order_id if payment is not None else None
        async with self.db.transaction() as uow:
            order = None
            if payment is not None:  # every delivery takes the payment id's lock first, then the order's
                await queries.lock_payment_id(uow.conn, payment_id=payment.payment_id)
                order = await queries.get_order_for_update(uow.conn, id=payment.order_id)
            recorded = await queries.record_payment_event(
                uow.conn,
                event_id=event.id,
                order_id=order.id if order else None,
                claimed_order_id=order_id,
                payment_id=payment.payment_id if payment is not None else None,
                amount=Decimal(payment.amount) if payment is not None else None,
                currency=payment.currency if payment is not None else None,
            )
            if recorded is None:
                return PaymentEventOut(event_id=event.id, outcome="duplicate", order_id=order_id)
            reserved_now: OrderStatus | None = None
            if order is not None and order.status == OrderStatus.PENDING:  # the job is late: reserve it
                order = await self._reserve_pending(uow, order)
                reserved_now = order.status
            outcome = (
                await self._apply_payment(uow, order, event.id, payment) if payment is not None else "ignored"
            )
            await queries.set_payment_event_outcome(uow.conn, outcome=outcome, event_id=event.id)
        if reserved_now is not None:  # the worker is behind: the payment reserved its order
            log.warning(
                "payment_event_before_reservation",
                event_id=event.id,
                order_id=order_id,
                reservation=reserved_now.value,
                outcome=outcome,
            )
        fields = {"event_id": event.id, "type": event.type, "order_id": order_id, "outcome": outcome}
        if payment is not None:
            fields |= {
                "payment_id": payment.payment_id,
                "amount": payment.amount,
                "currency": payment.currency,
            }
        if outcome == "paid":
            log.info("payment_event", **fields)
        elif outcome in REFUND_OUTCOMES:
            log.warning("payment_event", refund_due=True, **fields)
        else:
            log.warning("payment_event", **fields)
        return PaymentEventOut(event_id=event.id, outcome=outcome, order_id=order_id)

    async def _apply_payment(
        self, uow: UnitOfWork, order: Order | None, event_id: str, payment: PaymentData
    ) -> Outcome:
        """The outcome of a ``payment.succeeded`` (recorded already, with its payment id, amount and
        currency). A payment id that an earlier event brought is the same money (a redelivery under a
        new event id): ``ignored``, whether it paid the order or is a refund due once already. Money
        that no order keeps is a refund due: ``refund-due`` for an order that does not exist, or is
        cancelled, rejected, fulfilled or paid (by another payment: this one is new; ``ignored`` when
        the paying payment's id is unknown, as for an order paid through the release before
        payment ids were stored, and still once an administrator cancelled such an order: its
        payment was to be returned by hand, and this may be that same money); ``mismatch``
        for a reserved order whose amount or currency differ; and ``expired`` for a payment after the
        reservation lapsed, whether it expires the order now or the expiry cron came first, in that
        case whatever the amount, since no amount can make an expired order paid."""
        if await queries.payment_id_recorded_before(
            uow.conn, payment_id=payment.payment_id, event_id=event_id
        ):
            return "ignored"
        if order is None:
            return "refund-due"
        if order.status == OrderStatus.EXPIRED:
            await _note_payment_not_kept(uow, order, payment, "the order expired before it")
            return "expired"
        settled = order.status in (OrderStatus.PAID, OrderStatus.FULFILLED)
        if settled and not await queries.paying_payment_known(uow.conn, order_id=order.id):
            return "ignored"  # paid through the previous release: this may be the same money
        if order.status == OrderStatus.CANCELLED and await queries.paid_without_payment_id(
            uow.conn, order_id=order.id
        ):
            return "ignored"  # as while it was paid: returned by hand after the cancel, not twice
        if order.status != OrderStatus.RESERVED:
            await _note_payment_not_kept(uow, order, payment, f"the order is {order.status.value}")
            return "refund-due"
        if Decimal(payment.amount) != order.total or payment.currency != order.currency:
            await _note_payment_not_kept(
                uow, order, payment, f"the order's total is {order.total} {order.currency}"
            )
            return "mismatch"
        if order.reserved_until and order.reserved_until < await _database_now(uow):  # as the cron judges
            await self._release_stock(uow, order.id)
            reason = f"payment {payment.payment_id} arrived after the reservation window: refund due"
            await _transition(uow, order, OrderStatus.EXPIRED, reason=reason, actor=None)
            return "expired"
        await _transition(
            uow, order, OrderStatus.PAID, reason=f"payment {payment.payment_id} received", actor=None
        )
        return "paid"

    # -- refunds (administrators) ------------------------------------------------------------------

    async def list_refunds_due(self, *, before_id: int, row_limit: int) -> list[PaymentEvent]:
        """Payment events whose money must be returned and that nobody marked refunded, newest first
        (``row_limit`` rows from before ``before_id``: the caller asks for one more than a page)."""
        async with self.db.read() as uow:
            return await queries.list_refunds_due(uow.conn, before_id=before_id, row_limit=row_limit)

    async def mark_refunded(self, event_id: str, actor: int) -> PaymentRefundOut:
        """Record that ``actor`` returned the money of a refund due, and when. Idempotent: an event
        marked already answers its record as it stands (who marked it first, and when). An unknown
        event id, or one whose money was kept, is 404; an actor whose row is not an active
        administrator's (demoted, deactivated or gone meanwhile) is 403."""
        async with self.db.transaction() as uow:
            await self.accounts.lock_admin(uow, actor)
            row = await queries.mark_payment_refunded(uow.conn, refunded_by=actor, event_id=event_id)
            if row is not None:
                log.info("payment_refunded", event_id=event_id, payment_id=row.payment_id, actor=actor)
            else:  # marked already (a concurrent mark committed first: this statement sees it), or none
                row = await queries.get_refund(uow.conn, event_id=event_id)
            if row is None:
                raise NotFoundError("No refund is due for this payment event.")
            return PaymentRefundOut.from_row(row)

    async def fulfil(self, order_id: int, actor: int) -> OrderOut:
        async with self.db.transaction() as uow:
            await self.accounts.lock_admin(uow, actor)
            order = await self._locked(uow, order_id, actor, is_admin=True)
            order = await _transition(uow, order, OrderStatus.FULFILLED, reason="fulfilled", actor=actor)
            return await self._out(uow, order)

    async def get(self, order_id: int, actor: int, is_admin: bool) -> OrderOut:
        async with self.db.transaction() as uow:
            order = await queries.get_order(uow.conn, id=order_id)
            if order is None or (order.user_id != actor and not is_admin):
                raise NotFoundError("No such order.")
            return await self._out(uow, order, with_events=True)

    async def list_orders(
        self, *, user_id: int | None, status: OrderStatus | None, before_id: int, row_limit: int
    ) -> list[OrderOut]:
        async with self.db.transaction() as uow:
            # one statement per shape, so that no prepared statement's generic plan serves a user's
            # list and everyone's (it read every order for a user's few), nor a user's status page
            # and all of the user's orders (it read the user's whole history): orders.sql
            if user_id is not None and status is not None:
                orders = await queries.list_user_orders_with_status(
                    uow.conn, user_id=user_id, status=status, before_id=before_id, row_limit=row_limit
                )
            elif user_id is not None:
                orders = await queries.list_user_orders(
                    uow.conn, user_id=user_id, before_id=before_id, row_limit=row_limit
                )
            elif status is not None:
                orders = await queries.list_orders_with_status(
                    uow.conn, status=status, before_id=before_id, row_limit=row_limit
                )
            else:
                orders = await queries.list_all_orders(uow.conn, before_id=before_id, row_limit=row_limit)
            items = await queries.get_items_for_orders(uow.conn, order_ids=[o.id for o in orders])
        by_order: dict[int, list[Any]] = {}
        for item in items:
            by_order.setdefault(item.order_id, []).append(item)
        return [OrderOut.build(order, by_order.get(order.id, [])) for order in orders]

    async def _out(self, uow: UnitOfWork, order: Order, *, with_events: bool = False) -> OrderOut:
        items = await queries.get_order_items(uow.conn, order_id=order.id)
        events = await queries.get_order_events(uow.conn, order_id=order.id) if with_events else None
        return OrderOut.build(order, items, events)


class HoldingLimitError(UnprocessableError):
    slug = "holding-limit"
    title = "Too many units held by open orders"


@asynccontextmanager
async def _each_order(event: str, order_id: int, failed: list[int]) -> AsyncIterator[None]:
    """One order of a cron's run: its failure is logged (``event``, with its id and the error) and
    added to ``failed``, and the run goes on with the next order; unless it says the database is down
    (``database_down``), which is raised: every order after it would fail alike, and the job fails,
    and is seen failing, as before."""
    try:
        yield
    except Exception as exc:
        if database_down(exc):
            raise
        log.exception(event, order_id=order_id)
        failed.append(order_id)
