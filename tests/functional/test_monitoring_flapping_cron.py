"""A flapping cron job: failing every other run, its group is resolved by the monitor's recovery and
regressed by the next failure. A regression of a group the system resolved itself waits for the
group's gap (``MONITORING_ACTION_INTERVAL_S``) like the rules on volume: one flaky job is one alert per
gap, not one per failure, and two of them cannot spend the noise budget and push a brand-new error
into the digest. A regression after a person's resolve still alerts at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg import AsyncConnection
from saq.job import Status
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.monitoring.crons import CronSpec
from app.domains.monitoring.services import MonitoringService
from tests.fakes.telegram import FakeTelegramServer, serve_fake_telegram
from tests.functional.test_monitoring_alerts import PRIVATE_CHAT, TOKEN, cron_job, with_telegram
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


GAP_S = 3600
"""``MONITORING_ACTION_INTERVAL_S`` (the default, set here so the test does not depend on it)."""


def clock_at(moment: float) -> Callable[[], float]:
    return lambda: moment


async def run_slots(service: MonitoringService, names: Sequence[str], start: float, slots: range) -> None:
    """Every job of ``names`` runs at each minute slot: failing on even slots, succeeding on odd ones."""
    for index in slots:
        slot = start + 60 * index
        service.clock = clock_at(slot + 2)
        for name in names:
            failed = index % 2 == 0
            ctx = cron_job(name, slot, status=Status.FAILED if failed else Status.COMPLETE)
            service.job_started(ctx)
            if failed:
                ctx["exception"] = raise_bug(0, module=f"app.domains.flaky.{name}")
            service.job_finished(ctx)
        await service.flush(force=True)


async def register(service: MonitoringService, names: Sequence[str], start: float) -> None:
    service.monitors.crons = {name: CronSpec(name, "default", "* * * * *", 50) for name in names}
    service.clock = clock_at(start - 3600)
    await service.register_monitors()


async def alerts_since(db: AsyncConnection[Any], since: float) -> list[tuple[str, str, str, bool]]:
    """(rule, group kind, group title, held for the digest) of every alert recorded since ``since``."""
    rows = await (
        await db.execute(
            "select a.rule, g.kind::text, g.title, a.digest_id is not null from monitoring_alerts a"
            " join monitoring_groups g on g.id = a.group_id"
            " where a.kind = 'alert' and a.created_at >= to_timestamp(%s) order by a.id",
            (since,),
        )
    ).fetchall()
    return [(rule, kind, title, held) for rule, kind, title, held in rows]


async def test_a_flapping_cron_job_alerts_once_per_gap_not_once_per_failure(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
) -> None:
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC).timestamp()
    changes = with_telegram(telegram, [PRIVATE_CHAT], monitoring_action_interval_s=GAP_S)
    async with open_monitoring(settings, **changes) as service:
        await register(service, ["flaky"], start)
        await run_slots(service, ["flaky"], start, range(20))
        regressions = await (
            await db.execute("select count(*) from monitoring_group_activity where action = 'regressed'")
        ).fetchone()
        assert regressions == (9,), "each failure after a recovery still regresses the group"
        assert [rule for rule, kind, *_ in await alerts_since(db, start - 10) if kind == "cron"] == [
            "new-group"
        ], "the regressions within the gap of the system's own resolve did not alert"

        await run_slots(service, ["flaky"], start + GAP_S, range(2))
    cron_alerts = [rule for rule, kind, *_ in await alerts_since(db, start - 10) if kind == "cron"]
    assert cron_alerts == ["new-group", "regression"], "past the gap, a regression alerts again"


async def test_two_flapping_cron_jobs_leave_the_budget_to_a_new_error(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
) -> None:
    start = datetime(2026, 12, 3, 10, 0, tzinfo=UTC).timestamp()
    changes = with_telegram(telegram, [PRIVATE_CHAT], monitoring_action_interval_s=GAP_S)
    async with open_monitoring(settings, **changes) as service:
        await register(service, ["flaky_a", "flaky_b"], start)
        await run_slots(service, ["flaky_a", "flaky_b"], start, range(9))
        service.clock = clock_at(start + 60 * 9 + 5)
        await service.write_now([error_event(raise_bug(0, module="app.domains.shop.brand_new"))])
    rows = await alerts_since(db, start - 10)
    assert sorted((kind, rule) for rule, kind, *_ in rows) == [
        ("cron", "new-group"),  # each monitor's problem
        ("cron", "new-group"),
        ("error", "new-group"),
        ("job", "new-group"),  # each job's exception, grouped by its stack
        ("job", "new-group"),
    ]
    assert not any(held for *_, held in rows), "every alert within the budget: none held for the digest"


async def test_a_regression_after_a_persons_resolve_alerts_at_once(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
) -> None:
    start = datetime(2026, 12, 5, 10, 0, tzinfo=UTC).timestamp()
    changes = with_telegram(telegram, [PRIVATE_CHAT], monitoring_action_interval_s=GAP_S)
    async with open_monitoring(settings, **changes) as service:
        await register(service, ["flaky"], start)
        await run_slots(service, ["flaky"], start, range(3))  # fail, recover (resolved), fail (regressed)
        [monitor] = await service.monitors.list()
        assert monitor.group_id is not None
        service.clock = clock_at(start + 150)
        await service.resolve(monitor.group_id, None)  # a person: "fixed"
        await run_slots(service, ["flaky"], start + 180, range(1))  # fails again, well within the gap
    cron_alerts = [rule for rule, kind, *_ in await alerts_since(db, start - 10) if kind == "cron"]
    assert cron_alerts == ["new-group", "regression"], "the person's resolve was wrong: news at once"
