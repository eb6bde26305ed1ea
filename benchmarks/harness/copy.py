"""The sink's writes measured in-process: its own writer classes, one connection, sequential writes
(COPYs, and the one-statement write a single view's batch takes).

The only module of the harness that imports the project's code (the pageviews domain's sink
writers); everything else talks to the server over HTTP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from app.domains.pageviews.rows import Row
from app.domains.pageviews.writers import COPY_FROM, AsyncpgWriter, PsycopgWriter, Writer
from benchmarks.harness import procfs
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
    ("asyncpg", 9, True),  # one statement: the size of a batch of single views under load
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
    driver: str,
    database_url: str,
    site: Site,
    batch: int,
    seconds: float,
    with_ids: bool,
    postmaster: int | None,
) -> Result:
    """Sequential ``Writer.write`` calls (claim ids, COPY, commit) through one connection of the
    sink's own writer class; only the writes are timed, not the making of the rows. CPU per row: this
    process's during the writes (the client), and PostgreSQL's over the whole case."""
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
        client_cpu = 0.0
        meter = procfs.CpuMeter(-1, postmaster)  # no server process group here: PostgreSQL's share only
        postgres_before = meter.sample()["postgres"]
        wall_deadline = time.monotonic() + 3 * seconds + 10
        while (sum(durations) < seconds or len(durations) < 3) and time.monotonic() < wall_deadline:
            if with_ids and durations:  # a repeated event id is dropped: every batch needs new ones
                rows = copy_rows(site.id, batch, with_ids)
            started, started_cpu = time.perf_counter(), time.process_time()
            written += await writer.write(rows)
            durations.append(time.perf_counter() - started)
            client_cpu += time.process_time() - started_cpu
        postgres_cpu = meter.sample()["postgres"] - postgres_before
    finally:
        await writer.close()
    stored = count_rows(database_url, site.id) - before
    elapsed = sum(durations)
    durations.sort()
    suffix = ", with event ids" if with_ids else ""
    how = "COPY" if batch >= COPY_FROM else "one statement"
    return Result(
        key=f"copy-{driver}-{batch}{'-ids' if with_ids else ''}",
        label=f"{how} {driver}, {batch:,} rows/batch{suffix} (in-process)",
        unit="rows/s",
        rate=written / elapsed,
        server="in-process",
        requests=len(durations),
        p50_ms=durations[len(durations) // 2] * 1000,
        p99_ms=durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1000,
        rows_acknowledged=written,
        rows_stored=stored,
        in_flight_bound=0,
        server_cpu_us=client_cpu / written * 1e6 if written else None,
        postgres_cpu_us=postgres_cpu / written * 1e6 if written and postmaster else None,
        detail={"batches": len(durations), "seconds_writing": elapsed},
    )


def run_copy_cases(database_url: str, site: Site, seconds: float, postmaster: int | None) -> list[Result]:
    print(f"  writes through the sink's writers: {len(CASES)} cases of {seconds:g}s", flush=True)
    return [
        asyncio.run(copy_case(driver, database_url, site, batch, seconds, with_ids, postmaster))
        for driver, batch, with_ids in CASES
    ]
