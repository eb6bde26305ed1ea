"""Reports the cache does not hold are computed in turns (``app/domains/reports/turns.py``).

The neighbour review: one member asking for their own site's reports uncached (another zone each
time misses the cache), 24 at once and well within the rate limit, held most of the pool's
connections for seconds each; every other user's requests, the outbox relay and the cron jobs waited
out ``DATABASE_TIMEOUT_S`` and failed with 503.

Each test holds ``page_views`` under an exclusive lock, so that a report computing waits on it,
visibly (``pg_stat_activity``), for as long as the test wants.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.db.models import UserRole
from app.db.reports import REPORT_SUMMARY, REPORT_TIMESERIES
from tests.factories import Actor, assert_problem, make_site, make_user, scalar, serve_in_loop, wait_until

ZONES = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York", "Australia/Sydney", "Africa/Cairo"]
"""A zone per request: each is another cache key, so each request computes its report."""
GENEROUS = {"rate_limit_default_per_minute": 100_000}


@asynccontextmanager
async def page_views_locked(database_url: str) -> AsyncIterator[None]:
    """``page_views`` locked exclusively until the block ends: a report reading it waits."""
    async with await psycopg.AsyncConnection.connect(database_url) as locker:
        await locker.execute("lock table page_views in access exclusive mode")
        yield
        await locker.commit()


async def computing(db: AsyncConnection[Any], query: str) -> int:
    """How many reports of ``query`` (its SQL, told apart by its start) wait for the lock now."""
    await db.execute("select pg_stat_clear_snapshot()")
    return int(
        await scalar(
            db,
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and wait_event_type = 'Lock' and left(query, 80) = left(%s, 80)",
            query,
        )
    )


def ask(
    client: httpx.AsyncClient, who: Actor, site_id: int, report: str, tz: str
) -> asyncio.Task[httpx.Response]:
    return asyncio.ensure_future(
        client.get(f"/api/sites/{site_id}/{report}", params={"tz": tz}, headers=who.headers)
    )


async def test_reports_waiting_on_the_database_leave_the_pool_to_everyone_else(
    settings: Settings, database_url: str, db: AsyncConnection[Any]
) -> None:
    async with serve_in_loop(settings, **GENEROUS, database_pool_max=4, database_timeout_s=30) as served:
        owner, other = await make_user(db, served.app), await make_user(db, served.app)
        site = await make_site(db, owner)
        async with page_views_locked(database_url):
            reports = [ask(served.client, owner, site.id, "summary", tz) for tz in ZONES]

            async def one_computing() -> bool:
                return await computing(db, REPORT_SUMMARY) >= 1

            await wait_until(one_computing, 30, "a report computes")
            projects = await served.client.get("/api/projects", headers=other.headers)
            assert projects.status_code == 200, projects.text
            assert await computing(db, REPORT_SUMMARY) == 1  # a quarter of the pool of 4
            assert not any(report.done() for report in reports)
        answers = await asyncio.gather(*reports)
    assert [answer.status_code for answer in answers] == [200] * len(ZONES)


async def test_one_accounts_reports_do_not_hold_back_anothers(
    settings: Settings, database_url: str, db: AsyncConnection[Any]
) -> None:
    async with serve_in_loop(
        settings,
        **GENEROUS,
        database_pool_max=4,
        database_timeout_s=30,
        report_loads_max=3,
        report_loads_per_account=1,
    ) as served:
        busy, next_reader = await make_user(db, served.app), await make_user(db, served.app)
        busy_site, next_site = await make_site(db, busy), await make_site(db, next_reader)
        async with page_views_locked(database_url):
            queued = [ask(served.client, busy, busy_site.id, "summary", tz) for tz in ZONES[:3]]

            async def busy_computing() -> bool:
                return await computing(db, REPORT_SUMMARY) >= 1

            await wait_until(busy_computing, 30, "the busy reader's first report computes")
            theirs = ask(served.client, next_reader, next_site.id, "timeseries", "UTC")

            async def theirs_computing() -> bool:
                return await computing(db, REPORT_TIMESERIES) == 1

            await wait_until(theirs_computing, 30, "the next reader's report computes")
            assert await computing(db, REPORT_SUMMARY) == 1
        answers = await asyncio.gather(*queued, theirs)
    assert [answer.status_code for answer in answers] == [200] * 4


async def test_a_reader_who_joins_another_accounts_waiting_report_is_not_refused_for_it(
    settings: Settings, database_url: str, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The owner's second report waits for the owner's one turn; an administrator asking for the same
    report joins that computation (the cache's single flight). When the owner's wait runs out, the 429
    is the owner's: the administrator's report is computed under the administrator's own turn (a
    review found the owner's 429 answered to the administrator too)."""
    async with serve_in_loop(
        settings,
        **GENEROUS,
        database_pool_max=8,
        database_timeout_s=3,
        report_loads_max=3,
        report_loads_per_account=1,
    ) as served:
        owner, admin = await make_user(db, served.app), await make_user(db, served.app, UserRole.ADMIN)
        site = await make_site(db, owner)
        async with page_views_locked(database_url):
            first = ask(served.client, owner, site.id, "summary", "UTC")

            async def first_computing() -> bool:
                return await computing(db, REPORT_SUMMARY) == 1

            await wait_until(first_computing, 30, "the owner's first report computes")
            second = ask(served.client, owner, site.id, "summary", "Asia/Tokyo")

            async def second_loading() -> bool:  # its computation began, and waits for a turn
                return [key async for key in valkey.scan_iter(match="*summary*Asia/Tokyo*:lock")] != []

            await wait_until(second_loading, 30, "the owner's second report waits for its turn")
            joined = ask(served.client, admin, site.id, "summary", "Asia/Tokyo")
            assert_problem(await second, 429, "report-loads-in-flight")

            async def both_computing() -> bool:
                return await computing(db, REPORT_SUMMARY) == 2

            await wait_until(both_computing, 30, "the administrator's report computes")
        answers = await asyncio.gather(first, joined)
    assert [answer.status_code for answer in answers] == [200, 200]


async def test_of_the_readers_who_joined_a_refused_report_each_meets_only_its_own_refusal(
    settings: Settings, database_url: str, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Two administrators join the owner's report, which waits past the owner's turn. The first, whose
    own turn is taken too, is refused for itself; the second, whose turn is free, computes it (a review
    found the second joining the first's new computation and meeting the first's 429)."""
    async with serve_in_loop(
        settings,
        **GENEROUS,
        database_pool_max=10,
        database_timeout_s=3,
        report_loads_max=5,
        report_loads_per_account=1,
    ) as served:
        owner = await make_user(db, served.app)
        busy_admin, free_admin = [await make_user(db, served.app, UserRole.ADMIN) for _ in range(2)]
        site = await make_site(db, owner)
        async with page_views_locked(database_url):
            holding = [
                ask(served.client, owner, site.id, "summary", "UTC"),
                ask(served.client, busy_admin, site.id, "summary", "Asia/Tokyo"),
            ]

            async def both_computing() -> bool:
                return await computing(db, REPORT_SUMMARY) == 2

            await wait_until(both_computing, 30, "the owner's and the first administrator's reports compute")
            refused = ask(served.client, owner, site.id, "summary", "Europe/Paris")

            async def refused_loading() -> bool:
                return [key async for key in valkey.scan_iter(match="*summary*Europe/Paris*:lock")] != []

            await wait_until(refused_loading, 30, "the owner's second report waits for its turn")
            busy = ask(served.client, busy_admin, site.id, "summary", "Europe/Paris")
            free = ask(served.client, free_admin, site.id, "summary", "Europe/Paris")
            assert_problem(await refused, 429, "report-loads-in-flight")
            assert_problem(await busy, 429, "report-loads-in-flight")

            async def three_computing() -> bool:
                return await computing(db, REPORT_SUMMARY) == 3

            await wait_until(three_computing, 30, "the second administrator's report computes")
        answers = await asyncio.gather(*holding, free)
    assert [answer.status_code for answer in answers] == [200, 200, 200]


async def test_a_report_that_waits_too_long_for_its_turn_is_a_429_or_a_503(
    settings: Settings, database_url: str, db: AsyncConnection[Any]
) -> None:
    async with serve_in_loop(
        settings,
        **GENEROUS,
        database_pool_max=4,
        database_timeout_s=1,
        report_loads_max=2,
        report_loads_per_account=1,
    ) as served:
        first, second, third = [await make_user(db, served.app) for _ in range(3)]
        sites = [await make_site(db, user) for user in (first, second, third)]
        async with page_views_locked(database_url):
            held = [
                ask(served.client, user, site.id, "summary", "UTC")
                for user, site in zip((first, second), sites, strict=False)
            ]

            async def both_computing() -> bool:
                return await computing(db, REPORT_SUMMARY) == 2

            await wait_until(both_computing, 30, "two reports compute")
            own_turns_taken = await served.client.get(
                f"/api/sites/{sites[0].id}/summary", params={"tz": "Asia/Tokyo"}, headers=first.headers
            )
            every_turn_taken = await served.client.get(
                f"/api/sites/{sites[2].id}/summary", params={"tz": "UTC"}, headers=third.headers
            )
        answers = await asyncio.gather(*held)
    assert_problem(own_turns_taken, 429, "report-loads-in-flight")
    assert_problem(every_turn_taken, 503, "reports-busy")
    assert own_turns_taken.headers["Retry-After"] == every_turn_taken.headers["Retry-After"] == "2"
    assert [answer.status_code for answer in answers] == [200, 200]


async def test_a_report_cut_by_the_statement_timeout_says_so(
    settings: Settings, database_url: str, db: AsyncConnection[Any]
) -> None:
    """A 503 of a statement timeout named no conflict with another request (it said so: a review)."""
    async with serve_in_loop(settings, **GENEROUS, statement_timeout_ms=200) as served:
        owner = await make_user(db, served.app)
        site = await make_site(db, owner)
        async with page_views_locked(database_url):
            cut = await served.client.get(f"/api/sites/{site.id}/summary", headers=owner.headers)
    assert_problem(cut, 503)
    assert "longer than the database allows" in cut.json()["detail"]
    assert cut.headers["Retry-After"] == "5"
