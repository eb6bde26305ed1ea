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
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from cachetools import LRUCache
from litestar.types import Scope
from prometheus_client import Counter
from saq.job import Status
from valkey.asyncio import Valkey
from valkey.exceptions import ValkeyError

from app.config import Settings
from app.core.db import Database, UnitOfWork, purge_tables
from app.core.errors import ConflictError, ForbiddenError, NotFoundError, UnprocessableError
from app.core.logging import OncePerInterval, error_message
from app.core.pagination import BEFORE_EVERY_ID
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
from app.domains.monitoring.capture import (
    DEGRADED,
    CheckIn,
    EventBuffer,
    JobStats,
    RawAggregate,
    RawEvent,
    classify,
    request_event,
)
from app.domains.monitoring.crons import CronSpec
from app.domains.monitoring.delivery import Sender
from app.domains.monitoring.fingerprint import (
    Fingerprint,
    capture_chain,
    culprit,
    fingerprint_chain,
    fixed_fingerprint,
    normalise_message,
    resolve_chain,
    type_name,
)
from app.domains.monitoring.groups import (
    MAX_WRITE_FAILURES,
    Aggregate,
    GroupWriter,
    WriterConfig,
    WriteResult,
    lock_roots,
    refused_for_content,
    set_state,
    utc,
)
from app.domains.monitoring.latency import LatencyRecorder
from app.domains.monitoring.monitors import CheckInsNotAppliedError, CronMonitors
from app.domains.monitoring.outage import OutageNotifier
from app.domains.monitoring.performance import Performance, RouteLatency
from app.domains.monitoring.report import BusinessFigures, build_report, report_period
from app.domains.monitoring.schemas import DETAIL_RELEASES
from app.domains.monitoring.scrub import storable_scrubbed_prefix
from app.domains.monitoring.telegram import TelegramClient
from app.domains.orders.services import OrderService
from app.domains.reports.services import ReportService

log = structlog.get_logger("app.monitoring")

WRITES = Counter("app_monitoring_group_writes", "Aggregates written to error groups (one transaction each)")
FLUSH_FAILURES = Counter(
    "app_monitoring_flush_failures", "Aggregate writes that failed and were kept for later"
)
DROPPED_AGGREGATES = Counter(
    "app_monitoring_aggregates_dropped",
    "Aggregates dropped after being refused for their content MAX_WRITE_FAILURES times",
)
DROPPED_OVER_PENDING = Counter(
    "app_monitoring_pending_events_dropped",
    "Events of a new fingerprint dropped because MAX_PENDING fingerprints were already waiting to be written",
)
MAX_PENDING = 5000
"""Distinct fingerprints held in memory at most (past it, new ones are dropped and counted)."""
GATE = "monitoring:gate:"
PURGE_CHUNK = 10_000
"""Rows deleted per transaction by the retention (``purge``): each statement stays far below the
statement timeout, however many rows have piled up."""


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


class ReleaseNotConfiguredError(ConflictError):
    """The next release cannot be told apart from this one: the process runs with the package
    version only (no ``MONITORING_RELEASE``), which every deploy shares."""

    slug = "release-not-configured"
    title = "Release not configured"


class UnknownReleaseError(UnprocessableError):
    """A release named in a resolve that has never run here: it has no place in the release order
    yet (a release's place is the first time one of its processes started)."""

    slug = "unknown-release"
    title = "Unknown release"


@dataclass(frozen=True, slots=True)
class GroupDetail:
    group: MonitoringGroup
    events: int
    users: int
    first_seen_at: datetime
    last_seen_at: datetime
    members: list[int]
    releases: list[queries.ReleasesOfGroupRow]
    latest: MonitoringEvent | None
    resolved_in_release: str | None
    resolved_after_release: str | None


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
        """The daily report's business figures, each counted by its domain (None: "n/a")."""
        self.settings = settings
        self.valkey = valkey
        self.clock = clock
        self.release = settings.monitoring_release or package_version()
        self.release_configured = bool(settings.monitoring_release)
        """False when the release is only the package version: every deploy then reports the same
        release, so "resolve in the next release" is refused (``ReleaseNotConfiguredError``)."""
        self._release_registered = False
        self.environment = settings.app_env
        self.zone = ZoneInfo(settings.monitoring_report_timezone)
        self.buffer = EventBuffer(settings.monitoring_buffer_max)
        self.latency = LatencyRecorder()
        self.jobs = JobStats()
        self.checkins: list[CheckIn] = []
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
        )
        self.monitors = CronMonitors(db, settings, self.writer, self.release, crons, lambda: self.clock())
        self.performance = Performance(db, settings, lambda: self.clock())
        self._pending: dict[str, Aggregate] = {}
        self._local_writes: dict[str, float] = {}
        self._fingerprints: LRUCache[Any, tuple[Fingerprint, str]] = LRUCache(maxsize=2048)
        self._flush_lock = asyncio.Lock()
        self._valkey_down_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._fallback: asyncio.Task[int] | None = None
        self._stop: asyncio.Event | None = None
        self._task_warnings = OncePerInterval(30.0)
        self._drop_warnings = OncePerInterval(60.0)

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
        with contextlib.suppress(Exception):
            await self.register_release()  # else retried by the background task
        with contextlib.suppress(Exception):
            await self.register_monitors()
        with contextlib.suppress(Exception):
            await self.load_chat_routes()  # else at the first check interval
        self._task = asyncio.create_task(self._background(), name="monitoring")

    def stopping(self) -> None:
        """The process begins to stop (a worker's SIGTERM, before the shutdown grace): the sender
        claims no new delivery, finishing the request in flight (``Sender.stop``). Flushing and the
        rest go on until ``close``."""
        self.sender.stop()

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self.sender.stop()
        for task in (self._task, self._fallback):
            if task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await self.flush(force=True)
        with contextlib.suppress(Exception):
            await self.ship()
        await self.telegram.close()

    async def _background(self) -> None:
        assert self._stop is not None
        settings = self.settings
        next_ship = time.monotonic() + settings.monitoring_ship_interval_s
        next_check = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), settings.monitoring_flush_interval_s)
            if self._stop.is_set():
                return
            if not self._release_registered:
                await self._guarded("release", self.register_release())
            await self._guarded("flush", self.flush())
            if time.monotonic() >= next_ship:
                next_ship = time.monotonic() + settings.monitoring_ship_interval_s
                await self._guarded("ship", self.ship())
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + settings.monitoring_check_interval_s
                await self._guarded("chat routes", self.load_chat_routes())
                await self._guarded("checks", self.run_periodic())
                await self._guarded("fallback", self._fallback_delivery())

    async def _guarded(self, what: str, work: Any) -> None:
        try:
            await work
        except Exception as exc:
            if self._task_warnings.due():
                log.warning(
                    "monitoring_task_failed",
                    task=what,
                    error=type(exc).__name__,
                    detail=error_message(exc),
                )

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
        kind = classify(exc, scope)
        if kind is None:
            return
        if kind == MonitoringGroupKind.UNAVAILABLE and not self.settings.monitoring_capture_unavailable:
            return
        self.buffer.add(request_event(exc, scope, kind))

    def job_started(self, ctx: Any) -> None:
        job = ctx.get("job")
        if job is None:
            return
        ctx["monitoring_started"] = time.perf_counter()
        if job.key.startswith("cron:"):
            self.checkins.append(CheckIn(job.function, job.scheduled or None, "in_progress", self.clock()))

    def job_finished(self, ctx: Any) -> None:
        job = ctx.get("job")
        if job is None:
            return
        started = ctx.get("monitoring_started")
        duration_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
        exc = ctx.get("exception")
        if exc is None:
            outcome = "complete" if job.status == Status.COMPLETE else "aborted"
        else:
            outcome = "failed" if job.status == Status.FAILED else "retried"
        self.jobs.add(job.function, outcome, duration_ms, job.attempts)
        if outcome == "failed":
            self.buffer.add(self._job_event(job, exc))
        if job.key.startswith("cron:") and outcome in ("complete", "failed"):
            status = "ok" if outcome == "complete" else "error"
            self.checkins.append(
                CheckIn(job.function, job.scheduled or None, status, self.clock(), duration_ms)
            )

    def _job_event(self, job: Any, exc: Exception) -> RawEvent:
        """A job's last failed attempt. Failed because a dependency is down (``classify``: a
        connection refused or lost, the pool's timeout, Valkey unreachable), it is an event of the
        outage's ``unavailable`` group, fingerprinted by exception type as a request's 503 is: held
        while PostgreSQL is down, told by the outage notice, one alert when it is back (not one new
        ``job`` group per job). Any other failure is the job's own bug, grouped by its stack."""
        context: dict[str, Any] = {
            "source": "job",
            "job": job.function,
            "queue": getattr(job.queue, "name", None),
            "attempts": job.attempts,
            "retries": job.retries,
            "job_key": job.key,
            "arguments": sorted(job.kwargs or {}),
        }
        if self.settings.monitoring_capture_unavailable and classify(exc) == MonitoringGroupKind.UNAVAILABLE:
            return RawEvent(
                kind=MonitoringGroupKind.UNAVAILABLE,
                occurred_at=self.clock(),
                chain=capture_chain(exc),
                context=context,
                fixed=(type_name(type(exc)),),
                title=f"Dependency unavailable: {type(exc).__name__}",
            )
        return RawEvent(
            kind=MonitoringGroupKind.JOB, occurred_at=self.clock(), chain=capture_chain(exc), context=context
        )

    # ------------------------------------------------------------------------------ flush

    def _fingerprint(self, event: RawEvent) -> tuple[Fingerprint, str]:
        if event.fixed is not None:
            return fixed_fingerprint(event.kind.value, *event.fixed), event.context.get("route") or ""
        has_frames = any(raw.frames for raw in event.chain)
        job = event.context.get("job") if event.kind == MonitoringGroupKind.JOB else None
        key = (
            event.kind,
            job,
            tuple((raw.type, raw.frames) for raw in event.chain)
            if has_frames
            else tuple((raw.type, normalise_message(raw.message)) for raw in event.chain),
        )
        cached = self._fingerprints.get(key)
        if cached is None:
            chain = resolve_chain(event.chain, self.settings.monitoring_in_app_modules)
            scope = (f"job {job}",) if job else ()
            cached = (fingerprint_chain(event.kind.value, chain, scope), culprit(chain))
            self._fingerprints[key] = cached
        return cached

    def _title(self, event: RawEvent) -> str:
        if event.title:
            return storable_scrubbed_prefix(event.title, 300)
        if not event.chain:
            return event.kind.value
        last = event.chain[-1]
        short = last.type.rsplit(".", 1)[-1]
        first_line = last.message.strip().split("\n", 1)[0]
        return storable_scrubbed_prefix(f"{short}: {first_line}" if first_line else short, 300)

    def _aggregate(self, raws: list[RawAggregate], pending: dict[str, Aggregate]) -> None:
        now = time.monotonic()
        for raw in raws:
            sample = raw.samples[0]
            fingerprint, where = self._fingerprint(sample)
            key = fingerprint.primary.hash
            aggregate = pending.get(key)
            if aggregate is None:
                if len(pending) >= MAX_PENDING:
                    self._drop(raw)
                    continue
                aggregate = pending[key] = Aggregate(
                    kind=sample.kind,
                    fingerprint=fingerprint,
                    title=self._title(sample),
                    culprit=where,
                    held_since=now,
                )
            aggregate.absorb(raw, self.release)

    def _drop(self, raw: RawAggregate) -> None:
        """A new fingerprint while ``MAX_PENDING`` are held (the database is behind): its events are
        lost, counted in ``app_monitoring_pending_events_dropped`` and logged once a minute."""
        DROPPED_OVER_PENDING.inc(raw.count)
        if self._drop_warnings.due():
            log.warning(
                "monitoring_fingerprints_dropped",
                held=MAX_PENDING,
                events=raw.count,
                detail="too many distinct errors waiting to be written: new ones are dropped "
                "(app_monitoring_pending_events_dropped_total counts their events)",
            )

    async def _gates(self, keys: list[str]) -> set[str]:
        """The fingerprints this process may write now (see the module docstring)."""
        now = time.monotonic()
        window = self.settings.monitoring_dedup_window_s
        results: list[Any] | None = None
        if now >= self._valkey_down_until:
            try:
                async with self.valkey.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.set(GATE + key, b"1", nx=True, px=int(window * 1000))
                    results = await pipe.execute()
            except (ValkeyError, OSError):
                self._valkey_down_until = now + 5.0
        if results is None:
            DEGRADED.inc(len(keys))
            return {key for key in keys if now - self._local_writes.get(key, float("-inf")) >= window}
        allowed = {key for key, won in zip(keys, results, strict=True) if won}
        allowed |= {key for key in keys if now - self._pending[key].held_since >= 2 * window}
        return allowed

    async def flush(self, *, force: bool = False) -> int:
        """Write what may be written now (everything with ``force``); returns the group writes. While
        PostgreSQL is down, the outage is told to Telegram around it (``outage.py``)."""
        try:
            writes = await self._flush(force=force)
        except Exception as exc:
            await self.outage.flush_failed(exc, list(self._pending.values()))
            raise
        if writes:
            if self.outage.outage_seen:  # the "over" message goes where the chats are now
                with contextlib.suppress(Exception):
                    await self.load_chat_routes()
            await self.outage.flush_succeeded()
        return writes

    async def load_chat_routes(self) -> None:
        """Give the outage notice, which is sent without the database, the chats Telegram moved
        (``monitoring_telegram_chats.migrated_to``, the sender's record), after storing the moves the
        notice itself learned during an outage."""
        learned = self.outage.learned_routes()
        windows = self.outage.learned_windows()
        async with self.db.transaction() as uow:
            for chat_id, migrated_to in learned.items():
                await queries.save_chat_migration(uow.conn, chat_id=chat_id, migrated_to=migrated_to)
            for chat_id, until in windows.items():
                await queries.block_chat_until(
                    uow.conn, chat_id=chat_id, blocked_until=datetime.fromtimestamp(until, UTC)
                )
            chats = await queries.load_chats(uow.conn)
        stored = {row.chat_id: row.migrated_to for row in chats if row.migrated_to}
        self.outage.remember_routes(stored, learned)
        blocked = {row.chat_id: row.blocked_until.timestamp() for row in chats if row.blocked_until}
        self.outage.remember_windows(blocked, windows)

    async def _flush(self, *, force: bool) -> int:
        async with self._flush_lock:
            self._aggregate(self.buffer.drain(), self._pending)
            await self._apply_checkins()
            keys = list(self._pending)
            if not keys:
                return 0
            allowed = set(keys) if force else await self._gates(keys)
            writes = 0
            failure: Exception | None = None
            for key in keys:
                if key not in allowed:
                    continue
                aggregate = self._pending.pop(key)
                try:
                    async with self.db.transaction() as uow:
                        await self.writer.write(uow, aggregate, utc(self.clock()))
                except Exception as exc:
                    failure = exc
                    FLUSH_FAILURES.inc()
                    if refused_for_content(exc):
                        aggregate.failures += 1  # an unavailable database never drops it
                    if aggregate.failures >= MAX_WRITE_FAILURES:
                        DROPPED_AGGREGATES.inc()
                        log.error(
                            "monitoring_aggregate_dropped", events=aggregate.count, error=type(exc).__name__
                        )
                    else:
                        self._pending[key] = aggregate  # written with the next flush
                    continue
                self._local_writes[key] = time.monotonic()
                writes += 1
                WRITES.inc()
            if len(self._local_writes) > 4 * MAX_PENDING:
                self._local_writes.clear()
            if failure is not None:
                raise failure  # logged (rate-limited) by the background task
            return writes

    async def _apply_checkins(self) -> None:
        checkins, self.checkins = self.checkins, []
        try:
            await self.monitors.apply(checkins)
        except CheckInsNotAppliedError as exc:
            self.checkins[:0] = exc.remaining
            raise

    async def write_now(self, events: Sequence[RawEvent]) -> list[WriteResult]:
        """Write ``events`` at once, bypassing the buffer and the dedup gate (checks, tests)."""
        buffer = EventBuffer(len(events) + 1)
        for event in events:
            buffer.add(event)
        batch: dict[str, Aggregate] = {}
        self._aggregate(buffer.drain(), batch)
        results = []
        for aggregate in batch.values():
            async with self.db.transaction() as uow:
                results.append(await self.writer.write(uow, aggregate, utc(self.clock())))
        return results

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
        await self._expire_timed_ignores(utc(moment))
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
        moment = utc(self.clock() if now is None else now)
        period = report_period(moment, self.settings.monitoring_report_time, self.zone)
        if period is None:
            return None
        day, since, until = period
        async with self.db.transaction() as uow:
            if await queries.claim_report(uow.conn, day=day) is None:
                return None
            figures = await self._business_figures(uow, since, until)
            rendered = await build_report(uow.conn, day, since, until, self.environment, figures)
            alert = await alerts.record_alert(
                uow,
                self.channel,
                key=f"report:{day.isoformat()}",
                kind="report",
                rule="daily-report",
                group_id=None,
                summary=f"daily report {day.isoformat()}",
                rendered=rendered,
                now=moment,
            )
            if alert is not None:
                await queries.set_report_alert(uow.conn, alert_id=alert.id, day=day)
        return alert.id if alert is not None else None

    async def _business_figures(self, uow: UnitOfWork, since: datetime, until: datetime) -> BusinessFigures:
        orders, revenue = await self.orders.totals_between(uow, since, until) if self.orders else (None, None)
        return BusinessFigures(
            signups=await self.accounts.count_signups(uow, since, until) if self.accounts else None,
            orders=orders,
            revenue=revenue,
            pageviews=await self.reports.total_pageviews(uow, since, until) if self.reports else None,
        )

    async def purge(self, now: float | None = None, *, chunk_size: int = PURGE_CHUNK) -> int:
        """Delete what is older than ``MONITORING_RETENTION_DAYS`` (each delete by an indexed time);
        returns how many rows.

        Alert-rule firings (and each group's last alert) are kept for the longest action interval
        too, so a purge never lets a rule fire early. Groups stay: a resolved group's fingerprints
        are what turns its next event into a regression (and an ignored one's into silence) rather
        than a new group. The users a group has not seen for the retention go (a user seen again is
        then counted again in the group's ``users``), and so do the releases it has not seen for it
        (a long-lived group gained one row per release forever; its detail lists the newest ones).

        Each table is purged in chunks of at most ``chunk_size`` rows, one transaction each, until a
        chunk comes back short: a backlog (a lowered retention, purges that could not run) drains
        however large, where one DELETE of it outlasted the statement timeout and rolled back every
        hour. A table whose purge fails (a timeout, a lock) is logged and left for the next hour, the
        chunks it deleted kept; the tables after it are purged all the same, and the first failure is
        raised once every table has been tried."""
        moment = self.clock() if now is None else now
        retained = moment - self.settings.monitoring_retention_days * 86_400
        before = utc(retained)
        group_gap = self.settings.monitoring_action_interval_s
        longest_interval = max((rule.action_interval_s for rule in self.rules), default=group_gap)
        longest_interval = max(longest_interval, group_gap)
        fires_before = utc(min(retained, moment - longest_interval))
        chunked = self._table_purge
        tables: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("monitoring_events", chunked(queries.purge_events_before, before, chunk_size)),
            ("monitoring_group_counts", chunked(queries.purge_counts_before, before, chunk_size)),
            ("monitoring_route_latency", chunked(queries.purge_latency_before, before, chunk_size)),
            ("monitoring_route_exemplars", chunked(queries.purge_exemplars_before, before, chunk_size)),
            ("monitoring_job_runs", chunked(queries.purge_job_runs_before, before, chunk_size)),
            ("monitoring_cron_checkins", chunked(queries.purge_checkins_before, before, chunk_size)),
            ("monitoring_alerts", chunked(queries.purge_alerts_before, before, chunk_size)),
            ("monitoring_group_activity", chunked(queries.purge_activity_before, before, chunk_size)),
            ("monitoring_budget_periods", chunked(queries.purge_budget_periods_before, before, chunk_size)),
            ("monitoring_group_users", lambda: self._purge_group_users(before, chunk_size)),
            ("monitoring_group_releases", chunked(queries.purge_group_releases_before, before, chunk_size)),
            ("monitoring_rule_fires", chunked(queries.purge_rule_fires_before, fires_before, chunk_size)),
        ]
        return await purge_tables(tables, name="monitoring", logger=log)

    def _table_purge(
        self, delete: Callable[..., Awaitable[int]], before: datetime, chunk_size: int
    ) -> Callable[[], Awaitable[int]]:
        """One table's purge: ``delete`` (one chunk of the rows older than ``before``) repeated, one
        transaction each (``Database.delete_in_chunks``)."""

        async def chunk(uow: UnitOfWork) -> int:
            return await delete(uow.conn, before=before, chunk_size=chunk_size)

        return lambda: self.db.delete_in_chunks(chunk)

    async def _expire_timed_ignores(self, now: datetime) -> None:
        """Unresolve the roots whose ignore time has passed, one transaction each (``ExpireTimedIgnore``
        says why)."""
        async with self.db.transaction() as uow:
            due = await queries.timed_ignores_due(uow.conn, now=now)
        for group_id in due:
            async with self.db.transaction() as uow:
                await queries.expire_timed_ignore(uow.conn, id=group_id, now=now)

    async def _purge_group_users(self, before: datetime, chunk_size: int) -> int:
        """The users a group has not seen since ``before``, group by group: each chunk starts at the
        group where the last one ended, so none reads again what the ones before it went through.

        Each group's ``users`` is lowered by its rows deleted, under the locks of the groups' roots,
        taken first as a group's write takes its root's (then its users, then the group): a write
        re-seeing a user purged counted it again, and the list (``users``) said more than the detail
        (the rows) ever after. A group a merge moved to another tree meanwhile waits for a later
        chunk, or the next run when the chunk's cursor has passed it."""
        from_group_id = 0

        async def chunk(uow: UnitOfWork) -> int:
            nonlocal from_group_id
            groups = await queries.groups_with_users_before(
                uow.conn, from_group_id=from_group_id, before=before, chunk_size=chunk_size
            )
            if not groups:
                return 0
            deleted = await queries.purge_group_users_before(
                uow.conn,
                group_ids=[group.id for group in groups],
                root_ids=await lock_roots(uow, [group.root_id for group in groups]),
                before=before,
                chunk_size=chunk_size,
            )
            from_group_id = max(deleted, default=from_group_id)
            return len(deleted)

        return await self.db.delete_in_chunks(chunk)

    async def deliver(self, budget_s: float = 60.0) -> int:
        return await self.sender.deliver(budget_s)

    # ------------------------------------------------------------------------------ admin

    async def _lock_admin(self, uow: UnitOfWork, actor_id: int | None) -> None:
        """An administrator's change takes the actor's row first: the token's role is a claim, the
        row decides (``AccountService.lock_admin``). ``None``: a change made in-process, not for a
        caller (nothing to check); without accounts in the assembly no caller's change is accepted."""
        if actor_id is None:
            return
        if self.accounts is None:
            raise ForbiddenError("Administrators only.")
        await self.accounts.lock_admin(uow, actor_id)

    async def confirm_admin(self, actor_id: int) -> None:
        """``ForbiddenError`` unless ``actor_id`` is an active administrator's row now (the test
        error's route: it writes nothing itself, but what it raises is captured and alerted)."""
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)

    async def _root_for_change(self, uow: UnitOfWork, group_id: int) -> MonitoringGroup:
        group = await queries.lock_group(uow.conn, id=group_id)
        if group is None:
            raise NotFoundError("No such group.")
        if group.parent_id is not None:
            raise ConflictError(
                f"Group {group_id} is merged into group {group.root_id}: "
                "change that group, or unmerge this one."
            )
        return group

    def _open_gates_after_commit(self, uow: UnitOfWork, root_id: int) -> None:
        """After a state change, the next event of the group is written at once (no dedup wait)."""

        async def open_gates() -> None:
            async with self.db.transaction() as later:
                hashes = await queries.tree_hashes(later.conn, root_id=root_id)
            if hashes:
                with contextlib.suppress(ValkeyError, OSError):
                    await self.valkey.delete(*(GATE + row.hash for row in hashes))

        uow.after_commit(open_gates)

    async def resolve(
        self,
        group_id: int,
        actor_id: int | None,
        *,
        in_release: str | None = None,
        in_next_release: bool = False,
    ) -> GroupDetail:
        """Resolve now; ``in_release``: only events of that release or a newer one regress it;
        ``in_next_release``: only events of a release newer than the running one do.

        Releases are ordered by the first time one of their processes started (``register_release``):
        "newer" is "first ran later". So ``in_release`` must name a release that has run
        (``UnknownReleaseError`` otherwise: a future release has no place in that order yet), and
        ``in_next_release`` needs a configured release (``ReleaseNotConfiguredError`` when the running
        one is only the package version, shared by every deploy)."""
        if in_next_release and not self.release_configured:
            raise ReleaseNotConfiguredError(
                f"This deployment reports only the package version ({self.release}) as its release: "
                "MONITORING_RELEASE is not set, so the next deploy would report the same release and "
                "the group would never regress. Set MONITORING_RELEASE per build (the image's "
                "MONITORING_RELEASE build argument, e.g. the git commit), or resolve now or in a "
                "named release."
            )
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            group = await self._root_for_change(uow, group_id)
            in_release_id = after_release_id = None
            if in_release is not None:
                release = (  # the running release has run, even if its start-up registration failed
                    await queries.upsert_release(uow.conn, name=in_release)
                    if in_release == self.release
                    else await queries.get_release_by_name(uow.conn, name=in_release)
                )
                if release is None:
                    raise UnknownReleaseError(
                        f"Release {in_release!r} has never run here, so it has no place in the release "
                        "order yet (a release is ordered by the first time it ran). Resolve in the next "
                        f"release (mode in_next_release), or resolve in {in_release!r} once it has run."
                    )
                in_release_id = release.id
            if in_next_release:
                current = await queries.upsert_release(uow.conn, name=self.release)
                assert current is not None
                after_release_id = current.id
            await set_state(
                uow,
                group,
                MonitoringGroupStatus.RESOLVED,
                now,
                resolved_at=now,
                resolved_in_release_id=in_release_id,
                resolved_after_release_id=after_release_id,
            )
            detail = {"in_release": in_release, "in_next_release": in_next_release or None}
            await queries.add_activity(
                uow.conn,
                group_id=group.id,
                action="resolved",
                actor_id=actor_id,
                detail={k: v for k, v in detail.items() if v is not None},
                at=now,
            )
            self._open_gates_after_commit(uow, group.id)
            return await self._detail(uow, group.id)

    async def ignore(
        self,
        group_id: int,
        actor_id: int | None,
        mode: MonitoringIgnoreMode,
        *,
        more_events: int | None = None,
        until: datetime | None = None,
    ) -> GroupDetail:
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            group = await self._root_for_change(uow, group_id)
            until_events = None
            if mode == MonitoringIgnoreMode.UNTIL_COUNT:
                assert more_events is not None
                totals = await queries.tree_totals(uow.conn, root_id=group.id)
                assert totals is not None
                until_events = totals.events + more_events
            assert mode != MonitoringIgnoreMode.UNTIL_TIME or until is not None
            await set_state(
                uow,
                group,
                MonitoringGroupStatus.IGNORED,
                now,
                ignore_mode=mode,
                ignore_until_events=until_events,
                ignore_until=until if mode == MonitoringIgnoreMode.UNTIL_TIME else None,
            )
            await queries.add_activity(
                uow.conn,
                group_id=group.id,
                action="ignored",
                actor_id=actor_id,
                detail={
                    "mode": mode.value,
                    "until_events": until_events,
                    "until": until.isoformat() if until else None,
                },
                at=now,
            )
            return await self._detail(uow, group.id)

    async def reopen(self, group_id: int, actor_id: int | None) -> GroupDetail:
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            group = await self._root_for_change(uow, group_id)
            await set_state(uow, group, MonitoringGroupStatus.UNRESOLVED, now)
            await queries.add_activity(
                uow.conn, group_id=group.id, action="reopened", actor_id=actor_id, detail={}, at=now
            )
            return await self._detail(uow, group.id)

    async def merge(self, target_id: int, source_ids: Sequence[int], actor_id: int | None) -> GroupDetail:
        """Merge the source groups (roots) into the target: reversible, every group keeps its own
        counters and hashes; the target's state applies to all of them from now on (a target ignored
        until N more events still waits for N: the sources' past events do not count)."""
        sources = sorted(set(source_ids))
        if target_id in sources:
            raise ConflictError("A group cannot be merged into itself.")
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            locked = {}
            for group_id in sorted([target_id, *sources]):  # one lock order: no deadlock between merges
                locked[group_id] = await self._root_for_change(uow, group_id)
            moved = 0
            for source in sources:
                totals = await queries.tree_totals(uow.conn, root_id=source)
                moved += totals.events if totals is not None else 0
                await queries.set_parent(uow.conn, parent_id=target_id, id=source)
                await queries.move_tree(uow.conn, new_root_id=target_id, old_root_id=source)
                await queries.add_activity(
                    uow.conn,
                    group_id=source,
                    action="merged",
                    actor_id=actor_id,
                    detail={"into": target_id},
                    at=now,
                )
            await queries.shift_ignore_count(uow.conn, events=moved, id=target_id)
            await queries.add_activity(
                uow.conn,
                group_id=target_id,
                action="merged",
                actor_id=actor_id,
                detail={"sources": sources},
                at=now,
            )
            return await self._detail(uow, target_id)

    async def unmerge(self, group_id: int, actor_id: int | None) -> GroupDetail:
        """Undo a merge: the group (with whatever was merged into it before) is a root again, with
        its own counters, hashes and the state it had when it was merged."""
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            group = await queries.get_group(uow.conn, id=group_id)
            if group is None:
                raise NotFoundError("No such group.")
            root = await self.writer.lock_root(uow, group_id)
            if root.id == group_id:  # checked under the lock: a concurrent unmerge may have come first
                raise ConflictError("This group is not merged into another one.")
            await queries.set_parent(uow.conn, parent_id=None, id=group_id)
            await queries.detach_subtree(uow.conn, id=group_id)
            detached = await queries.tree_totals(uow.conn, root_id=group_id)
            events = detached.events if detached is not None else 0
            await queries.shift_ignore_count(uow.conn, events=-events, id=root.id)
            await queries.add_activity(
                uow.conn,
                group_id=group_id,
                action="unmerged",
                actor_id=actor_id,
                detail={"from": root.id},
                at=now,
            )
            await queries.add_activity(
                uow.conn,
                group_id=root.id,
                action="unmerged",
                actor_id=actor_id,
                detail={"group": group_id},
                at=now,
            )
            return await self._detail(uow, group_id)

    async def _detail(self, uow: UnitOfWork, group_id: int) -> GroupDetail:
        group = await queries.get_group(uow.conn, id=group_id)
        if group is None:
            raise NotFoundError("No such group.")
        if group.parent_id is None:
            totals = await queries.tree_totals(uow.conn, root_id=group.id)
            assert totals is not None
            members = [member.id for member in await queries.tree_members(uow.conn, root_id=group.id)]
            users = await queries.tree_users(uow.conn, root_id=group.id) or 0
            events, first, last = totals.events, totals.first_seen_at, totals.last_seen_at
        else:
            members = [group.id]
            users, events, first, last = group.users, group.events, group.first_seen_at, group.last_seen_at
        return GroupDetail(
            group=group,
            events=events,
            users=users,
            first_seen_at=first,
            last_seen_at=last,
            members=members,
            releases=await queries.releases_of_group(uow.conn, group_id=group.id, row_limit=DETAIL_RELEASES),
            latest=next(
                iter(
                    await queries.list_group_events(
                        uow.conn, group_ids=members, before_id=BEFORE_EVERY_ID, row_limit=1
                    )
                ),
                None,
            ),
            resolved_in_release=await self._release_name(uow, group.resolved_in_release_id),
            resolved_after_release=await self._release_name(uow, group.resolved_after_release_id),
        )

    @staticmethod
    async def _release_name(uow: UnitOfWork, release_id: int | None) -> str | None:
        if release_id is None:
            return None
        release = await queries.get_release(uow.conn, id=release_id)
        return release.name if release else None

    async def detail(self, group_id: int) -> GroupDetail:
        async with self.db.transaction() as uow:
            return await self._detail(uow, group_id)

    async def list_groups(
        self,
        *,
        status: MonitoringGroupStatus | None,
        kind: MonitoringGroupKind | None,
        release: str | None,
        before_id: int,
        limit: int,
    ) -> Sequence[queries.ListGroupsRow | queries.ListGroupsWithStatusAndKindRow]:
        async with self.db.transaction() as uow:
            # one statement per shape: optional status and kind read every root for a rare one's few
            # (monitoring.sql)
            if status is None and kind is None:
                return await queries.list_groups(
                    uow.conn, before_id=before_id, release=release, row_limit=limit + 1
                )
            return await queries.list_groups_with_status_and_kind(
                uow.conn,
                statuses=list(MonitoringGroupStatus) if status is None else [status],
                kinds=list(MonitoringGroupKind) if kind is None else [kind],
                before_id=before_id,
                release=release,
                row_limit=limit + 1,
            )

    async def list_events(self, group_id: int, *, before_id: int, limit: int) -> list[MonitoringEvent]:
        async with self.db.transaction() as uow:
            group = await queries.get_group(uow.conn, id=group_id)
            if group is None:
                raise NotFoundError("No such group.")
            members = (
                [m.id for m in await queries.tree_members(uow.conn, root_id=group.id)]
                if group.parent_id is None
                else [group.id]
            )
            return await queries.list_group_events(
                uow.conn, group_ids=members, before_id=before_id, row_limit=limit + 1
            )

    async def grouping(
        self, group_id: int
    ) -> tuple[MonitoringGroup, list[MonitoringFingerprint], MonitoringEvent | None]:
        async with self.db.transaction() as uow:
            detail = await self._detail(uow, group_id)
            hashes = await queries.tree_hashes(uow.conn, root_id=detail.group.root_id)
            if detail.group.parent_id is not None:
                hashes = [row for row in hashes if row.group_id == group_id]
            return detail.group, hashes, detail.latest

    async def list_alerts(
        self, *, group_id: int | None, before_id: int, limit: int
    ) -> Sequence[queries.ListAlertsRow | queries.ListGroupAlertsRow]:
        async with self.db.transaction() as uow:
            # one statement per shape: the generic plan of an optional group read every alert for a
            # group's few (monitoring.sql)
            if group_id is None:
                return await queries.list_alerts(uow.conn, before_id=before_id, row_limit=limit + 1)
            return await queries.list_group_alerts(
                uow.conn, before_id=before_id, group_id=group_id, row_limit=limit + 1
            )
