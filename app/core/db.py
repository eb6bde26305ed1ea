"""PostgreSQL access: the psycopg pool and the unit of work.

The unit of work is one pooled connection inside one transaction: every generated query function
in ``app.db`` is called with ``uow.conn``; the transaction commits when the block (or the request)
ends normally and rolls back on any exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.di import NamedDependency
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.db import models


class UnitOfWork:
    """One connection, one transaction."""

    __slots__ = ("conn",)

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn


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
async def transaction(pool: AsyncConnectionPool[AsyncConnection[Any]]) -> AsyncIterator[UnitOfWork]:
    """Borrow a connection and run one transaction on it: commit on success, roll back on error."""
    async with pool.connection() as conn, conn.transaction():
        yield UnitOfWork(conn)
