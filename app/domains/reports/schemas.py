"""Wire shapes of the analytics reports (every instant is UTC; `local` fields are in the report's tz)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

Period = Literal["today", "7d", "30d", "custom"]
Interval = Literal["hour", "day"]
Dimension = Literal["path", "referrer_source", "utm_campaign", "device", "browser"]


class ReportRange(msgspec.Struct, frozen=True):
    """The local days ``first_day`` .. ``last_day`` (inclusive) of ``tz``, i.e. [start, end) in UTC."""

    period: Period
    tz: str
    first_day: date
    last_day: date
    start: datetime
    end: datetime


class SummaryOut(msgspec.Struct, frozen=True):
    range: ReportRange
    pageviews: int
    bot_pageviews: int
    visitors: int
    visits: int
    bounces: int
    bounce_rate: float
    views_per_visit: float


class TimeseriesPoint(msgspec.Struct, frozen=True):
    start: datetime
    local: str
    pageviews: int
    visitors: int
    visits: int


class TimeseriesOut(msgspec.Struct, frozen=True):
    range: ReportRange
    interval: Interval
    points: list[TimeseriesPoint]


class BreakdownItem(msgspec.Struct, frozen=True):
    value: str
    views: int


class BreakdownOut(msgspec.Struct, frozen=True):
    range: ReportRange
    dimension: Dimension
    items: list[BreakdownItem]
    next_cursor: str | None = None


class RankCursor(msgspec.Struct, frozen=True):
    """The position of a breakdown's (or the entry pages') last row shown: its count and its value,
    as unpadded base64url of its UTF-8 (a value may hold any character, dots included), after the
    walk's instant (``t`` and microseconds since the epoch, ``_ranked_page``), so that the cursor
    reads ``t<instant>.<count>.<value>``; a walk without an instant (its cursor from an earlier
    release) goes on with ``<count>.<value>``. ``app.core.pagination``'s cursors hold integers and
    literals only."""

    walk: str
    count: Annotated[int, msgspec.Meta(ge=0)]
    value_b64: str


class LiveRankCursor(msgspec.Struct, frozen=True):
    """``RankCursor`` without the walk's instant."""

    count: Annotated[int, msgspec.Meta(ge=0)]
    value_b64: str


class EntryPageItem(msgspec.Struct, frozen=True):
    path: str
    visits: int
    bounces: int
    bounce_rate: float


class EntryPagesOut(msgspec.Struct, frozen=True):
    range: ReportRange
    items: list[EntryPageItem]
    next_cursor: str | None = None


class CurrentVisitorsOut(msgspec.Struct, frozen=True):
    visitors: int
    window_s: int
    since: datetime
