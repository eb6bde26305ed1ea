"""A stateful model of orders and stock: any sequence of place / reserve / pay (the payment
provider's signed webhook, replayed too, with wrong amounts, and before the reservation: it reserves
the order first) / cancel (the buyer's, and an administrator's, who may cancel a paid order: its stock
comes back and its payment becomes a refund due, or, written off, its units are recorded as removed) /
fulfil / lapse + expire / adjust keeps, per
product, ``stock + units held by reserved, paid and fulfilled orders == initial + recorded
adjustments`` and ``stock >= 0``; each transition does what the ALLOWED table says, and an illegal
one raises IllegalTransitionError and changes nothing.

The services are driven directly (HTTP per step would be slow) on an event loop of their own in a
background thread: the state machine is synchronous and the session's loop is already running.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import AsyncConnection

from app.config import Settings
from app.core.errors import ConflictError
from app.core.services import Services
from app.db import orders as order_queries
from app.db import products as product_queries
from app.db.models import OrderStatus, UserRole, register_types
from app.domains.orders.schemas import OrderCreate, OrderLine
from app.domains.orders.services import ALLOWED, IllegalTransitionError, OrderService
from app.domains.products.schemas import StockAdjustmentIn
from app.domains.products.services import ProductService
from tests.factories import COMMERCE, create_user, make_product, scaled_examples
from tests.fakes import payments

T = TypeVar("T")
HELD = {OrderStatus.RESERVED, OrderStatus.PAID, OrderStatus.FULFILLED}


class Backend:
    """An event loop in a thread, with a pool, the services and an autocommit connection on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stateful-orders", daemon=True)
        self.thread.start()
        self.run(self._open())

    async def _open(self) -> None:
        assert self.settings.database_url
        self.services = Services(self.settings, COMMERCE)
        await self.services.start()
        self.orders = self.services[OrderService]
        self.products = self.services[ProductService]
        self.conn = await AsyncConnection.connect(self.settings.database_url, autocommit=True)
        await register_types(self.conn)

    async def _close(self) -> None:
        await self.conn.close()
        await self.services.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        try:
            self.run(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


BACKEND: Backend | None = None


class OrderModel(msgspec.Struct):
    lines: dict[int, int]
    status: OrderStatus = OrderStatus.PENDING
    lapsed: bool = False
    events: int = 1


class Shop(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert BACKEND is not None
        self.b = BACKEND
        self.user_id = self.b.run(self._create_user())
        self.initial: dict[int, int] = {}
        self.stock: dict[int, int] = {}
        self.adjusted: dict[int, int] = {}
        self.orders: dict[int, OrderModel] = {}

    async def _create_user(self) -> int:
        return (await create_user(self.b.conn, role=UserRole.ADMIN, display_name="Stateful")).id

    # -- helpers -----------------------------------------------------------------------------------------

    def having(self, *statuses: OrderStatus) -> bool:
        return any(o.status in statuses for o in self.orders.values())

    def pick(self, index: int, *statuses: OrderStatus) -> int:
        """An order in one of ``statuses`` (any order if none are given)."""
        ids = sorted(i for i, o in self.orders.items() if not statuses or o.status in statuses)
        return ids[index % len(ids)]

    def snapshot(self, order_id: int) -> tuple[Any, ...]:
        async def read() -> tuple[Any, ...]:
            order = await order_queries.get_order(self.b.conn, id=order_id)
            events = await order_queries.get_order_events(self.b.conn, order_id=order_id)
            stock = await product_queries.get_products_by_ids(self.b.conn, ids=sorted(self.stock))
            assert order is not None
            transitions = [e for e in events if e.from_status != e.to_status]  # notes change nothing
            return (order.status, order.reserved_until, len(transitions), [(p.id, p.stock) for p in stock])

        return self.b.run(read())

    def refused(self, order_id: int, action: Coroutine[Any, Any, Any]) -> None:
        """An illegal transition raises and changes nothing."""
        before = self.snapshot(order_id)
        with pytest.raises(IllegalTransitionError):
            self.b.run(action)
        assert self.snapshot(order_id) == before
        event("refused")

    def give_back(self, order: OrderModel) -> None:
        for pid, qty in order.lines.items():
            self.stock[pid] += qty

    def moved(self, order: OrderModel, to: OrderStatus) -> None:
        assert to in ALLOWED.get(order.status, frozenset()), (order.status, to)
        event(f"{order.status.value} -> {to.value}")
        order.status = to
        order.events += 1

    # -- rules -----------------------------------------------------------------------------------------------

    @initialize(stocks=st.lists(st.integers(0, 8), min_size=1, max_size=3), data=st.data())
    def create_products_and_orders(self, stocks: list[int], data: st.DataObject) -> None:
        for stock in stocks:
            product_id = self.b.run(make_product(self.b.conn, stock=stock, price="1.00", name="Modelled"))
            self.initial[product_id] = self.stock[product_id] = stock
            self.adjusted[product_id] = 0
        for _ in range(data.draw(st.integers(1, 4), label="orders placed first")):
            self.place(data)

    @rule(data=st.data())
    def place(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.stock)), min_size=1, unique=True))
        lines = {pid: data.draw(st.integers(1, 3)) for pid in chosen}
        order = OrderCreate(lines=[OrderLine(product_id=p, quantity=q) for p, q in lines.items()])
        placed = self.b.run(self.b.orders.place(self.user_id, order, uuid.uuid4().hex))
        assert placed.status_code == 202 and not placed.replayed
        self.orders[placed.order_id] = OrderModel(lines=lines)

    # Each action on an order: the model's expectation, checked against the service.

    def reserve(self, order_id: int) -> None:
        order = self.orders[order_id]
        if order.status != OrderStatus.PENDING:
            before = self.snapshot(order_id)  # a redelivered job: reports the status, changes nothing
            assert self.b.run(self.b.orders.reserve(order_id)) == order.status
            assert self.snapshot(order_id) == before
            return
        expected = self.reservation_of(order)
        result = self.b.run(self.b.orders.reserve(order_id))
        assert result == expected[0]
        self.reserved(order_id, *expected)

    def reservation_of(self, order: OrderModel) -> tuple[OrderStatus, list[dict[str, int]]]:
        """What reserving a pending order must do (the worker's job, or a payment that came first):
        its status after, and the shortfall it records when it is rejected."""
        shortfall = [
            {"product_id": pid, "requested": qty, "available": self.stock[pid]}
            for pid, qty in sorted(order.lines.items())
            if self.stock[pid] < qty
        ]
        return (OrderStatus.REJECTED if shortfall else OrderStatus.RESERVED), shortfall

    def reserved(self, order_id: int, status: OrderStatus, shortfall: list[dict[str, int]]) -> None:
        """The model follows a reservation that ended in ``status``: the stock taken, or the
        shortfall recorded."""
        order = self.orders[order_id]
        if status == OrderStatus.RESERVED:
            for pid, qty in order.lines.items():
                self.stock[pid] -= qty
        else:
            row = self.b.run(order_queries.get_order(self.b.conn, id=order_id))
            assert row is not None
            assert row.shortfall == shortfall
        self.moved(order, status)

    def deliver(self, order_id: int, amount: Decimal) -> tuple[str, Any]:
        """The payment provider's signed webhook for ``order_id``; returns its outcome and the body."""
        body = payments.event_body(order_id, amount)
        sent = payments.delivery(body)
        receipt = self.b.run(self.b.orders.confirm_payment(sent.body, sent.headers[payments.HEADER]))
        return receipt.outcome, sent

    def paid_before_reservation(self, order_id: int, amount: Decimal) -> None:
        """A payment for a pending order (the worker is behind) reserves it as the job would, then
        is applied as to a reserved order: ``paid`` (the right amount) or ``mismatch`` (the order
        stays reserved), or ``refund-due`` when the stock is short (the order is rejected)."""
        order = self.orders[order_id]
        status, shortfall = self.reservation_of(order)
        outcome, sent = self.deliver(order_id, amount)
        self.reserved(order_id, status, shortfall)
        if status == OrderStatus.REJECTED:
            assert outcome == "refund-due"
        elif amount == self.total(order):
            assert outcome == "paid"
            self.moved(order, OrderStatus.PAID)
        else:
            assert outcome == "mismatch"
        event(f"payment before reservation: {outcome}")
        self.replayed_changes_nothing(order_id, sent)

    def replayed_changes_nothing(self, order_id: int, sent: Any) -> None:
        before = self.snapshot(order_id)
        receipt = self.b.run(self.b.orders.confirm_payment(sent.body, sent.headers[payments.HEADER]))
        assert receipt.outcome == "duplicate"
        assert self.snapshot(order_id) == before
        # the provider's redelivery of the same payment under a new event id: the same money
        event_in = msgspec.json.decode(sent.body)
        data = event_in["data"]
        again = payments.delivery(
            payments.event_body(order_id, data["amount"], data["currency"], payment_id=data["payment_id"])
        )
        receipt = self.b.run(self.b.orders.confirm_payment(again.body, again.headers[payments.HEADER]))
        assert receipt.outcome == "ignored"
        assert self.snapshot(order_id) == before

    def total(self, order: OrderModel) -> Decimal:
        return Decimal(sum(order.lines.values()))  # every modelled product costs 1.00

    def pay(self, order_id: int) -> None:
        """Payment arrives only through the provider's webhook: it pays a reserved order, expires a
        lapsed one (its stock comes back), answers ``expired`` for an expired one (the payment needs a
        refund, whoever expired it) and ``refund-due`` for any other (cancelled, rejected, paid,
        fulfilled), changing nothing; a replay is a no-op, and so is the same payment redelivered
        under a new event id (``ignored``). One for a pending order reserves it first
        (``paid_before_reservation``)."""
        order = self.orders[order_id]
        before = self.snapshot(order_id)
        if order.status == OrderStatus.PENDING:
            self.paid_before_reservation(order_id, self.total(order))
            return
        outcome, sent = self.deliver(order_id, self.total(order))
        if order.status == OrderStatus.RESERVED and order.lapsed:
            assert outcome == "expired"
            self.give_back(order)
            self.moved(order, OrderStatus.EXPIRED)
        elif order.status == OrderStatus.RESERVED:
            assert outcome == "paid"
            self.moved(order, OrderStatus.PAID)
        else:
            assert outcome == ("expired" if order.status == OrderStatus.EXPIRED else "refund-due")
            assert self.snapshot(order_id) == before
            event(f"payment {outcome}")
        self.replayed_changes_nothing(order_id, sent)

    @precondition(lambda self: self.orders)
    @rule(index=st.integers(0, 1000), off=st.sampled_from(["-0.01", "0.01", "1.00"]))
    def pay_the_wrong_amount(self, index: int, off: str) -> None:
        """A payment that does not match the order's total never pays it and is a refund due:
        ``mismatch`` for a reserved order (a pending one is reserved first, then the same),
        ``expired`` for an expired one (whatever the amount), ``refund-due`` for any other."""
        order_id = self.pick(index)
        order = self.orders[order_id]
        before = self.snapshot(order_id)
        if order.status == OrderStatus.PENDING:
            self.paid_before_reservation(order_id, self.total(order) + Decimal(off))
            return
        outcome, _ = self.deliver(order_id, self.total(order) + Decimal(off))
        expected = {OrderStatus.RESERVED: "mismatch", OrderStatus.EXPIRED: "expired"}
        assert outcome == expected.get(order.status, "refund-due")
        assert self.snapshot(order_id) == before

    def cancel(self, order_id: int) -> None:
        order = self.orders[order_id]
        action = self.b.orders.cancel(order_id, self.user_id, False)
        if order.status in (OrderStatus.PENDING, OrderStatus.RESERVED):
            assert self.b.run(action).status == OrderStatus.CANCELLED
            if order.status == OrderStatus.RESERVED:
                self.give_back(order)
            self.moved(order, OrderStatus.CANCELLED)
        else:
            self.refused(order_id, action)

    def refunds_of(self, order_id: int) -> tuple[int, int]:
        """The order's payment events that are ``paid`` and ``refund-due``."""

        async def read() -> tuple[int, int]:
            cur = await self.b.conn.execute(
                "select count(*) filter (where outcome = 'paid'),"
                " count(*) filter (where outcome = 'refund-due')"
                " from payment_events where order_id = %s",
                (order_id,),
            )
            row = await cur.fetchone()
            assert row is not None
            return row[0], row[1]

        return self.b.run(read())

    def cancel_as_admin(self, order_id: int) -> None:
        """An administrator cancels any pending, reserved or paid order; a paid one's units come back
        and the payment that paid it becomes a refund due, once."""
        order = self.orders[order_id]
        action = self.b.orders.cancel(order_id, self.user_id, True)
        if order.status in (OrderStatus.PENDING, OrderStatus.RESERVED, OrderStatus.PAID):
            paid, due = self.refunds_of(order_id)
            assert self.b.run(action).status == OrderStatus.CANCELLED
            if order.status in (OrderStatus.RESERVED, OrderStatus.PAID):
                self.give_back(order)
            if order.status == OrderStatus.PAID:
                assert paid == 1
                assert self.refunds_of(order_id) == (0, due + 1)
                event("paid -> cancelled, refund due")
            else:
                assert self.refunds_of(order_id) == (paid, due)
            self.moved(order, OrderStatus.CANCELLED)
        else:
            self.refused(order_id, action)

    def write_off(self, order_id: int) -> None:
        """An administrator cancels a paid order whose goods are gone (``restock=False``): the stock
        stays as it is, and its units are recorded as removed, so the books still add up."""
        order = self.orders[order_id]
        assert order.status == OrderStatus.PAID
        action = self.b.orders.cancel(order_id, self.user_id, True, restock=False)
        assert self.b.run(action).status == OrderStatus.CANCELLED
        for pid, qty in order.lines.items():
            self.adjusted[pid] -= qty
        event("paid -> cancelled, written off")
        self.moved(order, OrderStatus.CANCELLED)

    def fulfil(self, order_id: int) -> None:
        order = self.orders[order_id]
        action = self.b.orders.fulfil(order_id, self.user_id)
        if order.status == OrderStatus.PAID:
            assert self.b.run(action).status == OrderStatus.FULFILLED
            self.moved(order, OrderStatus.FULFILLED)
        else:
            self.refused(order_id, action)

    @precondition(lambda self: self.orders)
    @rule(
        index=st.integers(0, 1000),
        action=st.sampled_from(["reserve", "pay", "cancel", "cancel_as_admin", "fulfil"]),
    )
    def act_on_any_order(self, index: int, action: str) -> None:
        """Any action on any order: the illegal ones are refused."""
        getattr(self, action)(self.pick(index))

    # The legal moves get rules of their own, so that runs get past the first steps.

    @precondition(lambda self: self.having(OrderStatus.PENDING))
    @rule(index=st.integers(0, 1000))
    def reserve_pending(self, index: int) -> None:
        self.reserve(self.pick(index, OrderStatus.PENDING))

    @precondition(lambda self: self.having(OrderStatus.RESERVED))
    @rule(index=st.integers(0, 1000))
    def pay_reserved(self, index: int) -> None:
        self.pay(self.pick(index, OrderStatus.RESERVED))

    @precondition(lambda self: self.having(OrderStatus.RESERVED))
    @rule(index=st.integers(0, 1000))
    def cancel_reserved(self, index: int) -> None:
        self.cancel(self.pick(index, OrderStatus.RESERVED))

    @precondition(lambda self: self.having(OrderStatus.PAID))
    @rule(index=st.integers(0, 1000))
    def fulfil_paid(self, index: int) -> None:
        self.fulfil(self.pick(index, OrderStatus.PAID))

    @precondition(lambda self: self.having(OrderStatus.PAID))
    @rule(index=st.integers(0, 1000))
    def cancel_paid(self, index: int) -> None:
        self.cancel_as_admin(self.pick(index, OrderStatus.PAID))

    @precondition(lambda self: self.having(OrderStatus.PAID))
    @rule(index=st.integers(0, 1000))
    def write_off_paid(self, index: int) -> None:
        self.write_off(self.pick(index, OrderStatus.PAID))

    @precondition(lambda self: self.having(OrderStatus.RESERVED))
    @rule(index=st.integers(0, 1000))
    def lapse(self, index: int) -> None:
        """The reservation window of a reserved order passes."""
        order_id = self.pick(index, OrderStatus.RESERVED)
        self.b.run(
            self.b.conn.execute(
                "update orders set reserved_until = now() - interval '1 second' where id = %s", (order_id,)
            )
        )
        self.orders[order_id].lapsed = True

    @precondition(
        lambda self: any(o.lapsed and o.status == OrderStatus.RESERVED for o in self.orders.values())
    )
    @rule()
    def expire(self) -> None:
        due = [o for o in self.orders.values() if o.status == OrderStatus.RESERVED and o.lapsed]
        assert self.b.run(self.b.orders.expire_reservations()) >= len(due)
        for order in due:
            self.give_back(order)
            self.moved(order, OrderStatus.EXPIRED)

    @rule(data=st.data(), delta=st.integers(-5, 5).filter(bool))
    def adjust(self, data: st.DataObject, delta: int) -> None:
        pid = data.draw(st.sampled_from(sorted(self.stock)))

        async def adjust() -> int:
            return await self.b.products.adjust_stock(
                self.user_id, pid, StockAdjustmentIn(delta=delta, reason="stateful")
            )

        if self.stock[pid] + delta < 0:
            with pytest.raises(ConflictError):
                self.b.run(adjust())
        else:
            assert self.b.run(adjust()) == self.stock[pid] + delta
            self.stock[pid] += delta
            self.adjusted[pid] += delta

    # -- the invariant ---------------------------------------------------------------------------------------

    @invariant()
    def stock_is_conserved(self) -> None:
        if not self.stock:
            return

        async def read() -> tuple[dict[int, int], dict[int, int], dict[int, int], dict[int, tuple[Any, ...]]]:
            ids = sorted(self.stock)
            stock = {p.id: p.stock for p in await product_queries.get_products_by_ids(self.b.conn, ids=ids)}
            held = {r.product_id: r.held for r in await order_queries.stock_ledger(self.b.conn)}
            cur = await self.b.conn.execute(
                "select product_id, sum(delta)::int from stock_adjustments"
                " where product_id = any(%s) group by product_id",
                (ids,),
            )
            adjusted = dict(await cur.fetchall())
            cur = await self.b.conn.execute(
                "select o.id, o.status,"
                " count(e.id) filter (where e.from_status is distinct from e.to_status),"
                " (array_agg(e.to_status order by e.id desc))[1]"
                " from orders o join order_events e on e.order_id = o.id"
                " where o.id = any(%s) group by o.id",
                (sorted(self.orders),),
            )
            orders = {row[0]: row[1:] for row in await cur.fetchall()}
            return stock, held, adjusted, orders

        stock, held, adjusted, orders = self.b.run(read())
        for pid, initial in self.initial.items():
            assert stock[pid] >= 0
            assert stock[pid] == self.stock[pid], (pid, stock[pid], self.stock[pid])
            assert adjusted.get(pid, 0) == self.adjusted[pid]
            assert stock[pid] + held.get(pid, 0) == initial + adjusted.get(pid, 0), pid
            modelled_held = sum(o.lines.get(pid, 0) for o in self.orders.values() if o.status in HELD)
            assert held.get(pid, 0) == modelled_held
        for order_id, model in self.orders.items():
            status, events, last = orders[order_id]
            assert (OrderStatus(status), events, OrderStatus(last)) == (
                model.status,
                model.events,
                model.status,
            )


@pytest.fixture
def backend(settings: Settings) -> Iterator[Backend]:
    global BACKEND
    BACKEND = Backend(
        msgspec.structs.replace(
            settings,
            database_pool_min=1,
            database_pool_max=4,
            max_open_orders=10_000,
            order_max_units_per_product=10_000,
            order_max_units_held=1_000_000,
            payment_webhook_secret=payments.TEST_SECRET,
        )
    )
    try:
        yield BACKEND
    finally:
        BACKEND.close()
        BACKEND = None


def test_orders_keep_stock_conserved(backend: Backend) -> None:
    run_state_machine_as_test(
        Shop,
        settings=settings(
            max_examples=scaled_examples(30),
            stateful_step_count=25,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
