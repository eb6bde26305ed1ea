"""The event-id deduplication options of the sink's COPY path, measured in-process side by side.

``uv run python -m benchmarks.harness.dedup [--seconds 4] [--batch 1000] [--data-dir DIR]``

Each option writes sequential batches of page views (with event ids) through one psycopg connection,
binary COPY, one transaction per batch, into the real schema (migrations applied) on the embedded
PostgreSQL under ``--data-dir`` (default ``.data/dedup``). It prints rows/s, the client's CPU per
row and the wall time per row. Run it twice and compare the options within one run: on a shared
machine the absolute numbers move with the load; the ranking is what counts.

- ``none``: no event ids, nothing claimed (the ceiling);
- ``claims``: what the sink does: COPY the (site, event id) claims into ``page_view_event_ids``
  (primary key), then COPY the rows, in one transaction;
- ``claims-ordered``: the same with time-ordered ids (UUIDv7-like), so index inserts land in order;
- ``claims-array``: the claims as one ``INSERT ... SELECT unnest($2::uuid[])`` instead of a COPY;
- ``staging``: COPY into a temporary table, then one ``INSERT ... ON CONFLICT DO NOTHING`` into the
  claims and one ``INSERT ... SELECT`` of the claimed rows;
- ``partition-unique``: no claim table: a unique index (site_id, event_id) on each daily partition of
  ``page_views`` itself (not a complete answer: a retry whose ``ts`` falls on another day is not
  caught, see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection, AsyncRawCursor

from app.core.embedded import ensure_database, postgres_url, release_all, start_postgres
from app.core.migrate import migrate
from app.domains.pageviews.rows import COLUMNS, COPY_TYPES, Row

COLUMN_LIST = ", ".join(COLUMNS)
Write = Callable[[AsyncConnection[Any], AsyncRawCursor[Any], list[Row]], Awaitable[None]]


def ordered_id() -> uuid.UUID:
    """A UUIDv7-like id: milliseconds since the epoch first, then random bits."""
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (random_bits & ((1 << 76) - 1))
    return uuid.UUID(int=value & ~(0xC << 60) | (0x8 << 60))


def make_rows(site_id: int, count: int, ids: Callable[[], uuid.UUID | None]) -> list[Row]:
    now = datetime.now(UTC)
    return [
        (site_id, now, now, ids(), 1_000_000 + i, f"/p/{i % 100}", "www.google.com", "Google", "bench",
         "", "", 1440, "desktop", "Chrome", "Linux", False)
        for i in range(count)
    ]  # fmt: skip


async def copy_rows(cursor: AsyncRawCursor[Any], table: str, rows: list[Row]) -> None:
    async with cursor.copy(f"copy {table} ({COLUMN_LIST}) from stdin (format binary)") as copy:
        copy.set_types(list(COPY_TYPES))
        for row in rows:
            await copy.write_row(row)


async def no_ids(conn: AsyncConnection[Any], cursor: AsyncRawCursor[Any], rows: list[Row]) -> None:
    async with conn.transaction():
        await copy_rows(cursor, "page_views", rows)


async def claims(conn: AsyncConnection[Any], cursor: AsyncRawCursor[Any], rows: list[Row]) -> None:
    async with conn.transaction():
        copy_claims = "copy page_view_event_ids (site_id, event_id) from stdin (format binary)"
        async with cursor.copy(copy_claims) as copy:
            copy.set_types(["int8", "uuid"])
            for row in rows:
                await copy.write_row((row[0], row[3]))
        await copy_rows(cursor, "page_views", rows)


async def claims_array(conn: AsyncConnection[Any], cursor: AsyncRawCursor[Any], rows: list[Row]) -> None:
    async with conn.transaction():
        await cursor.execute(
            "insert into page_view_event_ids (site_id, event_id) select $1, unnest($2::uuid[])",
            (rows[0][0], [row[3] for row in rows]),
        )
        await copy_rows(cursor, "page_views", rows)


async def staging(conn: AsyncConnection[Any], cursor: AsyncRawCursor[Any], rows: list[Row]) -> None:
    async with conn.transaction():
        await copy_rows(cursor, "dedup_stage", rows)
        await cursor.execute(
            f"""with claimed as (
                insert into page_view_event_ids (site_id, event_id)
                select site_id, event_id from dedup_stage where event_id is not null
                on conflict do nothing returning site_id, event_id)
            insert into page_views ({COLUMN_LIST}) select {COLUMN_LIST} from dedup_stage s
            where s.event_id is null or (s.site_id, s.event_id) in (select site_id, event_id from claimed)"""
        )


OPTIONS: dict[str, tuple[Write, Callable[[], uuid.UUID | None]]] = {
    "none": (no_ids, lambda: None),
    "claims": (claims, uuid.uuid4),
    "claims-ordered": (claims, ordered_id),
    "claims-array": (claims_array, uuid.uuid4),
    "staging": (staging, uuid.uuid4),
    "partition-unique": (no_ids, uuid.uuid4),
}


async def prepare(cursor: AsyncRawCursor[Any], option: str) -> None:
    await cursor.execute("truncate page_views, page_view_event_ids")
    await cursor.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    await cursor.execute(
        "create temp table if not exists dedup_stage (like page_views) on commit delete rows"
    )
    today = datetime.now(UTC).date()
    for day in (today - timedelta(days=1), today, today + timedelta(days=1)):
        partition = f"page_views_{day:%Y%m%d}"
        await cursor.execute(f"drop index if exists {partition}_event_unique")
        if option == "partition-unique":
            await cursor.execute(
                f"create unique index {partition}_event_unique on {partition} (site_id, event_id)"
                " where event_id is not null"
            )


async def measure(database_url: str, site_id: int, option: str, batch: int, seconds: float) -> str:
    write, ids = OPTIONS[option]
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = AsyncRawCursor(conn)
        await prepare(cursor, option)
        await write(conn, cursor, make_rows(site_id, batch, ids))  # warm-up
        rows_written, wall, cpu = 0, 0.0, 0.0
        while wall < seconds:
            rows = make_rows(site_id, batch, ids)
            started, started_cpu = time.perf_counter(), time.process_time()
            await write(conn, cursor, rows)
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
            rows_written += len(rows)
        await prepare(cursor, "none")  # drops the experiment's indexes
    return (
        f"{option:18} {rows_written / wall:>9,.0f} rows/s   client CPU {cpu / rows_written * 1e6:5.2f} µs/row"
        f"   wall {wall / rows_written * 1e6:6.2f} µs/row"
    )


async def measure_all(database_url: str, batch: int, seconds: float) -> None:
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = AsyncRawCursor(conn)
        await cursor.execute(
            "insert into users (email, display_name, password_hash) values ($1, 'Dedup', 'x') returning id",
            (f"dedup-{uuid.uuid4().hex[:12]}@example.com",),
        )
        owner = await cursor.fetchone()
        assert owner is not None
        await cursor.execute(
            "insert into sites (owner_id, domain, ingest_key) values ($1, 'dedup.example', $2) returning id",
            (owner[0], uuid.uuid4().hex),
        )
        site = await cursor.fetchone()
        assert site is not None
    for option in OPTIONS:
        print(await measure(database_url, int(site[0]), option, batch, seconds), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="writing time per option")
    parser.add_argument("--batch", type=int, default=1000, help="rows per COPY transaction")
    parser.add_argument("--data-dir", type=Path, default=Path(".data/dedup"))
    args = parser.parse_args()
    server = start_postgres(args.data_dir)
    try:
        ensure_database(server, "dedup")
        database_url = postgres_url(server, "dedup")
        migrate(database_url)
        print(f"load average before: {os.getloadavg()[0]:.2f}; {args.batch} rows per batch", flush=True)
        asyncio.run(measure_all(database_url, args.batch, args.seconds))
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        release_all()


if __name__ == "__main__":
    main()
