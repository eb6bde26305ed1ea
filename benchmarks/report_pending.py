"""What a report costs on a busy site: its views of the last day rolled up, then a burst not yet.

    uv run python -m benchmarks.report_pending            # 1,000,000 views a day, 60,000 pending
    uv run python -m benchmarks.report_pending --views-per-day 200000 --pending 5000

Generates (again on every run: the data must end now) one site with ``--views-per-day`` views over the
last 24 hours, rolls them up with the rollup job, and times the summary, the daily series, the entry
pages and the paths of the last 7 UTC days, each the best of ``--rounds`` (the statements
``app.db.reports`` runs, no cache): with nothing pending, then with ``--pending`` views received
after the rollup (a burst). Every report finds the site's views not rolled up yet among those it
received in the last 24 hours (a late view's ts is at most 24 hours before its receipt).

Each case runs twice: with the planner's own plan, and with bitmap scans off. On one site the
planner finds those views through the BRIN index on ``received_at``, which covers every site's
views received since the watermark; on a server with many sites ``site_id`` is selective and it reads
them through ``(site_id, ts)``, which the second column shows. Data under ``--data-dir`` (default
``.data/bench-pending``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from app.config import Settings
from app.db import pageviews as pageview_queries
from app.db import reports as queries
from app.domains.reports.services import RANKED_ROWS
from benchmarks.harness.provision import migrated_embedded
from benchmarks.report_zones import best_of, first_entry_pages, new_site, roll_up

DOMAIN = "pending.bench.example"
GENERATE = """
insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)
select %(site)s, t, t, hashint8(i / 4) %% 1000000000, '/page-' || (i %% 40), 'desktop', 'firefox', 'linux'
from generate_series(0, %(count)s - 1) as i,
    lateral (select %(start)s::timestamptz + i * (interval '24 hours' / %(count)s)) as g (t)
"""
BURST = """
insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)
select %(site)s, %(now)s::timestamptz - i * interval '3 milliseconds', %(now)s,
    hashint8(i / 2 + %(per_day)s / 5) %% 1000000000, '/burst-' || (i %% 50), 'desktop', 'firefox', 'linux'
from generate_series(0, %(count)s - 1) as i
"""


def say(message: str) -> None:
    print(f"report-pending: {message}", flush=True)


async def generate(settings: Settings, per_day: int, now: datetime) -> int:
    """The new site's id, its views of the 24 hours before the last quarter hour rolled up."""
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True) as setup:
        site = new_site(setup, DOMAIN)
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await pageview_queries.ensure_partitions(conn, from_day=(now - timedelta(days=8)).date(), days=11)
        start = now - timedelta(hours=24, minutes=15)
        await conn.execute(GENERATE, {"site": site, "start": start, "count": per_day})
    await roll_up(settings, now)
    return site


async def measure(database_url: str, site: int, now: datetime, rounds: int) -> dict[str, float]:
    """The best time of each report, in the connection's current state."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - timedelta(days=6), today + timedelta(days=1)
    reports: dict[str, Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]] = {
        "summary": lambda conn: queries.report_summary(conn, site_id=site, range_from=start, range_to=end),
        "series by day": lambda conn: queries.report_timeseries(
            conn, unit="day", tz="UTC", step=timedelta(hours=1), site_id=site, range_from=start, range_to=end
        ),
        "entry pages": lambda conn: first_entry_pages(conn, site, start, end),
        "paths": lambda conn: queries.report_breakdown(
            conn,
            dimension="path",
            skip_empty=True,
            received_before=None,
            after_views=None,
            after_value=None,
            row_limit=RANKED_ROWS + 1,
            site_id=site,
            range_from=start,
            range_to=end,
        ),
    }
    timings: dict[str, float] = {}
    for plan in ("planner's plan", "bitmap scans off"):
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            if plan == "bitmap scans off":
                await conn.execute("set enable_bitmapscan = off")
            for name, report in reports.items():
                timings[f"{name}|{plan}"] = await best_of(rounds, partial(report, conn))
    return timings


async def run(settings: Settings, per_day: int, pending: int, rounds: int) -> str:
    assert settings.database_url
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    say(f"generating {per_day:,} views and rolling them up ...")
    started = time.monotonic()
    site = await generate(settings, per_day, now)
    say(f"generated and rolled up in {time.monotonic() - started:.0f} s")
    quiet = await measure(settings.database_url, site, now, rounds)
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute(BURST, {"site": site, "now": now, "count": pending, "per_day": per_day})
        await conn.execute("analyze page_views")
        found = await (
            await conn.execute("select count(*) from page_views where received_at >= analytics_watermark()")
        ).fetchone()
    assert found is not None
    burst = await measure(settings.database_url, site, now, rounds)
    lines = [
        f"{per_day:,} views over the last day, rolled up; then {found[0]:,} pending"
        " (best of the rounds, seconds; 7 UTC days)",
        "",
        "| report | nothing pending | nothing pending, bitmap scans off | burst | burst, bitmap scans off |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(key.split("|")[0] for key in quiet):
        cells = [
            f"{timings[f'{name}|{plan}']:.2f}"
            for timings in (quiet, burst)
            for plan in ("planner's plan", "bitmap scans off")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".data/bench-pending"))
    parser.add_argument("--views-per-day", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with migrated_embedded(options.data_dir) as settings:
        print(asyncio.run(run(settings, options.views_per_day, options.pending, options.rounds)))


if __name__ == "__main__":
    main()
