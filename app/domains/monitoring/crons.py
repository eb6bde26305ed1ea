"""Cron monitors: did every scheduled run happen, finish, and succeed?

SAQ only enqueues the next run of a cron job; nothing notices a run that never happened (the worker
was down across its slot). A monitor per scheduled job function keeps Sentry's vocabulary: the
schedule, a check-in margin (a run may start that late before it counts as missed; too tight a margin
makes false misses), a maximum runtime, and the consecutive failures that open a problem
(``failure_threshold``) and the consecutive successes that close it (``recovery_threshold``).

Check-ins come from the job hooks (a run of the job whose SAQ key is ``cron:<function>``); the sweeper
(``sweep``) runs from every process's background task and from a SAQ cron, so a stopped worker is
noticed by the web processes. The functions here are the state machine, without I/O.

SAQ enqueues a cron job's next slot ahead of it, at each of its schedule polls, under the job's key,
and refuses the enqueue while a run under that key is still queued or running: the slots that pass
during a long run never get a run of their own, on purpose. A run's end check-in therefore covers
them (``covered_until``); counting them as missed made every run longer than its interval plus the
margin a ``missed`` failure, an alert at a failure threshold of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from croniter import croniter

from app.core.modules import Module
from app.core.queues import TIMERS

Effect = Literal["failure", "recovery"]

SCHEDULE_POLL_S = 2 * TIMERS["schedule"]
"""The longest after a run's end until SAQ's next schedule poll of its queue enqueues the next slot:
its timer, plus as long again for the poll's own work (an enqueue per cron job of the queue)."""


@dataclass(frozen=True, slots=True)
class CronSpec:
    name: str
    queue: str
    schedule: str
    max_runtime_s: int


def specs_from_modules(modules: Sequence[Module]) -> list[CronSpec]:
    """Every scheduled job: the modules' ``Cron`` entries (by job name)."""
    specs: dict[str, CronSpec] = {}
    for module in modules:
        for cron in module.cron:
            name = cron.function.__qualname__
            specs[name] = CronSpec(name, cron.queue, cron.schedule, cron.max_runtime_s or cron.timeout_s)
    return sorted(specs.values(), key=lambda spec: spec.name)


@dataclass(frozen=True, slots=True)
class Thresholds:
    schedule: str
    margin_s: int
    max_runtime_s: int
    failure_threshold: int
    recovery_threshold: int
    registered_at: datetime


@dataclass(frozen=True, slots=True)
class MonitorState:
    last_slot: datetime | None = None
    last_status: str = "unknown"
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_duration_ms: float | None = None
    missed_slot: datetime | None = None
    consecutive_failures: int = 0
    consecutive_ok: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    state: MonitorState
    effect: Effect | None = None
    problem: str = ""
    """``missed`` / ``timeout`` / ``error`` for a failure: what is recorded as a check-in and an event."""


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def latest_slot(schedule: str, at: datetime) -> datetime:
    """The latest scheduled time at or before ``at`` (UTC, as SAQ schedules)."""
    previous = croniter(schedule, at.timestamp() + 0.001).get_prev(float)
    return _at(previous)


def next_slot(schedule: str, at: datetime) -> datetime:
    """The first scheduled time after ``at`` (UTC, as SAQ schedules)."""
    return _at(croniter(schedule, at.timestamp()).get_next(float))


def covered_until(schedule: str, ended_at: datetime) -> datetime:
    """The latest slot a run that ended at ``ended_at`` accounts for: every slot before its end (SAQ
    refused to enqueue them while it ran), and one that came before SAQ's next schedule poll after
    it (``SCHEDULE_POLL_S``), which SAQ no longer enqueues either (the poll enqueues the slot after
    it). A slot covered so that did get a run anyway only checks in as usual."""
    return latest_slot(schedule, ended_at + timedelta(seconds=SCHEDULE_POLL_S))


def _failed(state: MonitorState, limits: Thresholds, status: str, **changes: object) -> Outcome:
    failures = state.consecutive_failures + 1
    new = replace(state, last_status=status, consecutive_failures=failures, consecutive_ok=0, **changes)  # type: ignore[arg-type]
    return Outcome(new, "failure" if failures >= limits.failure_threshold else None, status)


def check_in(
    state: MonitorState,
    limits: Thresholds,
    status: str,
    slot: datetime | None,
    at: datetime,
    duration_ms: float | None,
) -> Outcome:
    """A run started (``in_progress``) or ended (``ok``/``error``); an end covers the slots SAQ
    skipped while the run went on (``covered_until``)."""
    if status == "in_progress":
        newest = max(filter(None, (state.last_slot, slot or at)))
        return Outcome(replace(state, last_slot=newest, last_status="in_progress", last_started_at=at))
    covered = max(filter(None, (state.last_slot, slot, covered_until(limits.schedule, at))))
    if status == "ok":
        ok = state.consecutive_ok + 1
        new = replace(
            state,
            last_slot=covered,
            last_status="ok",
            last_finished_at=at,
            last_duration_ms=duration_ms,
            consecutive_ok=ok,
            consecutive_failures=0,
        )
        return Outcome(new, "recovery" if ok >= limits.recovery_threshold else None)
    return _failed(
        state, limits, "error", last_slot=covered, last_finished_at=at, last_duration_ms=duration_ms
    )


def sweep(state: MonitorState, limits: Thresholds, now: datetime) -> Outcome:
    """Notice a run that overran its maximum runtime, or a slot whose margin passed without a run."""
    if (
        state.last_status == "in_progress"
        and state.last_started_at is not None
        and (now - state.last_started_at).total_seconds() > limits.max_runtime_s
    ):
        return _failed(state, limits, "timeout")
    if state.last_status == "in_progress":
        return Outcome(state)  # a run is on (SAQ starts no other until it ends): not a miss
    expected = latest_slot(limits.schedule, _at(now.timestamp() - limits.margin_s))
    if expected <= limits.registered_at:
        return Outcome(state)  # the slot passed before the monitor existed
    if state.last_slot is not None and state.last_slot >= expected:
        return Outcome(state)
    if state.missed_slot is not None and state.missed_slot >= expected:
        return Outcome(state)  # this slot is already counted
    return _failed(state, limits, "missed", missed_slot=expected)
