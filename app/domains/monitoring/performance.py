"""Latency and job statistics in the database: shipping the process's counts, percentiles over
sliding windows, slow-route detection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app.config import Settings
from app.core.db import Database
from app.db import monitoring as queries
from app.db.models import MonitoringGroupKind
from app.domains.monitoring.alerts import minute_start
from app.domains.monitoring.capture import JobOutcome, RawEvent
from app.domains.monitoring.groups import minute_of, utc
from app.domains.monitoring.latency import BUCKETS, Percentiles, RouteCounts, percentiles

EXEMPLARS_PER_ROUTE = 5
"""The slowest requests shown with each route's latency (their request ids lead to the logs)."""


def window_start(moment: float, window: timedelta) -> datetime:
    """The first minute of the last ``window`` before ``moment``: the one ``moment - window`` falls in,
    counted whole (requests and runs are counted per minute; leaving it out measured up to 59 seconds
    less than the window)."""
    return minute_start(utc(moment) - window)


@dataclass(frozen=True, slots=True)
class RouteLatency:
    method: str
    route: str
    stats: Percentiles
    exemplars: list[queries.RouteExemplarsBetweenRow]
    slow: bool
    observed_since: datetime
    """The first minute of the window with requests of the route: what ``stats`` describes began then."""


class Performance:
    def __init__(self, db: Database, settings: Settings, clock: Callable[[], float]) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock

    async def ship(
        self, routes: dict[str, dict[str, RouteCounts]], jobs: dict[tuple[str, str], JobOutcome]
    ) -> None:
        """Add a process's latency histograms and job statistics to the shared minute rows."""
        if not routes and not jobs:
            return
        minute = utc(minute_of(self.clock()))
        latency: dict[str, list[Any]] = {"routes": [], "methods": [], "buckets": [], "requests": []}
        exemplars: dict[str, list[Any]] = {"routes": [], "methods": [], "ids": [], "ms": [], "statuses": []}
        # In one order in every process: two shipping at once (every worker at shutdown) upsert the
        # same minute rows, and rows locked in different orders deadlock (one of them would be lost).
        for route, methods in sorted(routes.items()):
            for method, counts in sorted(methods.items()):
                for bucket, count in enumerate(counts.counts):
                    if count:
                        latency["routes"].append(route)
                        latency["methods"].append(method)
                        latency["buckets"].append(bucket)
                        latency["requests"].append(count)
                if counts.slowest_request:
                    exemplars["routes"].append(route)
                    exemplars["methods"].append(method)
                    exemplars["ids"].append(counts.slowest_request)
                    exemplars["ms"].append(counts.slowest_s * 1000)
                    exemplars["statuses"].append(counts.slowest_status)
        async with self.db.transaction() as uow:
            if latency["routes"]:
                await queries.add_route_latency(
                    uow.conn,
                    routes=latency["routes"],
                    methods=latency["methods"],
                    minutes=[minute] * len(latency["routes"]),
                    buckets=latency["buckets"],
                    requests=latency["requests"],
                )
            if exemplars["routes"]:
                await queries.add_route_exemplars(
                    uow.conn,
                    routes=exemplars["routes"],
                    methods=exemplars["methods"],
                    minutes=[minute] * len(exemplars["routes"]),
                    request_ids=exemplars["ids"],
                    durations_ms=exemplars["ms"],
                    statuses=exemplars["statuses"],
                )
            if jobs:
                items = sorted(jobs.items())
                await queries.add_job_runs(
                    uow.conn,
                    jobs=[job for (job, _), _ in items],
                    minutes=[minute] * len(items),
                    outcomes=[outcome for (_, outcome), _ in items],
                    runs=[entry.runs for _, entry in items],
                    total_ms=[entry.total_ms for _, entry in items],
                    max_ms=[entry.max_ms for _, entry in items],
                    max_attempts=[entry.max_attempts for _, entry in items],
                )

    async def route_latency(self, window: timedelta, now: float | None = None) -> list[RouteLatency]:
        """p50/p95/p99 per route over the last ``window`` (``window_start``), slowest p95 first."""
        moment = self.clock() if now is None else now
        since = window_start(moment, window)
        until = utc(moment) + timedelta(minutes=1)
        async with self.db.transaction() as uow:
            rows = await queries.route_latency_between(uow.conn, since=since, until=until)
            merged: dict[tuple[str, str], list[int]] = {}
            observed: dict[tuple[str, str], datetime] = {}
            for row in rows:
                key = (row.method, row.route)
                merged.setdefault(key, [0] * BUCKETS)[row.bucket] += row.requests
                observed[key] = min(observed.get(key, row.first_minute), row.first_minute)
            exemplars: dict[tuple[str, str], list[queries.RouteExemplarsBetweenRow]] = {}
            if merged:
                wanted = list(merged)
                for exemplar in await queries.route_exemplars_between(
                    uow.conn,
                    routes=[route for _, route in wanted],
                    methods=[method for method, _ in wanted],
                    since=since,
                    until=until,
                    row_limit=EXEMPLARS_PER_ROUTE,
                ):
                    exemplars.setdefault((exemplar.method, exemplar.route), []).append(exemplar)
        result = []
        for (method, route), counts in merged.items():
            stats = percentiles(counts)
            result.append(
                RouteLatency(
                    method,
                    route,
                    stats,
                    exemplars.get((method, route), []),
                    stats.p95_ms > self.settings.monitoring_slow_p95_ms,
                    observed[(method, route)],
                )
            )
        return sorted(result, key=lambda item: (-item.stats.p95_ms, item.route, item.method))

    async def job_runs(self, window: timedelta) -> list[queries.JobRunsBetweenRow]:
        now = self.clock()
        async with self.db.transaction() as uow:
            return await queries.job_runs_between(
                uow.conn, since=window_start(now, window), until=utc(now) + timedelta(minutes=1)
            )

    async def slow_route_events(self, now: float | None = None) -> list[RawEvent]:
        """Open (or add to) a slow-route group for each route whose p95 is over the threshold or
        regressed against its own last 24 hours.

        An event occurs when the slowness it reports was first observed (the window's first minute
        with requests of the route), not at the check: requests served before a resolve never regress
        the group, and a slowness that persists regresses it once the window holds only later ones."""
        settings = self.settings
        moment = self.clock() if now is None else now
        window = timedelta(seconds=settings.monitoring_slow_window_s)
        recent = {(r.method, r.route): r for r in await self.route_latency(window, moment)}
        end = window_start(moment, window)
        async with self.db.transaction() as uow:
            rows = await queries.route_latency_between(uow.conn, since=end - timedelta(days=1), until=end)
        baseline: dict[tuple[str, str], list[int]] = {}
        for row in rows:
            baseline.setdefault((row.method, row.route), [0] * BUCKETS)[row.bucket] += row.requests
        events = []
        for key, route in recent.items():
            stats = route.stats
            if stats.requests < settings.monitoring_slow_min_requests:
                continue
            base = percentiles(baseline[key]) if key in baseline else None
            if base is not None and base.requests < settings.monitoring_slow_min_requests:
                base = None
            if stats.p95_ms > settings.monitoring_slow_p95_ms:
                detail = f"above the {settings.monitoring_slow_p95_ms:.0f} ms threshold"
            elif (
                base is not None
                and stats.p95_ms >= settings.monitoring_slow_min_ms
                and stats.p95_ms > settings.monitoring_slow_factor * base.p95_ms
            ):
                detail = f"{stats.p95_ms / base.p95_ms:.1f}x its 24 h baseline ({base.p95_ms:.0f} ms)"
            else:
                continue
            events.append(
                RawEvent(
                    kind=MonitoringGroupKind.SLOW_ROUTE,
                    occurred_at=route.observed_since.timestamp(),
                    chain=(),
                    context={
                        "source": "latency",
                        "route": route.route,
                        "method": route.method,
                        "requests": stats.requests,
                        "p50_ms": stats.p50_ms,
                        "p95_ms": stats.p95_ms,
                        "p99_ms": stats.p99_ms,
                        "baseline_p95_ms": base.p95_ms if base else None,
                        "threshold_ms": settings.monitoring_slow_p95_ms,
                        "exemplar_request_ids": [e.request_id for e in route.exemplars],
                        "detail": f"{route.method} {route.route}: p95 {stats.p95_ms:.0f} ms over "
                        f"{settings.monitoring_slow_window_s} s, {detail}",
                    },
                    fixed=(route.method, route.route),
                    title=f"Slow route: {route.method} {route.route}",
                )
            )
        return events
