"""A cron run longer than its interval is no missed slot: SAQ refuses to enqueue the job's next slots
while a run under its key goes on, so the slots that pass meanwhile never get a run of their own. The
run's end check-in covers them, and the one SAQ's next schedule poll after the end passes over; a slot
that comes later and gets no run is still missed, and a run that overruns still a timeout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from saq.job import Status
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.monitoring.crons import CronSpec, MonitorState, Thresholds, check_in, sweep
from app.domains.monitoring.services import MonitoringService
from tests.functional.test_monitoring_alerts import cron_job
from tests.functional.test_monitoring_groups import open_monitoring

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
MINUTELY = Thresholds("* * * * *", 120, 600, 1, 1, registered_at=T0 - timedelta(days=1))


def ran(status: str, started: datetime, ended: datetime, limits: Thresholds = MINUTELY) -> MonitorState:
    """The state after one run of the slot ``started`` (its start and end check-ins)."""
    state = check_in(
        MonitorState(), limits, "in_progress", started, started + timedelta(seconds=1), None
    ).state
    duration_ms = (ended - started).total_seconds() * 1000
    return check_in(state, limits, status, started, ended, duration_ms).state


def test_a_successful_run_across_several_slots_misses_none_of_them() -> None:
    state = ran("ok", T0, T0 + timedelta(minutes=4))
    for after in (timedelta(minutes=4, seconds=10), timedelta(minutes=6), timedelta(minutes=6, seconds=59)):
        outcome = sweep(state, MINUTELY, T0 + after)
        assert (outcome.effect, outcome.problem) == (None, ""), f"{after} after the run's slot"
        assert outcome.state == state


def test_a_failed_run_across_several_slots_is_its_error_alone() -> None:
    state = ran("error", T0, T0 + timedelta(minutes=4))
    assert (state.last_status, state.consecutive_failures) == ("error", 1)
    outcome = sweep(state, MINUTELY, T0 + timedelta(minutes=5))
    assert outcome.effect is None and outcome.state == state


def test_the_slot_saq_passes_over_right_after_the_end_is_covered_too() -> None:
    """The run ended half a second before 12:04: SAQ's next poll enqueued 12:05, not 12:04."""
    state = ran("ok", T0, T0 + timedelta(minutes=3, seconds=59.5))
    assert sweep(state, MINUTELY, T0 + timedelta(minutes=6, seconds=10)).effect is None


def test_a_slot_after_a_long_run_that_gets_no_run_is_still_missed() -> None:
    state = ran("ok", T0, T0 + timedelta(minutes=4))
    within_margin = sweep(state, MINUTELY, T0 + timedelta(minutes=6, seconds=59))
    assert within_margin.effect is None
    missed = sweep(state, MINUTELY, T0 + timedelta(minutes=7, seconds=1))
    assert (missed.effect, missed.problem) == ("failure", "missed")
    assert missed.state.missed_slot == T0 + timedelta(minutes=5)


def test_a_long_run_of_a_ten_second_schedule_misses_nothing_and_the_next_gap_is_missed() -> None:
    every_10_s = Thresholds("* * * * * */10", 120, 600, 1, 1, registered_at=T0 - timedelta(days=1))
    state = ran("ok", T0, T0 + timedelta(minutes=3, seconds=5), every_10_s)
    assert sweep(state, every_10_s, T0 + timedelta(minutes=3, seconds=6)).effect is None
    assert sweep(state, every_10_s, T0 + timedelta(minutes=5, seconds=9)).effect is None
    missed = sweep(state, every_10_s, T0 + timedelta(minutes=5, seconds=11))
    assert missed.problem == "missed" and missed.state.missed_slot == T0 + timedelta(minutes=3, seconds=10)


def test_a_run_past_its_maximum_runtime_is_still_a_timeout() -> None:
    state = check_in(MonitorState(), MINUTELY, "in_progress", T0, T0, None).state
    assert sweep(state, MINUTELY, T0 + timedelta(seconds=599)).effect is None
    overrun = sweep(state, MINUTELY, T0 + timedelta(seconds=601))
    assert (overrun.effect, overrun.problem) == ("failure", "timeout")


async def cron_problems(db: AsyncConnection[Any]) -> list[tuple[str, str]]:
    """(problem, its slot's UTC time) of every problem the monitor recorded as a check-in."""
    cursor = await db.execute(
        "select status, to_char(slot at time zone 'UTC', 'HH24:MI') from monitoring_cron_checkins"
        " where status in ('missed', 'timeout', 'error') order by id"
    )
    return [(status, slot) for status, slot in await cursor.fetchall()]


async def register(service: MonitoringService, slot: float) -> None:
    service.monitors.crons = {"rollup": CronSpec("rollup", "default", "* * * * *", 600)}
    service.clock = lambda: slot - 86_400
    await service.register_monitors()


async def test_the_monitor_reports_no_miss_for_a_long_successful_run_and_a_later_real_one(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    slot = T0.timestamp()
    async with open_monitoring(settings, monitoring_cron_failure_threshold=1) as service:
        await register(service, slot)
        ctx = cron_job("rollup", slot)
        service.clock = lambda: slot + 1
        service.job_started(ctx)
        await service.flush(force=True)
        assert await service.check_crons(slot + 180) == [], "a run is on"
        ctx["job"].status = Status.COMPLETE
        service.clock = lambda: slot + 239
        service.job_finished(ctx)
        await service.flush(force=True)

        assert await service.check_crons(slot + 250) == []
        assert await service.check_crons(slot + 419) == []
        assert await cron_problems(db) == []
        groups = await (
            await db.execute("select count(*) from monitoring_groups where kind = 'cron'")
        ).fetchone()
        assert groups == (0,), "no cron problem, so no alert"

        assert await service.check_crons(slot + 421) == ["rollup"], "12:05 came after the run and got none"
    assert await cron_problems(db) == [("missed", "12:05")]
