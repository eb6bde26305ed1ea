"""The retention: what is older than ``MONITORING_RETENTION_DAYS`` is deleted, table by table, in chunks.

Run by the periodic checks once an hour across processes (``MonitoringService.run_periodic`` claims
the ``purge`` tick) and held by ``MonitoringService``, whose ``purge`` delegates here; split out of
``services.py`` as a topic of its own (``purge`` says what is kept and why).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import structlog

from app.config import Settings
from app.core.db import Database, UnitOfWork, purge_tables
from app.db import monitoring as queries
from app.domains.monitoring.alerts import AlertRule
from app.domains.monitoring.groups import lock_roots, utc

log = structlog.get_logger("app.monitoring")

PURGE_CHUNK = 10_000
"""Rows deleted per transaction by the retention (``purge``): each statement stays far below the
statement timeout, however many rows have piled up."""
RECOUNT_CHUNK = 50
"""Merged trees whose users the hourly recount counts per transaction (each under its root's lock)."""


class Retention:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        rules: Sequence[AlertRule],
        clock: Callable[[], float],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.db = db
        self.settings = settings
        self.rules = rules
        """The alert rules: a rule's firings are kept for its action interval (``purge``)."""
        self.clock = clock
        self.stopping = stopping
        """Whether the process stops: a purge then deletes no further chunk (``purge``)."""

    async def purge(self, now: float | None = None, *, chunk_size: int = PURGE_CHUNK) -> int:
        """Delete what is older than ``MONITORING_RETENTION_DAYS`` (each delete by an indexed time);
        returns how many rows.

        Alert-rule firings (and each group's last alert) are kept for the longest action interval
        too, so a purge never lets a rule fire early. Groups stay: a resolved group's fingerprints
        are what turns its next event into a regression (and an ignored one's into silence) rather
        than a new group. The users a group has not seen for the retention go (a user seen again is
        then counted again in the group's ``users``), and so do the releases it has not seen for it
        (a long-lived group gained one row per release forever; its detail lists the newest ones).

        Each table is purged in chunks of at most ``chunk_size`` rows, one transaction each, until a
        chunk comes back short: a backlog (a lowered retention, purges that could not run) drains
        however large, where one DELETE of it outlasted the statement timeout and rolled back every
        hour. A table whose purge fails (a timeout, a lock) is logged and left for the next hour, the
        chunks it deleted kept; the tables after it are purged all the same, and the first failure is
        raised once every table has been tried. Once the process stops (``stopping``), no further
        chunk is deleted: its stop waited for the whole backlog (past granian's kill timeout, losing
        the buffered errors and latency its close writes last); the next run goes on."""
        moment = self.clock() if now is None else now
        retained = moment - self.settings.monitoring_retention_days * 86_400
        before = utc(retained)
        group_gap = self.settings.monitoring_action_interval_s
        longest_interval = max((rule.action_interval_s for rule in self.rules), default=group_gap)
        longest_interval = max(longest_interval, group_gap)
        fires_before = utc(min(retained, moment - longest_interval))
        chunked = self._table_purge
        tables: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("monitoring_events", chunked(queries.purge_events_before, before, chunk_size)),
            ("monitoring_group_counts", chunked(queries.purge_counts_before, before, chunk_size)),
            ("monitoring_route_latency", chunked(queries.purge_latency_before, before, chunk_size)),
            ("monitoring_route_exemplars", chunked(queries.purge_exemplars_before, before, chunk_size)),
            ("monitoring_job_runs", chunked(queries.purge_job_runs_before, before, chunk_size)),
            ("monitoring_cron_checkins", chunked(queries.purge_checkins_before, before, chunk_size)),
            ("monitoring_alerts", chunked(queries.purge_alerts_before, before, chunk_size)),
            ("monitoring_group_activity", chunked(queries.purge_activity_before, before, chunk_size)),
            ("monitoring_budget_periods", chunked(queries.purge_budget_periods_before, before, chunk_size)),
            ("monitoring_group_users", lambda: self._purge_group_users(before, chunk_size)),
            ("monitoring_group_releases", chunked(queries.purge_group_releases_before, before, chunk_size)),
            ("monitoring_rule_fires", chunked(queries.purge_rule_fires_before, fires_before, chunk_size)),
            ("tree_users", self._recount_merged_trees),  # deletes nothing
        ]
        return await purge_tables(tables, name="monitoring", logger=log)

    async def _recount_merged_trees(self) -> int:
        """Count every merged tree's ``tree_users`` again, ``RECOUNT_CHUNK`` roots per transaction
        under their locks (id order), after the users purge of the same run lowered what they count:
        once per tree per run, not per chunk of that purge. The writes keep it between runs, but the
        previous release's, running beside this one during an upgrade, did not. Deletes nothing: 0."""
        after_id = 0
        while not self.stopping():
            async with self.db.transaction() as uow:
                roots = await queries.merged_roots_after(uow.conn, after_id=after_id, row_limit=RECOUNT_CHUNK)
                if not roots:
                    return 0
                await queries.recount_tree_users(uow.conn, root_ids=await lock_roots(uow, roots))
            after_id = roots[-1]
        return 0

    def _table_purge(
        self, delete: Callable[..., Awaitable[int]], before: datetime, chunk_size: int
    ) -> Callable[[], Awaitable[int]]:
        """One table's purge: ``delete`` (one chunk of the rows older than ``before``) repeated, one
        transaction each (``Database.delete_in_chunks``)."""

        async def chunk(uow: UnitOfWork) -> int:
            if self.stopping():
                return 0
            return await delete(uow.conn, before=before, chunk_size=chunk_size)

        return lambda: self.db.delete_in_chunks(chunk)

    async def _purge_group_users(self, before: datetime, chunk_size: int) -> int:
        """The users a group has not seen since ``before``, group by group: each chunk starts at the
        group where the last one ended, so none reads again what the ones before it went through.

        Each group's ``users`` is lowered by its rows deleted (merged trees' ``tree_users`` are
        counted again by the run's last step, ``_recount_merged_trees``), under the locks of the
        groups' roots, taken first as a group's write takes its root's (then its users, then the
        group): a write re-seeing a user purged counted it again, and the list (``users``) said more
        than the detail (the rows) ever after.
        A group a merge moved to another tree meanwhile is purged under its new root when the chunk
        locked that one too, else waits for a later chunk, or the next run when the chunk's cursor
        has passed it."""
        from_group_id = 0

        async def chunk(uow: UnitOfWork) -> int:
            nonlocal from_group_id
            if self.stopping():
                return 0
            groups = await queries.groups_with_users_before(
                uow.conn, from_group_id=from_group_id, before=before, chunk_size=chunk_size
            )
            if not groups:
                return 0
            deleted = await queries.purge_group_users_before(
                uow.conn,
                group_ids=[group.id for group in groups],
                root_ids=await lock_roots(uow, [group.root_id for group in groups]),
                before=before,
                chunk_size=chunk_size,
            )
            from_group_id = max(deleted, default=from_group_id)
            return len(deleted)

        return await self.db.delete_in_chunks(chunk)
