"""A PostgreSQL outage seen only by a worker: its jobs fail with the connection refused and its flush
fails. The worker tells Telegram while PostgreSQL is down (``outage.py``) and, once it is back, the
jobs' failures are the outage's one ``unavailable`` group (one alert), not one ``job`` group per job.

PostgreSQL is made unreachable for the monitoring service only (``database_down``); Valkey and the
fake Telegram stay real.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout
from saq.job import Job, Status
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import database_down as database_down_error
from app.domains.monitoring.services import MonitoringService
from tests.fakes.telegram import FakeTelegramServer, serve_fake_telegram
from tests.functional.test_monitoring_alerts import PRIVATE_CHAT, TOKEN, with_telegram
from tests.functional.test_monitoring_groups import open_monitoring
from tests.functional.test_monitoring_outage import (
    database_down,
    failing_flushes,
    notifier_for,
    outage_aggregate,
    texts,
)


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


JOBS = ("record_activities", "reserve_order", "refresh_github_profile", "send_report")


def finish_failed_job(service: MonitoringService, name: str, exc: BaseException) -> None:
    """A job's last attempt failing with ``exc``, as SAQ's hooks report it."""
    job = Job(function=name, key=f"key-{name}", attempts=5, retries=5)
    job.status = Status.FAILED
    ctx: dict[str, Any] = {"job": job}
    service.job_started(ctx)
    try:
        raise exc
    except type(exc) as raised:
        ctx["exception"] = raised
    service.job_finished(ctx)


async def test_a_worker_alone_tells_the_outage_and_its_jobs_join_one_unavailable_group(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
) -> None:
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        with database_down(service):
            for name in JOBS:
                finish_failed_job(service, name, psycopg.OperationalError("connection failed: refused"))
            await failing_flushes(service, 3)
        [notice] = texts(telegram)
        assert notice.startswith(f"🚨 Outage · test · {service.release}\nPostgreSQL is unreachable")
        assert "4 jobs failed since" in notice
        assert "• Dependency unavailable: OperationalError: 4\n" in notice

        telegram.fake.reset()
        assert await service.flush(force=True) == 1
        [over] = texts(telegram)
        assert over.startswith(f"✅ Outage over · test · {service.release}\n")
    groups = await (
        await db.execute("select kind::text, title, events from monitoring_groups order by id")
    ).fetchall()
    assert groups == [("unavailable", "Dependency unavailable: OperationalError", 4)]
    rules = await (await db.execute("select rule from monitoring_alerts where kind = 'alert'")).fetchall()
    assert rules == [("new-group",)], "one alert for the outage, not one per job"


async def test_a_job_failing_on_a_statement_of_its_own_is_still_a_job_group(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
) -> None:
    """A deadlock is the server answering the job's statement: a bug of the job, not an outage."""
    async with open_monitoring(settings) as service:
        finish_failed_job(service, "reserve_order", psycopg.errors.DeadlockDetected("deadlock detected"))
        assert await service.flush(force=True) == 1
    kinds = await (await db.execute("select kind::text from monitoring_groups")).fetchall()
    assert kinds == [("job",)]


async def test_a_flush_failing_for_the_database_is_told_without_requests_or_jobs_held(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
) -> None:
    """Whatever the flush held (here a job's own bug), PostgreSQL down is news while it lasts."""
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        with database_down(service):
            finish_failed_job(service, "send_report", ValueError("no such template"))
            await failing_flushes(service, 2)
        [notice] = texts(telegram)
        assert notice.startswith(f"🚨 Outage · test · {service.release}\nPostgreSQL is unreachable")
        assert "1 event held" in notice


async def test_a_pool_blip_seen_by_one_flush_is_not_told_and_a_lasting_one_is(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
) -> None:
    """A worker's pool exhausted for a moment (its flush times out once, PostgreSQL is fine) is no
    outage: with nothing ``unavailable`` held, only a second failing flush in a row tells it. Before,
    every blip sent a notice and an "over" (the 15-minute claim removed each time)."""
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        for blip in range(3):
            finish_failed_job(service, "send_report", ValueError(f"bug {blip}"))
            with database_down(service):
                await failing_flushes(service, 1)
            assert await service.flush(force=True) == 1, "a success: the count starts again"
        assert texts(telegram) == [], "three blips of one flush each: no outage"

        finish_failed_job(service, "send_report", ValueError("bug 3"))
        with database_down(service):
            await failing_flushes(service, 2)
        [notice] = texts(telegram)
        assert notice.startswith(f"🚨 Outage · test · {service.release}\nPostgreSQL is unreachable")


async def test_an_error_the_driver_raises_for_a_value_is_no_outage(
    settings: Settings, valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """psycopg's own refusal of a value (no SQLSTATE: a NUL in a text, a value it cannot adapt) is
    one event's content (``refused_for_content``): PostgreSQL was not even asked, it is not down."""
    notifier = notifier_for(settings, telegram, valkey)
    try:
        for refused in (
            psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
            psycopg.ProgrammingError("cannot adapt type 'object'"),
            psycopg.IntegrityError("integrity"),
        ):
            assert not database_down_error(refused)
            assert not await notifier.flush_failed(refused, [outage_aggregate()])
        assert texts(telegram) == [], "PostgreSQL answered or was not asked: no outage"
        lost = psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")
        assert database_down_error(lost)
        assert database_down_error(PoolTimeout("couldn't get a connection after 5.00 sec"))
        assert await notifier.flush_failed(lost, [outage_aggregate()])
    finally:
        await notifier.telegram.close()


async def test_job_failures_captured_during_a_successful_flush_are_told_as_jobs(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """The notice words what it holds from the held events themselves: two jobs that failed on the
    outage while a flush was writing (SAQ's hooks run during the flush's awaits) are jobs."""
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        finish_failed_job(service, "send_report", ValueError("no such template"))
        real_write = service.writer.write

        async def write_then_jobs_fail(uow: Any, aggregate: Any, now: Any) -> Any:
            result = await real_write(uow, aggregate, now)
            for name in ("reserve_order", "record_activities"):
                finish_failed_job(service, name, psycopg.OperationalError("connection failed: refused"))
            return result

        service.writer.write = write_then_jobs_fail  # type: ignore[method-assign]
        assert await service.flush(force=True) == 1
        service.writer.write = real_write  # type: ignore[method-assign]
        with database_down(service):
            await failing_flushes(service, 1)
        [notice] = texts(telegram)
        assert "2 jobs failed since" in notice, notice


async def test_a_notice_without_the_events_sources_counts_the_events_held(
    settings: Settings, valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    notifier = notifier_for(settings, telegram, valkey)
    try:
        assert await notifier.flush_failed(PoolTimeout("no connection"), [outage_aggregate(3)])
        [notice] = texts(telegram)
        assert "\n3 events held since" in notice, notice
    finally:
        await notifier.telegram.close()
