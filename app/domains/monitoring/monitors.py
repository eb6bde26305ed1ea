"""Cron monitors in the database: registration, check-ins from the job hooks, and the sweep.

The state machine is ``crons.py``; this applies it under the monitor's row lock and turns a failure
into an event of the monitor's ``cron`` group (one group per job: alerts like any other group) and a
recovery into that group's resolution.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from app.config import Settings
from app.core.db import Database, UnitOfWork
from app.db import monitoring as queries
from app.db.models import MonitoringCronMonitor, MonitoringGroupKind, MonitoringGroupStatus
from app.domains.monitoring.capture import CheckIn, RawEvent
from app.domains.monitoring.crons import CronSpec, MonitorState, Outcome, Thresholds, check_in
from app.domains.monitoring.crons import sweep as sweep_monitor
from app.domains.monitoring.fingerprint import fixed_fingerprint
from app.domains.monitoring.groups import Aggregate, GroupWriter, set_state, utc

REGISTRY_LOCK = "monitoring-cron-registry"
"""Serialises registrations: each upserts and removes monitors, and two must not deadlock."""


class CheckInsNotAppliedError(Exception):
    """The database failed: ``remaining`` are the check-ins not applied (to retry in order)."""

    def __init__(self, remaining: list[CheckIn]) -> None:
        super().__init__(f"{len(remaining)} check-ins not applied")
        self.remaining = remaining


class CronMonitors:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        writer: GroupWriter,
        release: str,
        crons: Sequence[CronSpec],
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.settings = settings
        self.writer = writer
        self.release = release
        self.crons = {spec.name: spec for spec in crons}
        self.clock = clock

    async def register(self) -> None:
        """Create or update a cron monitor for every scheduled job (state is kept), and remove the
        monitors of jobs no longer scheduled (removed or renamed), which would otherwise report every
        slot missed for ever; the problem such a monitor left open is resolved."""
        settings = self.settings
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await queries.lock_key(uow.conn, key=REGISTRY_LOCK)
            for spec in sorted(self.crons.values(), key=lambda spec: spec.name):
                await queries.upsert_cron_monitor(
                    uow.conn,
                    name=spec.name,
                    queue=spec.queue,
                    schedule=spec.schedule,
                    margin_s=settings.monitoring_cron_margin_s,
                    max_runtime_s=spec.max_runtime_s,
                    failure_threshold=settings.monitoring_cron_failure_threshold,
                    recovery_threshold=settings.monitoring_cron_recovery_threshold,
                    registered_at=now,
                )
            removed = await queries.delete_cron_monitors_except(uow.conn, names=sorted(self.crons))
            for monitor in removed:
                if monitor.group_id is not None:
                    await self._close_problem(uow, monitor.group_id, now, "unscheduled")

    @staticmethod
    def _state(monitor: MonitoringCronMonitor) -> tuple[MonitorState, Thresholds]:
        state = MonitorState(
            last_slot=monitor.last_slot,
            last_status=monitor.last_status,
            last_started_at=monitor.last_started_at,
            last_finished_at=monitor.last_finished_at,
            last_duration_ms=monitor.last_duration_ms,
            missed_slot=monitor.missed_slot,
            consecutive_failures=monitor.consecutive_failures,
            consecutive_ok=monitor.consecutive_ok,
        )
        limits = Thresholds(
            schedule=monitor.schedule,
            margin_s=monitor.margin_s,
            max_runtime_s=monitor.max_runtime_s,
            failure_threshold=monitor.failure_threshold,
            recovery_threshold=monitor.recovery_threshold,
            registered_at=monitor.registered_at,
        )
        return state, limits

    async def _settle(
        self,
        uow: UnitOfWork,
        monitor: MonitoringCronMonitor,
        outcome: Outcome,
        at: datetime,
        slot: datetime | None,
    ) -> None:
        group_id = monitor.group_id
        if outcome.problem:
            await queries.insert_checkin(
                uow.conn,
                name=monitor.name,
                slot=slot or outcome.state.missed_slot,
                status=outcome.problem,
                at=at,
                duration_ms=None,
            )
        if outcome.effect == "failure":
            details = {
                "missed": f"no run started within {monitor.margin_s} s of its slot "
                f"{outcome.state.missed_slot:%Y-%m-%d %H:%M:%S} UTC (schedule {monitor.schedule})"
                if outcome.state.missed_slot
                else "a run was missed",
                "timeout": f"still running after its maximum runtime of {monitor.max_runtime_s} s",
                "error": "the run failed (its exception is grouped as a job failure)",
            }
            event = RawEvent(
                kind=MonitoringGroupKind.CRON,
                occurred_at=at.timestamp(),
                chain=(),
                context={
                    "source": "cron",
                    "job": monitor.name,
                    "problem": outcome.problem,
                    "schedule": monitor.schedule,
                    "consecutive_failures": outcome.state.consecutive_failures,
                    "detail": f"Cron job {monitor.name}: {details.get(outcome.problem, outcome.problem)}",
                },
                fixed=(monitor.name,),
                title=f"Cron job {monitor.name}: {outcome.problem}",
            )
            aggregate = Aggregate(
                kind=MonitoringGroupKind.CRON,
                fingerprint=fixed_fingerprint(MonitoringGroupKind.CRON.value, monitor.name),
                title=event.title or monitor.name,
                culprit=f"job {monitor.name}",
                held_since=time.monotonic(),
            )
            aggregate.add(event, self.release)
            result = await self.writer.write(uow, aggregate, at)
            group_id = result.root_id
        elif outcome.effect == "recovery" and group_id is not None:
            await self._close_problem(uow, group_id, at, "recovered")
        state = outcome.state
        await queries.save_cron_monitor_state(
            uow.conn,
            last_slot=state.last_slot,
            last_status=state.last_status,
            last_started_at=state.last_started_at,
            last_finished_at=state.last_finished_at,
            last_duration_ms=state.last_duration_ms,
            missed_slot=state.missed_slot,
            consecutive_failures=state.consecutive_failures,
            consecutive_ok=state.consecutive_ok,
            group_id=group_id,
            name=monitor.name,
        )

    async def _close_problem(self, uow: UnitOfWork, group_id: int, at: datetime, action: str) -> None:
        """Resolve the monitor's problem group if it is open (an admin may have acted on it already).
        ``action`` is one of ``alerts.SYSTEM_RESOLUTIONS``: the group's next regression waits for its
        gap instead of alerting at once (a flapping job would otherwise alert every failure)."""
        root = await self.writer.lock_root(uow, group_id)
        if root.status in (MonitoringGroupStatus.UNRESOLVED, MonitoringGroupStatus.REGRESSED):
            await set_state(uow, root, MonitoringGroupStatus.RESOLVED, at, resolved_at=at)
            await queries.add_activity(
                uow.conn, group_id=root.id, action=action, actor_id=None, detail={}, at=at
            )

    async def apply(self, checkins: list[CheckIn]) -> None:
        """Apply check-ins in order; raises (with the rest unapplied) when the database fails."""
        for index, item in enumerate(checkins):
            try:
                async with self.db.transaction() as uow:
                    monitor = await queries.lock_cron_monitor(uow.conn, name=item.name)
                    if monitor is None:
                        continue
                    state, limits = self._state(monitor)
                    slot = utc(item.slot) if item.slot else None
                    at = utc(item.at)
                    outcome = check_in(state, limits, item.status, slot, at, item.duration_ms)
                    if not outcome.problem:
                        await queries.insert_checkin(
                            uow.conn,
                            name=item.name,
                            slot=slot,
                            status=item.status,
                            at=at,
                            duration_ms=item.duration_ms,
                        )
                    await self._settle(uow, monitor, outcome, at, slot)
            except Exception as exc:
                raise CheckInsNotAppliedError(checkins[index:]) from exc

    async def sweep(self, now: float | None = None) -> list[str]:
        """Sweep every monitor; returns the names that got a problem (missed or timed out)."""
        moment = utc(self.clock() if now is None else now)
        problems = []
        async with self.db.transaction() as uow:
            names = await queries.cron_monitor_names(uow.conn)
        for name in names:
            async with self.db.transaction() as uow:
                monitor = await queries.lock_cron_monitor(uow.conn, name=name)
                if monitor is None:
                    continue
                state, limits = self._state(monitor)
                outcome = sweep_monitor(state, limits, moment)
                if outcome.state == state:
                    continue
                await self._settle(uow, monitor, outcome, moment, None)
                problems.append(name)
        return problems

    async def list(self) -> list[MonitoringCronMonitor]:
        async with self.db.transaction() as uow:
            return await queries.list_cron_monitors(uow.conn)
