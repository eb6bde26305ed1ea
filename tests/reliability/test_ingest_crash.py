"""Acknowledged means durable: SIGKILL the server during ingest load and lose no acknowledged view.

The real server (granian, two workers) runs as a subprocess against the test database and Valkey.
64 concurrent clients send page views, each with its own ``event_id``; the ids of every 202 are
recorded. The whole process group is SIGKILLed mid-load. Then every acknowledged id must be stored
(unacknowledged ones may or may not be), no id may be stored twice, and after a restart retries of
acknowledged and unacknowledged views (same event ids, each sent twice at once) leave every id
stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection

from tests.served import ServerProcess

CONCURRENCY = 64
ACKS_BEFORE_KILL = 400
LOAD_DEADLINE_S = 15.0
INGEST_UNLIMITED = {"RATE_LIMIT_INGEST_PER_MINUTE": "100000000"}


@pytest.fixture
def servers(database_url: str, valkey_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Start servers with ``servers.append(ServerProcess(...))``; all are killed at the end."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for server in started:
            server.kill(signal.SIGTERM, timeout_s=10)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=limits) as client:
        yield client


async def create_site(db: AsyncConnection[Any]) -> tuple[int, str]:
    user = await db.execute(
        "insert into users (email, display_name, password_hash) values (%s, 'Crash', 'x') returning id",
        (f"crash-{secrets.token_hex(4)}@example.com",),
    )
    user_row = await user.fetchone()
    assert user_row is not None
    key = secrets.token_urlsafe(24)
    site = await db.execute(
        "insert into sites (owner_id, domain, ingest_key) values (%s, 'crash.example', %s) returning id",
        (user_row[0], key),
    )
    site_row = await site.fetchone()
    assert site_row is not None
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    return int(site_row[0]), key


def view(key: str, event_id: uuid.UUID) -> dict[str, Any]:
    return {
        "site_key": key,
        "url": f"https://crash.example/p/{event_id.int % 50}",
        "referrer": "https://www.google.com/",
        "title": "Crash test",
        "event_id": str(event_id),
    }


async def stored_counts(db: AsyncConnection[Any], site_id: int) -> dict[uuid.UUID, int]:
    cursor = await db.execute(
        "select event_id, count(*) from page_views where site_id = %s group by event_id", (site_id,)
    )
    return {row[0]: row[1] for row in await cursor.fetchall()}


async def test_sigkill_during_ingest_loses_no_acknowledged_view_and_retries_store_once(
    db: AsyncConnection[Any],
    servers: list[ServerProcess],
    http: httpx.AsyncClient,
    database_url: str,
    valkey_url: str,
    tmp_path: Path,
) -> None:
    site_id, key = await create_site(db)
    first = ServerProcess(database_url, valkey_url, tmp_path, env=INGEST_UNLIMITED)
    servers.append(first)
    first.start()
    await first.wait_ready(http)

    acknowledged: set[uuid.UUID] = set()
    unacknowledged: set[uuid.UUID] = set()
    other_status: list[int] = []
    stop = asyncio.Event()
    enough = asyncio.Event()

    async def sender() -> None:
        while not stop.is_set():
            event_id = uuid.uuid4()
            try:
                response = await http.post(f"{first.base}/api/page-views", json=view(key, event_id))
            except httpx.HTTPError:
                unacknowledged.add(event_id)
                continue
            if response.status_code == 202:
                acknowledged.add(event_id)
                if len(acknowledged) >= ACKS_BEFORE_KILL:
                    enough.set()
            else:
                unacknowledged.add(event_id)
                other_status.append(response.status_code)

    senders = [asyncio.create_task(sender()) for _ in range(CONCURRENCY)]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), LOAD_DEADLINE_S)
        # Mid-load: the senders keep 64 requests in flight while the whole process group dies.
        stop.set()
        first.kill(signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*senders), 20)
    finally:
        stop.set()
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)

    assert len(acknowledged) >= 50, (
        f"too little load before the kill: {len(acknowledged)} acks, {other_status[:5]}"
    )
    assert unacknowledged, "nothing was in flight when the server was killed"
    assert not other_status or set(other_status) <= {503}, other_status[:10]

    counts = await stored_counts(db, site_id)
    assert acknowledged - counts.keys() == set(), "acknowledged views were lost"
    assert all(n == 1 for n in counts.values()), "an event id was stored twice"
    assert counts.keys() <= acknowledged | unacknowledged

    # Retries after a restart: a sample of both kinds, each sent twice at once.
    second = ServerProcess(database_url, valkey_url, tmp_path, env=INGEST_UNLIMITED)
    servers.append(second)
    second.start()
    await second.wait_ready(http)
    rng = random.Random(0)
    sample = rng.sample(sorted(acknowledged), min(100, len(acknowledged))) + sorted(unacknowledged)[:100]
    responses = await asyncio.wait_for(
        asyncio.gather(
            *(http.post(f"{second.base}/api/page-views", json=view(key, e)) for e in sample + sample)
        ),
        30,
    )
    assert [r.status_code for r in responses] == [202] * len(responses)

    counts = await stored_counts(db, site_id)
    assert {e: counts.get(e, 0) for e in sample} == dict.fromkeys(sample, 1)
    assert acknowledged - counts.keys() == set()
    assert all(n == 1 for n in counts.values())
    second.kill(signal.SIGTERM)
