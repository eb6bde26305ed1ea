"""Acknowledged means durable: SIGKILL the server during ingest load and lose no acknowledged view.

The real server (granian, two workers) runs as a subprocess against the test database and Valkey.
Concurrent clients send page views, each with its own ``event_id``; the ids of every 202 are
recorded. The whole process group is SIGKILLed mid-load. Then every acknowledged id must be stored
(unacknowledged ones may or may not be), no id may be stored twice, and after a restart retries of
acknowledged and unacknowledged views (same event ids, each sent twice at once) leave every id
stored exactly once.

Two loads, because the sink writes two ways (``pageviews.writers``): single views from 64 clients
(each worker's batches stay small: the one-statement write), and batches of ``BATCH_VIEWS`` views
from 8 clients (every write holds at least ``COPY_FROM`` rows: the COPY transaction that claims the
event ids and COPYs the rows).
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

from app.domains.pageviews.writers import COPY_FROM
from tests.served import ServerProcess

CONCURRENCY = 64
BATCH_CONCURRENCY = 8
BATCH_VIEWS = 300
ACKS_BEFORE_KILL = 400
LOAD_DEADLINE_S = 15.0
INGEST_UNLIMITED = {
    "RATE_LIMIT_INGEST_PER_MINUTE": "100000000",
    "RATE_LIMIT_INGEST_PER_HOUR": "1000000000",
    "INGEST_SITE_VIEWS_PER_MINUTE": "100000000",
    "INGEST_SITE_VIEWS_PER_DAY": "1000000000",
}


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


class Load:
    """How one kind of load sends views: one per request, or ``BATCH_VIEWS`` per request."""

    def __init__(self, kind: str) -> None:
        self.batched = kind == "batch"
        self.concurrency = BATCH_CONCURRENCY if self.batched else CONCURRENCY
        self.per_request = BATCH_VIEWS if self.batched else 1
        self.acks_before_kill = 10 * BATCH_VIEWS if self.batched else ACKS_BEFORE_KILL

    async def send(
        self, http: httpx.AsyncClient, base: str, key: str, ids: list[uuid.UUID]
    ) -> httpx.Response:
        if self.batched:
            body = {"views": [view(key, event_id) for event_id in ids]}
            return await http.post(f"{base}/api/page-views/batch", json=body)
        (event_id,) = ids
        return await http.post(f"{base}/api/page-views", json=view(key, event_id))


async def stored_counts(db: AsyncConnection[Any], site_id: int) -> dict[uuid.UUID, int]:
    cursor = await db.execute(
        "select event_id, count(*) from page_views where site_id = %s group by event_id", (site_id,)
    )
    return {row[0]: row[1] for row in await cursor.fetchall()}


@pytest.mark.parametrize("kind", ["single", "batch"])
async def test_sigkill_during_ingest_loses_no_acknowledged_view_and_retries_store_once(
    kind: str,
    db: AsyncConnection[Any],
    servers: list[ServerProcess],
    http: httpx.AsyncClient,
    database_url: str,
    valkey_url: str,
    tmp_path: Path,
) -> None:
    assert BATCH_VIEWS >= COPY_FROM, "the batch load must take the COPY path"
    load = Load(kind)
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

    batches: list[list[uuid.UUID]] = []  # what each request sent, to retry whole requests

    async def sender() -> None:
        while not stop.is_set():
            ids = [uuid.uuid4() for _ in range(load.per_request)]
            batches.append(ids)
            try:
                response = await load.send(http, first.base, key, ids)
            except httpx.HTTPError:
                unacknowledged.update(ids)
                continue
            if response.status_code == 202:
                acknowledged.update(ids)
                if len(acknowledged) >= load.acks_before_kill:
                    enough.set()
            else:
                unacknowledged.update(ids)
                other_status.append(response.status_code)

    senders = [asyncio.create_task(sender()) for _ in range(load.concurrency)]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), LOAD_DEADLINE_S)
        # Mid-load: the senders keep their requests in flight while the whole process group dies.
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
    for ids in batches:  # a request is stored whole or not at all, acknowledged or not
        assert len({event_id in counts for event_id in ids}) == 1, "a request was half stored"

    # Retries after a restart: a sample of both kinds, each sent twice at once.
    second = ServerProcess(database_url, valkey_url, tmp_path, env=INGEST_UNLIMITED)
    servers.append(second)
    second.start()
    await second.wait_ready(http)
    rng = random.Random(0)
    acked_requests = [ids for ids in batches if ids[0] in acknowledged]
    lost_requests = [ids for ids in batches if ids[0] in unacknowledged]
    retried = rng.sample(acked_requests, min(100 // load.per_request + 2, len(acked_requests)))
    retried += lost_requests[: 100 // load.per_request + 2]
    responses = await asyncio.wait_for(
        asyncio.gather(*(load.send(http, second.base, key, ids) for ids in retried + retried)), 60
    )
    assert [r.status_code for r in responses] == [202] * len(responses)
    sample = [event_id for ids in retried for event_id in ids]

    counts = await stored_counts(db, site_id)
    assert {e: counts.get(e, 0) for e in sample} == dict.fromkeys(sample, 1)
    assert acknowledged - counts.keys() == set()
    assert all(n == 1 for n in counts.values())
    second.kill(signal.SIGTERM)
