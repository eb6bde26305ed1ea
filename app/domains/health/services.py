"""Readiness checks: each dependency answers within a deadline or is reported down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import redis.asyncio as redis
import structlog
from psycopg import AsyncConnection
from saq import Queue
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.core.cache import Flights, single_flight
from app.core.db import Database, lend
from app.core.deadline import finish_within, sever
from app.core.logging import OncePerInterval, error_message
from app.core.migrate import MISSING_MIGRATIONS, SchemaBehindError, migration_versions
from app.core.pool import DatabaseUnreachable
from app.domains.health.schemas import CheckFailure, DependencyStatus, Readiness

log = structlog.get_logger("app.health")

WARN_INTERVAL_S = 60.0
"""A failing check is logged at most once per interval (a probe polls every few seconds)."""
READINESS_SHARED_S = 1.0
"""How long one readiness answer serves every probe (``HEALTH_READY_SHARED_S``)."""


_abandoned: set[asyncio.Task[None]] = set()


def _forget(task: asyncio.Task[None]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a late failure of an abandoned probe is not an asyncio error


@dataclass(frozen=True, slots=True)
class Stuck:
    """Why a check cut at its deadline had not answered, as its status (``detail``) and log line say."""

    detail: CheckFailure
    error: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


async def _timed(
    name: str,
    check: Callable[[], Awaitable[None]],
    *,
    timeout: float,
    required: bool = True,
    warnings: OncePerInterval | None = None,
    stuck: Callable[[], Stuck | None] = lambda: None,
) -> DependencyStatus:
    """Run ``check`` and report it down unless it succeeds within ``timeout``.

    A check still running at the deadline is cancelled but not awaited: the answer does not wait
    for a client's clean-up (``asyncio.wait_for`` would). The PostgreSQL check ends at once when
    cancelled (it severs its connection: ``app.core.deadline``); the Valkey clients' may take longer.
    A failure is logged (once per ``warnings``' interval per check) with its cause; the answer, public,
    only says ``timeout``, ``busy`` or ``error`` (``CheckFailure``). A check cut at the deadline is
    ``timeout`` unless ``stuck`` knows better (``Stuck``: the pool's reasons, for a check still
    waiting for one of its connections).
    """
    started = time.perf_counter()
    task: asyncio.Task[None] = asyncio.ensure_future(check())
    detail: CheckFailure | None = None
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        why = stuck() or Stuck("timeout", "Timeout", f"no answer within {timeout:g}s")
        ok, detail = False, why.detail
        if warnings is not None and warnings.due(name):
            log.warning(
                "readiness_check_failed",
                check=name,
                required=required,
                error=why.error,
                message=why.message,
                **why.fields,
            )
    else:
        try:
            task.result()
            ok = True
        except Exception as exc:
            ok, detail = False, "error"
            if warnings is not None and warnings.due(name):
                log.warning(
                    "readiness_check_failed",
                    check=name,
                    required=required,
                    error=type(exc).__name__,
                    message=error_message(exc),
                )
    latency = round((time.perf_counter() - started) * 1000, 2)
    return DependencyStatus(name=name, ok=ok, required=required, latency_ms=latency, detail=detail)


class HealthService:
    """Readiness of the process's dependencies: PostgreSQL, its schema, Valkey and the job queue.

    It watches the queue through a SAQ queue handle of its own (one small Valkey connection), so a
    probe never depends on the web app's SAQ plugin or on a worker being in this process.

    The schema is ready when every migration of ``required_migrations`` (the files of
    ``migrations/``, read once per process) is applied, whatever else is: during a rolling deploy the
    previous release keeps serving on the next one's schema, but a release whose migrations have not
    run (the api image never migrates) must not take traffic its queries would fail.
    """

    def __init__(
        self,
        db: Database,
        valkey: Valkey,
        valkey_url: str,
        *,
        timeout_s: float,
        warn_interval_s: float = WARN_INTERVAL_S,
        shared_s: float = READINESS_SHARED_S,
        required_migrations: Sequence[str] | None = None,
    ) -> None:
        self.db = db
        self.required_migrations = list(required_migrations or migration_versions())
        self.shared_s = shared_s
        self._answer: tuple[float, Readiness] | None = None
        self._flights: Flights = {}
        self.warnings = OncePerInterval(warn_interval_s)
        self.valkey = valkey
        self._client = redis.from_url(valkey_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.queue: Queue = RedisQueue(self._client, name="default")
        self.timeout_s = timeout_s

    async def close(self) -> None:
        # Only the client: the queue's pub/sub multiplexer was never used, and closing it would
        # open a connection (an unreachable Valkey must not fail the shutdown).
        await self._client.aclose()

    async def readiness(self) -> Readiness:
        """The dependencies' state, checked at most once per ``READINESS_SHARED_S`` in this process:
        concurrent probes share the check under way, later ones its answer while it is that fresh.

        The route is public and not rate-limited (orchestrators and load balancers poll it), and a
        check borrows a pooled connection: checked per request, one client's flood of probes queued
        for the pool in front of every other request (503s for other users, and a readiness that
        failed under its own load)."""
        now = time.monotonic()
        if self._answer is not None and now - self._answer[0] < self.shared_s:
            return self._answer[1]
        return await single_flight(self._flights, "readiness", self._check)

    async def _check(self) -> Readiness:
        answer = await self._check_now()
        self._answer = (time.monotonic(), answer)
        return answer

    async def _check_now(self) -> Readiness:
        """Check the four concurrently, each within the deadline."""
        timeout = self.timeout_s

        pooled: set[str] = set()
        """The checks that got their connection."""

        def stuck(check: str) -> Stuck | None:
            """Why ``check``, cut at the deadline, still waits for a connection: every connection the
            pool may open is in use (an exhausted pool was reported as PostgreSQL not answering; the
            pool may open fewer while PostgreSQL refuses it more), or the pool's attempts to connect
            fail and it holds none (reported ``timeout`` while borrowers waited them out for
            ``DATABASE_TIMEOUT_S``, as in a restart; fault review)."""
            if check in pooled:
                return None
            failure = self.db.pool.failure()
            if (pool := self.db.exhausted()) is not None:
                busy = f"every pooled connection in use for {timeout:g}s"
                refused = f"; PostgreSQL refuses the pool more: {failure}" if failure else ""
                return Stuck("busy", "PoolBusy", busy + refused, {"pool": pool})
            if failure is not None:
                return Stuck("error", DatabaseUnreachable.__name__, failure)
            return None

        async def postgres() -> None:
            async with lend(self.db.pool, timeout) as conn:
                pooled.add("postgres")
                query = asyncio.ensure_future(conn.execute("select 1"))
                await finish_within(query, timeout, lambda: sever(conn))  # severed: no cancel request

        async def schema() -> None:
            async with lend(self.db.pool, timeout) as conn:
                pooled.add("schema")
                query = asyncio.ensure_future(_missing_migrations(conn, self.required_migrations))
                missing = await finish_within(query, timeout, lambda: sever(conn))
            if missing:
                raise SchemaBehindError(missing)

        async def cache() -> None:
            await self.valkey.ping()

        async def jobs() -> None:
            await self.queue.info()

        checks = await asyncio.gather(
            _timed(
                "postgres",
                postgres,
                timeout=timeout,
                warnings=self.warnings,
                stuck=partial(stuck, "postgres"),
            ),
            _timed("schema", schema, timeout=timeout, warnings=self.warnings, stuck=partial(stuck, "schema")),
            _timed("valkey", cache, timeout=timeout, warnings=self.warnings, required=False),
            _timed("queue", jobs, timeout=timeout, warnings=self.warnings, required=False),
        )
        status: Literal["ok", "degraded", "unavailable"]
        if all(check.ok for check in checks):
            status = "ok"
        elif all(check.ok for check in checks if check.required):
            status = "degraded"
        else:
            status = "unavailable"
        return Readiness(status=status, checks=list(checks))


async def _missing_migrations(conn: AsyncConnection[Any], versions: list[str]) -> list[str]:
    """The ``versions`` the database has not applied (``MISSING_MIGRATIONS``)."""
    row = await (await conn.execute(MISSING_MIGRATIONS, (versions,))).fetchone()
    return list(row[0]) if row is not None else versions
