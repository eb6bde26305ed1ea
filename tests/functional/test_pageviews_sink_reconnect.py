"""After an outage longer than a write's wait, the page-view sink's psycopg pool gives its chain of
attempts to connect up (``reconnect_timeout_s``), and the next write makes an attempt at once.

The pool (``PsycopgWriter``: every write of ``SINK_DRIVER=psycopg``, the COPYs of the default
``hybrid``) holds no connection until a write asks (``min_size=0``). A write that finds none makes it
grow by one connection, and psycopg's growth is a chain of attempts that back off (1, 2, 4 ... s)
for ``reconnect_timeout``; while it runs, no write starts another. With psycopg's default of five
minutes, a write after PostgreSQL came back waited for the chain's next attempt, its gaps grown to a
minute and more (as the app pool's did: ``test_core_db_refused.py``), and each write meanwhile failed
(503).

The pool connects to a port nobody listens on (refused at once), then to the session's database:
switching its ``conninfo`` ends the outage.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.domains.pageviews.writers import (
    COPY_FROM,
    HybridWriter,
    PsycopgWriter,
    Writer,
    WriteTimeoutError,
    make_writer,
)
from tests.factories import wait_until
from tests.functional.test_pageviews_sink import row, sites, stored

__all__ = ["sites"]  # the autouse fixture that creates the sites the rows name

NOBODY_LISTENS = "postgresql://app@127.0.0.1:9/app"
SHORT_WAIT_S = 1.0
"""Each write's deadline (``DATABASE_TIMEOUT_S``), which the pool's ``reconnect_timeout`` doubles: a
chain of attempts lasts 2 s, those at 0, ~1 and 2 s."""
ATTEMPTS_OF_A_LONGER_CHAIN = 4
"""A chain that lasts up to 3 s makes three attempts; a longer one makes a fourth (at ~7 s with
psycopg's default), which ends the outage too: the write after it then meets the chain's backoff
(and fails the test in seconds, not at the wait's bound)."""


def psycopg_pool(writer: Writer) -> AsyncConnectionPool[Any]:
    """The writer's psycopg pool (the hybrid writer's COPYs go through one of its own)."""
    psycopg_writer = writer._copier if isinstance(writer, HybridWriter) else writer
    assert isinstance(psycopg_writer, PsycopgWriter)
    pool: AsyncConnectionPool[Any] = psycopg_writer._pool
    return pool


@pytest.mark.parametrize(
    ("driver", "views"), [("psycopg", 1), ("hybrid", COPY_FROM)], ids=["psycopg", "hybrid-copy"]
)
async def test_the_sinks_pool_tries_again_at_the_first_write_after_a_long_outage(
    driver: str, views: int, database_url: str, db: AsyncConnection[Any]
) -> None:
    writer = make_writer(driver, NOBODY_LISTENS, 2, SHORT_WAIT_S)
    await writer.open()
    try:
        pool = psycopg_pool(writer)
        with pytest.raises((PoolTimeout, WriteTimeoutError)):  # its borrower starts the pool's growth
            await writer.write([row(path=f"/outage/{i}") for i in range(views)])

        async def gave_up_or_kept_trying() -> bool:
            stats = pool.get_stats()
            failed = stats.get("connections_errors", 0)
            gave_up = failed >= 1 and stats.get("pool_size", 0) == 0  # psycopg counts a chain in it
            return gave_up or failed >= ATTEMPTS_OF_A_LONGER_CHAIN

        await wait_until(gave_up_or_kept_trying, 60, "the pool gave its chain of attempts up")
        pool.conninfo = database_url  # PostgreSQL is back

        assert await writer.write([row(path=f"/back/{i}") for i in range(views)]) == views
        assert await stored(db) == views
    finally:
        await writer.close()
