"""HTTP for a site's reports (``/api/sites/{site_id}/...``): the owner and admins; others get 404."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import FromPath, QueryParameter

from app.core.db import UnitOfWork
from app.core.openapi import problems
from app.domains.accounts.guards import requires_user
from app.domains.accounts.services import CurrentUser
from app.domains.analytics import sites
from app.domains.analytics.report_schemas import (
    BreakdownOut,
    CurrentVisitorsOut,
    Dimension,
    EntryPagesOut,
    Interval,
    Period,
    ReportRange,
    SummaryOut,
    TimeseriesOut,
)
from app.domains.analytics.reports import ReportService, resolve_range

BEARER = [{"BearerToken": []}]
Reports = NamedDependency[ReportService]
Uow = NamedDependency[UnitOfWork]
Caller = NamedDependency[CurrentUser]

PeriodParam = Annotated[
    Period,
    QueryParameter(
        description="`today`, the last `7d` or `30d` (today included), or `custom` (`from`..`to`)"
    ),
]
# Strings parsed by resolve_range, so that a bad value is reported as `from`/`to` (not the Python name).
FromParam = Annotated[
    str | None,
    QueryParameter(
        name="from", format=OpenAPIFormat.DATE, description="First local day (period=custom only)"
    ),
]
ToParam = Annotated[
    str | None,
    QueryParameter(
        name="to", format=OpenAPIFormat.DATE, description="Last local day, inclusive (custom only)"
    ),
]
TzParam = Annotated[
    str | None,
    QueryParameter(
        min_length=1, max_length=64, description="IANA time zone of the day boundaries (default: the site's)"
    ),
]
LimitParam = Annotated[int, QueryParameter(ge=1, le=100, description="At most this many rows (max 100)")]

RANGE_DOC = (
    " Bots are excluded. The period is made of local days of `tz`; the answer may lag the data by a "
    "few seconds (cached)."
)


class SiteReportsController(Controller):
    path = "/api/sites/{site_id:int}"
    tags = ["analytics"]
    guards = [requires_user]
    security = BEARER

    @staticmethod
    async def _range(
        uow: UnitOfWork,
        caller: CurrentUser,
        site_id: int,
        period: Period,
        first: str | None,
        last: str | None,
        tz: str | None,
    ) -> ReportRange:
        site = await sites.get_site_for(uow, caller, site_id)
        return resolve_range(period, first, last, tz or site.timezone)

    @get(
        "/summary",
        summary="Pageviews, unique visitors, visits, bounce rate and views per visit of a period",
        description="Visits end after 30 minutes without a view; a bounce is a visit of one view. A visit "
        "counts in the period it starts in. Visitor ids rotate daily (privacy): one person on two days "
        "counts twice." + RANGE_DOC,
        responses=problems(401, 404, 429),
    )
    async def summary(
        self,
        site_id: FromPath[int],
        uow: Uow,
        current_user: Caller,
        reports: Reports,
        period: PeriodParam = "30d",
        first: FromParam = None,
        last: ToParam = None,
        tz: TzParam = None,
    ) -> SummaryOut:
        rng = await self._range(uow, current_user, site_id, period, first, last, tz)
        return await reports.summary(site_id, rng)

    @get(
        "/timeseries",
        summary="Pageviews, visitors and visits per local hour or day",
        description="Every bucket of the period, empty ones included. Hourly series cover at most 31 days."
        + RANGE_DOC,
        responses=problems(401, 404, 429),
    )
    async def timeseries(
        self,
        site_id: FromPath[int],
        uow: Uow,
        current_user: Caller,
        reports: Reports,
        period: PeriodParam = "30d",
        first: FromParam = None,
        last: ToParam = None,
        tz: TzParam = None,
        interval: Annotated[Interval, QueryParameter(description="Bucket size")] = "day",
    ) -> TimeseriesOut:
        rng = await self._range(uow, current_user, site_id, period, first, last, tz)
        return await reports.timeseries(site_id, rng, interval)

    async def _breakdown(
        self,
        reports: ReportService,
        uow: UnitOfWork,
        caller: CurrentUser,
        site_id: int,
        dimension: Dimension,
        period: Period,
        first: str | None,
        last: str | None,
        tz: str | None,
        limit: int,
    ) -> BreakdownOut:
        rng = await self._range(uow, caller, site_id, period, first, last, tz)
        return await reports.breakdown(site_id, rng, dimension, limit)

    @get("/pages", summary="Top pages by views", description=RANGE_DOC, responses=problems(401, 404, 429))
    async def pages(
        self,
        site_id: FromPath[int],
        uow: Uow,
        current_user: Caller,
        reports: Reports,
        period: PeriodParam = "30d",
        first: FromParam = None,
        last: ToParam = None,
        tz: TzParam = None,
        limit: LimitParam = 10,
    ) -> BreakdownOut:
        return await self._breakdown(
            reports, uow, current_user, site_id, "path", period, first, last, tz, limit
        )

    @get(
        "/referrers",
        summary="Top referrer sources by views",
        description="An empty source is direct traffic." + RANGE_DOC,
        responses=problems(401, 404, 429),
    )
    async def referrers(
        self,
        site_id: FromPath[int],
        uow: Uow,
        current_user: Caller,
        reports: Reports,
        period: PeriodParam = "30d",
        first: FromParam = None,
        last: ToParam = None,
        tz: TzParam = None,
        limit: LimitParam = 10,
    ) -> BreakdownOut:
        return await self._breakdown(
            reports, uow, current_user, site_id, "referrer_source", period, first, last, tz, limit
        )

    @get(
        "/campaigns",
        summary="Top UTM campaigns by views",
        description="Views without a campaign are not listed." + RANGE_DOC,
        responses=problems(401, 404, 429),
    )
    async def campaigns(
        self,
        site_id: FromPath[int],
        uow: Uow,
        current_user: Caller,
        reports: Reports,
        period: PeriodParam = "30d",
        first: FromParam = None,
        last: ToParam = None,
        tz: TzParam = None,
        limit: LimitParam = 10,
    ) -> BreakdownOut:
        return await self._breakdown(
            reports, uow, current_user, site_id, "utm_campaign", period, first, last, tz, limit
        )

    @get("/devices", summary="Views by device type", description=RANGE_DOC, responses=problems(401, 404, 429))
    async def devices(
        self,
        site_id: FromPath[int],
        uow: Uow,
        current_user: Caller,
        reports: Reports,
        period: PeriodParam = "30d",
        first: FromParam = None,
        last: ToParam = None,
        tz: TzParam = None,
        limit: LimitParam = 10,
    ) -> BreakdownOut:
        return await self._breakdown(
            reports, uow, current_user, site_id, "device", period, first, last, tz, limit
        )

    @get("/browsers", summary="Views by browser", description=RANGE_DOC, responses=problems(401, 404, 429))
    async def browsers(
        self,
        site_id: FromPath[int],
        uow: Uow,
        current_user: Caller,
        reports: Reports,
        period: PeriodParam = "30d",
        first: FromParam = None,
        last: ToParam = None,
        tz: TzParam = None,
        limit: LimitParam = 10,
    ) -> BreakdownOut:
        return await self._breakdown(
            reports, uow, current_user, site_id, "browser", period, first, last, tz, limit
        )

    @get(
        "/entry-pages",
        summary="Entry pages: the first page of the visits that start in the period",
        description=RANGE_DOC,
        responses=problems(401, 404, 429),
    )
    async def entry_pages(
        self,
        site_id: FromPath[int],
        uow: Uow,
        current_user: Caller,
        reports: Reports,
        period: PeriodParam = "30d",
        first: FromParam = None,
        last: ToParam = None,
        tz: TzParam = None,
        limit: LimitParam = 10,
    ) -> EntryPagesOut:
        rng = await self._range(uow, current_user, site_id, period, first, last, tz)
        return await reports.entry_pages(site_id, rng, limit)

    @get(
        "/current-visitors",
        summary="Distinct visitors with a view in the last five minutes (bots excluded)",
        responses=problems(401, 404, 429),
    )
    async def current_visitors(
        self, site_id: FromPath[int], uow: Uow, current_user: Caller, reports: Reports
    ) -> CurrentVisitorsOut:
        await sites.get_site_for(uow, current_user, site_id)
        return await reports.current_visitors(site_id)
