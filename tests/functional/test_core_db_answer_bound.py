"""A pooled connection waits on PostgreSQL at most its bound (``app.core.db.BoundedConnection``):
``STATEMENT_TIMEOUT_MS`` plus ``DATABASE_TIMEOUT_S``, the time a statement may run plus the time its
answer may take to arrive.

Fault review: a request already inside a statement when PostgreSQL froze waited as long as the
freeze lasted (62 s of a 60 s freeze): ``statement_timeout`` is the server's to enforce, and a frozen
server enforces nothing. A server that runs a statement past the bound stands for it here: the
session's own ``statement_timeout`` is lifted inside the transaction, so only the client can end it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from app.core import logging as app_logging
from app.core.db import Pool, UnitOfWork, reading, statements_may_take, transaction
from app.core.logging import OncePerInterval
from tests.factories import OpenPool, captured_logs

BOUND_SETTINGS = {"statement_timeout_ms": 300, "database_timeout_s": 0.2}
"""A bound of half a second; the statements below sleep several times longer."""


@pytest.fixture
async def pool(open_pool: OpenPool, database_url: str) -> AsyncIterator[Pool]:
    async with open_pool(database_url, **BOUND_SETTINGS) as pool:
        yield pool


Open = Callable[[Pool], AbstractAsyncContextManager[UnitOfWork]]
CUT = re.escape("PostgreSQL did not answer within 0.5s")


async def sleep(pool: Pool, open_: Open, seconds: float, statement_timeout: str = "0") -> None:
    """Run ``pg_sleep`` in a unit of work, under this session ``statement_timeout`` (0: none)."""
    async with open_(pool) as uow:
        await uow.conn.execute(f"set statement_timeout = '{statement_timeout}'")
        await uow.conn.execute("select pg_sleep(%s)", (seconds,))
        await uow.conn.execute("reset statement_timeout")


@pytest.mark.parametrize("open_", [transaction, reading], ids=["transaction", "read"])
async def test_a_statement_the_server_does_not_end_fails_at_the_bound_and_the_pool_recovers(
    pool: Pool, open_: Open
) -> None:
    with pytest.raises(psycopg.OperationalError, match=CUT):
        await sleep(pool, open_, 3)
    async with open_(pool) as uow:  # the severed connection was discarded, not lent again
        assert await (await uow.conn.execute("show statement_timeout")).fetchone() == ("300ms",)


async def test_cut_statements_leave_one_line_of_psycopgs_per_kind_and_interval(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: each cut statement logged psycopg's own warnings (a failed rollback, twice, and the pool
    closing the connection), about three lines per request in flight when PostgreSQL freezes.
    ``DiscardedConnectionLogFilter`` keeps one per kind a minute (a minute that begins here: what the
    session logged before is forgotten)."""
    monkeypatch.setattr(app_logging._DISCARD_FILTER, "warnings", OncePerInterval(3600))
    with captured_logs() as logs:
        for _ in range(3):
            with pytest.raises(psycopg.OperationalError, match=CUT):
                await sleep(pool, transaction, 3)
        async with transaction(pool) as uow:  # the pool is done with the cut connections
            await uow.conn.execute("select 1")
    said = [line for line in logs.lines if line.get("logger", "").startswith("psycopg")]
    assert all(line["event"] == "database_connection_discarded" for line in said), said
    reasons = [line["reason"] for line in said]
    assert "error ignored in rollback" in reasons, said
    assert len(reasons) == len(set(reasons)), said


async def test_work_that_raises_its_own_statement_timeout_widens_the_bound(pool: Pool) -> None:
    """The analytics rollup sets a statement timeout of minutes (``ROLLUP_STATEMENT_TIMEOUT_S``)."""
    with statements_may_take(30):
        await sleep(pool, transaction, 1, statement_timeout="30s")
    with pytest.raises(psycopg.OperationalError, match=CUT):  # outside the block: the settings' bound
        await sleep(pool, transaction, 3, statement_timeout="30s")


async def test_the_bound_follows_a_statement_timeout_the_database_url_sets(
    open_pool: OpenPool, database_url: str
) -> None:
    """Review: the URL's ``options`` win over ``STATEMENT_TIMEOUT_MS`` (``session_options``), and a
    statement the session still allowed was cut at the settings' bound, as an outage."""
    longer = make_conninfo(database_url, options="-c statement_timeout=5000")
    async with open_pool(longer, **BOUND_SETTINGS) as pool:
        await sleep(pool, transaction, 1, statement_timeout="5s")


async def test_without_a_statement_timeout_nothing_is_bounded(open_pool: OpenPool, database_url: str) -> None:
    async with open_pool(database_url, statement_timeout_ms=0, database_timeout_s=0.2) as pool:
        await sleep(pool, transaction, 1)
