"""``Database.exhausted`` tells a pool whose connections are all lent out (the outage notice's "no
connection to be had", readiness's ``busy``) from a pool whose PostgreSQL went away. psycopg's pool
keeps counting a lost connection while it fails to replace it, so a pool grown to its maximum before
the server went looked full by its figures (diffreview38)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from psycopg_pool import PoolTimeout

from app.config import Settings
from app.core.db import Database, create_pool
from app.core.migrate import dbmate
from tests.faults import PrivatePostgres


async def select_one(database: Database) -> None:
    async with database.read() as uow:
        await uow.conn.execute("select 1")


async def test_a_full_pool_is_exhausted_and_a_pool_whose_server_went_is_not(
    settings: Settings, private_postgres: PrivatePostgres
) -> None:
    small = msgspec.structs.replace(
        settings, database_pool_min=2, database_pool_max=2, database_timeout_s=0.5
    )
    url = private_postgres.url("faults")
    dbmate(url, "up")  # the pool's sessions register the schema's types
    pool = create_pool(small, url)
    await pool.open(wait=True)
    database = Database(pool)
    try:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with database.read():
                held.set()
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        while database.exhausted() is None:  # both lent: the pool has nothing more to give
            await held.wait()
            await asyncio.sleep(0)
        with pytest.raises(PoolTimeout):
            await select_one(database)
        assert database.exhausted() == {**pool.get_stats(), "lent": 2}
        release.set()
        await asyncio.gather(*holders)
        assert database.exhausted() is None

        await asyncio.gather(select_one(database), select_one(database))  # the pool at its maximum
        await asyncio.to_thread(private_postgres.crash)
        for _ in range(3):
            with pytest.raises(Exception):  # noqa: B017, PT011 - lost, refused or timed out: down
                await select_one(database)
            assert database.exhausted() is None, pool.get_stats()
    finally:
        await pool.close(timeout=1)
