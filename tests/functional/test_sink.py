"""The group-commit sink on real PostgreSQL: durable acks, batching, bounds, retries, shutdown."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.core.errors import ServiceUnavailableError
from app.domains.analytics.sink import (
    AsyncpgWriter,
    PageViewSink,
    Row,
    SinkFullError,
    Writer,
    make_writer,
)


def row(site_id: int = 1, event_id: uuid.UUID | None = None, path: str = "/") -> Row:
    now = datetime.now(UTC)
    return (
        site_id,
        now,
        now,
        event_id,
        42,
        path,
        "",
        "",
        "",
        "",
        "",
        "",
        None,
        "desktop",
        "Firefox",
        "Linux",
        False,
    )


async def stored(db: AsyncConnection[Any]) -> int:
    found = await (await db.execute("select count(*) from page_views")).fetchone()
    assert found is not None
    return int(found[0])


class CountingWriter:
    """A real writer that records the size of every batch it commits."""

    def __init__(self, inner: Writer) -> None:
        self.inner = inner
        self.name = inner.name
        self.batches: list[int] = []

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, rows: Sequence[Row]) -> int:
        self.batches.append(len(rows))
        return await self.inner.write(rows)


@pytest.fixture(params=["asyncpg", "psycopg", "hybrid"])
async def writer(
    request: pytest.FixtureRequest, database_url: str, db: AsyncConnection[Any]
) -> CountingWriter:
    inner: Writer = make_writer(request.param, database_url, 2)
    return CountingWriter(inner)


async def test_concurrent_submits_are_committed_in_few_batches(
    writer: CountingWriter, db: AsyncConnection[Any]
) -> None:
    sink = PageViewSink(writer, batch_size=500, max_pending=10_000, flushers=1)
    await sink.start()
    try:
        await asyncio.gather(*(sink.submit([row(path=f"/{i}")]) for i in range(300)))
        assert await stored(db) == 300, "every acknowledged row is committed before submit returns"
        assert sum(writer.batches) == 300
        assert len(writer.batches) < 300 / 5, f"group commit should batch, got {writer.batches}"
    finally:
        await sink.close()


async def test_batch_size_caps_one_copy(writer: CountingWriter, db: AsyncConnection[Any]) -> None:
    sink = PageViewSink(writer, batch_size=50, max_pending=10_000, flushers=2)
    await sink.start()
    try:
        await asyncio.gather(*(sink.submit([row()]) for _ in range(400)))
        assert max(writer.batches) <= 50
        assert await stored(db) == 400
    finally:
        await sink.close()


async def test_retried_event_ids_are_stored_once(writer: CountingWriter, db: AsyncConnection[Any]) -> None:
    sink = PageViewSink(writer, batch_size=100, max_pending=1000, flushers=1)
    await sink.start()
    event = uuid.uuid4()
    try:
        await asyncio.gather(*(sink.submit([row(event_id=event)]) for _ in range(5)))
        await sink.submit([row(event_id=event), row(event_id=event), row()])
        await sink.submit([row(site_id=2, event_id=event)])
        assert await stored(db) == 3  # one per (site, event id) plus the row without an id
    finally:
        await sink.close()


async def test_a_full_sink_refuses_instead_of_growing(database_url: str, db: AsyncConnection[Any]) -> None:
    gate = asyncio.Event()

    class SlowWriter(CountingWriter):
        async def write(self, rows: Sequence[Row]) -> int:
            await gate.wait()
            return await super().write(rows)

    sink = PageViewSink(SlowWriter(AsyncpgWriter(database_url, 1)), batch_size=10, max_pending=20, flushers=1)
    await sink.start()
    try:
        waiting = [asyncio.create_task(sink.submit([row()])) for _ in range(20)]
        await asyncio.sleep(0.05)
        with pytest.raises(SinkFullError) as refused:
            await sink.submit([row()])
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        gate.set()
        await asyncio.gather(*waiting)
        assert await stored(db) == 20
    finally:
        gate.set()
        await sink.close()


async def test_close_flushes_everything_accepted(database_url: str, db: AsyncConnection[Any]) -> None:
    sink = PageViewSink(
        AsyncpgWriter(database_url, 2), batch_size=7, max_pending=10_000, max_wait_s=0.01, flushers=1
    )
    await sink.start()
    submitted = [asyncio.create_task(sink.submit([row()])) for _ in range(100)]
    await asyncio.sleep(0)
    await sink.close()
    await asyncio.gather(*submitted)
    assert await stored(db) == 100
    with pytest.raises(ServiceUnavailableError):
        await sink.submit([row()])


async def test_a_failed_copy_fails_every_request_of_the_batch(
    database_url: str, db: AsyncConnection[Any]
) -> None:
    sink = PageViewSink(AsyncpgWriter(database_url, 1), batch_size=100, max_pending=1000, flushers=1)
    await sink.start()
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)  # no partition holds it: the COPY fails
    bad = (1, long_ago, long_ago, None, 1, "/", "", "", "", "", "", "", None, "desktop", "x", "y", False)
    try:
        results = await asyncio.gather(sink.submit([bad]), sink.submit([row()]), return_exceptions=True)
        assert any(isinstance(result, ServiceUnavailableError) for result in results)
        assert await stored(db) == sum(1 for result in results if result is None)
        await sink.submit([row()])  # the sink keeps working after a failed batch
    finally:
        await sink.close()
