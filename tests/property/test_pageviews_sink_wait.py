"""The sink's batches a view may wait for are the ones ``app.config.sink_commit_bound_s`` counts.

The bound (the rollup's grace depends on it: ``tests/unit/test_config_sink_bound.py``) says that a row
waits for at most ``1 + ceil((2 * ceil(SINK_MAX_PENDING / SINK_BATCH_SIZE) - 1) / SINK_FLUSHERS)``
batch writes, the batches in flight when it is queued included: a batch stops short of
``SINK_BATCH_SIZE`` rows only when the next request's views do not fit, so two consecutive batches hold
more than that. Here the real ``PageViewSink`` runs over a writer whose writes all take one round (the
worst case: every write as slow as its deadline lets it be), while requests of any size arrive between
rounds as the sink admits them; each request must be written within that many rounds of its arrival.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.config import Settings, sink_commit_bound_s
from app.domains.pageviews.rows import Row
from app.domains.pageviews.sink import PageViewSink
from tests.factories import scaled_examples

DEADLINE_S = 0.5
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def rows(request: int, count: int) -> list[Row]:
    """``count`` rows of request number ``request`` (its number in the site id, which the writer sees)."""
    row: Row = (request, NOW, NOW, None, 1, "/", "", "", "", "", "", "", None, "desktop", "", "", False)
    return [row] * count


class RoundWriter:
    """Every write waits for the end of the current round; records the round each request was written in."""

    name = "rounds"

    def __init__(self) -> None:
        self.round = 0
        self.in_flight: list[tuple[Sequence[Row], asyncio.Future[None]]] = []
        self.written_in: dict[int, int] = {}

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def write(self, rows: Sequence[Row]) -> int:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_flight.append((rows, done))
        await done
        return len(rows)

    def end_round(self) -> None:
        ending, self.in_flight = self.in_flight, []
        for written, done in ending:
            for row in written:
                self.written_in[row[0]] = self.round
            done.set_result(None)
        self.round += 1

    def rows_in_flight(self) -> int:
        return sum(len(written) for written, _ in self.in_flight)


async def until(condition: Callable[[], bool]) -> None:
    """Let the sink's tasks run until ``condition`` holds (yields only; no time passes)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the sink did not get there")


@st.composite
def arrivals_of(draw: st.DrawFn) -> list[list[int]]:
    """Requests arriving round by round, their sizes from a few (a sender's batches are alike: sizes
    that do not pack into a batch make the most batches of it)."""
    sizes = draw(st.lists(st.integers(1, 60), min_size=1, max_size=3))
    return draw(st.lists(st.lists(st.sampled_from(sizes), max_size=12), min_size=1, max_size=12))


@settings(max_examples=scaled_examples(300), deadline=None)
@given(
    max_pending=st.integers(1, 60),
    batch_size=st.integers(1, 40),
    flushers=st.integers(1, 3),
    arrivals=arrivals_of(),
)
@example(max_pending=60, batch_size=10, flushers=1, arrivals=[[6] * 10])  # batches of 6: B/2 + 1 rows
@example(max_pending=45, batch_size=10, flushers=1, arrivals=[[1, 10] * 4 + [1]])  # 1, 10, 1, 10, ...
@example(max_pending=60, batch_size=10, flushers=2, arrivals=[[6] * 10])
async def test_a_request_is_written_within_the_batches_the_bound_counts(
    max_pending: int, batch_size: int, flushers: int, arrivals: list[list[int]]
) -> None:
    config = Settings(
        sink_max_pending=max_pending,
        sink_batch_size=batch_size,
        sink_flushers=flushers,
        database_timeout_s=DEADLINE_S,
    )
    batches = sink_commit_bound_s(config) / (2 * DEADLINE_S)
    writer = RoundWriter()
    sink = PageViewSink(writer, batch_size=batch_size, max_pending=max_pending, flushers=flushers)

    def settled() -> bool:
        """Every flusher is writing, or nothing is left to take."""
        return len(writer.in_flight) == flushers or sink.pending_rows == writer.rows_in_flight()

    await sink.start()
    arrived: dict[int, int] = {}
    submits: list[asyncio.Task[None]] = []
    try:
        for sizes in arrivals:
            for size in sizes:
                pending = sink.pending_rows
                if pending + size > max_pending:
                    continue  # refused (503): never queued
                arrived[len(arrived)] = writer.round
                submits.append(asyncio.create_task(sink.submit(rows(len(arrived) - 1, size))))
                await until(lambda pending=pending, size=size: sink.pending_rows == pending + size)  # type: ignore[misc]
            await until(settled)
            writer.end_round()
            await until(settled)
        while sink.pending_rows:
            writer.end_round()
            await until(settled)
        await asyncio.gather(*submits)
    finally:
        await sink.close()

    waited = {request: writer.written_in[request] - at + 1 for request, at in arrived.items()}
    assert max(waited.values(), default=0) <= batches, (waited, batches)
