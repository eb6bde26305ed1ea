"""What a report costs in zones whose offset is not a whole hour, against UTC.

    uv run python -m benchmarks.report_zones                        # 9,600 views a day, 3 rounds
    uv run python -m benchmarks.report_zones --views-per-day 30000 --rounds 5

Generates (once per data directory and volume) one site with ``--views-per-day`` views a day over the
last 33 days (four views a visitor, its id another on each UTC day, as the daily salt makes it), rolls
them up with the rollup job (``ReportService.rollup``: views, dimensions, visitors, visits), then
times the series of the last 31 local days (hour and day buckets), the summary and the entry pages'
first rows in UTC, Asia/Kolkata (+05:30) and Asia/Kathmandu (+05:45), each the best of ``--rounds``
(the statements ``app.db.reports`` runs, no cache). The table gives each zone's time and its ratio to
UTC's in the same run. No UTC hour lies inside a local hour of those zones: before the rollups kept
quarter hours (a5a5360) an hourly series there read every view of its period raw (2.47 s in Kolkata
against 0.29 s in UTC, on this data set, on the 2-core machine of 2026-12-05).

Data under ``--data-dir`` (default ``.data/bench-reports``).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from app.config import Settings
from app.core.services import open_services
from app.db import pageviews as pageview_queries
from app.db import reports as queries
from app.domains.reports.services import OTHER_VALUE, RANKED_ROWS, ReportService
from app.modules import MODULES
from benchmarks.harness.provision import migrated_embedded

DOMAIN = "zones.bench.example"
DAYS = 31
ZONES = ("UTC", "Asia/Kolkata", "Asia/Kathmandu")
GENERATE = """
insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)
select %(site)s, t, t, (i / 4) * 1000 + (t at time zone 'UTC')::date - date '2000-01-01',
    '/page-' || (i %% 40), 'desktop', 'firefox', 'linux'
from (
    select i, %(start)s::timestamptz + i * (86400.0 / %(per_day)s) * interval '1 second' as t
    from generate_series(0, %(count)s - 1) as i
) generated
where t < %(end)s
"""


def say(message: str) -> None:
    print(f"report-zones: {message}", flush=True)


def ensure_data(settings: Settings, per_day: int, now: datetime) -> int:
    """The site's id. Its views and rollups are generated again unless the day before ``now`` holds
    exactly ``per_day`` of them (the generated set does, up to ``now``: same volume, same hour)."""
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        found = conn.execute(
            "select s.id, (select count(*) from page_views p where p.site_id = s.id"
            " and p.ts >= %(now)s - interval '1 day' and p.ts < %(now)s)"
            " from sites s where s.domain = %(domain)s",
            {"now": now, "domain": DOMAIN},
        ).fetchone()
        if found is not None and found[1] == per_day:
            say(f"data set present ({per_day:,} views a day, up to {now:%H:%M} UTC): reused")
            return int(found[0])
        site = new_site(conn, DOMAIN)
    start = now - timedelta(days=DAYS + 2)
    say(f"generating {per_day * (DAYS + 2):,} views and rolling them up ...")
    started = time.monotonic()
    asyncio.run(_generate(settings, site, per_day, start, now))
    say(f"generated and rolled up in {time.monotonic() - started:.0f} s")
    return site


def new_site(conn: psycopg.Connection[Any], domain: str) -> int:
    """The id of a new site of ``domain``, its owner ``owner@<domain>``; the previous one, every view
    and the rollups' watermark gone (a benchmark's data set, generated again)."""
    conn.execute("delete from sites where domain = %s", (domain,))
    conn.execute("truncate page_views, analytics_rollup_state")
    owner = conn.execute(
        "insert into users (email, display_name, password_hash, role) values (%s, 'bench', 'x', 'member')"
        " on conflict (email) do update set display_name = excluded.display_name returning id",
        (f"owner@{domain}",),
    ).fetchone()
    assert owner is not None
    site = conn.execute(
        "insert into sites (owner_id, domain, ingest_key, timezone) values (%s, %s, %s, 'UTC') returning id",
        (owner[0], domain, secrets.token_urlsafe(24)),
    ).fetchone()
    assert site is not None
    return int(site[0])


async def roll_up(settings: Settings, now: datetime) -> None:
    """The rollup job up to ``now`` (``ReportService.rollup``), then fresh statistics."""
    assert settings.database_url
    async with open_services(settings, MODULES) as services:
        await services[ReportService].rollup(now=now)
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute("vacuum analyze")


async def _generate(settings: Settings, site: int, per_day: int, start: datetime, now: datetime) -> None:
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await pageview_queries.ensure_partitions(
            conn, from_day=start.date() - timedelta(days=1), days=DAYS + 5
        )
        count = per_day * (DAYS + 2)
        await conn.execute(
            GENERATE, {"site": site, "start": start, "per_day": per_day, "count": count, "end": now}
        )
    await roll_up(settings, now)


async def first_entry_pages(
    conn: psycopg.AsyncConnection[Any], site: int, start: datetime, end: datetime
) -> list[queries.ReportEntryPagesRow]:
    """The entry pages' first page (the rows a cached report keeps), as ``app.db.reports`` reads it."""
    return await queries.report_entry_pages(
        conn,
        received_before=None,
        other=OTHER_VALUE,
        after_visits=None,
        after_path=None,
        row_limit=RANKED_ROWS + 1,
        site_id=site,
        range_from=start,
        range_to=end,
    )


async def best_of(rounds: int, run: Callable[[], Awaitable[Any]]) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        await run()
        best = min(best, time.perf_counter() - started)
    return best


async def measure(database_url: str, site: int, now: datetime, rounds: int) -> dict[tuple[str, str], float]:
    timings: dict[tuple[str, str], float] = {}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for tz in ZONES:
            today: date = now.astimezone(ZoneInfo(tz)).date()
            bounds = await (
                await conn.execute(
                    "select local_day_start(%s::date, %s), local_day_start(%s::date, %s)",
                    (today - timedelta(days=DAYS), tz, today, tz),
                )
            ).fetchone()
            assert bounds is not None
            span = {"site_id": site, "range_from": bounds[0], "range_to": bounds[1]}
            for unit, step in (("hour", timedelta(minutes=15)), ("day", timedelta(hours=1))):
                series = partial(queries.report_timeseries, conn, unit=unit, tz=tz, step=step, **span)
                timings[tz, f"series by {unit}"] = await best_of(rounds, series)
            timings[tz, "summary"] = await best_of(rounds, partial(queries.report_summary, conn, **span))
            entry_pages = partial(first_entry_pages, conn, site, bounds[0], bounds[1])
            timings[tz, "entry pages"] = await best_of(rounds, entry_pages)
    return timings


def table(timings: dict[tuple[str, str], float], per_day: int) -> str:
    reports = list(dict.fromkeys(report for _, report in timings))
    lines = [
        f"{DAYS} local days, {per_day:,} views a day (best of the rounds, seconds; ratio to UTC in this run)",
        "",
        "| report | " + " | ".join(ZONES) + " |",
        "|---|" + "---:|" * len(ZONES),
    ]
    for report in reports:
        utc = timings["UTC", report]
        cells = [
            f"{timings[tz, report]:.2f}" + ("" if tz == "UTC" else f" ({timings[tz, report] / utc:.2f}x)")
            for tz in ZONES
        ]
        lines.append(f"| {report} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".data/bench-reports"))
    parser.add_argument("--views-per-day", type=int, default=9_600)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with migrated_embedded(options.data_dir) as settings:
        assert settings.database_url
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        site = ensure_data(settings, options.views_per_day, now)
        timings = asyncio.run(measure(settings.database_url, site, now, options.rounds))
        print(table(timings, options.views_per_day))


if __name__ == "__main__":
    main()
