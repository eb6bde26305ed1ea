"""One group, one alert per MONITORING_ACTION_INTERVAL_S: a rule on the group's volume (frequency,
users, escalation) waits for the gap after any alert of the group; a change of its state (new,
regressed, reopened) alerts regardless."""

from __future__ import annotations

import time
import uuid
from typing import Any

from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.db.models import MonitoringIgnoreMode
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

INTERVAL = 3600


def storm_bug() -> BaseException:
    return raise_bug(0, module=f"app.domains.shop.storm{uuid.uuid4().hex[:6]}")


async def alert_rules(db: AsyncConnection[Any], group_id: int) -> list[str]:
    rows = await (
        await db.execute("select rule from monitoring_alerts where group_id = %s order by id", (group_id,))
    ).fetchall()
    return [row[0] for row in rows]


async def test_a_new_error_turning_into_a_storm_alerts_once(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = storm_bug()
    async with open_monitoring(settings, monitoring_action_interval_s=INTERVAL) as service:
        [first] = await service.write_now([error_event(exc, user_id=1)])
        # the next dedup window: the same error, past the frequency and users thresholds
        now = time.time()
        storm = [error_event(exc, at=now, user_id=100 + n % 25) for n in range(150)]
        [second] = await service.write_now(storm)
    assert second.alert_id is None
    assert await alert_rules(db, first.root_id) == ["new-group"]


async def test_a_storm_alerts_again_once_the_gap_has_passed(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = storm_bug()
    start = time.time()
    async with open_monitoring(settings, monitoring_action_interval_s=INTERVAL) as service:
        service.clock = lambda: start
        [first] = await service.write_now([error_event(exc, at=start, user_id=1)])
        later = start + INTERVAL + 60
        service.clock = lambda: later
        storm = [error_event(exc, at=later, user_id=100 + n % 25) for n in range(150)]
        [second] = await service.write_now(storm)
    assert second.alert_id is not None
    first_rule, storm_rules = await alert_rules(db, first.root_id)  # escalation may join, by the minute
    assert first_rule == "new-group"
    assert {"frequency", "users"} <= set(storm_rules.split(","))


async def test_a_regression_or_a_reopening_within_the_gap_still_alerts(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = storm_bug()
    async with open_monitoring(settings, monitoring_action_interval_s=INTERVAL) as service:
        [first] = await service.write_now([error_event(exc)])
        await service.resolve(first.root_id, None)
        [regressed] = await service.write_now([error_event(exc)])
        assert regressed.transition == "regressed"
        await service.ignore(first.root_id, None, MonitoringIgnoreMode.UNTIL_COUNT, more_events=1)
        [reopened] = await service.write_now([error_event(exc)])
        assert reopened.transition == "unignored"
        now = time.time()
        [storm] = await service.write_now([error_event(exc, at=now, user_id=n) for n in range(150)])
    assert (regressed.alert_id is not None, reopened.alert_id is not None, storm.alert_id) == (
        True,
        True,
        None,
    )
    assert await alert_rules(db, first.root_id) == ["new-group", "regression", "reopened"]


async def test_the_frequency_window_counts_the_minute_it_begins_in(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Events are counted per minute: three events 25-45 seconds old, in the minute the 60-second
    window begins in, are three events in the window (that minute was left out: no alert)."""
    exc = storm_bug()
    t0 = (int(time.time()) // 60 - 10) * 60  # a minute boundary, in the past
    tuned = {"monitoring_frequency_events": 3, "monitoring_frequency_window_s": 60}
    async with open_monitoring(settings, monitoring_action_interval_s=0, **tuned) as service:
        service.clock = lambda: t0 + 1
        [first] = await service.write_now([error_event(exc, at=t0 + 1, user_id=1)])
        service.clock = lambda: t0 + 65
        burst = [error_event(exc, at=t0 + offset, user_id=1) for offset in (20, 30, 40)]
        await service.write_now(burst)
    assert await alert_rules(db, first.root_id) == ["new-group", "frequency"]
