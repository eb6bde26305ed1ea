"""Events in, group writes out: the capture hot path and the flush, held by ``MonitoringService``.

The hooks (a request's after-exception hook, the SAQ job hooks) only append to memory here
(``capture_exception``, ``job_started``, ``job_finished``); the service's background task calls
``flush``, which turns the buffered events into one aggregate per fingerprint and writes those this
process may write now: the dedup gate (``GATE``, ``SET NX PX window`` in Valkey) and the degraded mode
without Valkey are described in ``services.py``'s module docstring. A write that fails is kept for
the next flush (dropped only after ``MAX_WRITE_FAILURES`` refusals of its content); past
``MAX_PENDING`` distinct fingerprints held, a new one's events are dropped and counted. A flush that
fails while PostgreSQL is down is told to Telegram (``outage.py``), hence the outage notice's chat
routes here too (``load_chat_routes``).

Split out of ``services.py`` so the hot path and the write loop it feeds read in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from cachetools import LRUCache
from litestar.types import Scope
from prometheus_client import Counter
from saq.job import Status
from valkey.asyncio import Valkey
from valkey.exceptions import ValkeyError

from app.config import Settings
from app.core.db import Database
from app.core.logging import OncePerInterval
from app.db import monitoring as queries
from app.db.models import MonitoringGroupKind
from app.domains.monitoring.capture import (
    DEGRADED,
    CheckIn,
    EventBuffer,
    JobStats,
    RawAggregate,
    RawEvent,
    classify,
    outage_of,
    request_event,
)
from app.domains.monitoring.fingerprint import (
    Fingerprint,
    capture_chain,
    culprit,
    fingerprint_chain,
    fixed_fingerprint,
    normalise_message,
    resolve_chain,
)
from app.domains.monitoring.groups import (
    MAX_WRITE_FAILURES,
    Aggregate,
    GroupWriter,
    WriteResult,
    refused_for_content,
    utc,
)
from app.domains.monitoring.monitors import CheckInsNotAppliedError, CronMonitors
from app.domains.monitoring.outage import OutageNotifier
from app.domains.monitoring.scrub import storable_scrubbed_prefix

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


class Ingest:
    """The process's captured events and check-ins, and their way into the database.

    ``buffer`` and ``jobs`` are the service's own (the hooks and tests reach them there too): the
    job statistics are shipped by the service with the latency histograms (``MonitoringService.ship``).
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        valkey: Valkey,
        *,
        buffer: EventBuffer,
        jobs: JobStats,
        writer: GroupWriter,
        monitors: CronMonitors,
        outage: OutageNotifier,
        release: str,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.settings = settings
        self.valkey = valkey
        self.buffer = buffer
        self.jobs = jobs
        self.writer = writer
        self.monitors = monitors
        self.outage = outage
        self.release = release
        self.clock = clock
        self.checkins: list[CheckIn] = []
        self._pending: dict[str, Aggregate] = {}
        self._local_writes: dict[str, float] = {}
        self._fingerprints: LRUCache[Any, tuple[Fingerprint, str]] = LRUCache(maxsize=2048)
        self._flush_lock = asyncio.Lock()
        self._valkey_down_until = 0.0
        self._drop_warnings = OncePerInterval(60.0)

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
            fixed = outage_of(exc)
            return RawEvent(
                kind=MonitoringGroupKind.UNAVAILABLE,
                occurred_at=self.clock(),
                chain=capture_chain(exc),
                context=context,
                fixed=fixed,
                title=f"Dependency unavailable: {fixed[1]}",
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
        """The fingerprints this process may write now (see ``services.py``'s module docstring)."""
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

    def held_events(self) -> int:
        """Events captured and not yet written: buffered, and aggregated for a write still to come."""
        return len(self.buffer) + sum(aggregate.count for aggregate in self._pending.values())

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
