"""The group-commit sink on real PostgreSQL: durable acks, batching, bounds, retries, shutdown."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection

from app.core.errors import ServiceUnavailableError
from app.domains.pageviews.rows import Row
from app.domains.pageviews.sink import PageViewRefusedError, PageViewSink, SinkFullError
from app.domains.pageviews.writers import COPY_FROM, AsyncpgWriter, Writer, make_writer
from tests.factories import create_user, wait_until

DEADLINE_S = 10.0
"""Each write's deadline in these tests (the app passes DATABASE_TIMEOUT_S)."""


def row(site_id: int = 1, event_id: uuid.UUID | None = None, path: str = "/") -> Row:
    now = datetime.now(UTC)
    return (
        site_id,
        now,
        now,
        event_id,
        42,
        path,
        "",
        "",
        "",
        "",
        "",
        None,
        "desktop",
        "Firefox",
        "Linux",
        False,
    )


@pytest.fixture(autouse=True)
async def sites(db: AsyncConnection[Any]) -> None:
    """Sites 1 and 2, which the rows below name (the writers refuse rows of a site that is gone)."""
    owner = await create_user(db)
    await db.execute(
        "insert into sites (id, owner_id, domain, ingest_key) overriding system value"
        " values (1, %(owner)s, 'one.example', repeat('1', 32)),"
        " (2, %(owner)s, 'two.example', repeat('2', 32))",
        {"owner": owner.id},
    )
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")


async def stored(db: AsyncConnection[Any]) -> int:
    found = await (await db.execute("select count(*) from page_views")).fetchone()
    assert found is not None
    return int(found[0])


class CountingWriter:
    """A real writer that records the size of every batch it commits."""

    def __init__(self, inner: Writer) -> None:
        self.inner = inner
        self.name = inner.name
        self.batches: list[int] = []

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, rows: Sequence[Row]) -> int:
        self.batches.append(len(rows))
        return await self.inner.write(rows)


@pytest.fixture(params=["asyncpg", "psycopg", "hybrid"])
async def writer(
    request: pytest.FixtureRequest, database_url: str, db: AsyncConnection[Any]
) -> CountingWriter:
    inner: Writer = make_writer(request.param, database_url, 2, DEADLINE_S)
    return CountingWriter(inner)


async def test_concurrent_submits_are_committed_in_few_batches(
    writer: CountingWriter, db: AsyncConnection[Any]
) -> None:
    sink = PageViewSink(writer, batch_size=500, max_pending=10_000, flushers=1)
    await sink.start()
    try:
        await asyncio.gather(*(sink.submit([row(path=f"/{i}")]) for i in range(300)))
        assert await stored(db) == 300, "every acknowledged row is committed before submit returns"
        assert sum(writer.batches) == 300
        assert len(writer.batches) < 300 / 5, f"group commit should batch, got {writer.batches}"
    finally:
        await sink.close()


async def test_batch_size_caps_one_copy(writer: CountingWriter, db: AsyncConnection[Any]) -> None:
    sink = PageViewSink(writer, batch_size=50, max_pending=10_000, flushers=2)
    await sink.start()
    try:
        await asyncio.gather(*(sink.submit([row()]) for _ in range(400)))
        assert max(writer.batches) <= 50
        assert await stored(db) == 400
    finally:
        await sink.close()


async def test_retried_event_ids_are_stored_once(writer: CountingWriter, db: AsyncConnection[Any]) -> None:
    sink = PageViewSink(writer, batch_size=100, max_pending=1000, flushers=1)
    await sink.start()
    event = uuid.uuid4()
    try:
        await asyncio.gather(*(sink.submit([row(event_id=event)]) for _ in range(5)))
        await sink.submit([row(event_id=event), row(event_id=event), row()])
        await sink.submit([row(site_id=2, event_id=event)])
        assert await stored(db) == 3  # one per (site, event id) plus the row without an id
    finally:
        await sink.close()


async def test_a_full_sink_refuses_instead_of_growing(database_url: str, db: AsyncConnection[Any]) -> None:
    gate = asyncio.Event()

    class SlowWriter(CountingWriter):
        async def write(self, rows: Sequence[Row]) -> int:
            await gate.wait()
            return await super().write(rows)

    sink = PageViewSink(
        SlowWriter(AsyncpgWriter(database_url, 1, DEADLINE_S)), batch_size=10, max_pending=20, flushers=1
    )
    await sink.start()
    try:
        waiting = [asyncio.create_task(sink.submit([row()])) for _ in range(20)]
        await until(lambda: sink.pending_rows == 20, "the 20 submissions are pending")
        with pytest.raises(SinkFullError) as refused:
            await sink.submit([row()])
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        gate.set()
        await asyncio.gather(*waiting)
        assert await stored(db) == 20
    finally:
        gate.set()
        await sink.close()


async def test_close_flushes_everything_accepted(database_url: str, db: AsyncConnection[Any]) -> None:
    sink = PageViewSink(
        AsyncpgWriter(database_url, 2, DEADLINE_S),
        batch_size=7,
        max_pending=10_000,
        max_wait_s=0.01,
        flushers=1,
    )
    await sink.start()
    submitted = [asyncio.create_task(sink.submit([row()])) for _ in range(100)]
    await asyncio.sleep(0)
    await sink.close()
    await asyncio.gather(*submitted)
    assert await stored(db) == 100
    with pytest.raises(ServiceUnavailableError):
        await sink.submit([row()])


class GatedWriter(CountingWriter):
    """A real writer whose first write waits for ``release``, so that everything submitted meanwhile
    is queued and goes into the next write together. Records every write's size and outcome."""

    def __init__(self, inner: Writer) -> None:
        super().__init__(inner)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.outcomes: list[tuple[int, str]] = []  # (rows, "ok" or the exception's class name)

    async def write(self, rows: Sequence[Row]) -> int:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        try:
            written = await super().write(rows)
        except Exception as exc:
            self.outcomes.append((len(rows), type(exc).__name__))
            raise
        self.outcomes.append((len(rows), "ok"))
        return written


async def until(condition: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    """Poll ``condition`` (generous deadline; no sleep stands in for synchronisation)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    while not condition():
        assert loop.time() < give_up, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)


async def one_batch(
    sink: PageViewSink, writer: GatedWriter, groups: Sequence[Sequence[Row]]
) -> list[BaseException | None]:
    """Submit ``groups`` concurrently so that they are all written in ONE batch, and return each
    submit's outcome: a first (gated) write holds the flusher until every group is queued."""
    blocker = asyncio.create_task(sink.submit([row(path="/blocker")]))
    await until(writer.entered.is_set, "the blocker's write has started")
    submits = [asyncio.create_task(sink.submit(group)) for group in groups]
    total = sum(len(group) for group in groups)
    await until(lambda: sink.pending_rows == 1 + total, "every group is queued")
    writer.release.set()
    await blocker
    results = await asyncio.gather(*submits, return_exceptions=True)
    assert writer.outcomes[0] == (1, "ok") and writer.outcomes[1][0] == total, (
        f"the groups were not written as one batch: {writer.outcomes}"
    )
    return list(results)


def poisoned(kind: str, event_id: uuid.UUID | None = None) -> Row:
    """A row that only PostgreSQL (or the driver) refuses: validation is bypassed at this level."""
    good = row(event_id=event_id, path=f"/poison/{kind}")
    if kind == "nul-referrer":
        return (*good[:6], "bad\x00host", *good[7:])
    if kind == "nul-utm":
        return (*good[:8], "news\x00letter", *good[9:])
    assert kind == "surrogate-path"
    return (*good[:5], "/\ud800", *good[6:])


# Not an out-of-range screen_width: psycopg's binary COPY wraps it silently instead of refusing it
# (2**31 is stored as -2**31), so only validation (screen_width <= 100,000) keeps it out.
POISONS = ["nul-referrer", "nul-utm", "surrogate-path"]


@pytest.mark.parametrize("groups", [12, 100], ids=["small-batch", "copy-batch"])
@pytest.mark.parametrize("poison", POISONS)
async def test_a_refused_row_fails_only_its_own_request(
    writer: CountingWriter, db: AsyncConnection[Any], groups: int, poison: str
) -> None:
    """One batch holding clean and poisoned requests: every clean request is committed and
    acknowledged, each poisoned one gets 422 and stores nothing, and retried event ids stay unique."""
    gated = GatedWriter(writer.inner)
    sink = PageViewSink(gated, batch_size=10_000, max_pending=10_000, flushers=1)
    await sink.start()
    shared, contested = uuid.uuid4(), uuid.uuid4()
    batch: list[list[Row]] = [[row(path=f"/clean/{i}")] for i in range(groups)]
    batch[0] = [row(event_id=shared, path="/shared/first")]
    batch[-1] = [row(event_id=shared, path="/shared/again")]  # a retry of the first, far apart
    batch[1] = [row(path="/multi/a"), row(path="/multi/b"), row(path="/multi/c")]
    bad_at = {3, groups // 2, groups - 2}
    for index in bad_at:
        batch[index] = [poisoned(poison)]
    batch[groups // 2 + 1] = [row(path="/half-bad"), poisoned(poison)]  # all or nothing per request
    batch[2] = [poisoned(poison, event_id=contested)]  # its claim must not survive the refusal
    batch[4] = [row(event_id=contested, path="/contested")]
    bad_at |= {groups // 2 + 1, 2}
    try:
        results = await one_batch(sink, gated, batch)
        for index, result in enumerate(results):
            if index in bad_at:
                assert isinstance(result, PageViewRefusedError), (index, result)
                assert result.status == 422
            else:
                assert result is None, (index, result)
        paths = {r[0] for r in await (await db.execute("select path from page_views")).fetchall()}
        clean = {r[5] for i, group in enumerate(batch) if i not in bad_at for r in group}
        assert paths == clean - {"/shared/again"} | {"/blocker"}
        assert await stored(db) == len(paths), "a retried event id was stored twice"
        depth = math.ceil(math.log2(groups))
        assert len(gated.outcomes) <= 2 + 2 * len(bad_at) * depth, "isolation bisects: few writes"
        await sink.submit([row(path="/after")])  # the sink keeps working
    finally:
        await sink.close()


async def test_a_failed_copy_fails_every_request_of_the_batch(
    database_url: str, db: AsyncConnection[Any]
) -> None:
    """A failure that is not about one row's data (here a time no partition holds) fails every
    request of the batch with 503 and is not retried row by row."""
    writer = GatedWriter(AsyncpgWriter(database_url, 1, DEADLINE_S))
    sink = PageViewSink(writer, batch_size=100, max_pending=1000, flushers=1)
    await sink.start()
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)  # no partition holds it: the COPY fails
    bad = (1, long_ago, long_ago, None, 1, "/", "", "", "", "", "", None, "desktop", "x", "y", False)
    try:
        results = await one_batch(sink, writer, [[bad], [row()]])
        assert all(isinstance(result, ServiceUnavailableError) for result in results), results
        assert writer.outcomes[1:] == [(2, "CheckViolationError")], "one failed write, no splitting"
        assert await stored(db) == 1  # the blocker only
        await sink.submit([row()])  # the sink keeps working after a failed batch
        assert await stored(db) == 2
    finally:
        await sink.close()


async def test_an_outage_fails_the_batch_at_once_without_isolating(
    database_url: str, db: AsyncConnection[Any]
) -> None:
    """The database goes away while a batch holding a refused row is being isolated: the requests not
    yet written answer 503 at once, with no further attempt (an outage must not loop)."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    gone = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = gone.sockets[0].getsockname()[1]

    class DatabaseGoesAway(GatedWriter):
        """The real database for the blocker and the first (refused) batch write, then a server that
        drops every connection."""

        def __init__(self) -> None:
            self.reachable = AsyncpgWriter(database_url, 1, DEADLINE_S)
            self.unreachable = AsyncpgWriter(f"postgresql://postgres@127.0.0.1:{port}/gone", 1, DEADLINE_S)
            super().__init__(self.reachable)

        async def open(self) -> None:
            await self.reachable.open()
            await self.unreachable.open()

        async def close(self) -> None:
            await self.unreachable.close()
            await self.reachable.close()

        async def write(self, rows: Sequence[Row]) -> int:
            if len(self.outcomes) >= 2:
                self.inner = self.unreachable
            return await super().write(rows)

    writer = DatabaseGoesAway()
    sink = PageViewSink(writer, batch_size=100, max_pending=1000, flushers=1)
    await sink.start()
    try:
        results = await one_batch(sink, writer, [[row()], [poisoned("nul-referrer")], [row()], [row()]])
        assert all(isinstance(result, ServiceUnavailableError) for result in results), results
        (_, first), (_, refused), (_, lost) = writer.outcomes
        assert first == "ok"
        assert refused in ("CharacterNotInRepertoireError", "UntranslatableCharacterError"), refused
        assert lost not in ("ok", refused), "the write after the refusal met the outage"
        assert await stored(db) == 1  # the blocker only
    finally:
        await sink.close()
        gone.close()
        await gone.wait_closed()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg", "hybrid"])
@pytest.mark.parametrize("views", [1, COPY_FROM], ids=["statement", "copy"])
async def test_a_write_the_database_does_not_answer_fails_with_503_and_a_retry_stores_once(
    driver: str, views: int, database_url: str, db: AsyncConnection[Any]
) -> None:
    """A write blocked in the database (here behind a lock on ``sites``) answers its requests 503 at
    the writer's deadline, while the database is still blocked, by closing its connection: no
    cancel request reaches the server (one to a frozen server would wait as long), so the backend
    is still waiting. Retried with the same event ids once the database answers, the views are
    stored once, whether or not the timed-out write committed after all."""
    sink = PageViewSink(
        make_writer(driver, database_url, 2, timeout_s=0.5), batch_size=1000, max_pending=2000
    )
    views_sent = [row(event_id=uuid.uuid4(), path=f"/{i}") for i in range(views)]
    await sink.start()
    try:
        async with await AsyncConnection.connect(database_url) as locker:
            await locker.execute("lock table sites in access exclusive mode")
            with pytest.raises(ServiceUnavailableError):
                await sink.submit(views_sent)
            waiting = await (
                await db.execute(
                    "select count(*) from pg_stat_activity"
                    " where datname = current_database() and wait_event_type = 'Lock'"
                )
            ).fetchone()
            assert waiting is not None
            assert waiting[0] >= 1, "the timed-out write's backend was cancelled, not left behind"
        await sink.submit(views_sent)
        assert await stored(db) == views
    finally:
        await sink.close()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg", "hybrid"])
@pytest.mark.parametrize("others", [1, COPY_FROM - 3], ids=["statement", "copy"])
async def test_writes_claiming_the_same_event_ids_in_opposite_orders_both_succeed(
    driver: str, others: int, database_url: str, db: AsyncConnection[Any]
) -> None:
    """Two processes' writes hold one client's event ids in opposite orders (its retry reached the
    other process), each batched with other clients' views. A third transaction holds the claim of
    the middle id until both writes wait for it. Claimed in queue order, each write then held an id
    the other needed: PostgreSQL failed one, and every request of its batch (503). Claimed in one
    order, the later write waits for the earlier and skips its claimed ids: both succeed."""
    first, middle, last = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def batch(order: Sequence[uuid.UUID], tag: str) -> list[Row]:
        claimed = [row(event_id=event, path=f"/{tag}/claimed") for event in order]
        return claimed + [row(site_id=2, path=f"/{tag}/other/{i}") for i in range(others)]

    writers = [make_writer(driver, database_url, 2, DEADLINE_S) for _ in range(2)]
    for writer in writers:
        await writer.open()
    try:
        async with await AsyncConnection.connect(database_url) as holder:
            await holder.execute(
                "insert into page_view_event_ids (site_id, event_id) values (1, %s)", (middle,)
            )
            writes = [
                asyncio.create_task(writers[0].write(batch([first, middle, last], "a"))),
                asyncio.create_task(writers[1].write(batch([last, middle, first], "b"))),
            ]

            async def both_wait() -> bool:
                waiting = await (
                    await db.execute(
                        "select count(*) from pg_stat_activity"
                        " where datname = current_database() and wait_event_type = 'Lock'"
                    )
                ).fetchone()
                return (waiting is not None and waiting[0] >= 2) or any(write.done() for write in writes)

            await wait_until(both_wait, 30, "both writes wait for a claim")
            await holder.rollback()
        results = await asyncio.gather(*writes, return_exceptions=True)
        written = sorted(result for result in results if isinstance(result, int))
        assert len(written) == 2, results
        assert written == [others, others + 3], "each id stored once, by one of the writes"
        assert await stored(db) == 3 + 2 * others
    finally:
        for writer in writers:
            await writer.close()


async def test_an_outage_answers_every_queued_request_after_one_write(
    database_url: str, db: AsyncConnection[Any]
) -> None:
    """PostgreSQL stops storing (a lock on ``page_views``) while requests queue behind a write: the
    write times out, and every request queued at that moment is answered 503 (with Retry-After)
    with it, in one write's deadline, not after one more deadline per queued batch."""
    writer = GatedWriter(make_writer("hybrid", database_url, 2, timeout_s=0.5))
    sink = PageViewSink(writer, batch_size=1, max_pending=1000, flushers=1)
    unwritten = REGISTRY.get_sample_value("app_page_views_unwritten_total") or 0.0
    await sink.start()
    try:
        async with await AsyncConnection.connect(database_url) as locker:
            await locker.execute("lock table page_views in share mode")
            first = asyncio.create_task(sink.submit([row(path="/first")]))
            await until(writer.entered.is_set, "the first write has started")
            queued = [asyncio.create_task(sink.submit([row(path=f"/{i}")])) for i in range(20)]
            await until(lambda: sink.pending_rows == 21, "every request is queued")
            writer.release.set()
            results = await asyncio.gather(first, *queued, return_exceptions=True)
        assert all(isinstance(result, ServiceUnavailableError) for result in results), results
        assert all(result.headers["Retry-After"] for result in results)  # type: ignore[union-attr]
        assert writer.outcomes == [(1, "WriteTimeoutError")], "one write, not one per queued batch"
        assert sink.pending_rows == 0
        assert REGISTRY.get_sample_value("app_page_views_unwritten_total") == unwritten + 21, "counted"
        await sink.submit([row(path="/after")])  # the sink works again once the database does
        assert await stored(db) == 1
    finally:
        writer.release.set()
        await sink.close()


async def test_a_request_queued_past_the_limit_is_answered_503_unwritten(
    writer: CountingWriter, db: AsyncConnection[Any]
) -> None:
    """A write holds the flusher (a slow database) while requests queue; when it commits, those that
    waited longer than ``max_queue_s`` (by the sink's clock, moved by hand) are answered 503 and not
    written, the younger ones behind them are written, and the pending count is back to zero. Such a
    row, stamped on arrival, could otherwise commit after the rollup passed its hour."""
    gated = GatedWriter(writer.inner)
    now = [1000.0]
    sink = PageViewSink(
        gated, batch_size=100, max_pending=1000, flushers=1, max_queue_s=60, clock=lambda: now[0]
    )
    await sink.start()
    try:
        blocker = asyncio.create_task(sink.submit([row(path="/blocker")]))
        await until(gated.entered.is_set, "the blocker's write has started")
        old = [
            asyncio.create_task(sink.submit([row(path=f"/old/{i}"), row(path=f"/old/{i}b")]))
            for i in range(3)
        ]
        await until(lambda: sink.pending_rows == 7, "the old requests are queued")
        now[0] += 45
        young = asyncio.create_task(sink.submit([row(path="/young")]))
        await until(lambda: sink.pending_rows == 8, "the young request is queued")
        now[0] += 16  # the old ones have waited 61 s, the young one 16 s
        gated.release.set()
        await blocker
        outcomes = await asyncio.gather(*old, return_exceptions=True)
        await young
        for outcome in outcomes:
            assert isinstance(outcome, SinkFullError), outcome
            assert outcome.status == 503 and outcome.headers == {"Retry-After": "1"}
        paths = sorted(r[0] for r in await (await db.execute("select path from page_views")).fetchall())
        assert paths == ["/blocker", "/young"]
        assert sink.pending_rows == 0
        await sink.submit([row(path="/after")])  # the sink keeps working
        assert await stored(db) == 3
    finally:
        await sink.close()
