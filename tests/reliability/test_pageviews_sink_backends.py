"""A sink write cut on the client (at its deadline, or cancelled) leaves no backend behind on the server.

The writer severs the connection of a write that outlives its deadline and opens a new one for the
next write. A backend waiting on a lock does not notice that its client left: while something holds
a conflicting lock on ``page_views`` longer than the deadline, each deadline left one more backend
waiting, without bound (until ``max_connections``), and once the lock went they all committed views
already answered 503. The sink's sessions now end on the server a little after their deadline
(``statement_timeout``, ``idle_in_transaction_session_timeout``) and as soon as their client is gone
(``client_connection_check_interval``), for both drivers: asyncpg (one-statement writes, and COPYs of
the asyncpg writer) and psycopg (the psycopg writer, and the hybrid writer's COPYs).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.domains.pageviews.rows import Row
from app.domains.pageviews.writers import (
    COPY_FROM,
    AsyncpgWriter,
    HybridWriter,
    PsycopgWriter,
    WriteTimeoutError,
)
from tests.factories import wait_until
from tests.functional.test_pageviews_sink import row, sites, stored

__all__ = ["sites"]  # the autouse fixture that creates the sites the rows name

DEADLINE_S = 0.5
SEVERED_WRITES = 6
EXPECTED_TIMEOUT_MS = math.ceil(DEADLINE_S * 1000) + 500
"""The sink sessions' ``statement_timeout`` and ``idle_in_transaction_session_timeout``."""
AT_MOST_WAITING = math.ceil(EXPECTED_TIMEOUT_MS / (DEADLINE_S * 1000)) + 1
"""Writes follow each other at least a deadline apart, and each backend ends within its timeout."""
NEVER_S = 3600.0  # a deadline (and so a statement_timeout) no test reaches
SINK_WRITES = (
    "(query ilike '%json_populate_recordset%' or query ilike 'copy%page_views%'"
    " or query ilike 'select%from%page_views%limit 1')"  # asyncpg's look at the table before its COPY
)

WRITES = [
    pytest.param(AsyncpgWriter, 1, id="asyncpg-statement"),
    pytest.param(AsyncpgWriter, COPY_FROM, id="asyncpg-copy"),
    pytest.param(PsycopgWriter, 1, id="psycopg-statement"),
    pytest.param(HybridWriter, COPY_FROM, id="hybrid-copy"),
]


def batch(tag: str, size: int) -> list[Row]:
    return [row(path=f"/{tag}/{i}") for i in range(size)]


async def sink_backends(db: AsyncConnection[Any], where: str = "true") -> list[int]:
    """Backends of the writer this test opened (begun after the test's own ``db`` connection) running,
    or left running, one of its writes."""
    cursor = await db.execute(
        "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
        " and backend_start > (select backend_start from pg_stat_activity where pid = pg_backend_pid())"
        f" and {SINK_WRITES} and {where}"
    )
    return sorted(pid for (pid,) in await cursor.fetchall())


async def waiting_on_lock(db: AsyncConnection[Any]) -> list[int]:
    return await sink_backends(db, "wait_event_type = 'Lock'")


async def _none_waiting(db: AsyncConnection[Any]) -> bool:
    return not await waiting_on_lock(db)


async def _waiting(db: AsyncConnection[Any], count: int) -> bool:
    return len(await waiting_on_lock(db)) == count


async def check_connections(db: AsyncConnection[Any]) -> None:
    """The server can notice a client gone mid-statement (PostgreSQL 14+ on Linux, as every server
    the project runs on: the embedded one and the Containerfile's); the test fails otherwise."""
    await db.execute("select set_config('client_connection_check_interval', '1000', false)")
    await db.rollback()


@pytest.mark.parametrize(("kind", "size"), WRITES)
async def test_writes_severed_at_their_deadline_leave_a_bounded_number_of_backends(
    kind: Any, size: int, database_url: str, db: AsyncConnection[Any]
) -> None:
    writer = kind(database_url, 1, DEADLINE_S)
    await writer.open()
    try:
        assert await writer.write(batch("warm", size)) == size
        async with await AsyncConnection.connect(database_url) as locker:
            await locker.execute("lock table page_views in access exclusive mode")
            waiting: list[int] = []
            for i in range(SEVERED_WRITES):
                with pytest.raises(WriteTimeoutError):
                    await writer.write(batch(str(i), size))
                waiting.append(len(await waiting_on_lock(db)))
            assert max(waiting) <= AT_MOST_WAITING, (
                f"backends still waiting on the lock after each severed write: {waiting}"
            )
            await wait_until(
                lambda: _none_waiting(db), 30, "every severed write's backend has ended, the lock still held"
            )
        assert await stored(db) == size, "a write answered with a timeout was committed after all"
        assert await writer.write(batch("after", size)) == size
    finally:
        await writer.close()


@pytest.mark.parametrize(("kind", "size"), WRITES)
async def test_a_cancelled_write_ends_its_backend_long_before_its_deadline(
    kind: Any, size: int, database_url: str, db: AsyncConnection[Any]
) -> None:
    """A write cut before its deadline (the sink closing, its caller cancelled) severs its connection:
    the server notices the client is gone while the backend still waits on the lock."""
    await check_connections(db)
    writer = kind(database_url, 1, NEVER_S)
    await writer.open()
    try:
        async with await AsyncConnection.connect(database_url) as locker:
            await locker.execute("lock table page_views in access exclusive mode")
            write = asyncio.ensure_future(writer.write(batch("cut", size)))
            await wait_until(lambda: _waiting(db, 1), 30, "the write waits on the lock")
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            await wait_until(
                lambda: _none_waiting(db), 30, "the cut write's backend has ended, the lock held"
            )
        assert await stored(db) == 0
    finally:
        await writer.close()


SETTINGS = (
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "client_connection_check_interval",
    "application_name",
)
SHOW_SETTINGS = "select name, setting from pg_settings where name in ({})".format(
    ", ".join(f"'{name}'" for name in SETTINGS)
)


async def session_settings(writer: Any) -> list[dict[str, str]]:
    """The settings of the writer's sessions, read on them: its asyncpg connection and its psycopg
    pool's, whichever it has (reached through its internals: nothing else can see a session's)."""
    found: list[dict[str, str]] = []
    for conn in getattr(writer, "_idle", []):
        found.append({name: setting for name, setting in await conn.fetch(SHOW_SETTINGS)})
    pool = getattr(writer, "_pool", None) or getattr(getattr(writer, "_copier", None), "_pool", None)
    if pool is not None:
        async with pool.connection() as conn:
            rows: Sequence[tuple[str, str]] = await (await conn.execute(SHOW_SETTINGS)).fetchall()
            found.append(dict(rows))
    return found


@pytest.mark.parametrize(("kind", "sessions"), [(AsyncpgWriter, 1), (PsycopgWriter, 1), (HybridWriter, 2)])
async def test_the_sinks_sessions_carry_limits_tied_to_the_deadline_and_their_name(
    kind: Any, sessions: int, database_url: str, db: AsyncConnection[Any]
) -> None:
    writer = kind(database_url, 1, DEADLINE_S, app_name="monolith-test")
    await writer.open()
    try:
        assert await writer.write(batch("statement", 1)) == 1
        assert await writer.write(batch("copy", COPY_FROM)) == COPY_FROM
        cursor = await db.execute(
            "select application_name from pg_stat_activity where datname = current_database()"
            " and backend_start > (select backend_start from pg_stat_activity where pid = pg_backend_pid())"
        )
        assert await cursor.fetchall() == [("monolith-test:pageview-sink",)] * sessions
        found = await session_settings(writer)
        await check_connections(db)
        assert (
            found
            == [
                {
                    "statement_timeout": str(EXPECTED_TIMEOUT_MS),
                    "idle_in_transaction_session_timeout": str(EXPECTED_TIMEOUT_MS),
                    "client_connection_check_interval": "1000",
                    "application_name": "monolith-test:pageview-sink",
                }
            ]
            * sessions
        )
    finally:
        await writer.close()
