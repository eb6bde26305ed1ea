"""HTTP for monitoring: ``/api/admin/monitoring/...``, administrators only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from app.core.auth import Caller, requires_admin
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, IdCursor, Page, PageSize, decode_cursor, paginate
from app.core.routing import Controller
from app.core.types import MAX_ID, IdPath
from app.db.models import MonitoringGroupKind, MonitoringGroupStatus, MonitoringIgnoreMode
from app.domains.monitoring.answers import (
    alert_out,
    cron_monitor_out,
    detail_out,
    event_out,
    group_out,
    grouping_out,
    job_stats_out,
    route_latency_out,
)
from app.domains.monitoring.schemas import (
    MAX_RELEASE_NAME,
    RELEASE_NAME,
    WINDOWS,
    AlertPage,
    CronMonitorOut,
    EventPage,
    GroupDetailOut,
    GroupingOut,
    GroupPage,
    IgnoreForever,
    IgnoreIn,
    IgnoreUntilCount,
    IgnoreUntilEscalating,
    IgnoreUntilTime,
    JobStatsOut,
    MergeIn,
    ResolveIn,
    ResolveInNextRelease,
    ResolveInRelease,
    RouteLatencyOut,
    Window,
)
from app.domains.monitoring.services import MonitoringService
from app.domains.monitoring.triage import MAX_MERGED_GROUPS

Monitoring = NamedDependency[MonitoringService]


class MonitoringTestError(RuntimeError):
    """Raised on purpose by ``POST /api/admin/monitoring/test-error``."""


def _after(cursor: str | None) -> int:
    return decode_cursor(cursor, IdCursor).id if cursor else MAX_ID + 1


GroupIdQuery = Annotated[int | None, QueryParameter(ge=1, le=MAX_ID, description="Only alerts of this group")]
IGNORE_MODES: dict[type, MonitoringIgnoreMode] = {
    IgnoreForever: MonitoringIgnoreMode.FOREVER,
    IgnoreUntilCount: MonitoringIgnoreMode.UNTIL_COUNT,
    IgnoreUntilTime: MonitoringIgnoreMode.UNTIL_TIME,
    IgnoreUntilEscalating: MonitoringIgnoreMode.UNTIL_ESCALATING,
}
WindowParam = Annotated[Window, QueryParameter(description="Sliding window: 5m, 1h, 24h or 7d")]


class MonitoringController(Controller):
    path = "/api/admin/monitoring"
    tags = ["monitoring"]
    guards = [requires_admin]
    security = BEARER

    @get(
        "/errors",
        summary="Error groups (newest first), each with its event count; filter by status, kind, release",
        responses=problems(401, 403, 429),
    )
    async def list_errors(
        self,
        monitoring: Monitoring,
        status: Annotated[
            MonitoringGroupStatus | None, QueryParameter(description="Only this status")
        ] = None,
        kind: Annotated[MonitoringGroupKind | None, QueryParameter(description="Only this kind")] = None,
        release: Annotated[
            str | None,
            QueryParameter(
                description="Only groups with an event of this release (theirs or a merged group's) "
                "within MONITORING_RETENTION_DAYS",
                min_length=1,
                max_length=MAX_RELEASE_NAME,
                pattern=RELEASE_NAME,
                schema_extra={"examples": ["v1.4.2"]},
            ),
        ] = None,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> GroupPage:
        rows = await monitoring.list_groups(
            status=status, kind=kind, release=release, before_id=_after(cursor), limit=limit
        )
        return paginate(rows, limit, lambda row: IdCursor(id=row.id), group_out)

    @get(
        "/errors/{group_id:int}",
        summary="One group with its latest event",
        responses=problems(401, 403, 404, 429),
    )
    async def get_error(self, monitoring: Monitoring, group_id: IdPath) -> GroupDetailOut:
        return detail_out(await monitoring.detail(group_id))

    @get(
        "/errors/{group_id:int}/events",
        summary="Recent events of a group (a bounded sample, newest first)",
        responses=problems(401, 403, 404, 429),
    )
    async def list_error_events(
        self, monitoring: Monitoring, group_id: IdPath, cursor: CursorParam = None, limit: PageSize = 20
    ) -> EventPage:
        rows = await monitoring.list_events(group_id, before_id=_after(cursor), limit=limit)
        return paginate(rows, limit, lambda row: IdCursor(id=row.id), event_out)

    @get(
        "/errors/{group_id:int}/grouping",
        summary="How events reach this group: its hashes, and which one the latest event matched and why",
        responses=problems(401, 403, 404, 429),
    )
    async def get_grouping(self, monitoring: Monitoring, group_id: IdPath) -> GroupingOut:
        return grouping_out(*await monitoring.grouping(group_id))

    @post(
        "/errors/{group_id:int}/resolve",
        status_code=200,
        summary="Resolve: now, in a release, or in the next release",
        description='`{"mode": "now"}`: any later event regresses it. `{"mode": "in_release", "release": '
        '"1.4.0"}`: events of 1.4.0, or of a release newer than 1.4.0, regress it; events of older '
        'releases never do. `{"mode": "in_next_release"}`: events of the release this server runs, or '
        "of an older one, never regress it; events of any newer release do.\n\n"
        "Older and newer are the order in which releases first ran (a release takes its place the first "
        "time one of its processes starts, with `MONITORING_RELEASE` as its name), never a comparison of "
        "version strings: a hotfix 1.3.1 deployed after 1.4.0 is newer than 1.4.0.\n\n"
        "An event that occurred before the resolve never regresses it either (a slow route's event "
        "occurs at the first minute of the latency window that made it slow).\n\n"
        "Refused: 422 `unknown-release` when the named release has never run (it has no place in the "
        "order yet: use `in_next_release`, or wait until it has run); 409 `release-not-configured` for "
        "`in_next_release` when the server runs without `MONITORING_RELEASE` (every deploy would report "
        "the same package version); 409 `conflict` when the group is merged into another.",
        responses=problems(401, 403, 404, 409, 422, 429),
    )
    async def resolve_error(
        self, monitoring: Monitoring, current_user: Caller, group_id: IdPath, data: JSONBody[ResolveIn]
    ) -> GroupDetailOut:
        detail = await monitoring.resolve(
            group_id,
            current_user.id,
            in_release=data.release if isinstance(data, ResolveInRelease) else None,
            in_next_release=isinstance(data, ResolveInNextRelease),
        )
        return detail_out(detail)

    @post(
        "/errors/{group_id:int}/ignore",
        status_code=200,
        summary="Ignore forever, until N more events, until a time, or until it escalates",
        responses=problems(401, 403, 404, 409, 429),
    )
    async def ignore_error(
        self, monitoring: Monitoring, current_user: Caller, group_id: IdPath, data: JSONBody[IgnoreIn]
    ) -> GroupDetailOut:
        detail = await monitoring.ignore(
            group_id,
            current_user.id,
            IGNORE_MODES[type(data)],
            more_events=data.count if isinstance(data, IgnoreUntilCount) else None,
            until=data.until if isinstance(data, IgnoreUntilTime) else None,
        )
        return detail_out(detail)

    @post(
        "/errors/{group_id:int}/unresolve",
        status_code=200,
        summary="Reopen a resolved or ignored group",
        responses=problems(401, 403, 404, 409, 429),
    )
    async def reopen_error(
        self, monitoring: Monitoring, current_user: Caller, group_id: IdPath
    ) -> GroupDetailOut:
        return detail_out(await monitoring.reopen(group_id, current_user.id))

    @post(
        "/errors/{group_id:int}/merge",
        status_code=200,
        summary="Merge other groups into this one (reversible: each keeps its own counts and hashes)",
        description=f"409 `merge-too-large` when the group would hold more than {MAX_MERGED_GROUPS:,} "
        "groups (itself and every group merged into it, at any depth): its detail lists them all.",
        responses=problems(401, 403, 404, 409, 429),
    )
    async def merge_errors(
        self, monitoring: Monitoring, current_user: Caller, group_id: IdPath, data: JSONBody[MergeIn]
    ) -> GroupDetailOut:
        return detail_out(await monitoring.merge(group_id, data.source_ids, current_user.id))

    @post(
        "/errors/{group_id:int}/unmerge",
        status_code=200,
        summary="Take a merged group out again, with its own counts, hashes and state",
        responses=problems(401, 403, 404, 409, 429),
    )
    async def unmerge_error(
        self, monitoring: Monitoring, current_user: Caller, group_id: IdPath
    ) -> GroupDetailOut:
        return detail_out(await monitoring.unmerge(group_id, current_user.id))

    @get(
        "/slow-routes",
        summary="p50/p95/p99 per route over a sliding window, slowest p95 first, with exemplar request ids",
        responses=problems(401, 403, 429),
    )
    async def list_slow_routes(
        self, monitoring: Monitoring, window: WindowParam = "1h"
    ) -> Page[RouteLatencyOut]:
        routes = await monitoring.route_latency(timedelta(seconds=WINDOWS[window]))
        return Page(items=[route_latency_out(route) for route in routes])

    @get("/crons", summary="Cron monitors: one per scheduled job", responses=problems(401, 403, 429))
    async def list_cron_monitors(self, monitoring: Monitoring) -> Page[CronMonitorOut]:
        now = datetime.now(UTC)
        return Page(items=[cron_monitor_out(monitor, now) for monitor in await monitoring.cron_monitors()])

    @get("/jobs", summary="SAQ job runs per job over a window", responses=problems(401, 403, 429))
    async def list_job_stats(self, monitoring: Monitoring, window: WindowParam = "24h") -> Page[JobStatsOut]:
        return Page(items=job_stats_out(await monitoring.job_runs(timedelta(seconds=WINDOWS[window]))))

    @get(
        "/alerts",
        summary="Alerts recorded (newest first) and the state of their Telegram deliveries",
        responses=problems(401, 403, 429),
    )
    async def list_alerts(
        self,
        monitoring: Monitoring,
        group_id: GroupIdQuery = None,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> AlertPage:
        rows = await monitoring.list_alerts(group_id=group_id, before_id=_after(cursor), limit=limit)
        return paginate(rows, limit, lambda row: IdCursor(id=row.id), alert_out)

    @post(
        "/test-error",
        status_code=500,
        summary="Raise an unhandled error in this request (a deliberate 500) to test the whole pipeline",
        description="Answers the usual 500 problem; the error is captured, grouped and alerted like any "
        "other.",
        responses=problems(401, 403, 429),
    )
    async def test_error(self, monitoring: Monitoring, current_user: Caller) -> None:
        await monitoring.confirm_admin(current_user.id)
        raise MonitoringTestError(
            "Test error raised on purpose by POST /api/admin/monitoring/test-error: "
            "the monitoring pipeline works"
        )
