"""The sink's COPY measured in-process: its own writer classes, one connection, sequential writes.

The only module of the harness that imports the project's code (the pageviews domain's sink
writers); everything else talks to the server over HTTP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from app.domains.pageviews.rows import Row
from app.domains.pageviews.writers import AsyncpgWriter, PsycopgWriter, Writer
from benchmarks.harness.model import Result
from benchmarks.harness.provision import Site, count_rows

# (driver, rows per batch, with event ids)
CASES = (
    ("asyncpg", 1_000, False),
    ("asyncpg", 10_000, False),
    ("psycopg", 1_000, False),
    ("psycopg", 10_000, False),
    ("asyncpg", 1_000, True),
    ("psycopg", 1_000, True),
)


def copy_rows(site_id: int, count: int, with_ids: bool) -> list[Row]:
    now = datetime.now(UTC)
    return [
        (
            site_id,
            now,
            now,
            uuid.uuid4() if with_ids else None,
            1_000_000 + i,
            f"/p/{i % 100}",
            "Bench page",
            "www.google.com",
            "Google",
            "bench",
            "",
            "",
            1440,
            "desktop",
            "Chrome",
            "Linux",
            False,
        )
        for i in range(count)
    ]


async def copy_case(
    driver: str, database_url: str, site: Site, batch: int, seconds: float, with_ids: bool
) -> Result:
    """Sequential ``Writer.write`` calls (claim ids, COPY, commit) through one connection of the
    sink's own writer class; only the writes are timed, not the making of the rows."""
    deadline = 60.0  # far above any batch here: a bench run is never cut short by the write deadline
    writer: Writer = (
        AsyncpgWriter(database_url, 1, deadline)
        if driver == "asyncpg"
        else PsycopgWriter(database_url, 1, deadline)
    )
    await writer.open()
    try:
        await writer.write(copy_rows(site.id, batch, with_ids))  # warm-up: connection, type cache
        before = count_rows(database_url, site.id)
        rows = copy_rows(site.id, batch, with_ids)
        written = 0
        durations: list[float] = []
        wall_deadline = time.monotonic() + 3 * seconds + 10
        while (sum(durations) < seconds or len(durations) < 3) and time.monotonic() < wall_deadline:
            if with_ids and durations:  # a repeated event id is dropped: every batch needs new ones
                rows = copy_rows(site.id, batch, with_ids)
            started = time.perf_counter()
            written += await writer.write(rows)
            durations.append(time.perf_counter() - started)
    finally:
        await writer.close()
    stored = count_rows(database_url, site.id) - before
    elapsed = sum(durations)
    durations.sort()
    suffix = ", with event ids" if with_ids else ""
    return Result(
        key=f"copy-{driver}-{batch}{'-ids' if with_ids else ''}",
        label=f"COPY {driver}, {batch:,} rows/batch{suffix} (in-process)",
        unit="rows/s",
        rate=written / elapsed,
        server="in-process",
        requests=len(durations),
        p50_ms=durations[len(durations) // 2] * 1000,
        p99_ms=durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1000,
        rows_acknowledged=written,
        rows_stored=stored,
        in_flight_bound=0,
        detail={"batches": len(durations), "seconds_writing": elapsed},
    )


def run_copy_cases(database_url: str, site: Site, seconds: float) -> list[Result]:
    print(f"  COPY through the sink's writers: {len(CASES)} cases of {seconds:g}s", flush=True)
    return [
        asyncio.run(copy_case(driver, database_url, site, batch, seconds, with_ids))
        for driver, batch, with_ids in CASES
    ]
