"""The asyncpg writer's own connections (no pool): reused, bounded, replaced when lost, and never lent
again in an unknown state (cancelled or severed at the deadline)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from psycopg import AsyncConnection

from app.domains.pageviews.writers import COPY_FROM, AsyncpgWriter, SitesGoneError
from tests.factories import wait_until
from tests.functional.test_pageviews_sink import poisoned, row, sites, stored

__all__ = ["sites"]  # the autouse fixture that creates the sites the rows name

DEADLINE_S = 10.0
WRITES = "query like '%json_populate_recordset%'"


async def writer_backends(db: AsyncConnection[Any], where: str = "true") -> list[int]:
    """The backends of the writer this test opened: writes' connections begun after the test's own
    ``db`` connection (the session's app keeps a writer connection of its own once a test before
    this one ingested a view through it)."""
    cursor = await db.execute(
        f"select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
        f" and backend_start > (select backend_start from pg_stat_activity where pid = pg_backend_pid())"
        f" and {WRITES} and {where}"
    )
    return sorted(pid for (pid,) in await cursor.fetchall())


async def waiting_on_lock(db: AsyncConnection[Any]) -> list[int]:
    return await writer_backends(db, "wait_event_type = 'Lock'")


async def _count_is(backends: Any, count: int) -> bool:
    return len(await backends) == count


async def test_writes_share_at_most_their_connections_and_reuse_them(
    database_url: str, db: AsyncConnection[Any]
) -> None:
    writer = AsyncpgWriter(database_url, 2, DEADLINE_S)
    await writer.open()
    try:
        async with await AsyncConnection.connect(database_url) as locker:
            await locker.execute("lock table sites in access exclusive mode")
            writes = [asyncio.ensure_future(writer.write([row(path=f"/{i}")])) for i in range(6)]
            await wait_until(lambda: _count_is(waiting_on_lock(db), 2), 30, "two writes wait on the lock")
            assert not any(write.done() for write in writes)
        assert await asyncio.gather(*writes) == [1] * 6
        both = await writer_backends(db)
        assert len(both) == 2, "six writes on two connections"
        for i in range(5):
            assert await writer.write([row(path=f"/again/{i}")]) == 1
        assert await writer_backends(db) == both, "later writes reuse the idle connections"
        assert await stored(db) == 11
    finally:
        await writer.close()
    await wait_until(lambda: _count_is(writer_backends(db), 0), 30, "close closed the idle connections")


async def test_a_connection_the_server_closed_fails_at_most_one_write_then_is_replaced(
    database_url: str, db: AsyncConnection[Any]
) -> None:
    writer = AsyncpgWriter(database_url, 1, DEADLINE_S)
    await writer.open()
    try:
        assert await writer.write([row(path="/first")]) == 1
        (first,) = await writer_backends(db)
        await db.execute("select pg_terminate_backend(%s)", (first,))
        await wait_until(lambda: _count_is(writer_backends(db), 0), 30, "the backend is gone")
        try:
            outcomes = [await writer.write([row(path="/met-the-loss")])]
        except (asyncpg.InterfaceError, asyncpg.InternalClientError) as lost:
            outcomes = [lost]
        assert await writer.write([row(path="/after")]) == 1
        (second,) = await writer_backends(db)
        assert second != first
        assert await stored(db) == 1 + outcomes.count(1) + 1
    finally:
        await writer.close()


async def test_a_cancelled_write_severs_its_connection_instead_of_cancelling_the_query(
    database_url: str, db: AsyncConnection[Any]
) -> None:
    """No cancel request reaches the server (one to a frozen server waits as long as the query), and
    the connection is not lent again: the next write gets a new one."""
    writer = AsyncpgWriter(database_url, 1, DEADLINE_S)
    await writer.open()
    try:
        async with await AsyncConnection.connect(database_url) as locker:
            await locker.execute("lock table sites in access exclusive mode")
            write = asyncio.ensure_future(writer.write([row(event_id=uuid.uuid4())]))
            await wait_until(lambda: _count_is(waiting_on_lock(db), 1), 30, "the write waits on the lock")
            (cancelled,) = await waiting_on_lock(db)
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            assert await waiting_on_lock(db) == [cancelled], "its query was cancelled, not severed"
        assert await writer.write([row(path="/next")]) == 1
        assert cancelled not in await writer_backends(db, "state = 'idle'")
    finally:
        await writer.close()


async def test_a_write_the_server_refuses_keeps_its_connection(
    database_url: str, db: AsyncConnection[Any]
) -> None:
    """Refused data (one statement, and a COPY) and a deleted site are answers, not a broken
    connection: the next write runs on the same one."""
    writer = AsyncpgWriter(database_url, 1, DEADLINE_S)
    await writer.open()
    try:
        assert await writer.write([row(path="/first")]) == 1
        (backend,) = await writer_backends(db)
        with pytest.raises(asyncpg.exceptions.DataError):
            await writer.write([poisoned("nul-referrer")])
        with pytest.raises(asyncpg.exceptions.DataError):
            await writer.write([row(path=f"/{i}") for i in range(COPY_FROM - 1)] + [poisoned("nul-referrer")])
        for size in (1, COPY_FROM):
            with pytest.raises(SitesGoneError):
                await writer.write([row(site_id=404, path=f"/{i}") for i in range(size)])
        assert await writer.write([row(path="/after")]) == 1
        assert await writer_backends(db) == [backend]
        assert await stored(db) == 2
    finally:
        await writer.close()
