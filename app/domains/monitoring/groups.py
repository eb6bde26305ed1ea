"""Events into groups: the aggregate of a batch and its one database write.

Many events of one fingerprint become one ``Aggregate`` (count, first/last seen, events per minute
and per release, distinct users, a few samples) and one transaction: the group's counters are
incremented once per batch, never locked per event. The transaction takes an advisory lock on the
fingerprint (two processes never create the same group twice) and then the root group's row lock,
which serialises it with resolve/ignore/merge, so the state decision (``lifecycle.decide``) always
sees the state the admin left, and compares it with when the events *occurred*.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from app.core.db import UnitOfWork
from app.core.errors import DRIVER_REFUSALS
from app.db import monitoring as queries
from app.db.models import MonitoringGroup, MonitoringGroupKind, MonitoringGroupStatus, MonitoringIgnoreMode
from app.domains.monitoring import alerts, messages
from app.domains.monitoring.capture import MAX_SAMPLES, MAX_USERS, RawAggregate, RawEvent, source_of
from app.domains.monitoring.fingerprint import (
    GROUPING_VERSION,
    MAX_MESSAGE,
    ExceptionPart,
    Fingerprint,
    Variant,
    resolve_chain,
)
from app.domains.monitoring.lifecycle import ReleaseSeen, decide
from app.domains.monitoring.scrub import scrub_mapping, storable, storable_scrubbed, storable_scrubbed_prefix

MAX_WRITE_FAILURES = 5
UNAVAILABLE_CLASSES = ("08", "40", "53", "57", "58")
"""SQLSTATE classes of a database that cannot take the write now (connection, serialization or
deadlock, insufficient resources, operator intervention and timeouts, system errors)."""


def refused_for_content(exc: BaseException) -> bool:
    """Whether a write failed because of the aggregate's own content (it would fail again), not
    because the database is unavailable: an error the server answered with a SQLSTATE outside
    ``UNAVAILABLE_CLASSES`` (a data exception, class 22; an integrity violation, class 23 ...), the
    driver's own refusal of a value, or a value that cannot be encoded. A pool timeout, a lost
    connection or a timeout (no SQLSTATE) never is: the aggregate waits for the database."""
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate is None:
            return isinstance(exc, DRIVER_REFUSALS)
        return not exc.sqlstate.startswith(UNAVAILABLE_CLASSES)
    return not isinstance(exc, (OSError, TimeoutError))


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def minute_of(ts: float) -> int:
    return int(ts // 60) * 60


def _keep_samples(samples: list[RawEvent]) -> list[RawEvent]:
    """The first samples and the latest one."""
    return samples if len(samples) <= MAX_SAMPLES else [*samples[: MAX_SAMPLES - 1], samples[-1]]


@dataclass(slots=True)
class Aggregate:
    kind: MonitoringGroupKind
    fingerprint: Fingerprint
    title: str
    culprit: str
    held_since: float
    failures: int = 0
    """Writes refused for the aggregate's content (``refused_for_content``): past
    ``MAX_WRITE_FAILURES`` the aggregate is dropped (a poison batch must not hold back the others
    forever). An unavailable database is not counted: the aggregate waits for it, bounded by
    ``MAX_PENDING`` and the buffer's ``MONITORING_BUFFER_MAX``."""
    count: int = 0
    first: float = float("inf")
    last: float = 0.0
    minutes: dict[int, int] = field(default_factory=dict)
    releases: dict[str, list[float]] = field(default_factory=dict)
    """release → [events, first occurrence, last occurrence]"""
    users: set[int] = field(default_factory=set)
    samples: list[RawEvent] = field(default_factory=list)
    sources: Counter[str] = field(default_factory=Counter)
    """Events by where they were captured (``request``, ``job`` ...): the outage notice's wording."""

    @property
    def key(self) -> str:
        return self.fingerprint.primary.hash

    def add(self, event: RawEvent, release: str) -> None:
        self.count += 1
        self.sources[source_of(event)] += 1
        self.first = min(self.first, event.occurred_at)
        self.last = max(self.last, event.occurred_at)
        minute = minute_of(event.occurred_at)
        self.minutes[minute] = self.minutes.get(minute, 0) + 1
        seen = self.releases.get(release)
        if seen is None:
            self.releases[release] = [1, event.occurred_at, event.occurred_at]
        else:
            seen[0] += 1
            seen[1] = min(seen[1], event.occurred_at)
            seen[2] = max(seen[2], event.occurred_at)
        if event.user_id is not None and len(self.users) < MAX_USERS:
            self.users.add(event.user_id)
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(event)
        else:
            self.samples[-1] = event  # keep the first ones and the latest

    def absorb(self, raw: RawAggregate, release: str) -> None:
        """Add the events a capture buffer counted for one raw key (all of this process's release)."""
        self.count += raw.count
        self.sources.update(raw.sources)
        self.first = min(self.first, raw.first)
        self.last = max(self.last, raw.last)
        for minute, count in raw.minutes.items():
            self.minutes[minute] = self.minutes.get(minute, 0) + count
        seen = self.releases.setdefault(release, [0, raw.first, raw.last])
        seen[0] += raw.count
        seen[1] = min(seen[1], raw.first)
        seen[2] = max(seen[2], raw.last)
        room = MAX_USERS - len(self.users)
        if room > 0:
            self.users.update(list(raw.users)[:room])
        self.samples = _keep_samples(self.samples + raw.samples)

    def merge(self, other: Aggregate) -> None:
        self.count += other.count
        self.sources.update(other.sources)
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        for minute, count in other.minutes.items():
            self.minutes[minute] = self.minutes.get(minute, 0) + count
        for release, (events, first, last) in other.releases.items():
            seen = self.releases.setdefault(release, [0, first, last])
            seen[0] += events
            seen[1] = min(seen[1], first)
            seen[2] = max(seen[2], last)
        room = MAX_USERS - len(self.users)
        if room > 0:
            self.users.update(list(other.users)[:room])
        self.samples = _keep_samples(self.samples + other.samples)


@dataclass(frozen=True, slots=True)
class WriteResult:
    group_id: int
    root_id: int
    created: bool
    transition: str | None
    alert_id: int | None


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "dist-packages/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    cwd = os.getcwd() + os.sep
    if filename.startswith(cwd):
        return filename[len(cwd) :]
    prefix = sys.prefix + os.sep
    return filename[len(prefix) :] if filename.startswith(prefix) else os.path.basename(filename)


MAX_STORED_NAME = 300
"""A frame's module, function, file name and source line, and an exception's type, as stored: an
in-app line holding a 200,000-character literal was stored whole in every sample (4 MB a group)."""


def exception_payload(chain: Sequence[ExceptionPart]) -> list[dict[str, Any]]:
    return [
        {
            "type": storable(part.type)[:MAX_STORED_NAME],
            "message": storable_scrubbed_prefix(part.message, MAX_MESSAGE),
            "frames": [
                {
                    "module": storable(frame.module)[:MAX_STORED_NAME],
                    "function": storable(frame.function)[:MAX_STORED_NAME],
                    "filename": storable(_short_path(frame.filename))[:MAX_STORED_NAME],
                    "lineno": frame.lineno,
                    "context_line": (
                        storable_scrubbed_prefix(frame.context_line, MAX_STORED_NAME)
                        if frame.context_line
                        else None
                    ),
                    "in_app": frame.in_app,
                }
                for frame in part.frames
            ],
        }
        for part in chain
    ]


def _variant_payload(variant: Variant) -> dict[str, Any]:
    return {
        "name": variant.name,
        "hash": variant.hash,
        "components": [storable_scrubbed(component) for component in variant.components],
    }


@dataclass(frozen=True, slots=True)
class WriterConfig:
    rules: Sequence[alerts.AlertRule]
    channel: alerts.Channel
    samples_per_group: int
    environment: str
    in_app_packages: Sequence[str]
    escalation: alerts.Escalation
    group_gap_s: int = 0
    """``MONITORING_ACTION_INTERVAL_S``: a group alerted within it gets no alert from a rule on its
    volume (``alerts.always_alerts`` tells which rules send anyway)."""


class GroupWriter:
    """Writes aggregates into groups, decides state transitions and fires alert rules."""

    def __init__(self, config: WriterConfig) -> None:
        self.config = config

    async def write(self, uow: UnitOfWork, aggregate: Aggregate, now: datetime) -> WriteResult:
        conn = uow.conn
        fingerprint = aggregate.fingerprint
        await queries.lock_key(conn, key=f"monitoring-fingerprint:{aggregate.key}")
        found = {row.hash: row for row in await queries.find_hashes(conn, hashes=fingerprint.hashes)}
        matched = next((variant for variant in fingerprint.variants if variant.hash in found), None)
        created = matched is None
        if matched is None:
            group = await queries.create_group(
                conn,
                kind=aggregate.kind,
                title=storable(aggregate.title),
                culprit=storable(aggregate.culprit),
                first_seen_at=utc(aggregate.first),
                last_seen_at=utc(aggregate.last),
            )
            assert group is not None
            group_id = group.id
            reason = "no group held any of the event's hashes: a new group"
        else:
            group_id = found[matched.hash].group_id
            reason = f"the {matched.name} hash matched group {group_id}"
        missing = [variant for variant in fingerprint.variants if variant.hash not in found]
        if missing:
            await queries.add_hashes(
                conn,
                hashes=[variant.hash for variant in missing],
                group_id=group_id,
                variants=[variant.name for variant in missing],
                grouping_version=GROUPING_VERSION,
            )
            if matched is not None:
                reason += f"; added its {', '.join(v.name for v in missing)} hash to the group"
        root = await self.lock_root(uow, group_id)

        seen = []
        latest_release, latest_at = "", 0.0
        for name, (count, first, last) in aggregate.releases.items():
            release = await queries.upsert_release(conn, name=name)
            assert release is not None
            await queries.add_group_release(
                conn,
                group_id=group_id,
                release_id=release.id,
                first_seen_at=utc(first),
                last_seen_at=utc(last),
                events=int(count),
            )
            seen.append(ReleaseSeen(order=release.id, last_occurred_at=utc(last)))
            if last >= latest_at:
                latest_release, latest_at = name, last
        new_users = 0
        if aggregate.users:
            users = sorted(aggregate.users)
            new_users = (
                await queries.add_group_users(
                    conn, group_id=group_id, user_ids=users, seen_at=utc(aggregate.last), root_id=root.id
                )
                or 0
            )
            await queries.touch_group_users(
                conn, seen_at=utc(aggregate.last), group_id=group_id, user_ids=users
            )
        await queries.add_group_events(
            conn,
            events=aggregate.count,
            new_users=new_users,
            first_seen_at=utc(aggregate.first),
            last_seen_at=utc(aggregate.last),
            last_release=latest_release or None,
            id=group_id,
        )
        minutes = sorted(aggregate.minutes)
        await queries.add_group_counts(
            conn,
            group_id=group_id,
            minutes=[utc(minute) for minute in minutes],
            counts=[aggregate.minutes[minute] for minute in minutes],
        )
        grouping = {
            "version": GROUPING_VERSION,
            "variants": [_variant_payload(variant) for variant in fingerprint.variants],
            "matched": {"variant": matched.name, "hash": matched.hash, "group_id": group_id}
            if matched
            else None,
            "reason": reason,
        }
        last_sample: tuple[str, list[dict[str, Any]], dict[str, Any]] | None = None
        for sample in aggregate.samples:
            chain = resolve_chain(sample.chain, self.config.in_app_packages)
            exception = exception_payload(chain)
            detail = sample.context.get("detail") or sample.title or ""
            message = exception[-1]["message"] if exception else storable_scrubbed(str(detail))
            event_context = scrub_mapping({k: v for k, v in sample.context.items() if v is not None})
            await queries.insert_event(
                conn,
                group_id=group_id,
                occurred_at=utc(sample.occurred_at),
                hash=fingerprint.primary.hash,
                release=latest_release,
                environment=self.config.environment,
                message=message,
                exception=exception,
                context=event_context,
                grouping=grouping,
            )
            last_sample = (message, exception, event_context)
        await queries.trim_events(conn, group_id=group_id, keep=self.config.samples_per_group)
        if created:
            await queries.add_activity(
                conn, group_id=group_id, action="created", actor_id=None, detail={}, at=now
            )

        totals = await queries.tree_totals(conn, root_id=root.id)
        assert totals is not None

        async def events_between(since: datetime, until: datetime) -> int:
            return await queries.tree_events_between(conn, root_id=root.id, since=since, until=until) or 0

        async def users_since(since: datetime, at_most: int) -> int:
            if totals.members == 1:
                return (
                    await queries.group_users_since(conn, group_id=root.id, since=since, at_most=at_most) or 0
                )
            return await queries.tree_users_since(conn, root_id=root.id, since=since, at_most=at_most) or 0

        context = alerts.RuleContext(
            kind=root.kind,
            new=created,
            regressed=False,
            reopened=False,
            first_seen_at=totals.first_seen_at,
            now=now,
            events_between=events_between,
            users_since=users_since,
        )
        escalating = False
        if root.status == MonitoringGroupStatus.IGNORED and root.ignore_mode == "until_escalating":
            escalating = await alerts.escalating(context, self.config.escalation) is not None
        transition = decide(root, seen, total_events=totals.events, now=now, escalating=escalating)
        if transition == "regressed":
            context.resolved_by_system = bool(
                await queries.resolved_by_system(
                    conn, system_actions=list(alerts.SYSTEM_RESOLUTIONS), group_id=root.id
                )
            )
        if transition is not None:
            root = await self._apply(uow, root, transition, now)
            context.regressed = transition == "regressed"
            context.reopened = transition == "unignored"
        alert_id = None
        if root.status not in (MonitoringGroupStatus.IGNORED, MonitoringGroupStatus.RESOLVED):
            alert_id = await self._alert(uow, root, context, totals.events, last_sample, latest_release)
        return WriteResult(group_id, root.id, created, transition, alert_id)

    async def lock_root(self, uow: UnitOfWork, group_id: int) -> MonitoringGroup:
        """Lock the root of the group's tree: the root it has once the lock is held (a merge may
        have moved the group while this waited).

        Lock order: whoever locks groups locks roots only, several of them in id order (merges, the
        users purge: ``lock_roots``), and a write holds one root. A lock on a root that turned out
        stale is given back (its savepoint rolled back) before the next is taken: kept, it was a
        second root held out of id order, and the write deadlocked with the purge."""
        group = await queries.get_group(uow.conn, id=group_id)
        assert group is not None
        root_id = group.root_id
        while True:
            async with uow.conn.transaction():
                root = await queries.lock_group(uow.conn, id=root_id)
                assert root is not None
                current = await queries.get_group(uow.conn, id=group_id)
                assert current is not None
                if current.root_id == root.id:
                    return root
                root_id = current.root_id
                raise psycopg.Rollback()

    async def _apply(
        self, uow: UnitOfWork, root: MonitoringGroup, transition: str, now: datetime
    ) -> MonitoringGroup:
        status = (
            MonitoringGroupStatus.REGRESSED if transition == "regressed" else MonitoringGroupStatus.UNRESOLVED
        )
        updated = await queries.set_group_state(
            uow.conn,
            status=status,
            status_changed_at=now,
            resolved_at=None,
            resolved_in_release_id=None,
            resolved_after_release_id=None,
            ignore_mode=None,
            ignore_until_events=None,
            ignore_until=None,
            id=root.id,
        )
        assert updated is not None
        detail = _unignored_detail(root) if transition == "unignored" else {}
        await queries.add_activity(
            uow.conn, group_id=root.id, action=transition, actor_id=None, detail=detail, at=now
        )
        return updated

    async def _alert(
        self,
        uow: UnitOfWork,
        root: MonitoringGroup,
        context: alerts.RuleContext,
        events: int,
        sample: tuple[str, list[dict[str, Any]], dict[str, Any]] | None,
        release: str,
    ) -> int | None:
        matching = await alerts.matching(self.config.rules, context)
        # Read under the root's row lock, as the mark below is written: writers of one group take
        # turns, so two of them never both see the group unalerted.
        recently_alerted = bool(
            matching
            and self.config.group_gap_s > 0
            and await queries.group_alerted_after(
                uow.conn,
                gap_rule=alerts.GROUP_GAP_RULE,
                group_id=root.id,
                cutoff=context.now - timedelta(seconds=self.config.group_gap_s),
            )
        )
        fired = []
        for candidate in matching:
            if recently_alerted and not alerts.always_alerts(candidate.rule, context):
                continue
            cutoff = context.now - timedelta(seconds=candidate.rule.action_interval_s)
            if await queries.fire_rule(
                uow.conn, rule=candidate.rule.name, group_id=root.id, now=context.now, cutoff=cutoff
            ):
                fired.append(candidate)
        if not fired:
            return None
        await queries.mark_group_alerted(
            uow.conn, gap_rule=alerts.GROUP_GAP_RULE, group_id=root.id, now=context.now
        )
        users = await queries.tree_users(uow.conn, root_id=root.id) or 0
        if sample is None:
            latest = await queries.latest_tree_event(uow.conn, root_id=root.id)
            sample = (latest.message, latest.exception, latest.context) if latest else ("", [], {})
        message, exception, event_context = sample
        summary, rendered = messages.alert_message(
            rules=[(item.rule.name, item.reason) for item in fired],
            group_id=root.id,
            kind=root.kind,
            title=root.title,
            culprit=root.culprit,
            events=events,
            users=users,
            first_seen_at=context.first_seen_at,
            environment=self.config.environment,
            release=release or root.last_release or "",
            context=event_context,
            message=message,
            exception=exception,
        )
        first = fired[0].rule.name
        key = (
            f"new-group:{root.id}"
            if first == "new-group"
            else f"{first}:{root.id}:{context.now.timestamp():.6f}"
        )
        alert = await alerts.record_alert(
            uow,
            self.config.channel,
            key=key,
            rule=",".join(item.rule.name for item in fired),
            group_id=root.id,
            summary=summary,
            rendered=rendered,
            now=context.now,
        )
        return alert.id if alert is not None else None


def _unignored_detail(root: MonitoringGroup) -> dict[str, Any]:
    """How the ignore that the event ends was set (an expired one has had its mode cleared)."""
    if root.ignore_ended_at is not None:
        return {"ignore_mode": MonitoringIgnoreMode.UNTIL_TIME, "ended_at": root.ignore_ended_at.isoformat()}
    return {"ignore_mode": root.ignore_mode}


async def set_state(
    uow: UnitOfWork,
    group: MonitoringGroup,
    status: MonitoringGroupStatus,
    at: datetime,
    *,
    resolved_at: datetime | None = None,
    resolved_in_release_id: int | None = None,
    resolved_after_release_id: int | None = None,
    ignore_mode: MonitoringIgnoreMode | None = None,
    ignore_until_events: int | None = None,
    ignore_until: datetime | None = None,
) -> MonitoringGroup:
    updated = await queries.set_group_state(
        uow.conn,
        status=status,
        status_changed_at=at,
        resolved_at=resolved_at,
        resolved_in_release_id=resolved_in_release_id,
        resolved_after_release_id=resolved_after_release_id,
        ignore_mode=ignore_mode,
        ignore_until_events=ignore_until_events,
        ignore_until=ignore_until,
        id=group.id,
    )
    assert updated is not None
    return updated


async def lock_roots(uow: UnitOfWork, group_ids: Sequence[int]) -> list[int]:
    """Lock those of ``group_ids`` that are roots, in id order, one at a time: the ids locked, each
    still a root once held. A group a merge moved meanwhile is given back (its savepoint rolled
    back) before the next is locked: held, a non-root waited for its new root's writer, which waits
    for that group (``GroupWriter.lock_root``'s lock order)."""
    locked = []
    for group_id in sorted(set(group_ids)):
        async with uow.conn.transaction():
            group = await queries.lock_group(uow.conn, id=group_id)
            if group is None or group.root_id != group.id:
                raise psycopg.Rollback()
            locked.append(group_id)
    return locked
