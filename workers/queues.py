"""The queues (``orders``, ``feed``, ``default``), their tasks and cron jobs, in one place.

Both the web app (dashboard, enqueueing, the in-process development worker) and the standalone
worker process (``python -m workers``) are built from ``build_saq_config``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as redis
from litestar.types import Guard
from litestar_saq import CronJob, QueueConfig, SAQConfig
from saq import Queue
from saq.queue.redis import RedisQueue
from saq.types import Context

from app.config import Settings
from app.core.modules import QUEUE_NAMES, Module
from app.core.services import Services
from workers import activity, analytics, context, maintenance, orders
from workers.relay import OutboxRelay

# Domains add their task functions here: {"orders": [reserve_order, ...], ...}.
TASKS: dict[str, list[Callable[..., Awaitable[object]]]] = {name: [] for name in QUEUE_NAMES}
TASKS["default"].append(maintenance.purge_outbox)
TASKS["feed"].append(activity.record_activity)
TASKS["orders"].extend([orders.reserve_order, orders.expire_reservations, orders.reserve_stale_orders])
TASKS["default"].extend(
    [analytics.rollup_page_views, analytics.maintain_partitions, analytics.purge_analytics]
)


def build_queues(valkey_url: str) -> dict[str, Queue]:
    """One Valkey client shared by the three queues (SAQ speaks to Valkey through redis-py)."""
    client = redis.from_url(valkey_url, socket_timeout=5, socket_connect_timeout=2)
    return {name: RedisQueue(client, name=name) for name in QUEUE_NAMES}


def _relay_hooks(queues: dict[str, Queue]) -> tuple[Callable[[Context], Awaitable[None]], ...]:
    async def start_relay(ctx: Context) -> None:
        relay = OutboxRelay(context.pool_of(ctx), queues, ctx["resources"].settings)
        ctx["relay"] = relay  # type: ignore[typeddict-unknown-key]
        ctx["relay_task"] = asyncio.create_task(relay.run(), name="outbox-relay")  # type: ignore[typeddict-unknown-key]

    async def stop_relay(ctx: Context) -> None:
        relay: OutboxRelay | None = ctx.get("relay")  # type: ignore[assignment]
        if relay is not None:
            relay.stop()
            await ctx["relay_task"]  # type: ignore[typeddict-item]

    return start_relay, stop_relay


def _enabled_modules(settings: Settings) -> tuple[Module, ...]:
    from app.modules import MODULES

    return tuple(module for module in MODULES if module.enabled(settings))


def build_saq_config(
    settings_or_services: Settings | Services,
    valkey_url: str,
    *,
    run_workers_in_process: bool,
    web_guards: list[Guard] | None = None,
) -> SAQConfig:
    """Queue definitions with the project's task defaults: retries, timeouts, graceful shutdown.

    Given the web app's ``Services``, in-process workers share them; given only settings, the worker
    process builds its own registry when its first queue starts.
    """
    services = settings_or_services if isinstance(settings_or_services, Services) else None
    settings = services.settings if services is not None else settings_or_services
    assert isinstance(settings, Settings)
    queues = build_queues(valkey_url)
    start_relay, stop_relay = _relay_hooks(queues)
    startup, shutdown = context.startup_with(settings, services)
    modules = services.modules if services is not None else _enabled_modules(settings)
    tasks = {name: list(TASKS[name]) for name in QUEUE_NAMES}
    for module in modules:
        for job in module.jobs:
            tasks[job.queue].append(job.function)
    cron: dict[str, list[CronJob]] = {
        "orders": [
            CronJob(
                function=orders.expire_reservations,
                cron="* * * * *",
                timeout=60,
                retries=settings.job_retries,
            ),
            CronJob(function=orders.reserve_stale_orders, cron="* * * * * */10", timeout=60),
        ],
        "default": [
            CronJob(
                function=maintenance.purge_outbox,
                cron="17 3 * * *",
                timeout=300,
                retries=settings.job_retries,
            ),
            CronJob(
                function=analytics.rollup_page_views,
                cron="* * * * *",
                timeout=600,
                retries=settings.job_retries,
            ),
            CronJob(
                function=analytics.maintain_partitions,
                cron="7 * * * *",
                timeout=300,
                retries=settings.job_retries,
            ),
            CronJob(
                function=analytics.purge_analytics,
                cron="37 3 * * *",
                timeout=600,
                retries=settings.job_retries,
            ),
        ],
    }
    for module in modules:
        for scheduled in module.cron:
            cron.setdefault(scheduled.queue, []).append(
                CronJob(
                    function=scheduled.function,
                    cron=scheduled.schedule,
                    timeout=scheduled.timeout_s,
                    retries=scheduled.retries if scheduled.retries is not None else settings.job_retries,
                )
            )
    configs = [
        QueueConfig(
            broker_instance=queues[name].redis,  # type: ignore[attr-defined]
            name=name,
            tasks=tasks[name],
            scheduled_tasks=cron.get(name, []),
            concurrency=settings.worker_concurrency,
            startup=[startup, start_relay] if name == "default" else [startup],
            shutdown=[stop_relay, shutdown] if name == "default" else [shutdown],
            separate_process=not run_workers_in_process,
            before_process=[hook for module in modules for hook in module.before_job],
            after_process=[hook for module in modules for hook in module.after_job],
            shutdown_grace_period_s=settings.worker_shutdown_grace_s,
            timers={"sweep": 10, "abort": 5, "stats": 10, "schedule": 1},
        )
        for name in QUEUE_NAMES
    ]
    return SAQConfig(
        queue_configs=configs,
        queue_instances=queues,
        web_enabled=True,
        web_path="/saq",
        web_guards=web_guards,
        use_server_lifespan=False,
    )
