"""The server settings of the app's pooled sessions: its timeouts, and the ``options`` of
``DATABASE_URL`` kept beside them."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from app.core.db import Pool
from tests.factories import OpenPool, wait_until


async def show(pool: Pool, *names: str) -> list[str]:
    async with pool.connection() as conn:
        return [str((await (await conn.execute(f"show {name}")).fetchone() or ("",))[0]) for name in names]


async def test_a_session_left_idle_in_a_transaction_is_ended_and_the_pool_lends_a_new_one(
    open_pool: OpenPool, database_url: str
) -> None:
    async with (
        open_pool(database_url, idle_in_transaction_timeout_ms=200) as pool,
        await AsyncConnection.connect(database_url, autocommit=True) as watcher,
    ):
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            await conn.execute("select 1")  # opens a transaction, then the session idles in it

            async def ended() -> bool:
                cur = await watcher.execute("select 1 from pg_stat_activity where pid = %s", (pid,))
                return await cur.fetchone() is None

            await wait_until(ended, 10, "the server ended the idle session")
            with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
                await conn.execute("select 1")

        async with pool.connection() as conn:
            assert conn.info.backend_pid != pid
            assert await (await conn.execute("select 41 + 1")).fetchone() == (42,)


async def test_the_app_sets_its_timeouts_on_every_pooled_session(
    open_pool: OpenPool, database_url: str
) -> None:
    async with open_pool(
        database_url, statement_timeout_ms=4321, idle_in_transaction_timeout_ms=98_765
    ) as pool:
        assert await show(pool, "statement_timeout", "idle_in_transaction_session_timeout") == [
            "4321ms",
            "98765ms",
        ]


async def test_options_of_the_database_url_are_kept_and_win(open_pool: OpenPool, database_url: str) -> None:
    url = make_conninfo(database_url, options="-c work_mem=7MB -c statement_timeout=1234")
    async with open_pool(url, statement_timeout_ms=4321) as pool:
        assert await show(pool, "work_mem", "statement_timeout", "idle_in_transaction_session_timeout") == [
            "7MB",
            "1234ms",
            "1min",
        ]
