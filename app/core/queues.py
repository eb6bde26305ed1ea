"""The queues (``orders``, ``feed``, ``default``, ``github``) with the modules' jobs and cron jobs, in
one place.

Both the web app (dashboard, enqueueing, the in-process development worker) and the standalone
worker process (``run_workers``, ``just worker``) are built from ``build_saq_config``. A worker's jobs
obtain domain services from the process's ``Services`` registry: ``services_of(ctx)``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as redis
import structlog
from litestar.types import Guard
from litestar_saq import CronJob, QueueConfig, SAQConfig, SAQPlugin
from saq import Queue
from saq.queue.redis import RedisQueue
from saq.types import Context, PartialTimersDict

from app.config import Settings
from app.core.modules import QUEUE_NAMES, JobFunction, Module
from app.core.relay import OutboxRelay, batching_of
from app.core.services import Services

log = structlog.get_logger("app.workers")

Hook = Callable[[Context], Awaitable[None]]

JOB_LOG_FIELDS = ("job_function", "job_key", "job_attempt")


async def bind_job_context(ctx: Context) -> None:
    """Every line logged while a job runs (its own, its services', SAQ's) names the job: its function,
    key and attempt are bound in structlog's contextvars (never its kwargs: they may be personal data)."""
    job = ctx.get("job")
    if job is not None:
        structlog.contextvars.bind_contextvars(
            job_function=job.function, job_key=job.key, job_attempt=job.attempts
        )


def _after_job(hooks: Sequence[Hook]) -> Hook:
    """The modules' ``after_job`` hooks, then the job's log context is cleared, even when a hook
    fails (SAQ runs ``after_process`` in a ``finally``: after a failed job too)."""

    async def after_job(ctx: Context) -> None:
        try:
            for hook in hooks:
                await hook(ctx)
        finally:
            structlog.contextvars.unbind_contextvars(*JOB_LOG_FIELDS)

    return after_job


def build_queues(valkey_url: str) -> dict[str, Queue]:
    """One Valkey client shared by the queues (SAQ speaks to Valkey through redis-py)."""
    client = redis.from_url(valkey_url, socket_timeout=5, socket_connect_timeout=2)
    return {name: RedisQueue(client, name=name) for name in QUEUE_NAMES}


def _hooks(services: Services) -> tuple[Hook, Hook]:
    """Every queue's worker in a process shares the process's ``Services``; ``start``/``close`` are
    counted, so the first to start opens it and the last to stop (worker or web app) closes it."""

    async def startup(ctx: Context) -> None:
        await services.start()
        ctx["services"] = services  # type: ignore[typeddict-unknown-key]

    async def shutdown(ctx: Context) -> None:
        await services.close()

    return startup, shutdown


def _relay_hooks(
    queues: dict[str, Queue], modules: Sequence[Module], settings: Settings
) -> tuple[Hook, Hook]:
    async def start_relay(ctx: Context) -> None:
        services: Services = ctx["services"]  # type: ignore[typeddict-item]
        relay = OutboxRelay(services.db.pool, queues, settings, batching_of(modules, settings))
        ctx["relay"] = relay  # type: ignore[typeddict-unknown-key]
        ctx["relay_task"] = asyncio.create_task(relay.run(), name="outbox-relay")  # type: ignore[typeddict-unknown-key]

    async def stop_relay(ctx: Context) -> None:
        relay: OutboxRelay | None = ctx.get("relay")  # type: ignore[assignment]
        if relay is not None:
            relay.stop()
            await ctx["relay_task"]  # type: ignore[typeddict-item]

    return start_relay, stop_relay


TIMERS: PartialTimersDict = {"sweep": 10, "abort": 5, "worker_info": 10, "schedule": 1}


def build_saq_config(
    services: Services,
    valkey_url: str,
    *,
    run_workers_in_process: bool,
    web_guards: list[Guard] | None = None,
) -> SAQConfig:
    """Queue definitions with the project's task defaults: retries, timeouts, graceful shutdown.

    The workers run the jobs of ``services``' modules and obtain services from it; the web app
    passes its own registry (in-process workers share it), the worker process a registry of its own.
    ``web_guards`` protect the dashboard (``app.core.dashboard.dashboard_router(config)``).
    """
    settings = services.settings
    modules = services.modules
    queues = build_queues(valkey_url)
    startup, shutdown = _hooks(services)
    start_relay, stop_relay = _relay_hooks(queues, modules, settings)
    tasks: dict[str, list[JobFunction]] = {name: [] for name in QUEUE_NAMES}
    cron: dict[str, list[CronJob]] = {name: [] for name in QUEUE_NAMES}
    for module in modules:
        for job in module.jobs:
            tasks[job.queue].append(job.function)
        for scheduled in module.cron:
            cron[scheduled.queue].append(
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
            scheduled_tasks=cron[name],
            concurrency=settings.worker_concurrency,
            startup=[startup, start_relay] if name == "default" else [startup],
            shutdown=[stop_relay, shutdown] if name == "default" else [shutdown],
            separate_process=not run_workers_in_process,
            before_process=[bind_job_context, *(hook for module in modules for hook in module.before_job)],
            after_process=[_after_job([hook for module in modules for hook in module.after_job])],
            shutdown_grace_period_s=settings.worker_shutdown_grace_s,
            timers=TIMERS,
        )
        for name in QUEUE_NAMES
    ]
    return SAQConfig(
        queue_configs=configs,
        queue_instances=queues,
        # litestar-saq's own dashboard answers every job's arguments, result and traceback: the app
        # serves the dashboard at web_path, behind web_guards, with app.core.dashboard instead.
        web_enabled=False,
        web_path="/saq",
        web_guards=web_guards,
        use_server_lifespan=False,
    )


async def run_workers(services: Services) -> None:
    """The worker process: every queue's worker (the default queue's runs the outbox relay) until
    SIGINT/SIGTERM, then stop taking jobs and let running ones finish (``WORKER_SHUTDOWN_GRACE_S``)."""
    settings = services.settings
    assert settings.valkey_url
    plugin = SAQPlugin(build_saq_config(services, settings.valkey_url, run_workers_in_process=True))
    workers = list(plugin.get_workers().values())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    for worker in workers:
        worker.SIGNALS = []  # signals are handled here, once for all queues
    tasks = [asyncio.create_task(worker.start(), name=f"worker-{worker.queue.name}") for worker in workers]
    log.info("workers_started", queues=[worker.queue.name for worker in workers])
    await stop.wait()
    log.info("workers_stopping", grace_s=settings.worker_shutdown_grace_s)
    await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("workers_stopped")
