"""After failed attempts to connect, the first connection a pool makes says that PostgreSQL is back
and how long the attempts failed (``database_pool_connected_again``).

Fault review: the log said when an outage began (``database_pool_connect_failed``, once a minute)
and nothing when it ended, as Valkey's breaker does (``valkey_circuit_closed``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.core.db import create_pool
from tests.factories import captured_logs, wait_until

NOBODY_LISTENS = "postgresql://app@127.0.0.1:9/app"


async def fail_to_connect(pool: AsyncConnectionPool[Any]) -> None:
    """Open ``pool`` on a port nobody listens on, until its first attempt to connect has failed."""
    await pool.open(wait=False)
    try:

        async def failed() -> bool:
            return pool.get_stats().get("connections_errors", 0) >= 1

        await wait_until(failed, 30, "the pool failed to connect")
    finally:
        await pool.close()


async def test_the_first_connection_after_failed_attempts_says_postgres_is_back(
    settings: Settings, database_url: str
) -> None:
    quick = msgspec.structs.replace(settings, database_pool_min=1, database_timeout_s=1.0)
    with captured_logs() as logs:
        await fail_to_connect(create_pool(quick, NOBODY_LISTENS))
        pool = create_pool(msgspec.structs.replace(quick, database_pool_min=2), database_url)
        await pool.open(wait=True)
        await pool.close()
    lines = logs.events("database_pool_connected_again")
    assert len(lines) == 1, "once, for the first connection only"
    assert (lines[0]["dependency"], lines[0]["pool"]) == ("postgresql", "app")
    assert lines[0]["failing_s"] > 0


async def test_another_pools_failures_are_not_the_app_pools(settings: Settings, database_url: str) -> None:
    """Review: the page-view sink's pool failing made the app pool's next new connection (up to an
    hour later) say that PostgreSQL was back."""
    with captured_logs() as logs:
        sink = AsyncConnectionPool(NOBODY_LISTENS, min_size=1, open=False, name="pageview-sink")
        await fail_to_connect(sink)
        pool = create_pool(settings, database_url)
        await pool.open(wait=True)
        await pool.close()
    assert logs.events("database_pool_connected_again") == []
