"""A feed stream whose client leaves while the stream queries the database keeps its pooled
connection.

The response's task group (anyio) cancels the stream and cancels it again at every await until it
ends. psycopg answers the first cancellation of a running query by cancelling it on the server and
waiting for that; the second one interrupted the wait, and psycopg closed the connection: every
client that reconnected during its replay cost the pool a new backend (two warnings each, found by
fuzzing). The stream's queries now finish first; the stream ends right after.
"""

from __future__ import annotations

from typing import Any

import anyio
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import open_services
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from app.domains.activity.stream import FeedStream
from tests.factories import Team, wait_until
from tests.functional.test_activity_stream_stall import Channels, caller_of


async def test_a_client_leaving_during_a_query_keeps_the_pooled_connection(
    settings: Settings, database_url: str, db: AsyncConnection[Any], valkey: Valkey, team: Team
) -> None:
    async with open_services(settings, (activity_module,)) as services:
        feed = services[ActivityService]
        pool = feed.db.pool
        bad_before = pool.get_stats().get("returns_bad", 0)
        stream = await FeedStream.open(feed, Channels(), caller_of(team.viewer.id), 0, live=True)  # type: ignore[arg-type]
        leaving = anyio.CancelScope()
        done = anyio.Event()

        async def serve() -> None:  # the response's task: iterates the stream in a cancel scope
            try:
                with leaving:
                    async for _ in stream.messages():
                        pass
            finally:
                done.set()

        async with await AsyncConnection.connect(database_url, autocommit=True) as blocker:
            await blocker.execute("begin")
            await blocker.execute("lock table project_members in access exclusive mode")
            async with anyio.create_task_group() as group:
                group.start_soon(serve)
                await wait_until(lambda: _waiting_on_a_lock(db), 30, "the stream's first query waits")
                leaving.cancel()  # the client left
                await blocker.execute("rollback")
                with anyio.fail_after(30):
                    await done.wait()
        assert pool.get_stats().get("returns_bad", 0) == bad_before


async def _waiting_on_a_lock(db: AsyncConnection[Any]) -> bool:
    cursor = await db.execute(
        "select count(*) from pg_stat_activity"
        " where datname = current_database() and wait_event_type = 'Lock' and query ilike %s",
        ("%project_members%",),
    )
    row = await cursor.fetchone()
    return bool(row and row[0])
