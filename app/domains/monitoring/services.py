"""``MonitoringService``: capture, grouping, alerting, latency, jobs, crons and the daily report.

Capture is synchronous and in memory (the request's after-exception hook, the request observer and
the SAQ job hooks only append to buffers); a background task of every process (``start``/``close``)
turns the buffers into database writes:

- every ``MONITORING_FLUSH_INTERVAL_S``: captured events become one aggregate per fingerprint. An
  aggregate is written when this process wins the fingerprint's dedup gate in Valkey
  (``SET NX PX window``): a storm of one error costs one database write per group per
  ``MONITORING_DEDUP_WINDOW_S`` across all processes, and the counts stay exact (held events are
  written at the next window, or at shutdown). Without Valkey each process writes at most once per
  window per group (degraded, counted by ``app_monitoring_degraded_total``).
- every ``MONITORING_SHIP_INTERVAL_S``: the latency histograms and job statistics.
- every ``MONITORING_CHECK_INTERVAL_S`` (once across processes per slot): cron monitors, slow routes,
  expired ignores, the daily report when due, and retention.
- deliveries pending for ``MONITORING_DELIVERY_FALLBACK_S``: sent from here too, so alerts reach
  Telegram while the worker (whose job normally sends them) is down.

Where the code is: ``MonitoringService`` (here) is the domain's one service, its public methods the
ones the hooks, handlers, jobs and tests call; it keeps the process's lifecycle (start-up, the
background task, shutdown), shipping and the schedule of the periodic checks, and hands the rest, in
one line each, to the parts it holds, each in a module private to the domain:

- ``ingest.py`` (``Ingest``): the capture hot path and the flush (aggregates, the dedup gate, the
  group writes, check-ins);
- ``triage.py`` (``Triage``): the administrators' reads and changes of groups (resolve, ignore,
  reopen, merge, unmerge, details and lists) and the end of timed ignores;
- ``retention.py`` (``Retention``): the hourly purge;
- ``report.py`` (``DailyReport``): the daily report;
- and, as before the split, ``monitors.py`` (``CronMonitors``), ``performance.py`` (``Performance``),
  ``delivery.py`` (``Sender``), ``outage.py`` (``OutageNotifier``), ``groups.py`` (``GroupWriter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
import tomllib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from litestar.types import Scope
from prometheus_client import Counter, Gauge
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import Database
from app.core.errors import database_down
from app.core.logging import OncePerInterval, error_message
from app.db import monitoring as queries
from app.db.models import (
    MonitoringCronMonitor,
    MonitoringEvent,
    MonitoringFingerprint,
    MonitoringGroup,
    MonitoringGroupKind,
    MonitoringGroupStatus,
    MonitoringIgnoreMode,
)
from app.domains.accounts.services import AccountService
from app.domains.monitoring import alerts
from app.domains.monitoring.capture import EventBuffer, JobStats, RawEvent
from app.domains.monitoring.crons import CronSpec
from app.domains.monitoring.delivery import Sender
from app.domains.monitoring.groups import GroupWriter, WriterConfig, WriteResult, utc
from app.domains.monitoring.ingest import Ingest
from app.domains.monitoring.latency import LatencyRecorder
from app.domains.monitoring.monitors import CronMonitors
from app.domains.monitoring.outage import OutageNotifier
from app.domains.monitoring.performance import Performance, RouteLatency
from app.domains.monitoring.report import DailyReport
from app.domains.monitoring.retention import PURGE_CHUNK, Retention
from app.domains.monitoring.telegram import TelegramClient
from app.domains.monitoring.triage import GroupDetail, Triage
from app.domains.orders.services import OrderService
from app.domains.reports.services import ReportService

log = structlog.get_logger("app.monitoring")

FLUSH_ONLY_S = 10.0
"""How long the background rounds only flush once a step found PostgreSQL down (``_guarded``)."""

ROUND_ENDED = Gauge(
    "app_monitoring_round_timestamp_seconds",
    "When error monitoring's background round last ended (Unix time; the oldest of the live processes): "
    "an old value is a stalled loop, whose errors and alerts wait unwritten",
    ["loop"],  # labelled: no value in a process before its first round (see record_process)
    multiprocess_mode="livemin",
)
TASK_FAILURES = Counter(
    "app_monitoring_task_failures",
    "Failed steps of error monitoring's background rounds, by step (flush, ship, checks, ...)",
    ["task"],
)

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def package_version() -> str:
    """The application's version: the installed package's, else ``pyproject.toml``'s (uv runs the
    project without installing it)."""
    try:
        return importlib.metadata.version("monolith")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        version = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0.0.0"
    return str(version)


class MonitoringService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        valkey: Valkey,
        *,
        crons: Sequence[CronSpec] = (),
        clock: Callable[[], float] = time.time,
        accounts: AccountService | None = None,
        orders: OrderService | None = None,
        reports: ReportService | None = None,
    ) -> None:
        assert settings.database_url is not None
        self.db = db
        self.accounts, self.orders, self.reports = accounts, orders, reports
        """The daily report's business figures, each counted by its domain (None: "n/a"), handed to
        ``DailyReport``; ``accounts`` also to ``Triage`` (an administrator's change locks their row)."""
        self.settings = settings
        self.clock = clock
        self.release = settings.monitoring_release or package_version()
        self.release_configured = bool(settings.monitoring_release)
        """False when the release is only the package version: every deploy then reports the same
        release, so "resolve in the next release" is refused (``ReleaseNotConfiguredError``)."""
        self._release_registered = False
        self.environment = settings.app_env
        zone = ZoneInfo(settings.monitoring_report_timezone)
        self.buffer = EventBuffer(settings.monitoring_buffer_max)
        self.latency = LatencyRecorder()
        self.jobs = JobStats()
        self.rules = alerts.load_rules(settings)
        self.channel = alerts.Channel(
            chats=tuple(settings.telegram_chat_id),
            sendable=bool(settings.telegram_bot_token),
            budget=settings.monitoring_alert_budget,
            budget_window=timedelta(seconds=settings.monitoring_alert_budget_window_s),
        )
        self.writer = GroupWriter(
            WriterConfig(
                rules=self.rules,
                channel=self.channel,
                samples_per_group=settings.monitoring_samples_per_group,
                environment=self.environment,
                in_app_packages=tuple(settings.monitoring_in_app_modules),
                escalation=alerts.Escalation(
                    factor=settings.monitoring_escalation_factor,
                    window_s=settings.monitoring_escalation_window_s,
                    min_events=settings.monitoring_escalation_min_events,
                ),
                group_gap_s=settings.monitoring_action_interval_s,
            )
        )
        self.telegram = TelegramClient(
            settings.telegram_bot_token, settings.telegram_api_url, settings.telegram_timeout_s
        )
        self.sender = Sender(
            db,
            settings.database_url,
            self.telegram,
            lambda: self.clock(),
            max_age_s=settings.monitoring_delivery_max_age_s,
            digest_delay_s=settings.monitoring_alert_budget_window_s,
            connect_timeout_s=settings.database_timeout_s,
        )
        self.outage = OutageNotifier(
            self.telegram,
            settings.telegram_chat_id,
            valkey,
            environment=self.environment,
            release=self.release,
            clock=lambda: self.clock(),
            exhausted=db.exhausted,
        )
        self.monitors = CronMonitors(db, settings, self.writer, self.release, crons, lambda: self.clock())
        self.performance = Performance(db, settings, lambda: self.clock())
        self.ingest = Ingest(
            db,
            settings,
            valkey,
            buffer=self.buffer,
            jobs=self.jobs,
            writer=self.writer,
            monitors=self.monitors,
            outage=self.outage,
            release=self.release,
            clock=lambda: self.clock(),
        )
        self.triage = Triage(
            db,
            valkey,
            self.writer,
            accounts=accounts,
            release=self.release,
            release_configured=self.release_configured,
            clock=lambda: self.clock(),
        )
        self.retention = Retention(db, settings, self.rules, lambda: self.clock(), lambda: self._winding_down)
        self.report = DailyReport(
            db,
            settings,
            self.channel,
            environment=self.environment,
            zone=zone,
            accounts=accounts,
            orders=orders,
            reports=reports,
            clock=lambda: self.clock(),
        )
        self._task: asyncio.Task[None] | None = None
        self._fallback: asyncio.Task[int] | None = None
        self._stop: asyncio.Event | None = None
        self._winding_down = False
        """The process stops (``stopping`` or ``close``): a purge in progress stops between chunks."""
        self._round = asyncio.Lock()
        self._flush_only_until = 0.0
        """Until then the background rounds only flush: a step found PostgreSQL down (``_guarded``)."""
        self._task_warnings = OncePerInterval(30.0)

    # ------------------------------------------------------------------------------ lifecycle

    def warn_if_alerts_undeliverable(self) -> None:
        """In production, say at start-up that alerts will only be recorded, and which setting is
        missing (never the token itself)."""
        missing = self.channel.missing_settings()
        if self.settings.is_production and missing:
            log.warning(
                "alerts_undeliverable",
                missing=missing,
                detail=f"alerts are recorded but never sent: set {' and '.join(missing)}",
            )

    def warn_if_release_unset(self) -> None:
        """In production, say at start-up that no release is configured: every deploy then reports
        the package version, so nothing tells one deploy from the next."""
        if self.settings.is_production and not self.release_configured:
            log.warning(
                "monitoring_release_unset",
                release=self.release,
                detail=(
                    f"MONITORING_RELEASE is not set: every deploy reports the package version "
                    f"{self.release}, so a group resolved 'in the next release' would never regress "
                    "and that mode is refused; build the image with "
                    "--build-arg MONITORING_RELEASE=$(git rev-parse --short HEAD) (deploy/README.md)"
                ),
            )

    async def register_release(self) -> None:
        """Record that this process's release runs (once per process). A release's place in the
        release order is the first time any of its processes did this: "older" and "newer" in
        resolve mean "first ran before" and "first ran after"."""
        async with self.db.transaction() as uow:
            await queries.upsert_release(uow.conn, name=self.release)
        self._release_registered = True

    async def start(self) -> None:
        self.warn_if_alerts_undeliverable()
        self.warn_if_release_unset()
        self._stop = asyncio.Event()
        self._winding_down = False
        with contextlib.suppress(Exception):
            await self.register_release()  # else retried by the background task
        with contextlib.suppress(Exception):
            await self.register_monitors()
        with contextlib.suppress(Exception):
            await self.load_chat_routes()  # else at the first check interval
        self._task = asyncio.create_task(self._background(), name="monitoring")

    def stopping(self) -> None:
        """The process begins to stop (a worker's SIGTERM, before the shutdown grace): the sender
        claims no new delivery, finishing the request in flight (``Sender.stop``), and a purge in
        progress stops after its chunk (the next hour's goes on). Flushing and the rest go on until
        ``close``."""
        self.sender.stop()
        self._winding_down = True

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self.sender.stop()
        self._winding_down = True  # the round close waits for ends soon, however large a purge's backlog
        for task in (self._task, self._fallback):
            if task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        try:
            await self.flush(force=True)
        except Exception as exc:  # the process ends: what it held is lost, and said so
            log.warning(
                "monitoring_events_lost",
                events=self.ingest.held_events(),
                error=type(exc).__name__,
                detail=error_message(exc),
            )
        try:
            await self.ship()
        except Exception as exc:
            log.warning(
                "monitoring_latency_lost",
                requests=self.latency.held_requests(),
                job_runs=self.jobs.held_runs(),
                error=type(exc).__name__,
                detail=error_message(exc),
            )
        await self.telegram.close()

    async def write_held(self) -> None:
        """Write at once what this process holds for the database (buffered errors, latency), after
        the background task's round in progress if one is: when it returns, nothing seen before the
        call is left for a later write. (The tests settle an app that outlives a test with it: its
        next round would write into the next test's fresh database.)"""
        async with self._round:
            await self.flush(force=True)
            await self.ship()

    async def _background(self) -> None:
        """Every ``MONITORING_FLUSH_INTERVAL_S`` a round: flush, and ship and check when theirs are
        due. The first checks come one ``MONITORING_CHECK_INTERVAL_S`` after start: ``start`` did what
        cannot wait (the release, the monitors, the chat routes), and the slot is shared by every
        process anyway (``run_periodic``)."""
        assert self._stop is not None
        settings = self.settings
        next_ship = time.monotonic() + settings.monitoring_ship_interval_s
        next_check = time.monotonic() + settings.monitoring_check_interval_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), settings.monitoring_flush_interval_s)
            if self._stop.is_set():
                return
            async with self._round:
                if not self._release_registered:
                    await self._guarded("release", self.register_release())
                await self._guarded("flush", self.flush())
                if time.monotonic() >= self._flush_only_until:
                    if time.monotonic() >= next_ship:
                        next_ship = time.monotonic() + settings.monitoring_ship_interval_s
                        await self._guarded("ship", self.ship())
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + settings.monitoring_check_interval_s
                        await self._guarded("chat routes", self.load_chat_routes())
                        await self._guarded("checks", self.run_periodic())
                        await self._guarded("fallback", self._fallback_delivery())
                ROUND_ENDED.labels("monitoring").set(time.time())

    async def _guarded(self, what: str, work: Any) -> None:
        """Run ``work``, counting and logging its failure (at most once per interval and step). One
        that says PostgreSQL is down leaves the rounds of the next ``FLUSH_ONLY_S`` to the flush: the
        ship, checks and fallback each waited out the pool's timeout, round after round, and the
        flush, the outage notice's path, came some 25 s after the first 503."""
        try:
            await work
        except Exception as exc:
            TASK_FAILURES.labels(what).inc()
            if self._task_warnings.due(what):  # per task: a failing check never hides a failing flush
                log.warning(
                    "monitoring_task_failed",
                    task=what,
                    error=type(exc).__name__,
                    detail=error_message(exc),
                )
            if database_down(exc):
                self._flush_only_until = time.monotonic() + FLUSH_ONLY_S

    async def _fallback_delivery(self) -> None:
        """Deliver alerts the worker has not sent within the fallback delay (it may be down)."""
        if not self.channel.sendable or (self._fallback is not None and not self._fallback.done()):
            return
        before = utc(self.clock() - self.settings.monitoring_delivery_fallback_s)
        async with self.db.transaction() as uow:
            due = await queries.count_due_deliveries(uow.conn, before=before)
        if due:
            self._fallback = asyncio.create_task(self.deliver(budget_s=120.0), name="monitoring-delivery")

    # ------------------------------------------------------------------------------ capture (hot path)

    def capture_exception(self, exc: Exception, scope: Scope) -> None:
        """A request's unhandled exception (the after-exception hook): buffered when it is a 500."""
        self.ingest.capture_exception(exc, scope)

    def job_started(self, ctx: Any) -> None:
        self.ingest.job_started(ctx)

    def job_finished(self, ctx: Any) -> None:
        self.ingest.job_finished(ctx)

    # ------------------------------------------------------------------------------ flush

    async def flush(self, *, force: bool = False) -> int:
        """Write what may be written now (everything with ``force``); returns the group writes."""
        return await self.ingest.flush(force=force)

    async def load_chat_routes(self) -> None:
        """Give the outage notice the chats Telegram moved (``Ingest.load_chat_routes``)."""
        await self.ingest.load_chat_routes()

    async def write_now(self, events: Sequence[RawEvent]) -> list[WriteResult]:
        """Write ``events`` at once, bypassing the buffer and the dedup gate (checks, tests)."""
        return await self.ingest.write_now(events)

    # ------------------------------------------------------------------------------ latency and jobs

    async def ship(self) -> None:
        """Add this process's latency histograms and job statistics to the shared minute rows."""
        routes, jobs = self.latency.drain(), self.jobs.drain()
        try:
            await self.performance.ship(routes, jobs)
        except BaseException:
            self.latency.restore(routes)  # shipped with the next ship
            self.jobs.restore(jobs)
            raise

    async def route_latency(self, window: timedelta, now: float | None = None) -> list[RouteLatency]:
        """p50/p95/p99 per route over the last ``window``, slowest p95 first."""
        return await self.performance.route_latency(window, now)

    async def job_runs(self, window: timedelta) -> list[queries.JobRunsBetweenRow]:
        return await self.performance.job_runs(window)

    # ------------------------------------------------------------------------------ periodic checks

    async def run_periodic(self, now: float | None = None) -> bool:
        """The periodic checks, when this process is the first to reach the current slot. The slot is
        PostgreSQL's (``ClaimTick``), the clock every process shares: one host's clock stepped ahead
        cannot silence the others'. ``now`` is only the moment the checks consider."""
        moment = self.clock() if now is None else now
        interval = self.settings.monitoring_check_interval_s
        async with self.db.transaction() as uow:
            claimed = await queries.claim_tick(uow.conn, name="checks", interval_s=interval)
        if claimed is None:
            return False
        await self.register_monitors()
        await self.triage.expire_timed_ignores(utc(moment))
        await self.check_crons(moment)
        await self.evaluate_slow_routes(moment)
        await self.send_report_if_due(moment)
        async with self.db.transaction() as uow:
            purge = await queries.claim_tick(uow.conn, name="purge", interval_s=3600.0)
        if purge is not None:
            await self.purge(moment)
        return True

    async def register_monitors(self) -> None:
        """Create or update a cron monitor for every scheduled job (state is kept); remove the others."""
        await self.monitors.register()

    async def check_crons(self, now: float | None = None) -> list[str]:
        """Sweep every cron monitor; returns the names that got a problem (missed, timed out)."""
        return await self.monitors.sweep(now)

    async def cron_monitors(self) -> list[MonitoringCronMonitor]:
        return await self.monitors.list()

    async def evaluate_slow_routes(self, now: float | None = None) -> list[WriteResult]:
        """Open (or add to) a slow-route group for each route whose p95 is over the threshold or
        regressed against its own last 24 hours."""
        events = await self.performance.slow_route_events(now)
        return await self.write_now(events) if events else []

    async def send_report_if_due(self, now: float | None = None) -> int | None:
        """Record (and queue for Telegram) today's report once its local time has passed."""
        return await self.report.send_if_due(now)

    async def purge(self, now: float | None = None, *, chunk_size: int = PURGE_CHUNK) -> int:
        """Delete what is older than ``MONITORING_RETENTION_DAYS`` (``Retention.purge``); returns how
        many rows."""
        return await self.retention.purge(now, chunk_size=chunk_size)

    async def deliver(self, budget_s: float = 60.0) -> int:
        return await self.sender.deliver(budget_s)

    # ------------------------------------------------------------------------------ admin

    async def confirm_admin(self, actor_id: int) -> None:
        """``ForbiddenError`` unless ``actor_id`` is an active administrator's row now."""
        await self.triage.confirm_admin(actor_id)

    async def resolve(
        self,
        group_id: int,
        actor_id: int | None,
        *,
        in_release: str | None = None,
        in_next_release: bool = False,
    ) -> GroupDetail:
        """Resolve now, in a release or in the next release (``Triage.resolve`` says how releases are
        ordered)."""
        return await self.triage.resolve(
            group_id, actor_id, in_release=in_release, in_next_release=in_next_release
        )

    async def ignore(
        self,
        group_id: int,
        actor_id: int | None,
        mode: MonitoringIgnoreMode,
        *,
        more_events: int | None = None,
        until: datetime | None = None,
    ) -> GroupDetail:
        return await self.triage.ignore(group_id, actor_id, mode, more_events=more_events, until=until)

    async def reopen(self, group_id: int, actor_id: int | None) -> GroupDetail:
        return await self.triage.reopen(group_id, actor_id)

    async def merge(self, target_id: int, source_ids: Sequence[int], actor_id: int | None) -> GroupDetail:
        """Merge the source groups (roots) into the target: reversible (``Triage.merge``)."""
        return await self.triage.merge(target_id, source_ids, actor_id)

    async def unmerge(self, group_id: int, actor_id: int | None) -> GroupDetail:
        """Undo a merge (``Triage.unmerge``)."""
        return await self.triage.unmerge(group_id, actor_id)

    async def detail(self, group_id: int) -> GroupDetail:
        return await self.triage.detail(group_id)

    async def list_groups(
        self,
        *,
        status: MonitoringGroupStatus | None,
        kind: MonitoringGroupKind | None,
        release: str | None,
        before_id: int,
        limit: int,
    ) -> Sequence[queries.ListGroupsRow | queries.ListGroupsWithStatusAndKindRow]:
        return await self.triage.list_groups(
            status=status, kind=kind, release=release, before_id=before_id, limit=limit
        )

    async def list_events(self, group_id: int, *, before_id: int, limit: int) -> list[MonitoringEvent]:
        return await self.triage.list_events(group_id, before_id=before_id, limit=limit)

    async def grouping(
        self, group_id: int
    ) -> tuple[MonitoringGroup, list[MonitoringFingerprint], MonitoringEvent | None]:
        return await self.triage.grouping(group_id)

    async def list_alerts(
        self, *, group_id: int | None, before_id: int, limit: int
    ) -> Sequence[queries.ListAlertsRow | queries.ListGroupAlertsRow]:
        return await self.triage.list_alerts(group_id=group_id, before_id=before_id, limit=limit)
