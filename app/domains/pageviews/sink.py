"""The page-view sink: group commit of concurrent requests into one write.

Requests hand their rows to ``submit`` and wait. A flusher takes everything pending (up to
``batch_size`` rows), writes it in one transaction and only then resolves the requests' futures:
acknowledged means committed. A flusher starts the next batch as soon as its previous one has
committed (leader/follower), so throughput comes from batching while an idle sink adds no delay;
``max_wait_s`` optionally lingers to fill small batches. Several flushers (connections) overlap
their commits. The sink is bounded: past ``max_pending`` rows ``submit`` refuses (503 +
Retry-After) instead of growing memory. ``close`` flushes everything accepted.

How a batch is written (``writers.py``, measured in benchmarks/README.md):

- a small batch (fewer than ``COPY_FROM`` rows, the usual case for single views) is one statement
  and one round trip: the rows travel as one JSON parameter (msgspec encodes it in C; a driver's
  per-element array encoding cost several times more), the statement claims their event ids and
  inserts them;
- a large one is a transaction with two binary COPYs: the event ids into ``page_view_event_ids``,
  then the rows.

Both claim event ids *without* ``ON CONFLICT``: a retried send is rare, and a plain insert (or COPY)
into the unique index costs far less than a speculative insertion per row. When the claim meets an
id already stored (a unique violation: nothing of the batch was written), the batch is written
again by the statement that skips claimed ids (``ON CONFLICT DO NOTHING``). Within one batch, the
first row of each (site, event id) is kept before any of this.

Every write also checks, in its own snapshot, that the batch's sites still exist: a site deleted
after its key was cached is refused (422) from the deleting commit on, in every process, even before
the deletion's notification reaches the process. The write then stores nothing; the requests of the
deleted sites are answered and the others are written again without them.

One request's bad data must not fail the others batched with it. The ingest handlers refuse what
PostgreSQL would (``schemas.PageViewIn``); should a batch still be refused for its data, the sink
splits it and retries the halves, so that only the requests whose rows PostgreSQL refuses get an
error (422) and every other one is committed and acknowledged. Each write is one transaction, so a
refused write stored nothing (event-id claims included) and a retry cannot store a row twice. A
failure that is not about the data (connection lost, timeout) fails every request of the batch with
503 at once, and every request queued behind it too: no retry loop against a database that is down,
and no queue that drains one deadline per batch. Every write has a deadline (``DATABASE_TIMEOUT_S``,
``writers.py``), so a database that stops answering (a frozen host) answers 503 within about one
deadline of a request's arrival, however deep the queue, instead of keeping its requests waiting; a
write that timed out is never acknowledged. Requests that arrive after the failure are tried again.

How long an accepted row waits. Its ``received_at`` is stamped on arrival, and the analytics rollup
passes a step of ``received_at`` ``ROLLUP_GRACE_S`` after it ends: a row committed later is stored
and counted by no report. A database that is slow but answers every write within its deadline drains
the queue one batch per write and flusher, so the queue's depth alone would let a row wait as long as
the settings allow (``SINK_MAX_PENDING`` / ``SINK_BATCH_SIZE`` writes of up to ``DATABASE_TIMEOUT_S``
each, 500 s with the defaults). So a request queued for longer than ``SINK_MAX_QUEUE_S`` when a
flusher reaches it is not written: it is answered 503 (``ingest-overloaded``, Retry-After), and its
retry is stamped anew. From its stamp to its commit a row then waits at most that, plus its own
write's two deadlines (``app.config.sink_commit_bound_s``), whatever the settings; ``load_settings``
refuses a ``DATABASE_TIMEOUT_S`` that would reach the grace. A request cancelled meanwhile is written
all the same, with its stamp, under the same bound. One write may take longer: the one that finds
the day's partition missing (the hourly upkeep down for days), which makes it, within another
deadline, and is written once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import psycopg
import structlog
from prometheus_client import Counter, Gauge, Histogram

from app.config import SINK_MAX_QUEUE_S
from app.core.errors import ServiceUnavailableError, UnprocessableError
from app.domains.pageviews.rows import Row
from app.domains.pageviews.writers import SitesGoneError, Writer

log = structlog.get_logger("app.pageviews.sink")

ROWS_WRITTEN = Counter("app_page_views_written", "Page views committed by the sink")
DUPLICATES = Counter("app_page_views_duplicates", "Page views dropped as retries of a stored event id")
BATCH_ROWS = Histogram(
    "app_page_view_batch_rows", "Rows per sink write", buckets=(1, 8, 32, 128, 512, 1024, 2048, 4096, 10000)
)
REFUSED = Counter("app_page_views_refused", "Page views refused because the sink was full")
PENDING = Gauge(
    "app_page_view_sink_pending_rows",
    "Page views accepted and not yet committed, summed over the processes, as of each write's start and "
    "end: near SINK_MAX_PENDING, new views are refused (503)",
    multiprocess_mode="livesum",
)
REFUSED_BY_DATABASE = Counter(
    "app_page_views_refused_by_database", "Page views PostgreSQL refused for their data (not stored)"
)
EXPIRED = Counter(
    "app_page_views_expired_in_queue",
    f"Page views answered 503 unwritten: queued for over {SINK_MAX_QUEUE_S} s (the database is slow)",
)
GONE = Counter("app_page_views_site_gone", "Page views refused at write time because their site was deleted")
UNWRITTEN = Counter(
    "app_page_views_unwritten",
    "Page views answered 503 because their write failed (the database unreachable or failing), not stored",
)


class SinkFullError(ServiceUnavailableError):
    slug = "ingest-overloaded"
    title = "Ingest is overloaded"


class SinkClosedError(ServiceUnavailableError):
    """The sink is shutting down: the rows were refused before any was taken (a plain 503)."""


class PageViewRefusedError(UnprocessableError):
    slug = "page-view-refused"
    title = "Page view refused"


class UnknownSiteKeyError(UnprocessableError):
    slug = "unknown-site-key"
    title = "Unknown site key"


def refused_for_data(exc: BaseException) -> bool:
    """Whether a write failed because of the data in it, not because of the database: SQLSTATE class
    22 (data exception: a NUL in text, an integer out of range; asyncpg also reports a parameter
    it cannot encode as 22000), psycopg's own refusal of a NUL, or a value the driver or the JSON
    encoder cannot encode (a lone surrogate; an integer too large for its column in asyncpg's COPY).
    Only such a failure can spare some rows of a batch; a missing partition (class 23), a lost
    connection or a timeout fails every row alike."""
    if isinstance(exc, (UnicodeError, OverflowError)):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith("22")
    return isinstance(exc, psycopg.DataError)


def missing_partition(exc: BaseException) -> bool:
    """Whether a write failed for want of the day's partition of ``page_views`` (the hourly upkeep,
    ``maintain_partitions``, has not made it: a database restored, or a worker down for days)."""
    return getattr(exc, "sqlstate", None) == "23514" and "no partition" in str(exc)


class _Group:
    __slots__ = ("future", "queued_at", "rows")

    def __init__(self, rows: Sequence[Row], future: asyncio.Future[None], queued_at: float) -> None:
        self.rows = rows
        self.future = future
        self.queued_at = queued_at


class PageViewSink:
    def __init__(
        self,
        writer: Writer,
        *,
        batch_size: int,
        max_pending: int,
        max_wait_s: float = 0.0,
        flushers: int = 1,
        on_sites_gone: Callable[[frozenset[int]], None] | None = None,
        on_missing_partition: Callable[[], Awaitable[object]] | None = None,
        max_queue_s: float = SINK_MAX_QUEUE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self._on_missing_partition = on_missing_partition
        self.max_queue_s = max_queue_s
        self._clock = clock
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.max_wait_s = max_wait_s
        self._flusher_count = flushers
        self._on_sites_gone = on_sites_gone
        self._queue: deque[_Group] = deque()
        self._pending_rows = 0  # accepted and not yet committed (queued or being written)
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._flushers: list[asyncio.Task[None]] = []

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    async def start(self) -> None:
        await self.writer.open()
        self._flushers = [
            asyncio.create_task(self._flush_loop(), name=f"page-view-flusher-{i}")
            for i in range(self._flusher_count)
        ]

    async def submit(self, rows: Sequence[Row]) -> None:
        """Return once ``rows`` are committed; raise if they could not be (nothing half-written)."""
        if self._closed:
            raise SinkClosedError("The server is shutting down.", headers={"Retry-After": "1"})
        count = len(rows)
        if self._pending_rows + count > self.max_pending:
            REFUSED.inc(count)
            raise SinkFullError(
                "Too many page views are waiting to be written.", headers={"Retry-After": "1"}
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Group(rows, future, self._clock()))
        self._pending_rows += count
        self._queued_rows += count
        self._wake.set()
        await future  # cancelled with its request, the row is still written with its batch (and stamp)

    async def close(self) -> None:
        """Refuse new rows, write every accepted one, stop the flushers, close the writer."""
        self._closed = True
        self._wake.set()
        await asyncio.gather(*self._flushers, return_exceptions=True)
        await self.writer.close()

    def _take_batch(self) -> list[_Group]:
        groups: list[_Group] = []
        rows = 0
        queue = self._queue
        if queue and queue[0].queued_at < (too_old := self._clock() - self.max_queue_s):
            self._expire(too_old)
        while queue and (rows == 0 or rows + len(queue[0].rows) <= self.batch_size):
            group = queue.popleft()
            groups.append(group)
            rows += len(group.rows)
        self._queued_rows -= rows
        return groups

    async def _flush_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.max_wait_s and self._queued_rows < self.batch_size and not self._closed:
                await asyncio.sleep(self.max_wait_s)  # linger to fill a small batch
            groups = self._take_batch()
            if groups:
                await self._write(groups)

    async def _write(self, groups: list[_Group]) -> None:
        PENDING.set(self._pending_rows)  # per write, not per view: the hot path stays as it was
        try:
            await self._write_isolating(groups)
        finally:
            self._pending_rows -= sum(len(group.rows) for group in groups)
            PENDING.set(self._pending_rows)

    async def _write_isolating(self, groups: list[_Group]) -> None:
        """Commit ``groups`` in one write; split the write in halves while PostgreSQL refuses its
        data, so that only the refused requests fail; drop the requests of deleted sites. Requests
        are resolved as their part commits."""
        parts = [groups]
        healed = False
        while parts:
            part = parts.pop()
            rows = part[0].rows if len(part) == 1 else [row for group in part for row in group.rows]
            try:
                written = await self.writer.write(rows)
            except SitesGoneError as gone:
                parts.append(self._drop_gone(part, gone.site_ids))
                continue
            except Exception as exc:
                failure = {"error": type(exc).__name__, "sqlstate": getattr(exc, "sqlstate", None)}
                if not healed and missing_partition(exc) and self._on_missing_partition is not None:
                    healed = True  # once per write: a partition that cannot be made fails as before
                    log.error("page_view_partition_missing", rows=len(rows), detail=str(exc)[:300])
                    with contextlib.suppress(Exception):  # made meanwhile by another process, or not
                        await self._on_missing_partition()
                    parts.append(part)
                    continue
                if not refused_for_data(exc):
                    queued = self._take_queued()
                    log.error(
                        "page_view_batch_failed",
                        rows=len(rows),
                        queued_rows=sum(len(group.rows) for group in queued),
                        **failure,
                        detail=str(exc)[:300],
                    )
                    failed = [group for left in (part, *parts, queued) for group in left]
                    UNWRITTEN.inc(sum(len(group.rows) for group in failed))
                    _settle(failed, _unavailable)
                    return
                if len(part) > 1:
                    if part is groups:
                        log.warning("page_view_batch_refused_isolating", rows=len(rows), **failure)
                    middle = len(part) // 2
                    parts += (part[middle:], part[:middle])  # the first half is written first
                    continue
                REFUSED_BY_DATABASE.inc(len(rows))
                log.warning("page_view_refused", rows=len(rows), **failure, detail=str(exc)[:300])
                _settle(part, _refused)
                continue
            ROWS_WRITTEN.inc(written)
            DUPLICATES.inc(len(rows) - written)
            BATCH_ROWS.observe(len(rows))
            _settle(part, None)

    def _take_queued(self) -> list[_Group]:
        """Take every queued request out of the queue (they are no longer pending once answered)."""
        groups = list(self._queue)
        self._queue.clear()
        rows = sum(len(group.rows) for group in groups)
        self._queued_rows -= rows
        self._pending_rows -= rows
        return groups

    def _expire(self, queued_before: float) -> None:
        """Answer 503, unwritten, the requests queued before ``queued_before`` (the oldest lead the
        queue): a flusher reached them too late for the rollup's grace (see the module's docstring)."""
        queue, expired = self._queue, []
        while queue and queue[0].queued_at < queued_before:
            expired.append(queue.popleft())
        rows = sum(len(group.rows) for group in expired)
        self._queued_rows -= rows
        self._pending_rows -= rows
        EXPIRED.inc(rows)
        log.warning(
            "page_views_expired_in_queue", rows=rows, requests=len(expired), max_queue_s=self.max_queue_s
        )
        _settle(expired, _expired)

    def _drop_gone(self, part: list[_Group], site_ids: frozenset[int]) -> list[_Group]:
        """Answer the requests holding a row of a deleted site (422) and return the others."""
        if self._on_sites_gone is not None:
            self._on_sites_gone(site_ids)
        gone = [group for group in part if any(row[0] in site_ids for row in group.rows)]
        GONE.inc(sum(len(group.rows) for group in gone))
        _settle(gone, _site_gone)
        return [group for group in part if not any(row[0] in site_ids for row in group.rows)]


def _unavailable() -> Exception:
    """A write that failed or was cut at its deadline may have committed before (fault review: a view
    answered "could not be stored" was): the answer says so, and how to retry without a double."""
    return ServiceUnavailableError(
        "The database did not confirm the write: the page views may or may not be stored. Send them "
        "again; a view that carries an event_id is stored once however often it is sent.",
        headers={"Retry-After": "1"},
    )


def _expired() -> Exception:
    return SinkFullError(
        "The page views waited too long to be written (the database is slow); nothing was stored.",
        headers={"Retry-After": "1"},
    )


def _refused() -> Exception:
    return PageViewRefusedError(
        "The database refused the data of this request's page views; nothing was stored."
    )


def _site_gone() -> Exception:
    return UnknownSiteKeyError("Unknown site key.")


def _settle(groups: Sequence[_Group], error: Callable[[], Exception] | None) -> None:
    """Answer the waiting requests: committed (``error`` None), or each with a fresh ``error()``."""
    for group in groups:
        if group.future.done():  # its request was cancelled; the rows were handled all the same
            continue
        if error is None:
            group.future.set_result(None)
        else:
            group.future.set_exception(error())
