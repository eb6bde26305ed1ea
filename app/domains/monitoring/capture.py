"""Capture on the hot path: what an unhandled exception, a job run or a cron check-in leaves behind.

Everything here is synchronous, in memory and O(1) per event: the exception's type chain and frame
positions are counted in a bounded buffer keyed by them (no file read, no I/O), which the service's
background task turns into fingerprints and database writes.

Which exceptions are captured: those that end as a 500 (the handler ``app.core.errors`` maps to the
unexpected-error problem, and an ``HTTPException`` of status 500 or more). Client errors (4xx,
``AppError`` and validation problems) are not bugs and are not captured. A 503 answered because a
dependency is down (PostgreSQL, Valkey) is captured as an ``unavailable`` group per exception type
(``MONITORING_CAPTURE_UNAVAILABLE``): one group per outage kind, not one per stack, so an outage is
one alert; such events wait in the buffer until the database is back.

The dependency-down handler answers every ``psycopg.OperationalError`` with a 503 and ``Retry-After``
(right for the client in every case), but only a connection or server going away is an outage
(``app.core.errors.dependency_down``). A deadlock (40P01), a serialization failure (40001), our
statement timeout (57014) or a lock not available (55P03) is the server answering a statement of
ours: a bug of the site that raised it, captured as an ``error`` fingerprinted by its stack (one
group per site, each alerting as new), never as an outage.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from litestar.exceptions import HTTPException
from litestar.types import Scope
from litestar.utils.scope.state import ScopeState
from prometheus_client import Counter

from app.core.errors import AppError, dependency_down, dependency_of, exception_handlers
from app.db.models import MonitoringGroupKind
from app.domains.monitoring.fingerprint import RawException, capture_chain

CAPTURED = Counter("app_monitoring_events_captured", "Events captured for error monitoring", ["kind"])
DROPPED = Counter("app_monitoring_events_dropped", "Events dropped because the capture buffer was full")
DEGRADED = Counter(
    "app_monitoring_degraded",
    "Capture decisions taken without Valkey (dedup gate unavailable): written per process instead",
)

_UNEXPECTED = exception_handlers[Exception]
_DEPENDENCY_DOWN = exception_handlers[psycopg.OperationalError]


@dataclass(slots=True)
class RawEvent:
    kind: MonitoringGroupKind
    occurred_at: float
    chain: tuple[RawException, ...]
    context: dict[str, Any]
    user_id: int | None = None
    fixed: tuple[str, ...] | None = None
    """Parts of a fixed fingerprint (outages, slow routes, crons) instead of the stack's."""
    title: str | None = None


MAX_USERS = 10_000
"""Distinct user ids kept per aggregate (more are counted as events, not as new users)."""
MAX_SAMPLES = 3


@dataclass(slots=True)
class RawAggregate:
    """The events of one raw key (same kind, exception types and frame positions) since the last
    flush: counts and a few samples, so the buffer holds O(distinct problems) objects, not one per
    event (a storm of 500s would otherwise keep thousands of objects alive between flushes)."""

    count: int = 0
    first: float = float("inf")
    last: float = 0.0
    minutes: dict[int, int] = field(default_factory=dict)
    users: set[int] = field(default_factory=set)
    samples: list[RawEvent] = field(default_factory=list)
    sources: collections.Counter[str] = field(default_factory=collections.Counter)
    """Events by where they were captured (their context's ``source``: ``request``, ``job`` ...)."""

    def add(self, event: RawEvent) -> None:
        self.count += 1
        self.sources[source_of(event)] += 1
        occurred = event.occurred_at
        if occurred < self.first:
            self.first = occurred
        if occurred > self.last:
            self.last = occurred
        minute = int(occurred // 60) * 60
        self.minutes[minute] = self.minutes.get(minute, 0) + 1
        if event.user_id is not None and len(self.users) < MAX_USERS:
            self.users.add(event.user_id)
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(event)
        else:
            self.samples[-1] = event  # the first ones and the latest


def source_of(event: RawEvent) -> str:
    """Where ``event`` was captured: its context's ``source`` (``request``, ``job`` ...), else ``""``."""
    source = event.context.get("source")
    return source if isinstance(source, str) else ""


def raw_key(event: RawEvent) -> tuple[object, ...]:
    """Events with the same key certainly share a fingerprint (the flush computes it once per key)."""
    if event.fixed is not None:
        return (event.kind, event.fixed)
    if any(raw.frames for raw in event.chain):
        return (event.kind, event.context.get("job"), *((raw.type, raw.frames) for raw in event.chain))
    return (event.kind, event.context.get("job"), *((raw.type, raw.message) for raw in event.chain))


_CAPTURED = {kind: CAPTURED.labels(kind=kind.value) for kind in MonitoringGroupKind}


class EventBuffer:
    """Captured events aggregated by raw key until the next flush, bounded by ``capacity`` distinct
    keys (an event of a new key past it is dropped and counted)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._groups: dict[tuple[object, ...], RawAggregate] = {}
        self._events = 0

    def __len__(self) -> int:
        return self._events

    def add(self, event: RawEvent) -> bool:
        key = raw_key(event)
        aggregate = self._groups.get(key)
        if aggregate is None:
            if len(self._groups) >= self.capacity:
                DROPPED.inc()
                return False
            aggregate = self._groups[key] = RawAggregate()
        aggregate.add(event)
        self._events += 1
        _CAPTURED[event.kind].inc()
        return True

    def drain(self) -> list[RawAggregate]:
        drained = list(self._groups.values())
        self._groups = {}
        self._events = 0
        return drained


def _handler_for(handlers: Mapping[Any, Any], exc: Exception) -> Any:
    for kind in type(exc).__mro__:
        handler = handlers.get(kind)
        if handler is not None:
            return handler
    return None


def classify(exc: Exception, scope: Scope | None = None) -> MonitoringGroupKind | None:
    """The kind of group an exception of a request belongs to, or None when it is no server fault."""
    if isinstance(exc, AppError):
        return None
    if isinstance(exc, HTTPException):
        return MonitoringGroupKind.ERROR if exc.status_code >= 500 else None
    handlers: Mapping[Any, Any] = exception_handlers
    if scope is not None:
        resolved = ScopeState.from_scope(scope).exception_handlers
        if isinstance(resolved, Mapping):
            handlers = resolved
    handler = _handler_for(handlers, exc)
    if handler is None or handler is _UNEXPECTED:
        return MonitoringGroupKind.ERROR
    if handler is _DEPENDENCY_DOWN:
        return MonitoringGroupKind.UNAVAILABLE if dependency_down(exc) else MonitoringGroupKind.ERROR
    return None


def outage_of(exc: BaseException) -> tuple[str, str]:
    """The fixed fingerprint of an outage: the dependency and the name of the driver's exception. Not
    its module: the app's Valkey client (``valkey``) and SAQ's (``redis``) raise classes of one name
    for one outage, which opened two groups and sent two "new outage" alerts. Not one of ours either:
    ``DatabaseUnreachable`` is the pool's ``PoolTimeout`` said sooner, in the same outage."""
    driver = next(kind for kind in type(exc).__mro__ if not kind.__module__.startswith("app."))
    return dependency_of(exc), driver.__name__


def request_event(exc: Exception, scope: Scope, kind: MonitoringGroupKind) -> RawEvent:
    state = scope.get("state") or {}
    user = scope.get("user")
    user_id = getattr(user, "id", None)
    context: dict[str, Any] = {
        "source": "request",
        "route": scope.get("path_template") or None,
        "method": scope.get("method"),
        "request_id": state.get("request_id"),
        "user_id": user_id if isinstance(user_id, int) else None,
    }
    fixed = outage_of(exc) if kind == MonitoringGroupKind.UNAVAILABLE else None
    return RawEvent(
        kind=kind,
        occurred_at=time.time(),
        chain=capture_chain(exc),
        context=context,
        user_id=context["user_id"],
        fixed=fixed,
        title=f"Dependency unavailable: {fixed[1]}" if fixed else None,
    )


# ------------------------------------------------------------------------------------------ jobs


@dataclass(slots=True)
class JobOutcome:
    runs: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    max_attempts: int = 0


@dataclass(slots=True)
class JobStats:
    """Job runs per (job function, outcome) since the last ship."""

    outcomes: dict[tuple[str, str], JobOutcome] = field(default_factory=dict)

    def add(self, job: str, outcome: str, duration_ms: float, attempts: int) -> None:
        entry = self.outcomes.get((job, outcome))
        if entry is None:
            entry = self.outcomes[(job, outcome)] = JobOutcome()
        entry.runs += 1
        entry.total_ms += duration_ms
        entry.max_ms = max(entry.max_ms, duration_ms)
        entry.max_attempts = max(entry.max_attempts, attempts)

    def held_runs(self) -> int:
        """Job runs counted since the last drain."""
        return sum(outcome.runs for outcome in self.outcomes.values())

    def drain(self) -> dict[tuple[str, str], JobOutcome]:
        drained, self.outcomes = self.outcomes, {}
        return drained

    def restore(self, drained: dict[tuple[str, str], JobOutcome]) -> None:
        """Add back outcomes drained for a ship that failed (one entry per job and outcome)."""
        for key, outcome in drained.items():
            entry = self.outcomes.get(key)
            if entry is None:
                self.outcomes[key] = outcome
                continue
            entry.runs += outcome.runs
            entry.total_ms += outcome.total_ms
            entry.max_ms = max(entry.max_ms, outcome.max_ms)
            entry.max_attempts = max(entry.max_attempts, outcome.max_attempts)


@dataclass(frozen=True, slots=True)
class CheckIn:
    """A cron job's run as the worker saw it: ``in_progress`` when it starts, then ``ok``/``error``."""

    name: str
    slot: float | None
    status: str
    at: float
    duration_ms: float | None = None
