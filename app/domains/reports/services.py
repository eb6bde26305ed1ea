"""Analytics reports: rollups kept up to date by a cron job, plus the raw rows not rolled up yet.

The watermark rule. ``analytics_rollup_state.rolled_up_to`` (W) is a multiple of ``ROLLUP_STEP`` (five
minutes) in UTC: every raw row with ``received_at < W`` is in the rollup tables, exactly once, and no
row with ``received_at >= W`` is. A report is one SQL statement (one snapshot) that adds the rollups
to the raw rows received at or after W, so the two halves neither overlap nor leave a gap, even while
the job commits. Rollups are keyed by the UTC hour of ``ts``: a late row (``ts`` up to 24 h old) is
added to its own hour when its ``received_at`` is rolled up.

The job (``rollup``, every minute) moves W up to an hour of ``received_at`` per transaction, up to the
last complete step that ended at least ``ROLLUP_GRACE`` (``ROLLUP_GRACE_S``, 4 minutes) ago. Every
report reads the rows received since W raw, so the step and the grace bound its cost: 4 to 9 minutes of
ingest (W on whole hours with a 10-minute grace left up to 70, over the statement timeout for a site at
its quota, and seconds per report for a busy one). The ingest stamps
``received_at`` when it handles the request, before the row waits in the sink's queue and write, so a
row stamped before the new W must have committed by then. A row committed later than that would be
missed by both halves (stored, yet in no report). A request cancelled or given up by its client is
still written with its batch and its stamp, so the wait is bounded by the sink, not by the request:
the sink answers 503, unwritten, a request that waited in its queue for over ``SINK_MAX_QUEUE_S``, so
the wait stays within ``app.config.sink_commit_bound_s`` whatever the queue's depth, and
``load_settings`` refuses a ``DATABASE_TIMEOUT_S`` that would take it within ``INGEST_MARGIN_S`` (the
steps between the stamp and the queue, and clock skew) of the grace. The stamp stays the request's,
not the write's: ``ts`` is clamped to at most 24 hours before the same clock reading, and the rollup
and the raw half prune partitions by that (``ts >= received_from - 24 hours``); a stamp
taken after the queue could be further from a late ``ts`` than that.
An advisory lock keeps concurrent runs apart, and the watermark moves in the transaction that adds the
window, so a run that fails or repeats adds nothing twice.

Periods are local days of a time zone (the site's by default). A rollup hour that does not lie inside
one bucket of a report (only in zones with a fractional offset, such as Asia/Kolkata: every hour of an
hourly series, the hour of each local midnight) is read from its quarter hours in a time series
(``page_view_hourly.pageviews_00`` .. ``_45`` and ``page_view_hourly_visitors.seen_quarters``; every
zone's offset is a multiple of 15 minutes, so every bucket starts on a UTC quarter hour; the rule is
``analytics_hour_from_quarters``). It is read raw in the other reports (the dimensions keep no
quarters; the summary and breakdowns read the two hours the period's ends cut) and when it has no
quarters: rolled up before they existed, or since added to by the previous release's rollup, which
made it forget them (the trigger of migration 20261205030000).

Visitors and visits are read from counts, never per visitor over a whole period (the ingest key is
public: each new user agent is a visitor, and a report that read them all grew with them). Visitor ids
change at UTC midnight (the daily salt), so a bucket's visitors are the sum of its parts' of UTC days.
Triggers on the visitor rows and the visits keep, per site and UTC day, each visitor once with the
first and last quarter hour it was seen in and all the quarter hours it was seen in
(``page_view_daily_visitors``), per quarter hour how many of the day's visitors were first and last
seen in it, how many were seen in the hour that starts at it (off the hour) and how many visits
started in it (``page_view_quarters``), and each hour's visitors (``page_view_hourly.visitors``): a
part that starts its day is read from the first-seen counts, one that ends it from the last-seen
counts, a whole UTC hour from the hour's, an hour of a fractional zone from its first quarter's
(``analytics_bucket_visitors``, ``analytics_bucket_visits``). Only a part that is none of these (a cut
in an hour rolled up without quarters, a local hour of 30 minutes) is read per visitor: at most an
hourly series' 31 days.

The entry pages are read from counts too: per site, UTC hour and entry path, the visits that started
in it and their bounces (``page_view_entry_hourly``, kept by triggers on the visits), at most
``ENTRY_PATHS_PER_HOUR`` paths a closed hour, the rest in ``OTHER_VALUE``: a report reads at most 101
rows per closed hour, as the breakdowns do, and per visit only the hours a fractional zone cuts.

One time-zone database. The buckets are PostgreSQL's (``analytics_bucket_key``: an hour is
``date_trunc('hour', ts, tz)``, a day the local date of ``ts``, starting at ``local_day_start``, its
first instant: ``day::timestamp at time zone tz`` and ``date_trunc('day', ...)`` read an ambiguous
midnight, America/Havana's on 2026-11-01, as its later instant), so every other piece of zone
arithmetic of a report is PostgreSQL's too: today's date (``LocalToday``), the instants of the
period's first and last local day (``ReportBounds``, by ``local_day_start``) and the buckets' labels
(in ``ReportTimeseries``, read at each bucket's start). Python's ``zoneinfo`` (its own tzdata, which
may be newer or older than the database's: America/Asuncion since 2024b) only checks that a name is a
zone. ``resolve_range``'s ``start``/``end`` are Python's estimate; every answer carries the database's.

The retention. A custom period that starts before the first local day still wholly kept
(``retention_first_day``, a UTC day, read in the report's zone) is refused (400 naming ``from``), not
answered with zeros for the days already purged; 7d and 30d start at that day when the retention is
shorter (the answer's ``first_day`` says so).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import zoneinfo
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import psycopg
import structlog

from app.config import INGEST_MARGIN_S, ROLLUP_GRACE_S
from app.core.auth import CurrentUser
from app.core.cache import CacheNamespace
from app.core.db import Database, UnitOfWork, every_step, purge_tables, statements_may_take
from app.core.errors import FieldError, InvalidFieldsError
from app.core.pagination import InvalidCursorError, Page, paginate
from app.core.types import ISO_DATE, whole
from app.db import reports as queries
from app.domains.pageviews.schemas import MAX_DIMENSION_BYTES, MAX_URL_BYTES
from app.domains.pageviews.services import retention_first_day
from app.domains.reports.schemas import (
    BreakdownItem,
    BreakdownOut,
    CurrentVisitorsOut,
    Dimension,
    EntryPageItem,
    EntryPagesOut,
    Interval,
    LiveRankCursor,
    Period,
    RankCursor,
    ReportRange,
    SummaryOut,
    TimeseriesOut,
    TimeseriesPoint,
)
from app.domains.reports.turns import ReportTurns, TooManyReportsError
from app.domains.sites.services import SiteService

log = structlog.get_logger("app.reports")
T = TypeVar("T")

ROLLUP_GRACE = timedelta(seconds=ROLLUP_GRACE_S)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""Where the rollup's steps and a walk's instant (in its cursor) are counted from."""
ROLLUP_STEP = timedelta(minutes=5)
"""W's unit: the rollup adds the rows received in complete steps only."""
DAILY_TOTAL_LAG = timedelta(minutes=10)
"""How far back ``total_pageviews`` shifts its period: at least the sink's commit bound and margin,
as the rollup's grace (which the settings keep above them) is."""
ROLLUP_CHUNK = timedelta(hours=1)
"""The most ``received_at`` one transaction of the rollup adds (a backlog drains chunk by chunk)."""
ROLLUP_STATEMENT_TIMEOUT_S = 300
"""A rollup statement's ``statement_timeout`` (a backlog's chunk may take minutes, not the app's 15 s)."""
ROLLUP_STATEMENT_TIMEOUT = f"{ROLLUP_STATEMENT_TIMEOUT_S}s"
ROLLUP_ANSWER_MARGIN_S = 30
"""How long past its own timeout the rollup's client waits for PostgreSQL to answer a statement."""
PURGE_CHUNK = 10_000
"""Rollup rows deleted per transaction by the retention (``purge_rollups``): each statement stays far
below the statement timeout, however many rows have piled up."""
PURGE_FROM = datetime(1, 1, 1, tzinfo=UTC)
"""Where a table's first purge chunk starts (before every row's hour)."""
PERIOD_DAYS = {"today": 1, "7d": 7, "30d": 30}
MAX_CUSTOM_DAYS = 366
MAX_HOURLY_DAYS = 31
CURRENT_WINDOW = timedelta(minutes=5)
# The rollup keeps the DIMENSION_VALUES_PER_HOUR most viewed values of each (site, dimension, UTC hour)
# and folds the others into one OTHER_VALUE row (their views summed; the empty value, "none", is never
# folded). The ingest key is public: without the bound a sender of unique paths, referrers or campaigns
# could store a row per view (up to the site's daily quota, for the whole retention), and every
# breakdown over the period would re-aggregate them. With it a breakdown reads at most
# DIMENSION_VALUES_PER_HOUR + 2 rollup rows per whole UTC hour of its period; the views it reads raw are
# not bounded so: those not rolled up yet (up to about ten minutes) and, in a zone whose offset is not a
# whole hour, those of the two UTC hours the period's ends cut (a sender choosing ts can fill them).
# A breakdown's counts are then exact for a value that stays among its hours' top values; a value in
# the long tail is counted in OTHER_VALUE for the hours it was folded (a real value spelled "(other)" is
# counted with them).
DIMENSION_VALUES_PER_HOUR = 100
DIMENSION_VALUES_OPEN_HOUR = 1_000
"""What an hour keeps until it has ended (``RollupDimensions``): ranked to 100 at each five-minute
step, a value that missed the first step's top 100 could never enter them; ranked to 100 once the
hour has ended, an hour with up to this many values a step is ranked on all its views."""
OTHER_VALUE = "(other)"
ENTRY_PATHS_PER_HOUR = 100
ENTRY_PATHS_OPEN_HOUR = 1_000
"""The entry paths a UTC hour keeps a row for (``analytics_entry_paths_per_hour()``, and while it is
open ``analytics_entry_paths_open_hour()``), as the dimensions: the visits' triggers count them as
the visits are written and changed (for 24 hours), first come, and the step that closes an hour ranks
it on all its visits (``FoldEntryHours``). A path without a row counts in ``OTHER_VALUE``."""
# The first RANKED_ROWS rows of a breakdown or of the entry pages (and whether more follow) are
# computed and cached once per (site, report, period, zone), and every page within them (any limit,
# any cursor) is sliced from that list: limit and cursor no longer multiply the queries. A page past
# them runs one query from its cursor on. RANKED_ROWS is the largest page (LimitParam's maximum).
RANKED_ROWS = 100
# Sampling steps that hit every local bucket (every zone's offset is a multiple of 15 minutes).
BUCKET_STEP = {"hour": timedelta(minutes=15), "day": timedelta(hours=1)}
# Empty values mean "none": direct traffic is a referrer source worth listing, "no campaign" is not.
SKIP_EMPTY: dict[str, bool] = {"utm_campaign": True}
# A value comes from a URL or a referrer: at most MAX_URL_BYTES characters, 4 bytes each in UTF-8.
MAX_VALUE_BYTES = 4 * MAX_URL_BYTES
# The walk's instant (t and microseconds since the epoch), the count, the value as unpadded base64.
RANK_CURSOR_MAX_LENGTH = 1 + 17 + 1 + 16 + 1 + math.ceil(MAX_VALUE_BYTES * 4 / 3)
RANK_CURSOR_PATTERN = whole(r"(?:t([0-9]{1,17})\.)?(0|[1-9][0-9]{0,15})\.([A-Za-z0-9_-]*)")
WALK_PINNED_FOR = ROLLUP_GRACE - timedelta(seconds=INGEST_MARGIN_S)
"""How long a ranked report's walk reads its pages as of its first: while the rollup's watermark is
surely behind that instant (the grace, less the skew between the app's clock and the worker's), the
rollups hold only views received before it and the raw half is cut at it (``_ranked_page`` says what
it does not hold). Later pages read the counts of the moment."""


def invalid(field: str, message: str) -> InvalidFieldsError:
    """A 400 validation problem naming the query parameter (a rule of the period that needs another
    parameter or the database, which no parameter's declaration can say)."""
    return InvalidFieldsError([FieldError(field=f"query.{field}", message=message)])


def time_zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:  # not a key, a directory, ...
        raise invalid("tz", f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from exc


def _local_midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    """Python's reading of a local midnight: only ``resolve_range``'s estimate (and its range checks)."""
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _day(field: str, value: date | str | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        if not re.match(ISO_DATE, value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError as exc:
        raise invalid(field, "expected a date: YYYY-MM-DD") from exc


def resolve_range(
    period: Period,
    first: date | str | None,
    last: date | str | None,
    tz: str,
    *,
    now: datetime | None = None,
    today: date | None = None,
) -> ReportRange:
    """The local days of a period in ``tz``: ``today``, the last 7 or 30 days (today included), or
    ``custom`` from ``first`` to ``last`` inclusive (dates or ISO strings).

    ``today`` is the local date in ``tz`` (``ReportService.window`` asks PostgreSQL, whose zone data
    the reports use); without it, Python's at ``now``. ``start``/``end`` are Python's estimate of the
    period's instants: the reports compute theirs in PostgreSQL (``ReportBounds``) and answer with those.
    """
    first, last = _day("from", first), _day("to", last)
    zone = time_zone(tz)
    if today is None:
        today = (now or datetime.now(UTC)).astimezone(zone).date()
    if period == "custom":
        if first is None or last is None:
            raise invalid("from" if first is None else "to", "required with period=custom")
        if last < first:
            raise invalid("to", "must not be before `from`")
        if (last - first).days + 1 > MAX_CUSTOM_DAYS:
            raise invalid("to", f"a range covers at most {MAX_CUSTOM_DAYS} days")
    else:
        if first is not None or last is not None:
            raise invalid("from" if first is not None else "to", "only with period=custom")
        first, last = today - timedelta(days=PERIOD_DAYS[period] - 1), today
    try:
        start = _local_midnight(first, zone)
    except OverflowError:  # year 1 in a zone ahead of UTC
        raise invalid("from", "outside the supported dates") from None
    try:
        end = _local_midnight(last + timedelta(days=1), zone)
    except OverflowError:  # 9999-12-31 has no next day
        raise invalid("to", "outside the supported dates") from None
    return ReportRange(period=period, tz=tz, first_day=first, last_day=last, start=start, end=end)


def _floor_step(moment: datetime) -> datetime:
    """The ``ROLLUP_STEP`` boundary at or before ``moment``, in UTC."""
    moment = moment.astimezone(UTC)
    return moment - (moment - EPOCH) % ROLLUP_STEP


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


class _PurgedChunk(Protocol):
    """What one chunk of a rollup table's purge answers (``PurgeHourlyRollupsRow`` and its siblings)."""

    @property
    def deleted(self) -> int: ...

    @property
    def resume_from(self) -> datetime: ...


def _by_hour(
    purge: Callable[..., Awaitable[_PurgedChunk | None]], **fixed: object
) -> Callable[[UnitOfWork], Awaitable[int]]:
    """A chunk of ``Database.delete_in_chunks`` for a rollup table purged by hour
    (``queries.purge_hourly_rollups`` and its siblings, a deleted site's ``purge_site_hourly_*``):
    each call resumes where the last one ended, so it never reads the index entries its predecessors
    deleted; ``fixed``, the purge's other arguments."""
    hour = PURGE_FROM

    async def chunk(uow: UnitOfWork) -> int:
        nonlocal hour
        row = await purge(uow.conn, resume_from=hour, **fixed)
        assert row is not None
        hour = row.resume_from
        return row.deleted

    return chunk


class ReportService:
    """Reports (cached for ``ttl_s``, keyed by site and resolved range), the rollup step and the
    retention of the rollups.

    Who may read a site's reports is the sites domain's rule (``SiteService.get_for``): ``window``
    and ``current_visitors`` check it in a short transaction of their own that ends before the
    report borrows a connection, so a report request never holds two pooled connections at once
    (a few concurrent reports could otherwise take every connection, each waiting for its second).
    A report the cache does not hold is computed in turns (``ReportTurns``): a few at once per
    process, a few per account, so reports never take the pool every other request needs.
    """

    def __init__(
        self,
        db: Database,
        cache: CacheNamespace,
        ttl_s: float,
        sites: SiteService,
        retention_days: int,
        turns: ReportTurns,
    ) -> None:
        self.db = db
        self.cache = cache
        self.ttl_s = ttl_s
        self.sites = sites
        self.retention_days = retention_days
        self.turns = turns

    # -- the rollup job -----------------------------------------------------------------------

    async def rollup(self, now: datetime | None = None) -> int:
        """Roll up every complete step of ``received_at`` not rolled up yet; the number of raw rows
        added. Idempotent; returns 0 at once while another run holds the lock. A span where nothing
        was received is passed over in one transaction (its hours' dimensions folded: they ended).
        Its statements may take ``ROLLUP_STATEMENT_TIMEOUT_S``, and its client waits as long."""
        with statements_may_take(ROLLUP_STATEMENT_TIMEOUT_S + ROLLUP_ANSWER_MARGIN_S):
            return await self._rollup(now)

    async def _rollup(self, now: datetime | None) -> int:
        target = _floor_step((now or datetime.now(UTC)) - ROLLUP_GRACE)
        total = 0
        while True:
            async with self.db.transaction() as uow:
                conn = uow.conn
                if not await queries.try_rollup_lock(conn):
                    return total
                watermark = await queries.get_watermark(conn)
                if watermark is not None and watermark >= target:
                    return total
                first = await queries.first_pending_hour(conn, received_from=watermark, received_to=target)
                if first is None:  # nothing received in [watermark, target): an empty window, whose
                    start = end = target  # run still folds the hours that ended meanwhile
                else:
                    start = max(first, watermark) if watermark is not None else first
                    end = min(start + ROLLUP_CHUNK, target)
                await queries.set_rollup_statement_timeout(conn, timeout=ROLLUP_STATEMENT_TIMEOUT)
                window = {"received_from": start, "received_to": end}
                closed_from = watermark if watermark is not None else start
                await queries.keep_sites_in_window(conn, closed_from=closed_from, **window)
                rows = await queries.rollup_hourly(conn, **window) or 0
                await queries.rollup_dimensions(
                    conn,
                    keep=DIMENSION_VALUES_PER_HOUR,
                    keep_open=DIMENSION_VALUES_OPEN_HOUR,
                    other=OTHER_VALUE,
                    longest=MAX_DIMENSION_BYTES,
                    closed_from=closed_from,
                    **window,
                )
                await queries.rollup_visitors(conn, **window)
                await queries.rollup_visits(conn, **window)
                await queries.fold_entry_hours(
                    conn, other=OTHER_VALUE, closed_from=closed_from, received_to=end
                )
                await queries.set_watermark(conn, rolled_up_to=end)
            if first is None:
                return total
            total += rows
            log.info(
                "analytics rolled up", received_from=start.isoformat(), received_to=end.isoformat(), rows=rows
            )

    async def purge_all(self) -> dict[str, int]:
        """The daily purge (job ``purge_rollups``): ``purge_rollups`` and ``purge_deleted_sites``, each
        whatever the other does; the first failure is raised once both have run. Rows by purge."""
        return await every_step(
            [("rollups", self.purge_rollups), ("deleted_sites", self.purge_deleted_sites)],
            failed="purge_rollups_failed",  # a table's failure is also logged with the table (purge_tables)
            logger=log,
        )

    async def purge_rollups(self, now: datetime | None = None, *, chunk_size: int = PURGE_CHUNK) -> int:
        """Delete rollups (visitor-level ones included) of the hours before the retention's first
        kept UTC day: the boundary the raw partitions are dropped on (``retention_first_day``), so the
        oldest day kept is reported whole, never its last hours only. Returns how many rows.

        Each table is purged in chunks of at most ``chunk_size`` rows, oldest first through an index
        on the hour (``PurgeHourlyRollups``), one transaction each, until a chunk comes back short: a
        backlog (a lowered retention, purges that could not run) drains however large, where one
        transaction of four DELETEs, each reading its whole table, outlasted the statement timeout,
        rolled back, and left more for the next night. A table whose purge fails (a timeout, a lock)
        is logged and left for the next day, the chunks it deleted kept; the tables after it are
        purged all the same, and the first failure is raised once every table has been tried."""
        today = (now or datetime.now(UTC)).astimezone(UTC).date()
        before = datetime.combine(retention_first_day(today, self.retention_days), time(), UTC)
        tables = [
            ("page_view_hourly", queries.purge_hourly_rollups),
            ("page_view_dimension_hourly", queries.purge_dimension_rollups),
            ("page_view_hourly_visitors", queries.purge_hourly_visitors),
            ("page_view_visits", queries.purge_visits),
            ("page_view_daily_visitors", queries.purge_daily_visitors),
            ("page_view_quarters", queries.purge_quarters),  # after the visits: PurgeQuarters says why
            ("page_view_entry_hourly", queries.purge_entry_hourly),  # after the visits, as the quarters
        ]
        return await purge_tables(
            [
                (
                    table,
                    partial(self.db.delete_in_chunks, _by_hour(purge, before=before, chunk_size=chunk_size)),
                )
                for table, purge in tables
            ],
            name="rollups",
            logger=log,
        )

    async def purge_deleted_sites(self, *, chunk_size: int = PURGE_CHUNK) -> int:
        """Delete the rollups of the deleted sites (their ``deleted_sites`` tombstone), ``chunk_size``
        rows per transaction: a site's deletion leaves them here (one cascade of a busy site's 90 days
        outlasted the statement timeout, and the site could never be deleted). Each site's tables are
        purged as ``purge_tables`` does; a site whose purge fails is left for the next day (its
        tombstone is kept while rows are left: ``ForgetDeletedSites``), the sites after it purged all
        the same, and the first failure is raised at the end. Returns how many rows."""
        async with self.db.transaction() as uow:
            site_ids = await queries.deleted_sites_with_rollups(uow.conn)
        purged = 0
        failures: list[Exception] = []
        for site_id in site_ids:
            try:
                purged += await self._purge_site_rollups(site_id, chunk_size)
            except Exception as exc:  # logged by purge_tables, with the table
                failures.append(exc)
        if failures:
            raise failures[0]
        return purged

    async def _purge_site_rollups(self, site_id: int, chunk_size: int) -> int:
        """One deleted site's rollups, table by table, each chunk resuming where the last one ended:
        on the hour, day or quarter hour for the tables keyed by one, on (dimension, hour) and on the
        visitor for the others (each table's primary key after ``site_id``)."""
        dimension, visitor = ("", PURGE_FROM), -(2**63)
        by_site = {"site_id": site_id, "chunk_size": chunk_size}

        async def dimensions(uow: UnitOfWork) -> int:
            nonlocal dimension
            row = await queries.purge_site_dimension_rollups(
                uow.conn,
                resume_dimension=dimension[0],
                resume_from=dimension[1],
                site_id=site_id,
                chunk_size=chunk_size,
            )
            assert row is not None
            dimension = (row.resume_dimension, row.resume_from)
            return row.deleted

        async def visits(uow: UnitOfWork) -> int:
            nonlocal visitor
            row = await queries.purge_site_visits(
                uow.conn, resume_visitor=visitor, site_id=site_id, chunk_size=chunk_size
            )
            assert row is not None
            visitor = row.resume_visitor
            return row.deleted

        chunks = [
            ("page_view_hourly", _by_hour(queries.purge_site_hourly_rollups, **by_site)),
            ("page_view_dimension_hourly", dimensions),
            ("page_view_hourly_visitors", _by_hour(queries.purge_site_hourly_visitors, **by_site)),
            ("page_view_visits", visits),
            ("page_view_daily_visitors", _by_hour(queries.purge_site_daily_visitors, **by_site)),
            ("page_view_quarters", _by_hour(queries.purge_site_quarters, **by_site)),
            ("page_view_entry_hourly", _by_hour(queries.purge_site_entry_hourly, **by_site)),
        ]
        return await purge_tables(
            [(table, partial(self.db.delete_in_chunks, chunk)) for table, chunk in chunks],
            name="deleted_site_rollups",
            logger=log.bind(site_id=site_id),
        )

    # -- access ---------------------------------------------------------------------------------

    async def window(
        self,
        caller: CurrentUser,
        site_id: int,
        period: Period,
        first: date | str | None,
        last: date | str | None,
        tz: str | None,
    ) -> ReportRange:
        """The report's period on the site's clock (unless ``tz``), once the caller may read the
        site's reports (the owner or an admin; 404 for everyone else). Today's date in that zone is
        PostgreSQL's, like every other piece of the reports' zone arithmetic."""
        with _zone_errors():
            async with self.db.transaction() as uow:
                site = await self.sites.get_for(uow, caller, site_id)
                zone = tz or site.timezone
                time_zone(zone)  # a name that is no zone is a 400 before PostgreSQL reads it
                today = await queries.local_today(uow.conn, tz=zone, now=datetime.now(UTC))
        return resolve_range(period, first, last, zone, today=today)

    # -- reports ------------------------------------------------------------------------------

    async def summary(self, site_id: int, rng: ReportRange, *, account: int | None = None) -> SummaryOut:
        async def load() -> SummaryOut:
            answered, row = await self._report(rng, queries.report_summary, site_id=site_id)
            assert row is not None
            return SummaryOut(
                range=answered,
                pageviews=row.pageviews,
                bot_pageviews=row.bot_pageviews,
                visitors=row.visitors,
                visits=row.visits,
                bounces=row.bounces,
                bounce_rate=_ratio(row.bounces, row.visits),
                views_per_visit=_ratio(row.visit_pageviews, row.visits),
            )

        return await self._cached(f"summary:{site_id}:{_range_key(rng)}", load, SummaryOut, account)

    async def timeseries(
        self, site_id: int, rng: ReportRange, interval: Interval, *, account: int | None = None
    ) -> TimeseriesOut:
        if interval == "hour" and (rng.last_day - rng.first_day).days + 1 > MAX_HOURLY_DAYS:
            raise invalid("interval", f"hourly series cover at most {MAX_HOURLY_DAYS} days")

        async def load() -> TimeseriesOut:
            answered, rows = await self._report(
                rng,
                queries.report_timeseries,
                unit=interval,
                tz=rng.tz,
                site_id=site_id,
                step=BUCKET_STEP[interval],
            )
            points = [
                TimeseriesPoint(
                    start=row.bucket.astimezone(UTC),
                    local=row.label,
                    pageviews=row.pageviews,
                    visitors=row.visitors,
                    visits=row.visits,
                )
                for row in rows
            ]
            return TimeseriesOut(range=answered, interval=interval, points=points)

        return await self._cached(
            f"timeseries:{site_id}:{interval}:{_range_key(rng)}", load, TimeseriesOut, account
        )

    async def breakdown(
        self,
        site_id: int,
        rng: ReportRange,
        dimension: Dimension,
        limit: int,
        cursor: str | None = None,
        *,
        account: int | None = None,
    ) -> BreakdownOut:
        """A page of the values of ``dimension`` by views (most first, then by value), after
        ``cursor`` (the previous page's ``next_cursor``), through ``_ranked_page``."""

        async def rows(
            after: DecodedRankCursor | None, row_limit: int, received_before: datetime | None
        ) -> Ranked[BreakdownItem]:
            answered, found = await self._report(
                rng,
                queries.report_breakdown,
                site_id=site_id,
                dimension=dimension,
                skip_empty=SKIP_EMPTY.get(dimension, False),
                after_views=after.count if after else None,
                after_value=after.value if after else None,
                row_limit=row_limit,
                received_before=received_before,
            )
            return Ranked(answered, [BreakdownItem(value=row.value, views=row.views) for row in found])

        answered, page = await self._ranked_page(
            "breakdown",
            f"{site_id}:{dimension}:{_range_key(rng)}",
            rows,
            lambda item: (item.views, item.value),
            Ranked[BreakdownItem],
            cursor,
            limit,
            account,
        )
        return BreakdownOut(
            range=answered, dimension=dimension, items=page.items, next_cursor=page.next_cursor
        )

    async def entry_pages(
        self,
        site_id: int,
        rng: ReportRange,
        limit: int,
        cursor: str | None = None,
        *,
        account: int | None = None,
    ) -> EntryPagesOut:
        """A page of the entry paths by visits (most first, then by path), after ``cursor``, through
        ``_ranked_page``."""

        async def rows(
            after: DecodedRankCursor | None, row_limit: int, received_before: datetime | None
        ) -> Ranked[EntryPageItem]:
            answered, found = await self._report(
                rng,
                queries.report_entry_pages,
                site_id=site_id,
                other=OTHER_VALUE,
                after_visits=after.count if after else None,
                after_path=after.value if after else None,
                row_limit=row_limit,
                received_before=received_before,
            )
            items = [
                EntryPageItem(
                    path=row.path,
                    visits=row.visits,
                    bounces=row.bounces,
                    bounce_rate=_ratio(row.bounces, row.visits),
                )
                for row in found
            ]
            return Ranked(answered, items)

        answered, page = await self._ranked_page(
            "entry",
            f"{site_id}:{_range_key(rng)}",
            rows,
            lambda item: (item.visits, item.path),
            Ranked[EntryPageItem],
            cursor,
            limit,
            account,
        )
        return EntryPagesOut(range=answered, items=page.items, next_cursor=page.next_cursor)

    async def _ranked_page(
        self,
        report: str,
        scope: str,
        rows: Callable[[DecodedRankCursor | None, int, datetime | None], Awaitable[Ranked[Item]]],
        position: Callable[[Item], tuple[int, str]],
        kind: type[Ranked[Item]],
        cursor: str | None,
        limit: int,
        account: int | None,
    ) -> tuple[ReportRange, Page[Item]]:
        """A page of a ranked report (``rows(after, row_limit, received_before)``: the rows after a
        position, most first, of the views received before the instant when given): sliced from the
        report's first ``RANKED_ROWS`` rows, computed and cached once per report and ``scope``, when
        the page lies within them; else one query from the cursor on, cached per limit and cursor.
        ``scope``: the site and what else changes the answer (dimension, period, zone, days).

        A walk (a first page and the pages of its cursors) reads its later pages as of its first: the
        cursors carry the instant the first rows were read at (``as_of``), and a later page counts
        the views received before it only, for ``WALK_PINNED_FOR``. Read live, a value whose count grew
        between two pages moved before the cursor and was never listed (a review: 180 of 400 values
        under steady ingest). The first page itself reads every view stored, the report of the
        moment. What the pin does not hold (diffreview32): a view stamped before the instant and stored
        after the first page (the ingest's batch in flight: normally milliseconds, at worst
        ``sink_commit_bound_s``) counts on later pages only, and the rollup run that closes an hour
        (once an hour) or holds an open hour to ``DIMENSION_VALUES_OPEN_HOUR`` values (or
        ``ENTRY_PATHS_OPEN_HOUR`` entry paths) folds values into ``(other)`` under the walk: either may
        move a value before the cursor. A page past
        ``WALK_PINNED_FOR`` (or of a cursor without the instant) reads the counts of the moment."""
        after = decode_rank_cursor(cursor) if cursor is not None else None

        async def first_rows() -> Ranked[Item]:
            as_of = datetime.now(UTC)
            return msgspec.structs.replace(await rows(None, RANKED_ROWS + 1, None), as_of=as_of)

        ranked = await self._cached(f"{report}-ranked:{scope}", first_rows, kind, account)
        same_walk = after is None or after.as_of == ranked.as_of
        shown = _slice_ranked(ranked.items, position, after, limit) if same_walk else None
        if shown is None:
            assert after is not None  # the first page is always within the first rows
            as_of = after.as_of
            if as_of is not None and datetime.now(UTC) - as_of > WALK_PINNED_FOR:
                as_of = None
            ranked = await self._cached(
                f"{report}-page:{scope}:{limit}:{cursor}",
                lambda: rows(after, limit + 1, as_of),
                kind,
                account,
            )
            ranked = msgspec.structs.replace(ranked, as_of=after.as_of)
            shown = ranked.items
        walk = ranked.as_of
        return ranked.range, paginate(shown, limit, lambda item: _rank_position(*position(item), walk))

    async def current_visitors_for(self, caller: CurrentUser, site_id: int) -> CurrentVisitorsOut:
        """``current_visitors`` after the access check (the owner or an admin; 404 otherwise)."""
        async with self.db.transaction() as uow:  # released before the report borrows its own
            await self.sites.get_for(uow, caller, site_id)
        return await self.current_visitors(site_id, account=caller.id)

    async def current_visitors(
        self, site_id: int, now: datetime | None = None, *, account: int | None = None
    ) -> CurrentVisitorsOut:
        """Distinct visitors (bots excluded) with a view in the last five minutes (raw rows: always
        present for that long). Cached like every report: it may lag by the cache TTL."""

        async def load() -> CurrentVisitorsOut:
            since = (now or datetime.now(UTC)) - CURRENT_WINDOW
            visitors = await self._run(queries.current_visitors, site_id=site_id, since=since)
            return CurrentVisitorsOut(
                visitors=visitors or 0, window_s=int(CURRENT_WINDOW.total_seconds()), since=since
            )

        return await self._cached(f"current:{site_id}", load, CurrentVisitorsOut, account)

    async def _cached(
        self, key: str, load: Callable[[], Awaitable[T]], kind: type[T], account: int | None
    ) -> T:
        """The cached report, else ``load()``'s once it has a turn (``ReportTurns``): computed for
        ``account`` (``None``: the app itself). A caller who joined another account's computation
        (the cache's single flight) that waited past that account's turns computes it under its own
        turn: the refusal was the other account's, not the caller's (a review). Outside the flight,
        so that no other joiner's refusal reaches it either; that answer is not stored (a rare path:
        the next reader computes again)."""

        def computed() -> Awaitable[T]:
            return self.turns.run(account, load)

        try:
            return await self.cache.get_or_load(key, computed, ttl_s=self.ttl_s, type=kind)
        except TooManyReportsError as refused:
            if refused.account == account:
                raise
            return await computed()

    async def _run(self, query: Any, **params: Any) -> Any:
        with _zone_errors():
            async with self.db.transaction() as uow:
                return await query(uow.conn, **params)

    async def _report(self, rng: ReportRange, query: Any, **params: Any) -> tuple[ReportRange, Any]:
        """``query`` over the period's instants as PostgreSQL puts them (``ReportBounds``, on the same
        connection), and the range with those instants; a period reaching past the retention is a 400."""
        with _zone_errors():
            async with self.db.transaction() as uow:
                answered = await self._bounds(uow, rng)
                rows = await query(uow.conn, range_from=answered.start, range_to=answered.end, **params)
        return answered, rows

    async def _bounds(self, uow: UnitOfWork, rng: ReportRange) -> ReportRange:
        """``rng`` with its instants as PostgreSQL puts them. A custom period starting before the first
        local day still kept whole is a 400 naming ``from``; a 7d or 30d period (longer than a short
        retention) starts at that day instead, which the answer's ``first_day`` shows."""
        first_kept = retention_first_day(datetime.now(UTC).date(), self.retention_days)
        kept_from = datetime.combine(first_kept, time(), UTC)
        bounds = await queries.report_bounds(
            uow.conn, tz=rng.tz, first_day=rng.first_day, last_day=rng.last_day, kept_from=kept_from
        )
        assert bounds is not None
        if rng.first_day < bounds.first_day_kept:
            if rng.period == "custom":
                raise invalid(
                    "from",
                    f"page views are kept from {bounds.first_day_kept.isoformat()} on (the first day in "
                    f"{rng.tz} still kept whole: ANALYTICS_RETENTION_DAYS is {self.retention_days})",
                )
            return await self._bounds(uow, msgspec.structs.replace(rng, first_day=bounds.first_day_kept))
        return msgspec.structs.replace(rng, start=bounds.range_from, end=bounds.range_to)

    # -- for other domains ----------------------------------------------------------------------

    async def total_pageviews(self, uow: UnitOfWork, since: datetime, until: datetime) -> int:
        """The views (bots excluded) of every site received in [since, until), both shifted back by
        ``DAILY_TOTAL_LAG``; runs in the caller's transaction. For a daily total (monitoring's report),
        whose consecutive periods each start where the previous ended; ``until`` is in the past.

        Counted by ``received_at``, not ``ts``: a beacon may arrive up to 24 hours after its ``ts``
        (clamped by the ingest), after the report of its ``ts`` was sent, and the next report's period
        does not include its ``ts`` any more, so by ``ts`` it would never be counted. By
        ``received_at`` each view falls in exactly one period: a late one in the report of the period
        it arrived in. Shifted by ``DAILY_TOTAL_LAG`` for the watermark's reason: a row is stamped before
        its batch commits, within that grace (``app.config.sink_commit_bound_s``); a report computed
        right at ``until`` might not yet see a row stamped just before it, which the next period would
        not include either. Its own constant, not the rollup's grace: consecutive periods chain on
        their unshifted ends, so a change of the shift loses (or counts twice) what lies between the
        old and the new one, once (the grace went from 10 minutes to 4: a review).

        Raw rows, not the rollups: those are keyed by the hour of ``ts`` and cannot tell when a view
        arrived. The raw rows of the last day are always there (``ANALYTICS_RETENTION_DAYS`` >= 2), and
        the BRIN index on ``received_at`` reads only the blocks of the period."""
        received_from, received_to = since - DAILY_TOTAL_LAG, until - DAILY_TOTAL_LAG
        total = await queries.page_views_received(
            uow.conn, received_from=received_from, received_to=received_to
        )
        return total or 0


@contextmanager
def _zone_errors() -> Iterator[None]:
    """A zone Python knows and PostgreSQL (whose zone data the reports use) does not: a 400."""
    try:
        yield
    except psycopg.errors.InvalidParameterValue as exc:
        raise invalid("tz", "time zone not supported by the database") from exc


class DecodedRankCursor(msgspec.Struct, frozen=True):
    count: int
    value: str
    as_of: datetime | None = None
    """The walk's first page's instant; None in a cursor of an earlier release."""


Item = TypeVar("Item")


class Ranked(msgspec.Struct, Generic[Item], frozen=True):
    """Rows of a ranked report as cached: its first ``RANKED_ROWS`` rows and one more when more
    follow, or one page's ``limit`` rows and one more; with the range they answer."""

    range: ReportRange
    items: list[Item]
    as_of: datetime | None = None
    """The instant whose counts they are (``_ranked_page``); None: the counts of the moment."""


def _slice_ranked(
    items: list[Item],
    position: Callable[[Item], tuple[int, str]],
    after: DecodedRankCursor | None,
    limit: int,
) -> list[Item] | None:
    """The ``limit + 1`` rows (fewer on the last page) of the cached ranked ``items`` that follow
    ``after``, or None when they are not all among them: past the cached rows, or a position that is
    none of their rows (counts changed since, or a page past them): then the query answers. The
    position is found by equality, never compared: the order is PostgreSQL's (its collation)."""
    start = 0
    if after is not None:
        wanted = (after.count, after.value)
        start = next((index + 1 for index, item in enumerate(items) if position(item) == wanted), -1)
        if start < 0:
            return None
    shown = items[start : start + limit + 1]
    if len(shown) < limit + 1 and len(items) > RANKED_ROWS:  # the list was cut: more may follow
        return None
    return shown


def _rank_position(count: int, value: str, as_of: datetime | None) -> RankCursor | LiveRankCursor:
    value_b64 = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
    if as_of is None:
        return LiveRankCursor(count=count, value_b64=value_b64)
    return RankCursor(walk=f"t{_micros(as_of)}", count=count, value_b64=value_b64)


def _micros(moment: datetime) -> int:
    """``moment`` in microseconds since the epoch (exact: a cursor's instant must equal the list's)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def decode_rank_cursor(cursor: str) -> DecodedRankCursor:
    """The position a breakdown's cursor encodes (400 ``invalid-cursor`` for anything else). The
    query parameter's pattern has admitted it already; repeated for callers that bypass Litestar."""
    match = re.fullmatch(RANK_CURSOR_PATTERN, cursor)
    if match is None or len(cursor) > RANK_CURSOR_MAX_LENGTH:
        raise InvalidCursorError("The cursor is not a position of this list.")
    encoded = match.group(3)
    try:
        value = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidCursorError("The cursor is not a position of this list.") from None
    if "\x00" in value:  # no stored value holds one, and PostgreSQL's text refuses it (a 500)
        raise InvalidCursorError("The cursor is not a position of this list.")
    walk = match.group(1)  # at most 17 digits: before the year 5200
    as_of = EPOCH + timedelta(microseconds=int(walk)) if walk is not None else None
    return DecodedRankCursor(count=int(match.group(2)), value=value, as_of=as_of)


def _range_key(rng: ReportRange) -> str:
    """Everything of the range an answer shows: ``period`` too (7d and the same custom days are the
    same numbers, not the same answer). Days, not instants: those are PostgreSQL's, computed with it."""
    return f"{rng.period}:{rng.tz}:{rng.first_day.isoformat()}:{rng.last_day.isoformat()}"
