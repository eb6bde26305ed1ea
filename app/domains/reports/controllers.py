"""HTTP for a site's reports (``/api/sites/{site_id}/...``): the owner and admins; others get 404."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import QueryParameter

from app.core.auth import Caller, requires_user
from app.core.openapi import BEARER, problems
from app.core.routing import Controller
from app.core.types import ISO_DATE, IdPath, TimeZone
from app.domains.reports.schemas import (
    BreakdownOut,
    CurrentVisitorsOut,
    EntryPagesOut,
    Interval,
    Period,
    ReportRange,
    SummaryOut,
    TimeseriesOut,
)
from app.domains.reports.services import (
    DIMENSION_VALUES_OPEN_HOUR,
    DIMENSION_VALUES_PER_HOUR,
    ENTRY_PATHS_OPEN_HOUR,
    ENTRY_PATHS_PER_HOUR,
    RANK_CURSOR_MAX_LENGTH,
    RANK_CURSOR_PATTERN,
    ReportService,
)

Reports = NamedDependency[ReportService]
Window = NamedDependency[ReportRange]

PeriodParam = Annotated[
    Period,
    QueryParameter(
        description="`today`, the last `7d` or `30d` (today included), or `custom` (`from`..`to`)"
    ),
]
# Strings parsed by resolve_range, so that a bad value is reported as `from`/`to` (not the Python name):
# the pattern is the schema's only, checked there.
FromParam = Annotated[
    str | None,
    QueryParameter(
        name="from",
        format=OpenAPIFormat.DATE,
        schema_extra={"pattern": ISO_DATE, "examples": ["2026-11-01"]},
        description="First local day (period=custom only). Not before the first local day still kept "
        "whole (`ANALYTICS_RETENTION_DAYS` UTC days back): an earlier one is a 400 giving that day.",
    ),
]
ToParam = Annotated[
    str | None,
    QueryParameter(
        name="to",
        format=OpenAPIFormat.DATE,
        schema_extra={"pattern": ISO_DATE, "examples": ["2026-11-30"]},
        description="Last local day, inclusive (custom only)",
    ),
]
TzParam = Annotated[
    TimeZone | None,
    QueryParameter(description="IANA time zone of the day boundaries (default: the site's)"),
]
LimitParam = Annotated[int, QueryParameter(ge=1, le=100, description="At most this many rows (max 100)")]
RankCursorParam = Annotated[
    str | None,
    QueryParameter(
        pattern=RANK_CURSOR_PATTERN,
        min_length=1,
        max_length=RANK_CURSOR_MAX_LENGTH,
        schema_extra={"examples": ["t1796550000000000.1042.L3ByaWNpbmc"]},
        description="Resume after this position: the previous page's `next_cursor` (`t<the walk's first "
        "page, in microseconds since 1970>.<count>.<value as unpadded base64url>`; anything else is a "
        "400 `invalid-cursor`).",
    ),
]
PAGED_DOC = (
    " Paged by `limit` and `cursor`: `next_cursor` continues after the last row shown (null on the last"
    " page), on the order shown. The pages of a walk (a first page, then each page's `next_cursor`) read"
    " the counts as of the first page, the views received since left out, so that views arriving"
    " meanwhile move no value past the cursor; for three minutes from the first page. Not held so: the"
    " rollup folding an hour's values past its top 100 into `(other)` (at the end of each hour, and in"
    " an hour with more than 1,000 values), and a view received just before the first page but stored"
    " just after it. A page after the three minutes reads the counts of the moment. Where counts change"
    " under a walk, a value may be listed twice or not at all; the pages of a period that ended"
    " more than a day ago and was rolled up since (no late view can change it: a day and about ten"
    " minutes after its end) list each value once whenever they are read."
)

OTHER_DOC = (
    f" Values are counted per UTC hour, keeping the {DIMENSION_VALUES_PER_HOUR} most viewed of each hour:"
    " the views of that hour's other values are counted under the value `(other)`, listed like any value,"
    " so no view is missing from the list; a value's count leaves out the views of the hours it was not"
    f" among the top {DIMENSION_VALUES_PER_HOUR} of (an hour keeps up to"
    f" {DIMENSION_VALUES_OPEN_HOUR:,} values until it has ended, and is then ranked on every view of it"
    " received by then; a view arriving later is ranked with the views that arrive with it), and a real"
    " value spelled"
    " `(other)` is counted with them. Views read raw are counted under their own values: those not rolled"
    " up yet (about the last five to ten minutes) and, for a zone whose offset is not a whole hour, those"
    " of the UTC hours the period's ends cut."
)
ENTRY_DOC = (
    "Most visits first, then by path. Visits are counted per UTC hour of their start, keeping the"
    f" {ENTRY_PATHS_PER_HOUR} most visited entry paths of each hour: the visits of that hour's other paths"
    " are counted under the path `(other)`, listed like any path, so no visit is missing from the list (a"
    f" real path spelled `(other)` is counted with them). An hour keeps up to {ENTRY_PATHS_OPEN_HOUR:,}"
    " paths until it has ended, and is then ranked on every visit of it counted by then; a path new to an"
    f" hour that has ended gets its own count while the hour has fewer than {ENTRY_PATHS_PER_HOUR}. Visits"
    " made or changed by views not rolled up yet (about the last five to ten minutes) and, for a zone whose"
    " offset is not a whole hour, the visits starting in the UTC hours the period's ends cut are counted"
    " under their own paths."
)

RANGE_DOC = (
    " Bots are excluded. The period is made of local days of `tz` (the database's time-zone data decides "
    "where they start and how buckets are labelled); the answer may lag the data by a few seconds "
    "(cached). A custom period starting before the first day still kept (`ANALYTICS_RETENTION_DAYS`) is "
    "a 400 problem naming `query.from`, whose message gives the first day kept; 7d and 30d start at "
    "that day when the retention is shorter (see `range.first_day`)."
)
TURNS_DOC = (
    " A report the cache does not hold is computed in turns (`REPORT_LOADS_MAX` at once per server process,"
    " `REPORT_LOADS_PER_ACCOUNT` of them per account): one that waits longer than `DATABASE_TIMEOUT_S` for"
    " its turn is a 429 `report-loads-in-flight` (the caller's own reports fill its turns) or a 503"
    " `reports-busy`, both with `Retry-After`."
)


async def provide_window(
    site_id: IdPath,
    reports: Reports,
    current_user: Caller,
    period: PeriodParam = "30d",
    first: FromParam = None,
    last: ToParam = None,
    tz: TzParam = None,
) -> ReportRange:
    """The report's period on the site's clock (unless ``tz``), after the owner-or-admin check.

    Not a generator dependency holding the request's transaction: the report borrows a connection of
    its own, so a request would hold two at once (a few concurrent reports could exhaust the pool),
    and Litestar does not close generator dependencies already resolved when a later one raises.
    ``ReportService.window`` holds a connection only for the check.
    """
    return await reports.window(current_user, site_id, period, first, last, str(tz) if tz else None)


class SiteReportsController(Controller):
    path = "/api/sites/{site_id:int}"
    tags = ["analytics"]
    guards = [requires_user]
    security = BEARER
    dependencies = {"window": Provide(provide_window)}

    @get(
        "/summary",
        summary="Pageviews, unique visitors, visits, bounce rate and views per visit of a period",
        description="Visits end after 30 minutes without a view; a bounce is a visit of one view. A visit "
        "counts in the period it starts in. Visitor ids rotate daily (privacy): one person on two days "
        "counts twice." + RANGE_DOC + TURNS_DOC,
        responses=problems(401, 404, 429),
    )
    async def site_summary(
        self, site_id: IdPath, reports: Reports, window: Window, current_user: Caller
    ) -> SummaryOut:
        return await reports.summary(site_id, window, account=current_user.id)

    @get(
        "/timeseries",
        summary="Pageviews, visitors and visits per local hour or day",
        description="Every bucket of the period, empty ones included. Hourly series cover at most 31 days."
        + RANGE_DOC
        + TURNS_DOC,
        responses=problems(401, 404, 429),
    )
    async def site_timeseries(
        self,
        site_id: IdPath,
        reports: Reports,
        window: Window,
        current_user: Caller,
        interval: Annotated[Interval, QueryParameter(description="Bucket size")] = "day",
    ) -> TimeseriesOut:
        return await reports.timeseries(site_id, window, interval, account=current_user.id)

    @get(
        "/pages",
        summary="Top pages by views",
        description="Most viewed first, then by path." + OTHER_DOC + PAGED_DOC + RANGE_DOC + TURNS_DOC,
        responses=problems(401, 404, 429),
    )
    async def site_pages(
        self,
        site_id: IdPath,
        reports: Reports,
        window: Window,
        current_user: Caller,
        limit: LimitParam = 10,
        cursor: RankCursorParam = None,
    ) -> BreakdownOut:
        return await reports.breakdown(site_id, window, "path", limit, cursor, account=current_user.id)

    @get(
        "/referrers",
        summary="Top referrer sources by views",
        description="An empty source is direct traffic (never counted in `(other)`)."
        + OTHER_DOC
        + PAGED_DOC
        + RANGE_DOC
        + TURNS_DOC,
        responses=problems(401, 404, 429),
    )
    async def site_referrers(
        self,
        site_id: IdPath,
        reports: Reports,
        window: Window,
        current_user: Caller,
        limit: LimitParam = 10,
        cursor: RankCursorParam = None,
    ) -> BreakdownOut:
        return await reports.breakdown(
            site_id, window, "referrer_source", limit, cursor, account=current_user.id
        )

    @get(
        "/campaigns",
        summary="Top UTM campaigns by views",
        description="Views without a campaign are not listed."
        + OTHER_DOC
        + PAGED_DOC
        + RANGE_DOC
        + TURNS_DOC,
        responses=problems(401, 404, 429),
    )
    async def site_campaigns(
        self,
        site_id: IdPath,
        reports: Reports,
        window: Window,
        current_user: Caller,
        limit: LimitParam = 10,
        cursor: RankCursorParam = None,
    ) -> BreakdownOut:
        return await reports.breakdown(
            site_id, window, "utm_campaign", limit, cursor, account=current_user.id
        )

    @get(
        "/devices",
        summary="Views by device type",
        description=OTHER_DOC.lstrip() + PAGED_DOC + RANGE_DOC + TURNS_DOC,
        responses=problems(401, 404, 429),
    )
    async def site_devices(
        self,
        site_id: IdPath,
        reports: Reports,
        window: Window,
        current_user: Caller,
        limit: LimitParam = 10,
        cursor: RankCursorParam = None,
    ) -> BreakdownOut:
        return await reports.breakdown(site_id, window, "device", limit, cursor, account=current_user.id)

    @get(
        "/browsers",
        summary="Views by browser",
        description=OTHER_DOC.lstrip() + PAGED_DOC + RANGE_DOC + TURNS_DOC,
        responses=problems(401, 404, 429),
    )
    async def site_browsers(
        self,
        site_id: IdPath,
        reports: Reports,
        window: Window,
        current_user: Caller,
        limit: LimitParam = 10,
        cursor: RankCursorParam = None,
    ) -> BreakdownOut:
        return await reports.breakdown(site_id, window, "browser", limit, cursor, account=current_user.id)

    @get(
        "/entry-pages",
        summary="Entry pages: the first page of the visits that start in the period",
        description=ENTRY_DOC + PAGED_DOC + RANGE_DOC + TURNS_DOC,
        responses=problems(401, 404, 429),
    )
    async def site_entry_pages(
        self,
        site_id: IdPath,
        reports: Reports,
        window: Window,
        current_user: Caller,
        limit: LimitParam = 10,
        cursor: RankCursorParam = None,
    ) -> EntryPagesOut:
        return await reports.entry_pages(site_id, window, limit, cursor, account=current_user.id)

    @get(
        "/current-visitors",
        summary="Distinct visitors with a view in the last five minutes (bots excluded)",
        description=TURNS_DOC.lstrip(),
        responses=problems(401, 404, 429),
    )
    async def current_visitors(
        self, site_id: IdPath, current_user: Caller, reports: Reports
    ) -> CurrentVisitorsOut:
        return await reports.current_visitors_for(current_user, site_id)
