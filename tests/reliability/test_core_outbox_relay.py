"""The outbox relay: committed rows become SAQ jobs once, and a Valkey outage loses nothing, nor does
a database connection that goes silent mid-round (a failover, a partition)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import psycopg
import pytest
import redis.exceptions
from litestar_saq import SAQPlugin
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from saq import Queue
from saq.job import Job, Status

from app.config import Settings
from app.core.db import Database, create_pool
from app.core.logging import bind_request_id, unbind_request_id
from app.core.migrate import dbmate
from app.core.outbox import enqueue
from app.core.queues import build_queues, build_saq_config
from app.core.relay import OutboxRelay, job_key, relay_once
from app.core.services import Services
from app.db import outbox as outbox_queries
from app.modules import MODULES
from tests.factories import saq_queues, wait_until
from tests.faults import PrivatePostgres, scalar
from tests.valkey_control import ControlledValkey


def relay_failures() -> float:
    return REGISTRY.get_sample_value("app_outbox_relay_failures_total") or 0.0


@pytest.fixture
def relay_settings(settings: Settings, controlled_valkey: ControlledValkey) -> Settings:
    return msgspec.structs.replace(
        settings, valkey_url=controlled_valkey.url, outbox_poll_interval_s=0.05, outbox_batch_size=50
    )


@pytest.fixture
async def pool(relay_settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[AsyncConnectionPool[Any]]:
    assert relay_settings.database_url
    pool = create_pool(relay_settings, relay_settings.database_url)
    await pool.open()
    yield pool
    await pool.close()


@pytest.fixture
async def queues(relay_settings: Settings) -> AsyncIterator[dict[str, Queue]]:
    assert relay_settings.valkey_url
    async with saq_queues(relay_settings.valkey_url) as opened:
        yield opened


async def add_outbox(db: AsyncConnection[Any], count: int, queue: str = "default") -> list[int]:
    """``count`` runnable jobs (purge_outbox takes no arguments)."""
    ids = [
        await outbox_queries.insert_outbox(db, queue=queue, task="purge_outbox", payload={}, request_id=None)
        for _ in range(count)
    ]
    assert all(isinstance(i, int) for i in ids)
    return ids  # type: ignore[return-value]


async def unpublished(db: AsyncConnection[Any]) -> int:
    row = await outbox_queries.count_unpublished_outbox(db)
    assert row is not None
    return row.pending


async def test_rows_become_jobs_keyed_by_outbox_id(
    db: AsyncConnection[Any], pool: Any, queues: dict[str, Queue], relay_settings: Settings
) -> None:
    ids = await add_outbox(db, 3) + await add_outbox(db, 2, queue="orders")
    assert await relay_once(pool, queues, relay_settings) == 5
    assert await unpublished(db) == 0
    for outbox_id in ids[:3]:
        job = await queues["default"].job(job_key(outbox_id))
        assert job is not None and job.function == "purge_outbox" and job.status == Status.QUEUED
        assert job.retries == relay_settings.job_retries and job.timeout == relay_settings.job_timeout_s
    assert await queues["orders"].count("queued") == 2
    assert await relay_once(pool, queues, relay_settings) == 0


@pytest.mark.parametrize("payload", ["[1]", '"text"', "1", "null"])
async def test_a_payload_that_is_no_object_is_refused_and_cannot_stop_the_relay(
    db: AsyncConnection[Any], pool: Any, queues: dict[str, Queue], relay_settings: Settings, payload: str
) -> None:
    """A payload is a job's keyword arguments. One that was not an object failed the relay's every
    round (it claims the oldest rows first): nothing behind it was published, on any queue (a review).
    The table refuses it."""
    with pytest.raises(psycopg.errors.CheckViolation, match="outbox_payload_object"):
        await db.execute(
            "insert into outbox (queue, task, payload) values ('default', 'purge_outbox', %s::jsonb)",
            (payload,),
        )
    ids = await add_outbox(db, 2)
    assert await relay_once(pool, queues, relay_settings) == len(ids)


async def test_a_job_carries_the_request_id_of_the_request_that_wrote_its_row(
    db: AsyncConnection[Any], pool: Any, queues: dict[str, Queue], relay_settings: Settings
) -> None:
    """``enqueue`` stores the request being served (``bind_request_id``, as the request layer binds
    it) with the row, and the relay puts it in the job's ``meta``, whose log lines then carry it
    (``bind_job_context``)."""
    token = bind_request_id("req-relay-1")
    try:
        async with Database(pool).transaction() as uow:
            traced = await enqueue(uow, "default", "purge_outbox", {})
    finally:
        unbind_request_id(token)
    async with Database(pool).transaction() as uow:
        untraced = await enqueue(uow, "default", "purge_outbox", {})  # a cron's: no request
    assert await relay_once(pool, queues, relay_settings) == 2
    job = await queues["default"].job(job_key(traced))
    assert job is not None and job.meta == {"request_id": "req-relay-1"}
    assert job.kwargs == {"outbox_id": traced}, "never an argument of the task"
    other = await queues["default"].job(job_key(untraced))
    assert other is not None and other.meta == {}


async def test_a_resent_batch_is_not_enqueued_twice(
    db: AsyncConnection[Any], pool: Any, queues: dict[str, Queue], relay_settings: Settings
) -> None:
    """A relay that crashed after enqueueing but before committing re-sends the same keys."""
    (outbox_id,) = await add_outbox(db, 1)
    assert await relay_once(pool, queues, relay_settings) == 1
    await db.execute("update outbox set published_at = null where id = %s", (outbox_id,))
    assert await relay_once(pool, queues, relay_settings) == 1
    assert await queues["default"].count("queued") == 1


async def test_rows_written_while_valkey_is_down_are_delivered_when_it_returns(
    db: AsyncConnection[Any],
    pool: Any,
    queues: dict[str, Queue],
    relay_settings: Settings,
    controlled_valkey: ControlledValkey,
) -> None:
    controlled_valkey.stop()
    ids = await add_outbox(db, 4)
    with pytest.raises(redis.exceptions.ConnectionError):
        await relay_once(pool, queues, relay_settings)
    assert await unpublished(db) == 4, "a failed round must roll back"

    failures = relay_failures()
    relay = OutboxRelay(pool, queues, relay_settings)
    running = asyncio.create_task(relay.run())

    async def failed_twice() -> bool:  # two rounds: the relay keeps trying after a failure
        return relay_failures() >= failures + 2

    await wait_until(failed_twice, 30, "the relay has failed two rounds with Valkey down")
    assert await unpublished(db) == 4
    controlled_valkey.start()

    async def all_published() -> bool:
        return await unpublished(db) == 0

    await wait_until(all_published, 60, "the relay has published every row")
    relay.stop()
    await asyncio.wait_for(running, 5)
    jobs = await queues["default"].jobs([job_key(i) for i in ids])
    assert all(job is not None for job in jobs)
    assert await queues["default"].count("queued") == 4


async def test_worker_runs_the_job_end_to_end(
    db: AsyncConnection[Any], relay_settings: Settings, queues: dict[str, Queue]
) -> None:
    """Outbox row → relay (started by the default worker) → SAQ → task function → result."""
    assert relay_settings.valkey_url
    config = build_saq_config(
        Services(relay_settings, MODULES), relay_settings.valkey_url, run_workers_in_process=True
    )
    worker = SAQPlugin(config).get_workers()["default"]
    worker.SIGNALS = []
    running = asyncio.create_task(worker.start())
    try:
        (outbox_id,) = await add_outbox(db, 1)
        job: Job | None = None

        async def completed() -> bool:
            nonlocal job
            job = await queues["default"].job(job_key(outbox_id))
            return job is not None and job.status == Status.COMPLETE

        await wait_until(completed, 30, "the job has run")
        assert job is not None and job.result == 0
    finally:
        await worker.stop()
        await asyncio.wait_for(running, 10)


async def test_a_worker_stopped_while_it_starts_leaves_no_relay_running(
    relay_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stop()`` while the startup hooks still open the services (a slow start under load, or a
    shutdown grace shorter than the start): the stop hooks found no relay to stop, then the startup
    hooks went on and started the relay and the queue gauges, which ran for the rest of the process
    on a closed pool. A stop now bars the startup hooks that have not run yet."""
    assert relay_settings.valkey_url
    services = Services(relay_settings, MODULES)
    starting, gate, closing = asyncio.Event(), asyncio.Event(), asyncio.Event()
    start, close = Services.start, Services.close

    async def slow_start(self: Services) -> None:
        starting.set()
        await gate.wait()
        await start(self)

    async def observed_close(self: Services) -> None:
        closing.set()
        await close(self)

    monkeypatch.setattr(Services, "start", slow_start)
    monkeypatch.setattr(Services, "close", observed_close)
    worker = SAQPlugin(build_saq_config(services, relay_settings.valkey_url, run_workers_in_process=True))
    default = worker.get_workers()["default"]
    default.SIGNALS = []
    running = asyncio.create_task(default.start())
    await starting.wait()  # start() is in its first hook, waiting at the gate
    stopping = asyncio.create_task(default.stop())
    await closing.wait()  # the stop's own hooks ran; its shutdown waits for the start to finish
    gate.set()
    await stopping
    await running
    left = [task.get_name() for task in asyncio.all_tasks() if not task.done()]
    assert "outbox-relay" not in left and "queue-gauges" not in left, left


class Partition:
    """TCP in front of PostgreSQL's unix socket; ``cut()`` makes every open connection silent (its
    bytes go nowhere, nothing is closed) while new connections get through (the new primary)."""

    def __init__(self, unix_socket: str) -> None:
        self.target = unix_socket
        self.port = 0
        self.generation = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.generation += 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        born = self.generation
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if self.generation != born:
                    await asyncio.Event().wait()  # silent for ever, nothing closed
                dst.write(data)
                await dst.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


async def test_the_relay_publishes_again_once_a_partition_heals(
    private_postgres: PrivatePostgres, controlled_valkey: ControlledValkey, relay_settings: Settings
) -> None:
    """A round whose connection goes silent ends at its deadline; the next round uses a new one."""
    dbmate(private_postgres.url("faults"), "up")
    partition = Partition(str(private_postgres.directory / ".s.PGSQL.5432"))
    await partition.serve()
    url = f"postgresql://postgres:@127.0.0.1:{partition.port}/faults"
    direct = private_postgres.url("faults")
    cfg = msgspec.structs.replace(
        relay_settings,
        database_url=url,
        database_timeout_s=2.0,
        statement_timeout_ms=2000,
        idle_in_transaction_timeout_ms=5000,  # the old primary's half of the cut round ends too
    )
    pool = create_pool(cfg, url)
    await pool.open()
    queues = build_queues(controlled_valkey.url)
    relay = OutboxRelay(pool, queues, cfg)
    running = asyncio.create_task(relay.run())

    def unpublished_is(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return bool(await scalar(direct, "select count(*) from outbox where published_at is null") == n)

        return check

    async def relay_holds_its_rows() -> bool:
        return bool(
            await scalar(
                direct,
                "select count(*) from pg_stat_activity where state = 'idle in transaction'"
                " and query like '%%from outbox%%'",
            )
        )

    try:
        async with await AsyncConnection.connect(direct, autocommit=True) as db:
            await add_outbox(db, 1)
            await wait_until(unpublished_is(0), 30, "the relay runs")
            controlled_valkey.pause()  # the next round claims its row and waits on Valkey
            await add_outbox(db, 1)
            await wait_until(relay_holds_its_rows, 30, "the relay holds its claimed row")
            partition.cut()  # the relay's connection goes silent
            controlled_valkey.resume()  # the enqueue completes; the commit goes nowhere
            await add_outbox(db, 1)
            await wait_until(unpublished_is(0), 120, "the relay publishes again")
    finally:
        relay.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(running, 10)
        running.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(pool.close(timeout=1), 3)
        with contextlib.suppress(Exception):
            await queues["default"].redis.aclose()  # type: ignore[attr-defined]
        await partition.close()
