"""Wire shapes of the monitoring admin API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from app.core.pagination import Page
from app.core.types import MAX_ID, Id, require_in_calendar, whole
from app.db.models import MonitoringGroupKind, MonitoringGroupStatus, MonitoringIgnoreMode

MAX_RELEASE_NAME = 200
DETAIL_RELEASES = 50
"""A group's detail lists at most this many of its releases: those seen most recently."""
RELEASE_NAME = whole(r"[^\x00-\x1f\x7f]+")
"""A release's name: no control characters (nor NUL, which PostgreSQL refuses)."""
ReleaseName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_RELEASE_NAME, pattern=RELEASE_NAME, examples=["v1.4.2"])
]
"""In a body. A query parameter carries the same bounds on its ``QueryParameter`` marker (Litestar
ignores msgspec's ``Meta`` there): ``min_length=1, max_length=MAX_RELEASE_NAME, pattern=RELEASE_NAME``."""


class GroupOut(msgspec.Struct, frozen=True):
    id: int
    kind: MonitoringGroupKind
    title: str
    culprit: str
    status: MonitoringGroupStatus
    count: int
    """Events of the group (and of the groups merged into it)."""
    users: int
    """Distinct users affected."""
    first_seen_at: datetime
    last_seen_at: datetime
    last_release: str | None
    status_changed_at: datetime
    resolved_at: datetime | None
    ignore_mode: MonitoringIgnoreMode | None
    ignore_until_events: int | None
    ignore_until: datetime | None
    merged_groups: int
    """Groups merged into this one (0 when none)."""


class FrameOut(msgspec.Struct, frozen=True):
    module: str
    function: str
    filename: str
    lineno: int
    context_line: str | None
    in_app: bool


class ExceptionOut(msgspec.Struct, frozen=True):
    type: str
    message: str
    frames: list[FrameOut]


class ErrorEventOut(msgspec.Struct, frozen=True):
    id: int
    group_id: int
    occurred_at: datetime
    hash: str
    release: str
    environment: str
    message: str
    exception: list[ExceptionOut]
    context: dict[str, Any]
    """Route, method, request id, user id, job, attempts ... (scrubbed; bodies are never stored)."""


class ReleaseOut(msgspec.Struct, frozen=True):
    name: str
    first_seen_at: datetime
    last_seen_at: datetime
    events: int


class GroupDetailOut(msgspec.Struct, frozen=True):
    id: int
    kind: MonitoringGroupKind
    title: str
    culprit: str
    status: MonitoringGroupStatus
    count: int
    users: int
    first_seen_at: datetime
    last_seen_at: datetime
    last_release: str | None
    status_changed_at: datetime
    resolved_at: datetime | None
    resolved_in_release: str | None
    resolved_after_release: str | None
    """Resolved "in the next release": events of this release, or of a release that first ran before
    it, do not regress it."""
    ignore_mode: MonitoringIgnoreMode | None
    ignore_until_events: int | None
    ignore_until: datetime | None
    merged_into: int | None
    """The group this one is merged into (its state is that group's), or null."""
    root_id: int
    members: list[int]
    """This group and every group merged into it."""
    releases: Annotated[
        list[ReleaseOut],
        msgspec.Meta(
            description=f"The releases its events came in (its merged groups' too): the {DETAIL_RELEASES} "
            "seen most recently, in the order they were first seen. A release not seen for "
            "MONITORING_RETENTION_DAYS is no longer listed."
        ),
    ]
    latest_event: ErrorEventOut | None


class ResolveNow(msgspec.Struct, tag="now", tag_field="mode", forbid_unknown_fields=True, frozen=True):
    """Resolved now: any event that occurs from now on regresses it."""


class ResolveInRelease(
    msgspec.Struct, tag="in_release", tag_field="mode", forbid_unknown_fields=True, frozen=True
):
    """Fixed in ``release``, which must have run already (a process of it started; else 422
    ``unknown-release``): events of releases that first ran before it never regress it, events of
    ``release`` itself or of one that first ran after it do. Releases are ordered by the first time
    they ran, never by comparing version strings."""

    release: ReleaseName


class ResolveInNextRelease(
    msgspec.Struct, tag="in_next_release", tag_field="mode", forbid_unknown_fields=True, frozen=True
):
    """Fixed in the next release: events of the release this server runs, or of one that first ran
    before it, never regress it; events of any release that first runs later do. Needs
    ``MONITORING_RELEASE`` set per deploy (else 409 ``release-not-configured``)."""


ResolveIn = ResolveNow | ResolveInRelease | ResolveInNextRelease


class IgnoreForever(msgspec.Struct, tag="forever", tag_field="mode", forbid_unknown_fields=True, frozen=True):
    """Ignored until someone changes it: no alerts."""


class IgnoreUntilCount(
    msgspec.Struct, tag="until_count", tag_field="mode", forbid_unknown_fields=True, frozen=True
):
    """Reopened (and alerted) after ``count`` more events."""

    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]


class IgnoreUntilTime(
    msgspec.Struct, tag="until_time", tag_field="mode", forbid_unknown_fields=True, frozen=True
):
    """Reopened at ``until`` (a time already past reopens it with its next event)."""

    until: Annotated[
        datetime,
        msgspec.Meta(tz=True, description="With its offset; in years 1 to 9999 once converted to UTC"),
    ]

    post_init_field: ClassVar[str] = "until"
    """The field ``__post_init__`` checks (so a refusal names it, not the whole body)."""

    def __post_init__(self) -> None:
        try:
            require_in_calendar(self.until)
        except ValueError as exc:
            # Said where, as msgspec says it, for a problem that lists only msgspec's first error.
            raise ValueError(f"{exc} - at `$.until`") from None


class IgnoreUntilEscalating(
    msgspec.Struct, tag="until_escalating", tag_field="mode", forbid_unknown_fields=True, frozen=True
):
    """Reopened when its rate exceeds MONITORING_ESCALATION_FACTOR x its own baseline."""


IgnoreIn = IgnoreForever | IgnoreUntilCount | IgnoreUntilTime | IgnoreUntilEscalating


class MergeIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    source_ids: Annotated[
        list[Id],
        msgspec.Meta(
            min_length=1,
            max_length=100,
            # Litestar leaves the items' bounds out of the schema: spelled out here.
            extra_json_schema={"extra": {"items": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}},
        ),
    ]
    """Groups to merge into the group of the path (each must not be merged already)."""


class HashOut(msgspec.Struct, frozen=True):
    hash: str
    variant: str
    grouping_version: str
    group_id: int
    created_at: datetime


class VariantOut(msgspec.Struct, frozen=True):
    name: str
    hash: str
    held_by_group: bool
    components: list[str]
    """What contributed to the hash, one line per exception type and frame."""


class MatchOut(msgspec.Struct, frozen=True):
    event_id: int
    hash: str
    matched_variant: str | None
    reason: str
    grouping_version: str
    variants: list[VariantOut]


class GroupingOut(msgspec.Struct, frozen=True):
    group_id: int
    root_id: int
    grouping_version: str
    """The version new events are fingerprinted with."""
    rules: str
    hashes: list[HashOut]
    latest_event: MatchOut | None
    """How the latest event was fingerprinted and which hash brought it to this group."""


class ExemplarOut(msgspec.Struct, frozen=True):
    request_id: str
    duration_ms: float
    status: int
    minute: datetime


class RouteLatencyOut(msgspec.Struct, frozen=True):
    method: str
    route: str
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    slow: bool
    """p95 above MONITORING_SLOW_P95_MS."""
    exemplars: list[ExemplarOut]


class CronMonitorOut(msgspec.Struct, frozen=True):
    name: str
    queue: str
    schedule: str
    margin_s: int
    max_runtime_s: int
    failure_threshold: int
    recovery_threshold: int
    last_status: str
    last_slot: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_duration_ms: float | None
    missed_slot: datetime | None
    consecutive_failures: int
    consecutive_ok: int
    group_id: int | None
    next_run_at: datetime


class JobStatsOut(msgspec.Struct, frozen=True):
    job: str
    runs: int
    complete: int
    failed: int
    """Failed after the last attempt."""
    retried: int
    """Attempts that failed and were retried."""
    aborted: int
    avg_ms: float
    max_ms: float
    max_attempts: int
    last_minute: datetime


class DeliveryOut(msgspec.Struct, frozen=True):
    chat_id: str
    status: str
    """``pending``, ``sending``, ``sent``, ``uncertain`` (may have arrived; never resent) or ``failed``."""


class AlertOut(msgspec.Struct, frozen=True):
    id: int
    kind: str
    """``alert`` (a rule fired), ``digest`` (the alerts over the noise budget), ``report`` (the daily
    report) or ``notice`` (the chat's deliveries lost since its last notice: ``uncertain`` or ``failed``,
    never resent)."""
    rule: str
    group_id: int | None
    summary: str
    digest_id: int | None
    """The digest this alert was folded into (it was over the noise budget)."""
    created_at: datetime
    deliveries: list[DeliveryOut]


Window = Literal["5m", "1h", "24h", "7d"]
WINDOWS = {"5m": 300, "1h": 3600, "24h": 86_400, "7d": 7 * 86_400}

GroupPage = Page[GroupOut]
EventPage = Page[ErrorEventOut]
AlertPage = Page[AlertOut]
