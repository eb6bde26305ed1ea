"""The queues (``orders``, ``feed``, ``default``, ``github``) with the modules' jobs and cron jobs, in
one place.

Both the web app (dashboard, enqueueing, the in-process development worker) and the standalone
worker process (``run_workers``, ``just worker``) are built from ``build_saq_config``. A worker's jobs
obtain domain services from the process's ``Services`` registry: ``services_of(ctx)``.

Wherever the workers run they count each job's outcome (``app_jobs_total``) and run time, and the
process running the default queue's worker reads every queue's queued and active counts every
``QUEUE_GAUGES_INTERVAL_S`` (``app_queue_jobs``). The worker process serves them, with the relay's,
on ``WORKER_METRICS_PORT`` (``app.core.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NamedTuple

import psycopg
import redis.asyncio as redis
import structlog
from litestar.types import Guard
from litestar_saq import CronJob, QueueConfig, SAQConfig, SAQPlugin
from litestar_saq import Worker as LitestarWorker
from saq import Job, Queue, Worker
from saq.types import Context, PartialTimersDict
from valkey.asyncio import Valkey as AsyncValkey
from valkey.exceptions import ValkeyError

from app.config import Settings, redact_url
from app.core.heartbeat import with_heartbeat
from app.core.logging import bind_request_id, error_message, forget_request_id
from app.core.metrics import (
    JOB_DURATION,
    JOBS,
    OUTBOX_OLDEST_AGE,
    OUTBOX_READ_AT,
    OUTBOX_UNPUBLISHED,
    QUEUE_JOBS,
    WORKER_HEARTBEAT,
    record_pool,
    serve_worker_metrics,
)
from app.core.migrate import REFUSED_CONNECTION, SchemaBehindError, database_missing, require_schema
from app.core.modules import QUEUE_NAMES, JobFunction, Module
from app.core.pool import borrow_as_ever, borrow_patiently
from app.core.relay import RETRY_BACKOFF_MAX_S, RETRY_DELAY_S, OutboxRelay, batching_of, timeouts_of
from app.core.repeating import stopped_within
from app.core.services import Services
from app.core.sweep import TwoSightingSweepQueue
from app.core.valkey import final_refusal
from app.db import outbox as outbox_queries

log = structlog.get_logger("app.workers")

Hook = Callable[[Context], Awaitable[None]]

JOB_LOG_FIELDS = ("job_function", "job_key", "job_attempt")

PREFLIGHT_TIMEOUT_S = 30.0
"""How long the worker process waits at start for Valkey and PostgreSQL (a compose service may still
be starting) before it exits 1 naming the setting that points at the one that did not answer."""
PREFLIGHT_CONNECT_TIMEOUT_S = 2.0
PREFLIGHT_RETRY_S = 0.5
QUEUE_GAUGES_INTERVAL_S = 10.0
"""How often ``app_queue_jobs`` is read from Valkey (SAQ's own ``worker_info`` timer)."""

_OUTCOMES = {"complete": "complete", "failed": "failed", "aborted": "aborted", "queued": "retried"}
"""A job's status after its attempt, as ``app_jobs_total`` names it (a retried job is queued again)."""


def record_job_outcome(ctx: Context) -> None:
    """Count the attempt's outcome and its run time (SAQ's ``after_process``, after every attempt)."""
    job = ctx.get("job")
    if job is None:
        return
    queue = job.queue.name if job.queue is not None else ""
    status = str(getattr(job.status, "value", job.status)).lower()
    JOBS.labels(queue, job.function, _OUTCOMES.get(status, status)).inc()
    if job.started:  # SAQ's times are epoch milliseconds
        JOB_DURATION.labels(queue, job.function).observe(max(time.time() - job.started / 1000, 0.0))


async def bind_job_context(ctx: Context) -> None:
    """Every line logged while a job runs (its own, its services', SAQ's) names the job: its function,
    key and attempt are bound in structlog's contextvars, with the ``request_id`` of the request that
    wrote its outbox row (``app.core.relay``), and its arguments that are ids (``order_id=3``: an
    integer named ``*_id``). Never its other arguments: they may be personal data."""
    borrow_patiently()  # its retries outlast a restart of PostgreSQL (``FailFastPool``)
    job = ctx.get("job")
    if job is not None:
        request_id = (job.meta or {}).get("request_id")
        if isinstance(request_id, str):  # the request's own binding: its lines and its outbox rows
            bind_request_id(request_id)
        structlog.contextvars.bind_contextvars(
            job_function=job.function, job_key=job.key, job_attempt=job.attempts, **_ids_of(job)
        )


def _ids_of(job: Job) -> dict[str, int]:
    """The job's arguments that are ids: integers named ``*_id``."""
    return {
        name: value
        for name, value in (job.kwargs or {}).items()
        if name.endswith("_id") and isinstance(value, int) and not isinstance(value, bool)
    }


def _after_job(hooks: Sequence[Hook]) -> Hook:
    """The modules' ``after_job`` hooks, then the job's log context is cleared, even when a hook
    fails (SAQ runs ``after_process`` in a ``finally``: after a failed job too)."""

    async def after_job(ctx: Context) -> None:
        try:
            record_job_outcome(ctx)
            for hook in hooks:
                await hook(ctx)
        finally:
            job = ctx.get("job")
            structlog.contextvars.unbind_contextvars(*JOB_LOG_FIELDS, *(_ids_of(job) if job else ()))
            forget_request_id()
            borrow_as_ever()

    return after_job


QUEUE_SOCKET_TIMEOUT_S = 5.0
"""How long the queues' client waits for any Valkey answer before it gives the connection up."""

DEQUEUE_TIMEOUT_S = 1.0
"""How long an idle worker slot's wait for a job (a blocking ``BLMOVE``) lasts before it asks again;
below ``QUEUE_SOCKET_TIMEOUT_S``. SAQ's default waits until a job comes: the client's socket timeout
cut that wait every 5 s, dropping the connection (a worker's 40 idle slots reconnected 8 times a
second, and a job pushed as a wait was cut stayed on the active list until the sweep). A stop also
waits for it, so an idle worker stops within about this long."""


def build_queues(valkey_url: str) -> dict[str, Queue]:
    """One Valkey client shared by the queues (SAQ speaks to Valkey through redis-py); their sweep
    spares a job a worker has just dequeued (``app.core.sweep``)."""
    client = redis.from_url(valkey_url, socket_timeout=QUEUE_SOCKET_TIMEOUT_S, socket_connect_timeout=2)
    return {name: TwoSightingSweepQueue(client, name=name) for name in QUEUE_NAMES}


def _hooks(services: Services) -> tuple[Hook, Hook]:
    """Every queue's worker in a process shares the process's ``Services``; ``start``/``close`` are
    counted, so the first to start opens it and the last to stop (worker or web app) closes it."""

    async def startup(ctx: Context) -> None:
        await services.start()
        ctx["services"] = services  # type: ignore[typeddict-unknown-key]

    async def shutdown(ctx: Context) -> None:
        await services.close()

    return startup, shutdown


def _stopped(ctx: Context) -> bool:
    """Whether this run of the worker is stopping. SAQ's ``stop()`` runs the shutdown hooks even while
    ``start()`` is still in its startup hooks (a slow start under load, or a shutdown grace shorter
    than the start): the stop hooks then find nothing to stop, so a startup hook that runs after them
    must start nothing (else its task ran for the rest of the process, on closed services). SAQ sets
    the worker's event first thing in ``stop()`` and gives each ``start()`` a new one."""
    return ctx["worker"].event.is_set()


def _relay_hooks(
    queues: dict[str, Queue], modules: Sequence[Module], settings: Settings
) -> tuple[Hook, Hook]:
    async def start_relay(ctx: Context) -> None:
        if _stopped(ctx):
            return
        services: Services = ctx["services"]  # type: ignore[typeddict-item]
        relay = OutboxRelay(
            services.db.pool, queues, settings, batching_of(modules, settings), timeouts_of(modules, settings)
        )
        ctx["relay"] = relay  # type: ignore[typeddict-unknown-key]
        ctx["relay_task"] = asyncio.create_task(relay.run(), name="outbox-relay")  # type: ignore[typeddict-unknown-key]

    async def stop_relay(ctx: Context) -> None:
        """Stops the relay after its round in progress, waiting for it at most the shutdown grace
        (a round is bounded, ``relay_once``; cut, its transaction rolls back and its rows are
        published again later); never raises, so SAQ's later shutdown hooks still run."""
        relay: OutboxRelay | None = ctx.get("relay")  # type: ignore[assignment]
        if relay is None:
            return
        relay.stop()
        task: asyncio.Task[None] = ctx["relay_task"]  # type: ignore[typeddict-item]
        done, _ = await asyncio.wait({task}, timeout=settings.worker_shutdown_grace_s)
        if not done:
            log.warning("outbox_relay_cut", waited_s=settings.worker_shutdown_grace_s)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return start_relay, stop_relay


async def read_queue_gauges(queues: dict[str, Queue]) -> None:
    """Set ``app_queue_jobs`` from every queue's queued and active counts (two reads per queue)."""
    for name, queue in queues.items():
        for state in ("queued", "active"):
            QUEUE_JOBS.labels(name, state).set(await queue.count(state))


async def read_worker_gauges(services: Services) -> None:
    """The worker's heartbeat (first: a round that fails after it still says the loop runs), its pool,
    and the outbox's backlog and lag (one query)."""
    WORKER_HEARTBEAT.labels("worker").set(time.time())
    record_pool(services.db.pool)
    async with services.db.read() as uow:
        backlog = await outbox_queries.count_unpublished_outbox(uow.conn)
    if backlog is not None:
        OUTBOX_UNPUBLISHED.set(backlog.pending)
        oldest = backlog.oldest
        OUTBOX_OLDEST_AGE.set(max(0.0, time.time() - oldest.timestamp()) if oldest is not None else 0.0)
        OUTBOX_READ_AT.set(time.time())


def _queue_gauge_hooks(services: Services, queues: dict[str, Queue], interval_s: float) -> tuple[Hook, Hook]:
    """Keep ``app_queue_jobs`` current while the default queue's worker runs. A failed read (Valkey
    away) is skipped: the worker's upkeep already says that Valkey is unreachable.

    The poller stops on an event, not on cancellation alone (``app.core.repeating``): a cancellation
    lost in a read, which the skip would swallow, left it running while the worker's stop waited."""

    async def poll(stop: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(Exception):
                await read_worker_gauges(services)
            with contextlib.suppress(Exception):
                await read_queue_gauges(queues)
            if await stopped_within(stop, interval_s):
                return

    async def start_gauges(ctx: Context) -> None:
        if _stopped(ctx):
            return
        stop = asyncio.Event()
        ctx["queue_gauges_stop"] = stop  # type: ignore[typeddict-unknown-key]
        ctx["queue_gauges_task"] = asyncio.create_task(poll(stop), name="queue-gauges")  # type: ignore[typeddict-unknown-key]

    async def stop_gauges(ctx: Context) -> None:
        task: asyncio.Task[None] | None = ctx.get("queue_gauges_task")  # type: ignore[assignment]
        if task is not None:
            ctx["queue_gauges_stop"].set()  # type: ignore[typeddict-item]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return start_gauges, stop_gauges


CRON_HEARTBEAT_S = 60
"""A cron run's SAQ heartbeat, kept by its function (``with_heartbeat``): a run whose worker died is
swept (retried) within it, not after its timeout (up to half an hour), during which its cron key let
no next run start (the crash reviewer: a rollup ``active`` on a killed worker for ten minutes, through
three restarts, and nine "missed" runs in the cron monitor)."""


@dataclasses.dataclass
class RetriedCronJob(CronJob):
    """A cron job whose retries wait as relayed jobs' do (``RETRY_DELAY_S``, ``RETRY_BACKOFF_MAX_S``).

    SAQ's ``CronJob`` has neither field, so its runs were enqueued with SAQ's defaults (no delay, no
    backoff): a failed run's retries all ran within milliseconds, inside the outage that failed it, and
    a daily purge was lost until the next day; a run that hit its timeout started again at once, up to
    its retries. ``Worker.schedule`` enqueues every field of the cron job (its ``__dict__``), these too.
    """

    retry_delay: float = RETRY_DELAY_S
    retry_backoff: bool | float = RETRY_BACKOFF_MAX_S
    heartbeat: int | None = CRON_HEARTBEAT_S


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
    start_gauges, stop_gauges = _queue_gauge_hooks(services, queues, QUEUE_GAUGES_INTERVAL_S)
    tasks: dict[str, list[JobFunction]] = {name: [] for name in QUEUE_NAMES}
    cron: dict[str, list[CronJob]] = {name: [] for name in QUEUE_NAMES}
    wrappers: dict[JobFunction, JobFunction] = {}

    def registered(function: JobFunction) -> JobFunction:
        """One wrapper per function: a function that is a job and a cron job too (the outbox purge,
        the alert delivery) must reach SAQ as one object, which registers functions by name; two
        of one name, one of them without the beat, left which ran to chance (the diff reviewer)."""
        return wrappers.setdefault(function, with_heartbeat(function))

    for module in modules:
        for job in module.jobs:
            tasks[job.queue].append(registered(job.function))
        for scheduled in module.cron:
            cron[scheduled.queue].append(
                RetriedCronJob(
                    function=registered(scheduled.function),
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
            startup=[startup, start_relay, start_gauges] if name == "default" else [startup],
            shutdown=[stop_gauges, stop_relay, shutdown] if name == "default" else [shutdown],
            separate_process=not run_workers_in_process,
            before_process=[bind_job_context, *(hook for module in modules for hook in module.before_job)],
            after_process=[_after_job([hook for module in modules for hook in module.after_job])],
            shutdown_grace_period_s=settings.worker_shutdown_grace_s,
            dequeue_timeout=DEQUEUE_TIMEOUT_S,
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


class _WaitingCannotHelpError(Exception):
    """A dependency answered in a way that waiting cannot change (the database does not exist, the
    credentials are refused)."""


class _Answer(NamedTuple):
    failure: str | None
    """Why the dependency cannot be used, naming its setting; None once it answered."""
    conclusive: bool = False
    """Waiting cannot change it (``_WaitingCannotHelpError``): the start fails without the others."""


async def _first_answer(
    what: str, setting: str, url: str, probe: Callable[[], Awaitable[None]], timeout_s: float
) -> _Answer:
    """Once ``probe`` succeeds, no failure; after ``timeout_s`` of failures (at once for
    ``_WaitingCannotHelpError``), why, naming ``setting`` (its URL with the password masked, as
    ``serve`` says it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await asyncio.wait_for(probe(), PREFLIGHT_CONNECT_TIMEOUT_S)
            return _Answer(None)
        except _WaitingCannotHelpError as exc:
            return _Answer(f"{what} answered ({setting}={redact_url(url)}): {exc}", conclusive=True)
        except Exception as exc:  # whatever the failure, it is reported the same way
            error = error_message(exc, url)
        if time.monotonic() >= deadline:
            return _Answer(
                f"{what} did not answer within {timeout_s:g}s ({setting}={redact_url(url)}): {error}"
            )
        await asyncio.sleep(PREFLIGHT_RETRY_S)


async def check_dependencies(settings: Settings, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> list[str]:
    """Wait for Valkey and PostgreSQL to answer, at most ``timeout_s`` (together): what did not. An
    answer waiting cannot change (credentials refused, a database missing, another service on
    Valkey's port) ends the wait for the other."""
    assert settings.valkey_url and settings.database_url
    valkey_url, database_url = settings.valkey_url, settings.database_url

    async def valkey() -> None:
        client = AsyncValkey.from_url(
            valkey_url,
            socket_timeout=PREFLIGHT_CONNECT_TIMEOUT_S,
            socket_connect_timeout=PREFLIGHT_CONNECT_TIMEOUT_S,
        )
        try:
            await client.ping()
        except ValkeyError as exc:
            reason = final_refusal(exc)
            if reason is not None:
                detail = error_message(exc, valkey_url)
                raise _WaitingCannotHelpError(f"it {reason}: {detail}") from None
            raise
        finally:
            await client.aclose()

    async def postgres() -> None:
        connect_timeout = max(int(PREFLIGHT_CONNECT_TIMEOUT_S), 1)
        try:
            async with await psycopg.AsyncConnection.connect(database_url, connect_timeout=connect_timeout):
                pass
        except psycopg.OperationalError as exc:
            if REFUSED_CONNECTION.search(str(exc)):
                refusal = error_message(exc, database_url)
                raise _WaitingCannotHelpError(f"it refused the connection: {refusal}") from None
            if await asyncio.to_thread(database_missing, database_url):
                raise _WaitingCannotHelpError("its database does not exist: run `migrate` first") from None
            raise

    probes = [
        asyncio.ensure_future(_first_answer("Valkey", "VALKEY_URL", valkey_url, valkey, timeout_s)),
        asyncio.ensure_future(_first_answer("PostgreSQL", "DATABASE_URL", database_url, postgres, timeout_s)),
    ]
    failures: list[str] = []
    try:
        for answered in asyncio.as_completed(probes):
            answer = await answered
            if answer.failure is not None:
                failures.append(answer.failure)
            if answer.conclusive:  # a refused password: waiting for the other helps nothing
                break
    finally:
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
    return failures


async def preflight(settings: Settings, who: str = "", timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """What every process but ``serve`` and ``migrate`` checks before it starts: Valkey and PostgreSQL
    answer (``check_dependencies``), then the database has applied every migration of this release
    (``require_schema``, waiting while a migrate holds the lock). Else ``SystemExit`` with one line,
    ``who`` its prefix for a dependency that does not answer. Never migrates: these processes connect
    as the app role in production, which may not create anything (deploy/postgres/10-roles.sh)."""
    assert settings.database_url
    failures = await check_dependencies(settings, timeout_s)
    if failures:
        raise SystemExit(f"{who}cannot start: {'; '.join(failures)}")
    try:
        await asyncio.to_thread(require_schema, settings.database_url)
    except SchemaBehindError as exc:
        raise SystemExit(str(exc)) from None


def _mark_started(worker: Worker[Context]) -> asyncio.Event:
    """An event set once ``worker`` has run its startup hooks (a last hook of its own)."""
    started = asyncio.Event()

    async def mark(_: Context) -> None:
        started.set()

    worker.startup = [*(worker.startup or []), mark]
    return started


@contextlib.asynccontextmanager
async def workers_running(services: Services, workers: Sequence[Worker[Context]]) -> AsyncIterator[None]:
    """``workers`` run while the block does (the worker process's, and ``just serve``'s in process);
    at its end they stop, and all of it is awaited before the block ends:

    - the services hear of the stop first (``Services.stopping``): SAQ runs the shutdown hooks only
      after the grace, so a running job finishes what it has in hand instead of starting more (a
      delivery cut by the cancellation is 'uncertain');
    - each worker's start-up is let finish (bounded by ``WORKER_SHUTDOWN_GRACE_S``): SAQ's stop runs
      the shutdown hooks at once, so a stop during the startup hooks closed nothing of what they then
      opened (the relay, the services' listeners);
    - every worker stops taking jobs, SAQ's upkeep loops (asleep for up to their 10 s timers) are
      cancelled, running jobs finish within the grace, and the shutdown hooks run (the relay's stop).

    The caller handles the signals (``Worker.SIGNALS`` emptied)."""
    grace_s = services.settings.worker_shutdown_grace_s
    started = [_mark_started(worker) for worker in workers]
    tasks = []
    for worker in workers:
        worker.SIGNALS = []
        context = contextvars.copy_context()
        if isinstance(worker, LitestarWorker):  # its log lines name it, as litestar-saq's own start does
            context.run(worker.configure_structlog_context)
        tasks.append(asyncio.create_task(worker.start(), name=f"worker-{worker.queue.name}", context=context))
    try:
        yield
    finally:
        services.stopping()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), grace_s)
        for worker in workers:
            worker.event.set()  # no more jobs are taken
            for task in list(worker.tasks):
                if task.get_name() != "process":  # SAQ's upkeep loops
                    task.cancel()
        await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_workers(services: Services, *, preflight_timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """The worker process: every queue's worker (the default queue's runs the outbox relay) until
    SIGINT/SIGTERM, then stop taking jobs and let running ones finish (``WORKER_SHUTDOWN_GRACE_S``;
    ``workers_running``).

    It starts only once Valkey and PostgreSQL answer (``check_dependencies``): else it exits 1 with
    one line naming the setting, instead of SAQ's upkeep tracebacks for ever. Then it checks that the
    database has applied every migration of this release (``require_schema``, waiting while a
    migrate holds the lock): else it exits 1 with one line, never migrating (production runs it as
    the app role). With ``WORKER_METRICS_PORT`` set it serves its metrics there (the relay's, the
    jobs', the queues')."""
    settings = services.settings
    assert settings.valkey_url
    await preflight(settings, "worker: ", preflight_timeout_s)
    if settings.worker_metrics_port:
        try:
            serve_worker_metrics(settings.worker_metrics_port, settings.host)
        except OSError as exc:  # the port is taken, or the address is not this machine's
            where = f"{settings.host}:{settings.worker_metrics_port}"
            raise SystemExit(f"worker: cannot serve WORKER_METRICS_PORT on {where}: {exc}") from None
        log.info("worker_metrics_serving", host=settings.host, port=settings.worker_metrics_port)
    plugin = SAQPlugin(build_saq_config(services, settings.valkey_url, run_workers_in_process=True))
    workers = list(plugin.get_workers().values())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with workers_running(services, workers):
        log.info("workers_started", queues=[worker.queue.name for worker in workers])
        await stop.wait()
        log.info("workers_stopping", grace_s=settings.worker_shutdown_grace_s)
    log.info("workers_stopped")
