"""The admin routes' answers built from rows and the service's results (``controllers.py`` stays
HTTP only)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from app.core.wire import from_row
from app.db.models import MonitoringCronMonitor, MonitoringEvent, MonitoringFingerprint, MonitoringGroup
from app.db.monitoring import (
    JobRunsBetweenRow,
    ListAlertsRow,
    ListGroupAlertsRow,
    ListGroupsRow,
    ListGroupsWithStatusAndKindRow,
)
from app.domains.monitoring import fingerprint
from app.domains.monitoring.crons import next_slot
from app.domains.monitoring.performance import RouteLatency
from app.domains.monitoring.schemas import (
    AlertOut,
    CronMonitorOut,
    DeliveryOut,
    ErrorEventOut,
    ExceptionOut,
    ExemplarOut,
    GroupDetailOut,
    GroupingOut,
    GroupOut,
    HashOut,
    JobStatsOut,
    MatchOut,
    ReleaseOut,
    RouteLatencyOut,
    VariantOut,
)
from app.domains.monitoring.triage import GroupDetail


def group_out(row: ListGroupsRow | ListGroupsWithStatusAndKindRow) -> GroupOut:
    return from_row(GroupOut, row, count=row.events, merged_groups=row.members - 1)


def event_out(row: MonitoringEvent) -> ErrorEventOut:
    return from_row(ErrorEventOut, row, exception=msgspec.convert(row.exception, list[ExceptionOut]))


def detail_out(detail: GroupDetail) -> GroupDetailOut:
    """The group's own columns, and what its tree adds up to (``GroupDetail``)."""
    return from_row(
        GroupDetailOut,
        detail.group,
        count=detail.events,
        users=detail.users,
        first_seen_at=detail.first_seen_at,
        last_seen_at=detail.last_seen_at,
        resolved_in_release=detail.resolved_in_release,
        resolved_after_release=detail.resolved_after_release,
        merged_into=detail.group.parent_id,
        members=detail.members,
        releases=[from_row(ReleaseOut, release) for release in detail.releases],
        latest_event=event_out(detail.latest) if detail.latest else None,
    )


def alert_out(row: ListAlertsRow | ListGroupAlertsRow) -> AlertOut:
    """``row.deliveries`` holds ``status:chat_id`` per delivery (``sql/queries/monitoring.sql``)."""
    parts = (item.partition(":") for item in row.deliveries)
    return from_row(
        AlertOut, row, deliveries=[DeliveryOut(chat_id=chat, status=status) for status, _, chat in parts]
    )


def grouping_out(
    group: MonitoringGroup, hashes: list[MonitoringFingerprint], latest: MonitoringEvent | None
) -> GroupingOut:
    """The group's hashes, and which of the latest event's variants matched and why (as the event's
    stored ``grouping`` record says; a record of an older shape leaves fields empty, never a 500)."""
    held = {row.hash for row in hashes}
    match = None
    if latest is not None and isinstance(latest.grouping, dict):
        grouping = latest.grouping
        matched = grouping.get("matched") or {}
        match = MatchOut(
            event_id=latest.id,
            hash=latest.hash,
            matched_variant=matched.get("variant"),
            reason=str(grouping.get("reason", "")),
            grouping_version=str(grouping.get("version", "")),
            variants=[
                VariantOut(
                    name=str(v.get("name")),
                    hash=str(v.get("hash")),
                    held_by_group=v.get("hash") in held,
                    components=[str(c) for c in v.get("components", [])],
                )
                for v in grouping.get("variants", [])
            ],
        )
    return GroupingOut(
        group_id=group.id,
        root_id=group.root_id,
        grouping_version=fingerprint.GROUPING_VERSION,
        rules=fingerprint.GROUPING_RULES,
        hashes=[from_row(HashOut, row) for row in hashes],
        latest_event=match,
    )


def route_latency_out(route: RouteLatency) -> RouteLatencyOut:
    return RouteLatencyOut(
        method=route.method,
        route=route.route,
        requests=route.stats.requests,
        p50_ms=route.stats.p50_ms,
        p95_ms=route.stats.p95_ms,
        p99_ms=route.stats.p99_ms,
        slow=route.slow,
        exemplars=[from_row(ExemplarOut, exemplar) for exemplar in route.exemplars],
    )


def cron_monitor_out(monitor: MonitoringCronMonitor, now: datetime) -> CronMonitorOut:
    return from_row(CronMonitorOut, monitor, next_run_at=next_slot(monitor.schedule, now))


def job_stats_out(rows: list[JobRunsBetweenRow]) -> list[JobStatsOut]:
    """One line per job from its rows per outcome (``complete``, ``failed``, ``retried``, ``aborted``)."""
    by_job: dict[str, dict[str, JobRunsBetweenRow]] = {}
    for row in rows:
        by_job.setdefault(row.job, {})[row.outcome] = row
    stats = []
    for job, outcomes in sorted(by_job.items()):
        runs = sum(row.runs for row in outcomes.values())
        stats.append(
            JobStatsOut(
                job=job,
                runs=runs,
                complete=outcomes["complete"].runs if "complete" in outcomes else 0,
                failed=outcomes["failed"].runs if "failed" in outcomes else 0,
                retried=outcomes["retried"].runs if "retried" in outcomes else 0,
                aborted=outcomes["aborted"].runs if "aborted" in outcomes else 0,
                avg_ms=sum(row.total_ms for row in outcomes.values()) / runs if runs else 0.0,
                max_ms=max(row.max_ms for row in outcomes.values()),
                max_attempts=max(row.max_attempts for row in outcomes.values()),
                last_minute=max(row.last_minute for row in outcomes.values()),
            )
        )
    return stats
