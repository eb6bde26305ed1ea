"""The page-view sink: group commit of concurrent requests into one binary COPY.

Requests hand their rows to ``submit`` and wait. A flusher takes everything pending (up to
``batch_size`` rows), writes it in one transaction (claim client event ids, then COPY) and only then
resolves the requests' futures: acknowledged means durable. A flusher starts the next batch as soon
as its previous one has committed (leader/follower), so throughput comes from batching while an
idle sink adds no delay; ``max_wait_s`` optionally lingers to fill small batches. Several flushers
(connections) overlap their commits. The sink is bounded: past ``max_pending`` rows ``submit``
refuses (503 + Retry-After) instead of growing memory. ``close`` flushes everything accepted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import structlog
from prometheus_client import Counter, Histogram

from app.core.errors import ServiceUnavailableError

log = structlog.get_logger("app.analytics.sink")

COLUMNS = (
    "site_id", "ts", "received_at", "event_id", "visitor_id", "path", "title", "referrer_host",
    "referrer_source", "utm_source", "utm_medium", "utm_campaign", "screen_width", "device", "browser",
    "os", "is_bot",
)  # fmt: skip
COPY_TYPES = (
    "int8", "timestamptz", "timestamptz", "uuid", "int8", "text", "text", "text", "text", "text", "text",
    "text", "int4", "text", "text", "text", "bool",
)  # fmt: skip
Row = tuple[
    int,
    datetime,
    datetime,
    uuid.UUID | None,
    int,
    str,
    str,
    str,
    str,
    str,
    str,
    str,
    int | None,
    str,
    str,
    str,
    bool,
]
# Retried sends: the first claim of (site, event id) wins, in the same transaction as the COPY.
CLAIM_EVENT_IDS = (
    "insert into page_view_event_ids (site_id, event_id) select * from unnest($1::bigint[], $2::uuid[]) "
    "on conflict do nothing returning site_id, event_id"
)

# Small batches (the usual case for single views under moderate load) go in one autocommit statement:
# one round trip instead of BEGIN, claim, COPY, COMMIT. The first row of each event id in the batch
# is kept, and only if this statement claimed the id.
SMALL_BATCH = 64
INSERT_SMALL_BATCH = f"""
with incoming as (
    select * from unnest(
        $1::int8[], $2::timestamptz[], $3::timestamptz[], $4::uuid[], $5::int8[], $6::text[], $7::text[],
        $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int4[], $14::text[], $15::text[],
        $16::text[], $17::bool[]
    ) with ordinality as r({", ".join(COLUMNS)}, n)
), claimed as (
    insert into page_view_event_ids (site_id, event_id)
    select distinct site_id, event_id from incoming where event_id is not null
    on conflict do nothing
    returning site_id, event_id
), firsts as (
    select distinct on (site_id, event_id) n from incoming where event_id is not null
    order by site_id, event_id, n
)
insert into page_views ({", ".join(COLUMNS)})
select {", ".join(COLUMNS)} from incoming i
where i.event_id is null
   or (i.n in (select n from firsts)
       and exists (select 1 from claimed c where c.site_id = i.site_id and c.event_id = i.event_id))
"""


def as_columns(rows: Sequence[Row]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


def inserted_count(status: str) -> int:
    """``INSERT 0 <n>`` → n."""
    return int(status.rsplit(" ", 1)[-1])


ROWS_WRITTEN = Counter("app_page_views_written", "Page views committed by the sink")
DUPLICATES = Counter("app_page_views_duplicates", "Page views dropped as retries of a stored event id")
BATCH_ROWS = Histogram(
    "app_page_view_batch_rows", "Rows per sink COPY", buckets=(1, 8, 32, 128, 512, 1024, 2048, 4096, 10000)
)
REFUSED = Counter("app_page_views_refused", "Page views refused because the sink was full")


class SinkFullError(ServiceUnavailableError):
    slug = "ingest-overloaded"
    title = "Ingest is overloaded"


class Writer(Protocol):
    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, rows: Sequence[Row]) -> int: ...


def keep_first_claims(rows: Sequence[Row], claimed: set[tuple[int, uuid.UUID]]) -> list[Row]:
    """Rows without an event id, and the first row of every event id this batch claimed."""
    kept: list[Row] = []
    for row in rows:
        event_id = row[3]
        if event_id is None:
            kept.append(row)
        elif (key := (row[0], event_id)) in claimed:
            claimed.discard(key)
            kept.append(row)
    return kept


class AsyncpgWriter:
    name = "asyncpg"

    def __init__(self, dsn: str, connections: int) -> None:
        self._dsn = dsn
        self._connections = connections
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=0, max_size=self._connections, command_timeout=30
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def write(self, rows: Sequence[Row]) -> int:
        if len(rows) < SMALL_BATCH:
            async with self._pool.acquire() as conn:
                return inserted_count(await conn.execute(INSERT_SMALL_BATCH, *as_columns(rows)))
        async with self._pool.acquire() as conn, conn.transaction():
            with_ids = [(row[0], row[3]) for row in rows if row[3] is not None]
            if with_ids:
                claimed = await conn.fetch(
                    CLAIM_EVENT_IDS, [s for s, _ in with_ids], [e for _, e in with_ids]
                )
                rows = keep_first_claims(rows, {(r[0], r[1]) for r in claimed})
            if rows:
                await conn.copy_records_to_table("page_views", records=rows, columns=COLUMNS)
        return len(rows)


class PsycopgWriter:
    name = "psycopg"

    def __init__(self, dsn: str, connections: int) -> None:
        self._dsn = dsn
        self._connections = connections
        self._pool: Any = None

    async def open(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        # Autocommit: a small batch is one statement (one round trip); large ones open a transaction.
        self._pool = AsyncConnectionPool(
            self._dsn, min_size=0, max_size=self._connections, open=False, kwargs={"autocommit": True}
        )
        await self._pool.open()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def write(self, rows: Sequence[Row]) -> int:
        from psycopg import AsyncRawCursor

        if len(rows) < SMALL_BATCH:
            async with self._pool.connection() as conn, AsyncRawCursor(conn) as cur:
                await cur.execute(INSERT_SMALL_BATCH, as_columns(rows))
                return cur.rowcount
        async with self._pool.connection() as conn, conn.transaction():
            with_ids = [(row[0], row[3]) for row in rows if row[3] is not None]
            if with_ids:
                async with AsyncRawCursor(conn) as cur:
                    await cur.execute(CLAIM_EVENT_IDS, ([s for s, _ in with_ids], [e for _, e in with_ids]))
                    rows = keep_first_claims(rows, {(r[0], r[1]) for r in await cur.fetchall()})
            if rows:
                cursor = conn.cursor()
                async with cursor.copy(
                    f"copy page_views ({', '.join(COLUMNS)}) from stdin (format binary)"
                ) as copy:
                    copy.set_types(list(COPY_TYPES))
                    for row in rows:
                        await copy.write_row(row)
        return len(rows)


class HybridWriter:
    """Each batch through the driver that measured faster for its size (benchmarks/run.py): asyncpg
    for the one-statement small batches (less client CPU per execute), psycopg for COPY (its binary
    COPY moved ~1.9x asyncpg's rows/s for 1,000-10,000 row batches)."""

    name = "hybrid"

    def __init__(self, dsn: str, connections: int) -> None:
        self.small = AsyncpgWriter(dsn, connections)
        self.large = PsycopgWriter(dsn, connections)

    async def open(self) -> None:
        await self.small.open()
        await self.large.open()

    async def close(self) -> None:
        await self.small.close()
        await self.large.close()

    async def write(self, rows: Sequence[Row]) -> int:
        return await (self.small if len(rows) < SMALL_BATCH else self.large).write(rows)


def make_writer(driver: str, dsn: str, connections: int) -> Writer:
    writers = {"asyncpg": AsyncpgWriter, "psycopg": PsycopgWriter, "hybrid": HybridWriter}
    return writers[driver](dsn, connections)


class _Group:
    __slots__ = ("future", "rows")

    def __init__(self, rows: Sequence[Row], future: asyncio.Future[None]) -> None:
        self.rows = rows
        self.future = future


class PageViewSink:
    def __init__(
        self, writer: Writer, *, batch_size: int, max_pending: int, max_wait_s: float = 0.0, flushers: int = 1
    ) -> None:
        self.writer = writer
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.max_wait_s = max_wait_s
        self._flusher_count = flushers
        self._queue: deque[_Group] = deque()
        self._pending_rows = 0  # accepted and not yet committed (queued or being written)
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._flushers: list[asyncio.Task[None]] = []

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    async def start(self) -> None:
        await self.writer.open()
        self._flushers = [
            asyncio.create_task(self._flush_loop(), name=f"page-view-flusher-{i}")
            for i in range(self._flusher_count)
        ]

    async def submit(self, rows: Sequence[Row]) -> None:
        """Return once ``rows`` are committed; raise if they could not be (nothing half-written)."""
        if self._closed:
            raise ServiceUnavailableError("The server is shutting down.", headers={"Retry-After": "1"})
        if self._pending_rows + len(rows) > self.max_pending:
            REFUSED.inc(len(rows))
            raise SinkFullError(
                "Too many page views are waiting to be written.", headers={"Retry-After": "1"}
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Group(rows, future))
        self._pending_rows += len(rows)
        self._queued_rows += len(rows)
        self._wake.set()
        await future  # cancelled with its request, the row is still written with its batch

    async def close(self) -> None:
        """Refuse new rows, write every accepted one, stop the flushers, close the writer."""
        self._closed = True
        self._wake.set()
        await asyncio.gather(*self._flushers, return_exceptions=True)
        await self.writer.close()

    def _take_batch(self) -> list[_Group]:
        groups: list[_Group] = []
        rows = 0
        while self._queue and (rows == 0 or rows + len(self._queue[0].rows) <= self.batch_size):
            group = self._queue.popleft()
            groups.append(group)
            rows += len(group.rows)
        self._queued_rows -= rows
        return groups

    async def _flush_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.max_wait_s and self._queued_rows < self.batch_size and not self._closed:
                await asyncio.sleep(self.max_wait_s)  # linger to fill a small batch
            groups = self._take_batch()
            if groups:
                await self._write(groups)

    async def _write(self, groups: list[_Group]) -> None:
        rows = [row for group in groups for row in group.rows]
        try:
            written = await self.writer.write(rows)
        except Exception as exc:
            log.error(
                "page_view_batch_failed", rows=len(rows), error=type(exc).__name__, detail=str(exc)[:300]
            )
            failure = ServiceUnavailableError(
                "The page views could not be stored; retry.", headers={"Retry-After": "1"}
            )
            for group in groups:
                if not group.future.done():
                    group.future.set_exception(failure)
            return
        finally:
            self._pending_rows -= len(rows)
        ROWS_WRITTEN.inc(written)
        DUPLICATES.inc(len(rows) - written)
        BATCH_ROWS.observe(len(rows))
        for group in groups:
            if not group.future.done():
                group.future.set_result(None)
