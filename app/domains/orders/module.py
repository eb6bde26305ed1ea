"""The orders domain: orders placed over HTTP, reserved and expired by jobs, paid by the payment
provider's webhook; the refunds due listed for administrators."""

from app.core.idempotency import Idempotency
from app.core.modules import Cron, Job, Module
from app.domains.accounts.services import AccountService
from app.domains.orders.controllers import (
    OrdersController,
    PaymentRefundsController,
    PaymentWebhookController,
)
from app.domains.orders.jobs import (
    expire_reservations,
    reserve_order,
    reserve_stale_orders,
)
from app.domains.orders.services import EXPIRY_RUN_BUDGET_S, STALE_RUN_BUDGET_S, OrderService
from app.domains.products.services import ProductService

module = Module(
    name="orders",
    controllers=[OrdersController, PaymentWebhookController, PaymentRefundsController],
    service=lambda s: OrderService(
        s.db,
        s.settings,
        s[ProductService],
        s[Idempotency],
        s[AccountService],
    ),
    jobs=[Job(function=reserve_order, queue="orders")],
    cron=[
        Cron(
            function=expire_reservations,
            schedule="* * * * *",
            queue="orders",
            timeout_s=2 * EXPIRY_RUN_BUDGET_S,
        ),
        Cron(
            function=reserve_stale_orders,
            schedule="* * * * * */10",
            queue="orders",
            timeout_s=2 * STALE_RUN_BUDGET_S,
            retries=1,
        ),
    ],
)
