"""Deadlines on database work end it without freeing the connection under the driver.

A backend frozen with SIGSTOP stands for a server that stopped answering: its client's socket stays
open and nothing comes back. What must hold when a deadline passes (or the caller is cancelled):
the operation has ended before its connection goes back to the pool (which would close it under a
psycopg generator still waiting on it: the workers' SIGSEGV in libpq), it failed on the severed
socket by itself (no cancel request to the frozen server), and the pool lends a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg.pq import ConnStatus
from psycopg_pool import AsyncConnectionPool

from app.core.db import check_within
from app.core.deadline import finish_within, sever
from app.domains.pageviews.writers import WriteTimeoutError, before_deadline
from tests.factories import wait_until

Pool = AsyncConnectionPool[AsyncConnection[Any]]


@pytest.fixture
def freeze() -> Iterator[Callable[[int], None]]:
    """Freeze a backend (SIGSTOP); every frozen one is resumed at the end, and exits once it sees
    its client gone."""
    frozen: list[int] = []

    def stop(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        frozen.append(pid)

    yield stop
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def open_pool(database_url: str, check_timeout_s: float, *, max_size: int) -> Pool:
    pool: Pool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        timeout=30,
        kwargs={"autocommit": True},
        check=check_within(check_timeout_s),
        open=False,
    )
    await pool.open(wait=True)
    return pool


@pytest.fixture
async def pools(database_url: str) -> AsyncIterator[list[Pool]]:
    opened: list[Pool] = []
    yield opened
    for pool in opened:
        await pool.close(timeout=5)


async def pooled_backend(pool: Pool) -> int:
    async with pool.connection() as conn:
        return conn.info.backend_pid


async def assert_lends_a_new_connection(pool: Pool, frozen: int) -> None:
    """The pool lends a working connection, not the one to the frozen backend."""
    async with pool.connection() as conn:
        assert conn.info.backend_pid != frozen
        assert await (await conn.execute("select 1")).fetchone() == (1,)


def running_checks() -> list[asyncio.Task[Any]]:
    """The pool checks (``check_connection`` probes) still running in this loop."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "").endswith("check_connection")
    ]


async def test_a_check_cut_short_by_its_caller_ends_before_the_pool_gets_the_connection_back(
    database_url: str, pools: list[Pool], freeze: Callable[[int], None]
) -> None:
    pool = await open_pool(database_url, check_timeout_s=60, max_size=1)
    pools.append(pool)
    frozen = await pooled_backend(pool)
    freeze(frozen)

    borrow = asyncio.ensure_future(pool.getconn())

    async def checking() -> bool:
        return bool(running_checks())

    await wait_until(checking, 30, "the pool checks the frozen connection")
    borrow.cancel()  # a caller's own deadline: the health probe's
    with pytest.raises(asyncio.CancelledError):
        await borrow
    assert running_checks() == [], "a check is still running on a connection the pool got back"

    await assert_lends_a_new_connection(pool, frozen)


async def test_a_check_past_its_deadline_fails_and_the_pool_lends_a_new_connection(
    database_url: str, pools: list[Pool], freeze: Callable[[int], None]
) -> None:
    pool = await open_pool(database_url, check_timeout_s=0.2, max_size=2)
    pools.append(pool)
    frozen = await pooled_backend(pool)
    freeze(frozen)

    await assert_lends_a_new_connection(pool, frozen)
    assert running_checks() == []


async def test_a_write_past_its_deadline_fails_on_its_severed_connection_not_by_cancellation(
    database_url: str, freeze: Callable[[int], None]
) -> None:
    conn = await AsyncConnection.connect(database_url, autocommit=True)
    try:
        freeze(conn.info.backend_pid)
        outcome: list[BaseException] = []

        async def work(lent: list[Any]) -> None:
            lent.append(conn)
            try:
                await conn.execute("select 1")
            except BaseException as exc:
                outcome.append(exc)
                raise

        with pytest.raises(WriteTimeoutError):
            await before_deadline(0.2, work, sever)
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.OperationalError), outcome
        assert conn.pgconn.status == ConnStatus.BAD  # discarded by its owner, never reused
    finally:
        await conn.close()


async def test_work_that_fails_within_its_deadline_raises_its_own_error(database_url: str) -> None:
    conn = await AsyncConnection.connect(database_url, autocommit=True)
    try:
        query = asyncio.ensure_future(conn.execute("select 1 / 0"))
        with pytest.raises(psycopg.errors.DivisionByZero):
            await finish_within(query, 30, lambda: sever(conn))
        assert (await (await conn.execute("select 2")).fetchone()) == (2,)  # not severed
    finally:
        await conn.close()


async def test_severing_an_idle_or_closed_connection_is_harmless(database_url: str) -> None:
    conn = await AsyncConnection.connect(database_url, autocommit=True)
    sever(conn)
    with pytest.raises(psycopg.OperationalError):
        await conn.execute("select 1")
    await conn.close()
    sever(conn)
