"""Process-wide resources shared by every queue's worker in one process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from saq.types import Context
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import create_pool
from app.core.valkey import create_valkey

log = structlog.get_logger("workers")


class WorkerResources:
    """The pool and Valkey client of a worker process, opened by the first queue's worker that
    starts and closed by the last one that stops."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self.valkey: Valkey | None = None
        self._users = 0
        self._lock = asyncio.Lock()

    async def acquire(self, settings: Settings) -> None:
        async with self._lock:
            if self._users == 0:
                assert settings.database_url and settings.valkey_url, "service URLs are resolved first"
                self.settings = settings
                self.pool = create_pool(settings, settings.database_url)
                await self.pool.open(wait=False)
                self.valkey = create_valkey(settings, settings.valkey_url)
            self._users += 1

    async def release(self) -> None:
        async with self._lock:
            self._users -= 1
            if self._users == 0:
                if self.pool is not None:
                    await self.pool.close()
                if self.valkey is not None:
                    await self.valkey.aclose()
                self.pool = self.valkey = None


resources = WorkerResources()


def pool_of(ctx: Context) -> AsyncConnectionPool[AsyncConnection[Any]]:
    pool = ctx["resources"].pool
    assert pool is not None
    return pool


def startup_with(settings: Settings) -> Callable[[Context], Awaitable[None]]:
    """Startup hook of every queue's worker: share the process's pool and Valkey client."""

    async def startup(ctx: Context) -> None:
        await resources.acquire(settings)
        ctx["resources"] = resources  # type: ignore[typeddict-unknown-key]

    return startup


async def shutdown(ctx: Context) -> None:
    await resources.release()
