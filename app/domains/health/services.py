"""Readiness checks: each dependency answers within a deadline or is reported down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from saq import Queue
from valkey.asyncio import Valkey


class DependencyStatus(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    required: bool
    latency_ms: float
    detail: str | None = None


class Readiness(msgspec.Struct, frozen=True):
    status: str
    checks: list[DependencyStatus]


async def _timed(
    name: str, check: Callable[[], Awaitable[str | None]], *, timeout: float, required: bool = True
) -> DependencyStatus:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), timeout)
        ok = True
    except TimeoutError:
        ok, detail = False, f"no answer within {timeout:g}s"
    except Exception as exc:
        ok, detail = False, type(exc).__name__
    latency = round((time.perf_counter() - started) * 1000, 2)
    return DependencyStatus(name=name, ok=ok, required=required, latency_ms=latency, detail=detail)


async def check_readiness(
    pool: AsyncConnectionPool[AsyncConnection[Any]], valkey: Valkey, queue: Queue, *, timeout: float
) -> Readiness:
    """Check PostgreSQL, Valkey and the job queue concurrently."""

    async def postgres() -> str | None:
        async with pool.connection(timeout=timeout) as conn:
            await conn.execute("select 1")
        return None

    async def cache() -> str | None:
        await valkey.ping()
        return None

    async def jobs() -> str | None:
        info = await queue.info()
        return f"{len(info['workers'])} worker(s), {info['queued']} queued"

    checks = await asyncio.gather(
        _timed("postgres", postgres, timeout=timeout),
        _timed("valkey", cache, timeout=timeout),
        _timed("queue", jobs, timeout=timeout),
    )
    healthy = all(check.ok for check in checks if check.required)
    return Readiness(status="ok" if healthy else "unavailable", checks=list(checks))
