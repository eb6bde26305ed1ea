"""PostgreSQL access: the psycopg pool, the ``Database`` services use, and the unit of work.

The unit of work is one pooled connection inside one transaction: every generated query function
in ``app.db`` is called with ``uow.conn``; the transaction commits when the block ends normally and
rolls back on any exception. Work that must only happen once the change is durable (invalidating a
cache, publishing to a channel) is registered with ``uow.after_commit`` and runs after the commit.

Whether a request did database work: the route layer (``app.core.gate``) hands the state of a
rate-limited request (``scope["state"]``) to ``watch_database_use``, and every unit of work, a
transaction or a read, sets ``DATABASE_USED`` in it when it borrows its connection (``_borrow``: one
``ContextVar`` get). What the ``ContextVar`` holds is that mutable mapping, never a flag set in it from
inside the work: a task started by the request (Litestar may resolve a level of dependencies in child
tasks) runs in a copy of its context, where a ``set`` would not reach the request, while the copy
still holds the same mapping.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar, Token
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.core.deadline import answered_within, sever
from app.core.pool import FailFastPool, reconnect_timeout_s
from app.db import models

T = TypeVar("T")
RV = TypeVar("RV")

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

        The same callback registered twice runs once. A failing callback is logged, not raised:
        the change is already durable.
        """
        if callback not in self._after_commit:
            self._after_commit.append(callback)

    async def _committed(self) -> None:
        for callback in self._after_commit:
            try:
                await callback()
            except Exception:
                log.exception(
                    "after_commit_failed", callback=getattr(callback, "__qualname__", repr(callback))
                )


def check_within(timeout_s: float) -> Callable[[AsyncConnection[Any]], Awaitable[None]]:
    """The pool's check of a connection before lending it, failing after ``timeout_s``.

    psycopg_pool's own check has no deadline: a connection to a server that stopped answering (a
    frozen host, a partition that drops nothing) kept the borrower waiting forever, past the pool's
    ``timeout``. At the deadline, or when the borrower is cancelled meanwhile (a health probe's own
    deadline), the connection is severed and the check ends before the pool gets the connection
    back and discards it (why severed, not closed or cancelled: ``app.core.deadline``).
    """

    async def check(conn: AsyncConnection[Any]) -> None:
        await answered_within(conn, AsyncConnectionPool.check_connection(conn), timeout_s)

    return check


_LONGER_STATEMENTS: ContextVar[float | None] = ContextVar("longer_statements", default=None)


class BoundedConnection(AsyncConnection[TupleRow]):
    """A pooled connection that waits on PostgreSQL at most ``bound_s`` at a time.

    ``statement_timeout`` bounds a statement only while the server enforces it. A frozen server (a
    stopped process, a stalled VM) or a network that drops every packet answers nothing, and a
    request already inside a statement then waited as long as the fault lasted, holding its
    connection (fault review: answered after 62 s of a 60 s freeze). Every wait of the driver on
    this connection (a statement, a commit) now ends within the bound: there the connection is
    severed (``app.core.deadline``: never closed under the driver) and the wait fails with
    ``OperationalError``, which a request answers 503 and the pool discards. Work that raises its
    own ``statement_timeout`` widens the bound as much (``statements_may_take``)."""

    bound_s: float | None = None
    """Set by the pool's ``configure`` from the session's own timeout (``_configured``); None:
    unbounded, as psycopg is."""

    async def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        """psycopg's ``wait`` (its own default interval), with ``timeout`` the bound unless given."""
        bound = _LONGER_STATEMENTS.get() or self.bound_s
        if timeout is not None or bound is None:
            return await super().wait(gen, interval, timeout)
        try:
            return await super().wait(gen, interval, bound)
        except psycopg.errors._WaitTimeout:  # psycopg's own, raised by the timeout it was given
            sever(self)
            raise psycopg.OperationalError(f"PostgreSQL did not answer within {bound:g}s") from None


_SESSION_STATEMENT_TIMEOUT = (
    "select extract(epoch from current_setting('statement_timeout')::interval)::float8"
)
"""The session's ``statement_timeout`` in seconds (0: none), whoever set it: ``STATEMENT_TIMEOUT_MS``,
the ``options`` of ``DATABASE_URL`` (which win, ``session_options``), or the role's or database's
own setting."""


@contextmanager
def statements_may_take(seconds: float) -> Iterator[None]:
    """Within the block, the pooled connections' waits are bounded by ``seconds`` instead: for work
    that sets a longer ``statement_timeout`` of its own (the analytics rollup), so that its client
    does not give up on a statement the server still runs."""
    token = _LONGER_STATEMENTS.set(seconds)
    try:
        yield
    finally:
        _LONGER_STATEMENTS.reset(token)


def _configured(settings: Settings) -> Callable[[AsyncConnection[Any]], Awaitable[None]]:
    """The pool's set-up of each new connection. Its bound is the session's ``statement_timeout``
    (the server ends a statement there itself) plus ``DATABASE_TIMEOUT_S`` for the answer to arrive;
    none when statements are unbounded."""

    async def configure(conn: AsyncConnection[Any]) -> None:
        if not isinstance(conn, BoundedConnection):
            raise TypeError(f"the app's pool lends BoundedConnection, not {type(conn).__name__}")
        if settings.statement_timeout_ms:  # meanwhile, as the settings say
            conn.bound_s = settings.statement_timeout_ms / 1000 + settings.database_timeout_s
        row = await (await conn.execute(_SESSION_STATEMENT_TIMEOUT)).fetchone()
        statement_timeout_s = float(row[0]) if row is not None else 0.0
        conn.bound_s = statement_timeout_s + settings.database_timeout_s if statement_timeout_s > 0 else None
        await models.register_types(conn)
        await conn.commit()

    return configure


SESSION_TIME_ZONE = "UTC"
"""The ``TimeZone`` of every session the app opens (``session_options``, the page-view sink's)."""


def session_options(settings: Settings, database_url: str) -> str:
    """The server settings of the app's sessions (libpq ``options``), then those of ``database_url``.

    ``idle_in_transaction_session_timeout``: a session left idle inside a transaction (a bug) is
    ended by the server instead of holding its locks, and the feed recovery's horizon
    (``oldest_open_write_started_at``), indefinitely. No transaction of the app waits on anything
    but its own statements, except the outbox relay's enqueue to Valkey, whose batch is sent again
    when its commit fails.

    ``TimeZone`` UTC (``SESSION_TIME_ZONE``): psycopg hands a ``timestamptz`` back in the session's
    zone, which is otherwise the server's (the embedded PostgreSQL's initdb takes the developer's),
    and what the app prints or keys by such a value (an alert's "first seen", a digest's period) is
    UTC. The SQL names the zones it computes in, so an operator's own ``TimeZone`` changes no
    result, only the offset of the values handed back.

    The URL's own ``options`` come last, so they win: a keyword argument replaces the URL's
    parameter of the same name, which dropped them before.
    """
    ours = (
        f"-c statement_timeout={settings.statement_timeout_ms} "
        f"-c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms} "
        f"-c TimeZone={SESSION_TIME_ZONE}"
    )
    theirs = conninfo_to_dict(database_url).get("options")
    return f"{ours} {theirs}" if theirs else ours


APP_POOL = "app"
"""The name of the app's pool (psycopg's logs name the pool)."""


def create_pool(settings: Settings, database_url: str) -> FailFastPool:
    """A closed pool; open it in the application's lifespan (``await pool.open()``).

    ``connect_timeout`` (libpq: whole seconds, at least 2): without it, a connection attempt to a
    server that accepts and never answers waits forever, and once ``max_size`` attempts hang the
    pool never tries again, even after the server is back. Borrowing waits ``DATABASE_TIMEOUT_S``;
    a statement waits at most its session's timeout plus ``DATABASE_TIMEOUT_S`` (``BoundedConnection``).
    """
    return FailFastPool(
        database_url,
        connection_class=BoundedConnection,
        min_size=settings.database_pool_min,
        max_size=settings.database_pool_max,
        timeout=settings.database_timeout_s,
        kwargs={
            "connect_timeout": max(2, math.ceil(settings.database_timeout_s)),
            "options": session_options(settings, database_url),
            "application_name": settings.app_name,
        },
        configure=_configured(settings),
        check=check_within(settings.database_timeout_s),
        reconnect_timeout=reconnect_timeout_s(settings.database_timeout_s),
        open=False,
        name=APP_POOL,
    )


DATABASE_USED = "database_used"
"""Request-state flag: the request borrowed a pooled connection (``watch_database_use``)."""

_WATCHED_STATE: ContextVar[dict[str, Any] | None] = ContextVar("watched_request_state", default=None)


def watch_database_use(state: dict[str, Any]) -> Token[dict[str, Any] | None]:
    """Every unit of work entered from now on in this context (and in the tasks it starts) sets
    ``state[DATABASE_USED]``; give the token to ``unwatch_database_use`` when the request is done."""
    return _WATCHED_STATE.set(state)


def unwatch_database_use(token: Token[dict[str, Any] | None]) -> None:
    _WATCHED_STATE.reset(token)


_LENT: weakref.WeakKeyDictionary[Pool, int] = weakref.WeakKeyDictionary()
"""Connections of each pool lent out now (through ``lend``): psycopg's pool tells how many it keeps
(``pool_size``), not how many are in use, and keeps counting a lost connection while it fails to
replace it, so a pool grown to its maximum before PostgreSQL went away looked full."""


@asynccontextmanager
async def lend(pool: Pool, timeout: float | None = None) -> AsyncIterator[AsyncConnection[Any]]:
    """``pool.connection(timeout)``, counted as lent while held (``Database.exhausted``)."""
    async with pool.connection(timeout=timeout) as conn:
        _LENT[pool] = _LENT.get(pool, 0) + 1
        try:
            yield conn
        finally:
            _LENT[pool] -= 1


def _borrow(pool: Pool) -> AbstractAsyncContextManager[AsyncConnection[Any]]:
    """``lend(pool)``, noted in the watching request's state (``DATABASE_USED``): the one place a unit
    of work borrows its connection."""
    state = _WATCHED_STATE.get()
    if state is not None:
        state[DATABASE_USED] = True
    return lend(pool)


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[UnitOfWork]:
    """Borrow a connection and run one transaction on it: commit on success, roll back on error."""
    async with _borrow(pool) as conn, conn.transaction():
        uow = UnitOfWork(conn)
        yield uow
    await uow._committed()  # the connection is back in the pool: callbacks may take their own


@asynccontextmanager
async def reading(pool: Pool) -> AsyncIterator[UnitOfWork]:
    """Borrow a connection in autocommit mode: each statement is its own transaction.

    For reads only. Under READ COMMITTED every statement takes its own snapshot even inside a
    transaction, so reads lose nothing without one, and save the BEGIN and COMMIT round trips
    (two of the three a one-query read paid, besides the pool's check).
    """
    async with _borrow(pool) as conn:
        await conn.set_autocommit(True)
        try:
            uow = UnitOfWork(conn)
            yield uow
        finally:
            if conn.pgconn.transaction_status == TransactionStatus.IDLE:
                await conn.set_autocommit(False)
            # otherwise (a query cut short) the pool discards the connection: nothing to restore
    await uow._committed()


class Database:
    """The process's connection pool, and the one way services open a transaction on it."""

    __slots__ = ("pool",)

    def __init__(self, pool: FailFastPool) -> None:
        self.pool = pool

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """``async with db.transaction() as uow:`` — one connection, one transaction."""
        return transaction(self.pool)

    def read(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """``async with db.read() as uow:`` — one connection for reads, no transaction around them."""
        return reading(self.pool)

    def exhausted(self) -> dict[str, int] | None:
        """The pool's figures (``get_stats``, with ``lent``) when every connection it may open is lent
        out (``lend``), else None: a caller that timed out waiting meanwhile was refused by the pool,
        not by PostgreSQL being unreachable (which may still be at fault: connections hung on a frozen
        server fill the pool too). The pool may open ``max_size``, or, while PostgreSQL refuses it
        more (``FailFastPool.refusing``: a role's or the server's limit), those it holds (review:
        readiness called such a pool unreachable); not while its attempts hang on a frozen server
        (review: a busy pool, said readiness). A pool whose connections were lost and cannot be
        replaced lends none: not exhausted."""
        pool, lent = self.pool, _LENT.get(self.pool, 0)
        may_open = min(pool.max_size, pool.open_connections()) if pool.refusing() else pool.max_size
        return {**pool.get_stats(), "lent": lent} if lent and lent >= may_open else None

    async def delete_in_chunks(self, delete_chunk: Callable[[UnitOfWork], Awaitable[int]]) -> int:
        """Run ``delete_chunk`` (one bounded statement: a chunk of rows), one transaction each, until a
        chunk deletes nothing; how many rows in all. Each transaction stays short (its
        locks, its WAL, the statement timeout) however large the backlog of a purge. Not until a chunk
        comes back short: one can while rows are left (a row a writer changed while the chunk waited
        for its lock, still due, is locked but not deleted; a key-range chunk stops before a crowded
        instant), and the purge would then stop until its next run. One empty chunk more per purge."""
        deleted = 0
        while True:
            async with self.transaction() as uow:
                chunk = await delete_chunk(uow)
            deleted += chunk
            if not chunk:
                return deleted


async def every_step(
    steps: Sequence[tuple[str, Callable[[], Awaitable[T]]]], *, failed: str | None, logger: Any
) -> dict[str, T]:
    """Run each of ``steps`` (independent parts of one upkeep, e.g. a daily purge's) in turn: one that
    fails is logged (``failed``, with the step's name; ``None`` when the steps log their own) and the
    steps after it run all the same, then the first failure is raised. Their results by name."""
    done: dict[str, T] = {}
    failures: list[Exception] = []
    for step, run in steps:
        try:
            done[step] = await run()
        except Exception as exc:
            if failed is not None:
                logger.exception(failed, step=step)
            failures.append(exc)
    if failures:
        raise failures[0]
    return done


async def purge_tables(
    tables: Sequence[tuple[str, Callable[[], Awaitable[int]]]], *, name: str, logger: Any
) -> int:
    """Run each table's purge (``delete_in_chunks``, usually) in turn: one that fails is logged
    (``{name}_purge_failed``, with the table) and the tables after it are purged all the same, their
    counts logged (``{name}_purged``), then the first failure is raised. How many rows in all."""
    deleted: dict[str, int] = {}
    failures: list[Exception] = []
    for table, purge in tables:
        try:
            deleted[table] = await purge()
        except Exception as exc:
            logger.exception(f"{name}_purge_failed", table=table)
            failures.append(exc)
    if any(deleted.values()):
        logger.info(f"{name}_purged", **{table: count for table, count in deleted.items() if count})
    if failures:
        raise failures[0]
    return sum(deleted.values())
