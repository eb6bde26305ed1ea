"""Process-wide resources shared by every queue's worker in one process.

A worker's jobs obtain domain services from the process's ``Services`` registry:
``app.core.services.services_of(ctx)``.
In the web process (in-process workers) that is the app's own registry; in ``python -m workers`` the
first queue's worker that starts builds one, and the last one that stops closes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from saq.types import Context
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import Services

log = structlog.get_logger("workers")


class WorkerResources:
    """The ``Services`` of a worker process (or of the web process its workers run in)."""

    def __init__(self, services: Services | None = None) -> None:
        self.services = services

    @property
    def settings(self) -> Settings:
        assert self.services is not None
        return self.services.settings

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        assert self.services is not None
        return self.services.db.pool

    @property
    def valkey(self) -> Valkey:
        assert self.services is not None
        return self.services.valkey

    async def acquire(self, settings: Settings) -> None:
        if self.services is None:
            from app.modules import MODULES

            self.services = Services(settings, MODULES)
        await self.services.start()

    async def release(self) -> None:
        assert self.services is not None
        await self.services.close()


resources = WorkerResources()


def pool_of(ctx: Context) -> AsyncConnectionPool[AsyncConnection[Any]]:
    pool: AsyncConnectionPool[AsyncConnection[Any]] = ctx["resources"].pool  # type: ignore[typeddict-item]
    return pool


def startup_with(
    settings: Settings, services: Services | None = None
) -> tuple[Callable[[Context], Awaitable[None]], Callable[[Context], Awaitable[None]]]:
    """Startup and shutdown hooks of every queue's worker: share one ``Services`` per process."""
    shared = WorkerResources(services) if services is not None else resources

    async def startup(ctx: Context) -> None:
        await shared.acquire(settings)
        ctx["resources"] = shared  # type: ignore[typeddict-unknown-key]
        ctx["services"] = shared.services  # type: ignore[typeddict-unknown-key]

    async def shutdown(ctx: Context) -> None:
        await shared.release()

    return startup, shutdown
