"""PostgreSQL access: the psycopg pool, the ``Database`` services use, and the unit of work.

The unit of work is one pooled connection inside one transaction: every generated query function
in ``app.db`` is called with ``uow.conn``; the transaction commits when the block ends normally and
rolls back on any exception. Work that must only happen once the change is durable (invalidating a
cache, publishing to a channel) is registered with ``uow.after_commit`` and runs after the commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import structlog
from litestar.di import NamedDependency
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.db import models

log = structlog.get_logger("app.db")

Pool = AsyncConnectionPool[AsyncConnection[Any]]
AfterCommit = Callable[[], Awaitable[object]]


class UnitOfWork:
    """One connection, one transaction, and what to do once it has committed."""

    __slots__ = ("_after_commit", "conn")

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn
        self._after_commit: list[AfterCommit] = []

    def after_commit(self, callback: AfterCommit) -> None:
        """Run ``callback`` once the transaction has committed (never if it rolls back).

        A failing callback is logged, not raised: the change is already durable.
        """
        self._after_commit.append(callback)

    async def _committed(self) -> None:
        for callback in self._after_commit:
            try:
                await callback()
            except Exception:
                log.exception(
                    "after_commit_failed", callback=getattr(callback, "__qualname__", repr(callback))
                )


Uow = NamedDependency[UnitOfWork]
"""A handler parameter ``uow: Uow`` receives the request's unit of work."""


async def _configure(conn: AsyncConnection[TupleRow]) -> None:
    await models.register_types(conn)
    await conn.commit()


def create_pool(settings: Settings, database_url: str) -> AsyncConnectionPool[AsyncConnection[Any]]:
    """A closed pool; open it in the application's lifespan (``await pool.open()``)."""
    return AsyncConnectionPool(
        database_url,
        min_size=settings.database_pool_min,
        max_size=settings.database_pool_max,
        timeout=settings.database_timeout_s,
        kwargs={
            "options": f"-c statement_timeout={settings.statement_timeout_ms}",
            "application_name": settings.app_name,
        },
        configure=_configure,
        check=AsyncConnectionPool.check_connection,
        open=False,
        name="app",
    )


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[UnitOfWork]:
    """Borrow a connection and run one transaction on it: commit on success, roll back on error."""
    async with pool.connection() as conn, conn.transaction():
        uow = UnitOfWork(conn)
        yield uow
    await uow._committed()  # the connection is back in the pool: callbacks may take their own


class Database:
    """The process's connection pool, and the one way services open a transaction on it."""

    __slots__ = ("pool",)

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """``async with db.transaction() as uow:`` — one connection, one transaction."""
        return transaction(self.pool)
