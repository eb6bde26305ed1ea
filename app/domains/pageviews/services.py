"""The page-view ingest path (the hot path): decode, admit, derive, hand to the sink, answer 202.

Kept off the generic stack on purpose (benchmarks/README.md has the measurements): the handlers
decode the body with a cached msgspec decoder (``decoding.py``) instead of a ``data`` parameter, and
every limit is checked without a round trip per view:

- per client address (an IPv4 address or an IPv6 /64): in-process token buckets (``limiter.py``),
  checked before a body is received (``admit_reading``); every body received is charged for its
  size (``body_tokens``: one token per 4 KiB begun): an accepted one takes that or one token per
  view, whichever is more (``admit``, ``request_tokens``), one refused takes it for its content
  (400, ``read_view``), for its views once decoded (429, ``admit``) or for its size (413,
  ``refuse_oversized``); a batch larger than the limits could ever admit is 413
  (``BatchTooLargeError``), not a 429 whose wait would never help;
- per site: a quota per minute and per UTC day, leased in blocks from Valkey (``quota.py``);
- the site key: a bounded cache, lookups of unknown keys batched, deletions mirrored (``keys.py``).

``PageViewService`` owns the group-commit sink (``sink.py``, started and closed by the service
registry), those three, the daily visitor-hash salt, and the jobs that keep the ``page_views``
partitions and the retention of event ids, salts and deleted sites' data.

A retried send (same site, same ``event_id``) is stored once if it arrives within
``EVENT_ID_RETENTION`` (two days) of the first: the claims are purged daily once older than that.

Visitors are counted per UTC day: a view's visitor id is a keyed hash of the site, the client's
address and user agent under the salt of the UTC day of the view's own (clamped) ``ts``, not of the
day it arrives (a late beacon sent after midnight counts for the visitor of its day). Salts rotate
at UTC midnight by design, so ids cannot be linked across days (as Plausible does); a visitor seen
on both sides of UTC midnight is two visitors, also in a report on a site's local days. A salt is
deleted once no accepted ``ts`` can fall on its day (``ts`` is at most 24 hours old).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import structlog
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.cache import Flights, single_flight
from app.core.db import Database, UnitOfWork, every_step
from app.core.errors import AppError, InvalidFieldsError, TooManyRequestsError
from app.core.logging import error_message
from app.db import pageviews as queries
from app.domains.pageviews.decoding import decode_batch, decode_view, parse_views
from app.domains.pageviews.derive import (
    MAX_AGE,
    Agent,
    Page,
    clamp_timestamp,
    classify_agent,
    device_class,
    utc_day,
    visitor_id,
)
from app.domains.pageviews.keys import SiteKeys, UnknownKeyError
from app.domains.pageviews.limiter import LocalRateLimiter
from app.domains.pageviews.quota import SiteQuota
from app.domains.pageviews.rows import COLUMNS, Row
from app.domains.pageviews.schemas import MAX_BATCH, PageView, PageViewBatch
from app.domains.pageviews.sink import (
    PageViewRefusedError,
    PageViewSink,
    SinkClosedError,
    SinkFullError,
    UnknownSiteKeyError,
)
from app.domains.pageviews.writers import make_writer
from app.domains.sites.services import SiteService

log = structlog.get_logger("app.pageviews")

EVENT_ID_RETENTION = timedelta(days=2)
SALT_RETENTION = MAX_AGE
"""A day's salt is deleted once no accepted ``ts`` can fall on that day (``ts`` is clamped to
``MAX_AGE``): the purge keeps the salts of the day of ``now - MAX_AGE`` and later."""
PURGE_CHUNK_PAGES = 64
"""Pages of claimed event ids purged per statement (and transaction): ~8,700 claims at most."""
PURGE_SITE_CHUNK_ROWS = 10_000
"""A deleted site's page views (of one day) or claimed event ids deleted per statement and
transaction: a few tens of milliseconds, whatever the site's traffic was."""
BODY_BYTES_PER_TOKEN = 4096
"""A body received takes at least one token of its address's limit per 4 KiB begun (``body_tokens``),
accepted (at least one per view: ``request_tokens``) or refused (400 for its content, 429 for its
views, 413 for its size): what a batch of that size takes when its views are as long as a full 4 MiB
batch's (1,000 of them, 4,194 bytes each). A batch whose views average 4 KiB or less (a tracker's
are a few hundred bytes) takes one token per view; padding a body (JSON whitespace) buys no more than
4 KiB received and parsed per token (where the limits are set below a full body's tokens, an accepted
body takes a whole bucket at most: ``request_tokens``)."""
DELETED_SITE_GRACE = timedelta(minutes=10)
"""A deleted site's raw data is purged once nothing of it can still be in flight."""
DELETED_SITE_RETENTION = timedelta(days=2)
"""Its tombstone is kept longer than any process remembers a deletion (``sites.DELETIONS_KEPT_S``)."""
PARTITION_DAYS_AHEAD = 3
"""``maintain_partitions`` keeps a partition for every day up to this many days after today."""


def retention_first_day(today: date, retention_days: int) -> date:
    """The first UTC day of analytics data kept on ``today`` (UTC): ``ANALYTICS_RETENTION_DAYS``
    whole days before it. The one boundary of the retention: the raw partitions of earlier days are
    dropped (``maintain_partitions``) and the rollups of earlier hours purged
    (``ReportService.purge_rollups``), so a day is either wholly kept in both or gone from both."""
    return today - timedelta(days=retention_days)


class IngestSettings(msgspec.Struct, frozen=True):
    """The ingest path's limits, copied once from the settings (plain attributes on the hot path)."""

    rate_limit_ingest_per_minute: int = 6_000
    rate_limit_ingest_per_hour: int = 100_000
    ingest_site_views_per_minute: int = 60_000
    ingest_site_views_per_day: int = 10_000_000

    @classmethod
    def of(cls, settings: Settings) -> IngestSettings:
        return cls(**{name: getattr(settings, name) for name in cls.__struct_fields__})


class BatchTooLargeError(AppError):
    """More views in one request than this server's limits could ever admit at once (limits set below
    ``MAX_BATCH``): waiting would not help, a smaller batch does."""

    status = 413
    slug = "batch-too-large"
    title = "Too many views in one batch"


class PartitionUpkeep(msgspec.Struct, frozen=True):
    created: int
    dropped: int
    busy: int
    """Partitions past retention left for a later run: a reader was using them."""


SALT_DAYS_CACHED = 3
"""Salts a process keeps: the accepted ``ts`` span two UTC days (at most 24 hours old), plus one
while the day changes."""


class DailySalt:
    """The visitor-hash salt of each UTC day: created once (first writer wins) by whichever process
    needs it first, then cached in the process; a round trip only for a day not seen yet (once a day,
    and once for yesterday's if a late view needs it). The requests that need a new day's salt at
    once (every request in flight at midnight UTC) share one load (``single_flight``), so the day's
    first views cost one transaction per process rather than one per request."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._salts: dict[date, bytes] = {}
        self._flights: Flights = {}
        self.loads = 0  # transactions begun (a metric for tests and the curious)

    async def for_day(self, day: date) -> bytes:
        salt = self._salts.get(day)
        if salt is None:
            salt = await single_flight(self._flights, day, lambda: self._load(day))
        return salt

    async def _load(self, day: date) -> bytes:
        self.loads += 1
        async with self._db.transaction() as uow:
            await queries.insert_salt(uow.conn, day=day, salt=secrets.token_bytes(32))
            salt = await queries.get_salt(uow.conn, day=day)
        assert salt is not None
        self._salts[day] = salt
        while len(self._salts) > SALT_DAYS_CACHED:
            del self._salts[min(self._salts)]
        return salt


class PageViewService:
    """Built once per process; ``start``/``close`` run the sink (the service registry calls them)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        sites: SiteService,
        valkey: Valkey,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        assert settings.database_url is not None, "resolve the service URLs first"
        self.db = db
        self.clock = clock or _utc_now
        """The ingest's ``now`` (UTC): ``received_at``, the clamp of ``ts``; tests move it."""
        self.retention_days = settings.analytics_retention_days
        self.write_timeout_s = settings.database_timeout_s
        limits = IngestSettings.of(settings)
        self.keys = SiteKeys(sites)
        self.sink = PageViewSink(
            make_writer(
                settings.sink_driver,
                settings.database_url,
                settings.sink_flushers + 1,
                timeout_s=settings.database_timeout_s,
                app_name=settings.app_name,
            ),
            batch_size=settings.sink_batch_size,
            max_pending=settings.sink_max_pending,
            max_wait_s=settings.sink_max_wait_ms / 1000,
            flushers=settings.sink_flushers,
            on_sites_gone=self.keys.forget_sites,
            on_missing_partition=self._ensure_partitions_in_time,
        )
        self.salt = DailySalt(db)
        self.limiter = LocalRateLimiter(
            limits.rate_limit_ingest_per_minute, limits.rate_limit_ingest_per_hour
        )
        self.quota = SiteQuota(
            valkey,
            limits.ingest_site_views_per_minute,
            limits.ingest_site_views_per_day,
            warn_interval_s=settings.rate_limit_warn_interval_s,
        )
        self.max_batch = min(MAX_BATCH, self.limiter.capacity, self.sink.max_pending)
        """The most views one request can ever be admitted with: an address's buckets hold no more,
        nor does the sink take more at once."""
        self.max_site_batch = self.quota.capacity
        """The most views of one site a request can ever be admitted with."""
        if min(self.max_batch, self.max_site_batch) < MAX_BATCH:
            log.warning(
                "ingest_batches_limited",
                max_views=self.max_batch,
                max_views_per_site=self.max_site_batch,
                batch_max=MAX_BATCH,
                hint="RATE_LIMIT_INGEST_PER_MINUTE/_PER_HOUR, SINK_MAX_PENDING or INGEST_SITE_VIEWS_PER_*"
                " are below a full batch: larger batches are refused 413 batch-too-large",
            )

    async def start(self) -> None:
        """Start the sink, once today's partitions are made sure of: a process started on a database
        whose hourly upkeep has not run for days (restored from a backup, or every worker down) would
        refuse every view until the next run. Best effort: the sink makes them too when a write finds
        one missing, and the upkeep every hour."""
        try:
            await self.ensure_partitions()
        except Exception as exc:
            failure = {"error": type(exc).__name__, "detail": error_message(exc)}
            log.warning("page_view_partitions_not_ensured", **failure)
        await self.sink.start()

    async def close(self) -> None:
        """Refuses new views and writes every accepted one."""
        await self.sink.close()

    # -- ingest ---------------------------------------------------------------------------------

    decode_view = staticmethod(decode_view)
    decode_batch = staticmethod(decode_batch)

    def admit_reading(self, client_ip: str) -> None:
        """A 429 for an address without a token left, called before its body is received (the
        handlers then ``read_view``/``read_batch`` it): a limited client cannot make the server take
        in up to 4 MiB per request only to be refused."""
        wait = self.limiter.wait(client_ip)
        if wait:
            raise _too_many(wait)

    def read_view(self, body: bytes, client_ip: str) -> PageView:
        """The view of an ingest request's body (``decode_view``) of an address ``admit_reading``
        admitted; a body refused (400) takes its tokens (``body_tokens``), so a client
        sending bad bodies is limited as one sending views is."""
        try:
            return decode_view(body)
        except InvalidFieldsError:
            self.limiter.charge(client_ip, body_tokens(len(body)))
            raise

    def read_batch(self, body: bytes, client_ip: str) -> PageViewBatch:
        """``read_view`` for a batch (``decode_batch``)."""
        try:
            return decode_batch(body)
        except InvalidFieldsError:
            self.limiter.charge(client_ip, body_tokens(len(body)))
            raise

    def refuse_oversized(self, client_ip: str, max_body_bytes: int) -> None:
        """Charge an address whose body was over the route's limit (413): as a refused body of the
        limit's size, which is what a body without Content-Length makes the server receive before it
        is cut (the handlers call it, then answer 413)."""
        self.limiter.charge(client_ip, body_tokens(max_body_bytes + 1))

    async def record_one(
        self, view: PageView, client_ip: str, user_agent: str, body: bytes | None = None
    ) -> None:
        """Store one view; return once it is committed. 429 once the client's address has used its
        tokens or the site its quota; 422 for an unknown (or deleted) site key. ``body``: the request's
        body the view was read from, charged for its size (``admit``)."""
        self.admit(client_ip, 1, body)
        ((page, referrer_host, source),) = parse_views([view], batched=False)
        site_id = await self._site_id(view.site_key)
        now = self.clock()
        ts = clamp_timestamp(view.ts, now)
        salt = await self.salt.for_day(utc_day(ts))
        agent = classify_agent(user_agent)
        visitor = visitor_id(salt, site_id, client_ip, user_agent)
        row = _row(view, site_id, visitor, page, referrer_host, source, agent, ts, now)
        lease = await self.quota.take(site_id, 1)
        try:
            await self.sink.submit((row,))
        except BaseException as exc:
            if _stored_nothing(exc):
                self.quota.refund(site_id, 1, lease)
            raise

    async def record(
        self, batch: PageViewBatch, client_ip: str, user_agent: str, body: bytes | None = None
    ) -> None:
        """Store a batch sent by one client; return once every view is committed (all or nothing).
        ``body``: as for ``record_one``."""
        views = batch.views
        self.admit(client_ip, len(views), body)
        rows, per_site = await self.rows(views, client_ip, user_agent, batched=True)
        if max(per_site.values()) > self.max_site_batch:
            raise _batch_too_large(self.max_site_batch, "of one site ")
        leases: list[tuple[int, int, int]] = []
        submitted = False
        try:
            for site_id, count in per_site.items():
                leases.append((site_id, count, await self.quota.take(site_id, count)))
            submitted = True
            await self.sink.submit(rows)
        except BaseException as exc:
            # before the submit (a site over its quota, a cancellation) nothing can have been stored
            if not submitted or _stored_nothing(exc):
                for site_id, count, lease in leases:
                    self.quota.refund(site_id, count, lease)
            raise

    def admit(self, client_ip: str, count: int, body: bytes | None = None) -> None:
        """Take the tokens of ``count`` views received in ``body`` (``request_tokens``; without a
        body, one per view) of the address's limit, or answer 429 having taken none (413 for more
        than ``max_batch`` views, which no wait would admit); the ``body`` already received (the
        views' request) is then charged as a refused body."""
        if count > self.max_batch:
            if body is not None:
                self.limiter.charge(client_ip, body_tokens(len(body)))
            raise _batch_too_large(self.max_batch)
        tokens = count if body is None else self.request_tokens(count, len(body))
        wait = self.limiter.take(client_ip, tokens)
        if wait:
            if body is not None:
                self.limiter.charge(client_ip, body_tokens(len(body)))
                wait = self.limiter.wait(client_ip, tokens)
            raise _too_many(wait)

    def request_tokens(self, count: int, size: int) -> int:
        """What ``count`` views received in a body of ``size`` bytes take of the address's limit: one
        token per view, or per ``BODY_BYTES_PER_TOKEN`` of the body begun (``body_tokens``, the rule
        of a refused body) when that is more, and never more than a full bucket (the limiter's
        ``capacity``, at least ``count``: ``max_batch``), so that whatever the route's body limit
        admits, a full bucket admits too.

        The cap binds only where ``RATE_LIMIT_INGEST_PER_MINUTE`` or ``_PER_HOUR`` is set below the
        tokens of the largest body: 1,024 for the batch's 4 MiB, 256 for a single view's default
        ``MAX_BODY_BYTES`` (1 MiB); the defaults (6,000 a minute) hold either whole."""
        return min(max(count, body_tokens(size)), self.limiter.capacity)

    async def rows(
        self, views: list[PageView], client_ip: str, user_agent: str, *, batched: bool = False
    ) -> tuple[list[Row], dict[int, int]]:
        """The stored rows, and how many views each site got. Every view is checked before any I/O
        (a batch is all or nothing; ``batched`` names its fields ``views[i].url``). Everything that
        depends only on the request (the agent, a site's id, the visitor of a site on a UTC day) is
        computed once per request, not once per view. A view's salt is that of the UTC day of its
        clamped ``ts``: a batch's views may span two days (a tracker flushing after midnight)."""
        pages = parse_views(views, batched=batched)
        now = self.clock()
        agent = classify_agent(user_agent)
        sites: dict[str, int] = {}
        visitors: dict[tuple[int, date], int] = {}
        per_site: dict[int, int] = {}
        rows: list[Row] = []
        for view, (page, referrer_host, source) in zip(views, pages, strict=True):
            site_id = sites.get(view.site_key)
            if site_id is None:
                site_id = sites[view.site_key] = await self._site_id(view.site_key)
            ts = clamp_timestamp(view.ts, now)
            day = utc_day(ts)
            visitor = visitors.get((site_id, day))
            if visitor is None:
                salt = await self.salt.for_day(day)
                visitor = visitors[site_id, day] = visitor_id(salt, site_id, client_ip, user_agent)
            per_site[site_id] = per_site.get(site_id, 0) + 1
            rows.append(_row(view, site_id, visitor, page, referrer_host, source, agent, ts, now))
        return rows, per_site

    async def _site_id(self, key: str) -> int:
        try:
            return await self.keys.site_id(key)
        except UnknownKeyError:
            raise UnknownSiteKeyError("Unknown site key.") from None

    async def record_naively(self, view: PageView, client_ip: str, user_agent: str) -> None:
        """One view in one INSERT and one transaction of its own, bypassing the sink and the limits:
        the baseline of the load-test harness (``/bench/naive``), never used by the ingest routes."""
        (row,), _ = await self.rows([view], client_ip, user_agent)
        columns: dict[str, Any] = dict(zip(COLUMNS, row, strict=True))
        async with self.db.transaction() as uow:
            await queries.insert_page_view(uow.conn, **columns)

    # -- upkeep (jobs) ----------------------------------------------------------------------------

    async def maintain_partitions(self, today: date | None = None) -> PartitionUpkeep:
        """Create the daily partitions from yesterday to ``PARTITION_DAYS_AHEAD`` days ahead; drop
        those of the days before the retention's first kept day (``retention_first_day``).

        Neither step may hold up the ingest (the migration ``pageview_partitions_without_blocking``
        says how): a partition is attached without a lock that inserts wait for, and a drop waits for
        its lock only briefly; a partition still in use by a reader then is counted ``busy`` and
        dropped by a later run. Two transactions, so that the drop's wait holds nothing of the first.
        """
        today = today or datetime.now(UTC).date()
        created = await self.ensure_partitions(today)
        async with self.db.transaction() as uow:
            dropped = await queries.drop_page_view_partitions(
                uow.conn, before=retention_first_day(today, self.retention_days)
            )
        assert dropped is not None
        if dropped.busy:
            log.warning("page_view_partitions_busy", busy=dropped.busy)
        return PartitionUpkeep(created=created, dropped=dropped.dropped, busy=dropped.busy)

    async def _ensure_partitions_in_time(self) -> int:
        """``ensure_partitions`` for the sink, under a write's deadline (``DATABASE_TIMEOUT_S``): a
        database that stops answering meanwhile fails the batch as a write would, not the flusher."""
        return await asyncio.wait_for(self.ensure_partitions(), self.write_timeout_s)

    async def ensure_partitions(self, today: date | None = None) -> int:
        """Make the daily partitions from yesterday to ``PARTITION_DAYS_AHEAD`` days ahead that do not
        exist (one process at a time: ``ensure_page_view_partitions``); how many were made. A view's
        ``ts`` is never before yesterday (``clamp_timestamp``), so these take every view."""
        today = today or datetime.now(UTC).date()
        async with self.db.transaction() as uow:
            created = await queries.ensure_partitions(
                uow.conn, from_day=today - timedelta(days=1), days=PARTITION_DAYS_AHEAD + 2
            )
        return created or 0

    async def purge_ingest_state(self) -> dict[str, int]:
        """The daily purge (job ``purge_ingest_state``): ``purge`` and ``purge_deleted_sites``, each
        whatever the other does; the first failure is raised once both have run. Rows by kind."""

        async def claims_and_salts() -> dict[str, int]:
            event_ids, salts = await self.purge()
            return {"event_ids": event_ids, "salts": salts}

        async def deleted_sites() -> dict[str, int]:
            return {"deleted_sites_views": await self.purge_deleted_sites()}

        done = await every_step(
            [("purge", claims_and_salts), ("purge_deleted_sites", deleted_sites)],
            failed="purge_ingest_state_failed",
            logger=log,
        )
        return {**done["purge"], **done["purge_deleted_sites"]}

    async def purge(
        self, now: datetime | None = None, chunk_pages: int = PURGE_CHUNK_PAGES
    ) -> tuple[int, int]:
        """Delete claimed event ids older than ``EVENT_ID_RETENTION`` and the salts of the days no
        accepted ``ts`` can fall on any more (``SALT_RETENTION``);
        returns (event ids, salts) deleted.

        A day of claims is tens of millions of rows: one DELETE would outlast the statement
        timeout, roll back and never complete. The table's pages are swept instead, ``chunk_pages``
        pages per statement and per transaction (a Tid Range Scan of those pages only, whatever
        order vacuum's reused space stored the rows in); rows stored after the sweep began are
        recent."""
        now = now or datetime.now(UTC)
        async with self.db.transaction() as uow:  # one row a day: first, whatever follows
            salts = await queries.delete_old_salts(uow.conn, before=(now - SALT_RETENTION).date())
        async with self.db.read() as uow:
            pages = await queries.event_id_pages(uow.conn) or 0
        event_ids = 0
        for first in range(0, pages, chunk_pages):
            async with self.db.transaction() as uow:
                event_ids += await queries.purge_event_ids(
                    uow.conn, from_page=first, to_page=first + chunk_pages, before=now - EVENT_ID_RETENTION
                )
        return event_ids, salts

    async def purge_deleted_sites(
        self, now: datetime | None = None, chunk_rows: int = PURGE_SITE_CHUNK_ROWS
    ) -> int:
        """Delete the raw page views and claimed event ids of every site deleted more than
        ``DELETED_SITE_GRACE`` ago, ``chunk_rows`` rows per statement and transaction (a day of a
        busy site is millions: one DELETE outlasted the statement timeout); forget the deletions
        older than ``DELETED_SITE_RETENTION`` of the sites whose data is gone. Returns the page views
        deleted.

        A site whose purge fails (a timeout, a lock) is logged and left for the next run with its
        tombstone; the sites after it are purged all the same. The first such failure is raised once
        every site has been tried (the job fails, and is seen failing)."""
        now = now or datetime.now(UTC)
        async with self.db.transaction() as uow:
            site_ids = await queries.deleted_sites_before(uow.conn, before=now - DELETED_SITE_GRACE)
            days = await queries.page_view_partition_days(uow.conn) if site_ids else []
        deleted = 0
        purged: list[int] = []
        failures: list[Exception] = []
        for site_id in site_ids:
            try:
                deleted += await self._purge_site(site_id, days, chunk_rows)
            except Exception as exc:
                log.exception("deleted_site_purge_failed", site_id=site_id)
                failures.append(exc)
            else:
                purged.append(site_id)
        if purged:
            async with self.db.transaction() as uow:
                await queries.forget_deleted_sites(
                    uow.conn, site_ids=purged, before=now - DELETED_SITE_RETENTION
                )
        if failures:
            raise failures[0]
        return deleted

    async def _purge_site(self, site_id: int, days: list[date], chunk_rows: int) -> int:
        """One deleted site's page views, day by day of ``days`` (those ``page_views`` has a partition
        for), then its claimed event ids; returns the page views deleted."""
        deleted = 0
        for day_of in days:
            day = datetime.combine(day_of, datetime.min.time(), UTC)
            deleted += await self._purge_site_views(site_id, day, day + timedelta(days=1), chunk_rows)
        await self._purge_site_event_ids(site_id, chunk_rows)
        return deleted

    async def _purge_site_views(
        self, site_id: int, from_ts: datetime, to_ts: datetime, chunk_rows: int
    ) -> int:
        """The site's views in [from_ts, to_ts), about ``chunk_rows`` per transaction (more only when
        more share one instant), each chunk starting where the last one ended (it never scans the
        index entries its predecessors deleted)."""
        start = from_ts

        async def chunk(uow: UnitOfWork) -> int:
            nonlocal start
            bounds = await queries.site_page_view_chunk(
                uow.conn, site_id=site_id, from_ts=start, to_ts=to_ts, skip_rows=chunk_rows
            )
            if bounds is None or bounds.first_ts is None:
                return 0
            end = to_ts if bounds.end_ts is None else bounds.end_ts
            end = max(end, bounds.first_ts + timedelta(microseconds=1))  # one instant's views at least
            deleted = await queries.purge_site_page_views(uow.conn, site_id=site_id, from_ts=start, to_ts=end)
            start = end
            return deleted

        return await self.db.delete_in_chunks(chunk)

    async def _purge_site_event_ids(self, site_id: int, chunk_rows: int) -> int:
        """The site's claimed event ids, ``chunk_rows`` per transaction, in primary-key order."""
        start = uuid.UUID(int=0)

        async def chunk(uow: UnitOfWork) -> int:
            nonlocal start
            purged = await queries.purge_site_event_ids(
                uow.conn, site_id=site_id, from_id=start, chunk_rows=chunk_rows
            )
            assert purged is not None
            start = purged.last_id
            return purged.deleted

        return await self.db.delete_in_chunks(chunk)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _stored_nothing(exc: BaseException) -> bool:
    """Whether ``sink.submit`` failed knowing none of the rows was stored, so their quota is given
    back: the sink full or shutting down (refused before taking them), or the write refused for
    their data or for a deleted site (a transaction that stored nothing). Not for a cancellation
    (the sink still writes the rows with their batch) nor any other failure answered 503 (a write
    that timed out or lost its connection may have committed): their views stay counted."""
    return isinstance(exc, (SinkFullError, SinkClosedError, PageViewRefusedError, UnknownSiteKeyError))


def body_tokens(size: int) -> int:
    """What a body of ``size`` bytes takes of its address's limit at least (refused: exactly; accepted:
    ``request_tokens``): one token per ``BODY_BYTES_PER_TOKEN`` begun (at least one)."""
    return max(1, -(-size // BODY_BYTES_PER_TOKEN))


def _batch_too_large(most: int, of: str = "") -> BatchTooLargeError:
    return BatchTooLargeError(
        f"This server takes at most {most:,} views {of}in one batch (its ingest limits): send them in"
        " smaller batches."
    )


def _too_many(wait: float) -> TooManyRequestsError:
    return TooManyRequestsError(
        "Too many page views from this address.", headers={"Retry-After": str(max(1, round(wait)))}
    )


def _row(
    view: PageView,
    site_id: int,
    visitor: int,
    page: Page,
    referrer_host: str,
    source: str,
    agent: Agent,
    ts: datetime,
    now: datetime,
) -> Row:
    return (
        site_id,
        ts,
        now,
        view.event_id,
        visitor,
        page.path,
        referrer_host,
        source,
        page.utm_source,
        page.utm_medium,
        page.utm_campaign,
        view.screen_width,
        device_class(agent, view.screen_width),
        agent.browser,
        agent.os,
        agent.is_bot,
    )
