"""While the app pool's attempts to connect to PostgreSQL fail, a borrower that could only wait is
told so at once (``FailFastPool``, ``DatabaseUnreachable``), and the first connection afterwards says
that PostgreSQL is back and how long the attempts failed (``database_pool_connected_again``).

Fault review: while PostgreSQL refused connections, every request waited the whole
``DATABASE_TIMEOUT_S`` for a connection that could not come, readiness said ``timeout`` as for a
frozen server, and nothing in the log said when the outage ended.

The pools here connect to a port nobody listens on (refused at once), or to the session's database;
switching a pool's ``conninfo`` between the two is an outage that begins or ends. The borrowers'
``DATABASE_TIMEOUT_S`` is far longer than any wait these tests allow: a borrower kept waiting for it
fails the test by its exception (``PoolTimeout`` after the whole wait, not ``DatabaseUnreachable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
from prometheus_client import REGISTRY
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from valkey.asyncio import Valkey

from app.core import pool as pool_module
from app.core.cache import Flights, single_flight
from app.core.db import Database, lend
from app.core.metrics import record_pool
from app.core.pool import DatabaseUnreachable, FailFastPool
from app.core.queues import bind_job_context
from app.domains.health.services import HealthService
from tests.factories import OpenPool, captured_logs, wait_until

NOBODY_LISTENS = "postgresql://app@127.0.0.1:9/app"
LONG_WAIT_S = 30.0
"""``DATABASE_TIMEOUT_S`` of the pools whose borrowers must wait: far past what the tests wait for."""
SHORT_WAIT_S = 1.0
"""``DATABASE_TIMEOUT_S`` of the pools whose borrowers are refused: the attempts to connect must have
failed that long first (a restart shorter than a borrower's wait is ridden out)."""


def patient(**changes: Any) -> dict[str, Any]:
    """The settings of a pool whose borrowers must wait (``open_pool``'s changes)."""
    return {"database_timeout_s": LONG_WAIT_S, **changes}


def brief(**changes: Any) -> dict[str, Any]:
    """The settings of a pool whose borrowers are refused once its attempts fail (``open_pool``'s)."""
    return {"database_timeout_s": SHORT_WAIT_S, "database_pool_min": 1, **changes}


async def refused(pool: FailFastPool) -> None:
    """Until the pool has seen an attempt to connect fail."""

    async def seen() -> bool:
        return pool.failing is not None

    await wait_until(seen, 30, "the pool failed to connect")


async def refused_longer_than_a_wait(pool: FailFastPool) -> None:
    """Until the pool's attempts to connect have failed for longer than a borrower's wait."""

    async def long() -> bool:
        return pool.failing is not None and time.monotonic() - pool.failing[0] > pool.timeout

    await wait_until(long, 30, "the pool failed to connect for longer than a borrower's wait")


async def until_pool_size(pool: FailFastPool, size: int, what: str) -> None:
    """Until the pool counts ``size`` connections, attempts under way included (psycopg's
    ``pool_size``: a chain of attempts given up leaves it)."""

    async def reached() -> bool:
        return pool.get_stats().get("pool_size", 0) == size

    await wait_until(reached, 60, what)


async def borrowed(pool: AsyncConnectionPool[Any], timeout: float = 1.0, hold_s: float = 0.0) -> bool:
    """Whether a borrower got a working connection within ``timeout`` (``DatabaseUnreachable`` is a
    ``PoolTimeout``), which it then holds ``hold_s`` (a request's statements)."""
    try:
        async with lend(pool, timeout=timeout) as conn:
            await conn.execute("select pg_sleep(%s)", (hold_s,))
    except PoolTimeout:
        return False
    return True


async def test_a_borrower_is_told_at_once_that_postgres_refuses_the_pool(open_pool: OpenPool) -> None:
    """Without the fail-fast, each of these borrowers would wait ``SHORT_WAIT_S`` and get psycopg's
    ``PoolTimeout``."""
    async with open_pool(NOBODY_LISTENS, wait=False, **brief()) as pool:
        await refused_longer_than_a_wait(pool)
        for _ in range(3):  # every borrower: the probing one, and those it spares the wait
            with pytest.raises(DatabaseUnreachable) as caught:
                async with lend(pool):
                    pass
            assert "attempts to connect to PostgreSQL fail" in str(caught.value)
            assert "refused" in str(caught.value).rsplit(": ", 1)[1].lower(), "the cause is named"
        with pytest.raises(DatabaseUnreachable):  # a caller's own deadline too (readiness)
            async with lend(pool, timeout=LONG_WAIT_S):
                pass


@pytest.fixture
async def never_answers() -> AsyncIterator[str]:
    """The URL of a listener that accepts connections and never answers (a frozen server)."""

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    try:
        yield f"postgresql://app@127.0.0.1:{server.sockets[0].getsockname()[1]}/app"
    finally:
        server.close()


async def test_failing_counts_from_the_start_of_the_first_failed_attempt(
    open_pool: OpenPool, never_answers: str
) -> None:
    """Fault review: against a frozen server an attempt fails only at its connect timeout
    (``DATABASE_TIMEOUT_S``, 2 s at least), and counted from then, requests waited out a freeze
    twice as long before they were refused at once."""
    async with open_pool(never_answers, wait=False, **brief(database_timeout_s=2.0)) as pool:
        await refused(pool)
        assert pool.failing is not None
        since, last, cause = pool.failing
        assert last - since >= 1.0, "since: when the 2 s attempt began, not when it timed out"
        assert "timeout" in cause.lower(), cause
        assert not pool.refusing(), "a connect timeout is no refusal"


async def test_a_restart_shorter_than_a_borrowers_wait_is_ridden_out(
    open_pool: OpenPool, database_url: str
) -> None:
    """Fault review: a killed postmaster, started again in 2.6 s, gave 503s once borrowers failed at
    the first refusal; waiting, they were served."""
    async with open_pool(NOBODY_LISTENS, wait=False, **patient(database_pool_min=1)) as pool:
        await refused(pool)
        waiting = asyncio.ensure_future(borrowed(pool, timeout=LONG_WAIT_S))
        pool.conninfo = database_url  # PostgreSQL is back
        assert await waiting


async def test_the_pool_tries_again_after_giving_up_a_chain_of_attempts(
    open_pool: OpenPool, database_url: str
) -> None:
    """Fault review: after an outage of a minute or more, the pool's next attempt to connect came
    30-60 s after PostgreSQL was back (psycopg backs off for five minutes). Its chains of attempts now
    end after ``reconnect_timeout_s``, and a refused borrower (the probe) starts the next."""
    async with open_pool(NOBODY_LISTENS, wait=False, **brief()) as pool:
        await refused(pool)

        await until_pool_size(pool, 0, "the pool gave its chain of attempts up")
        pool.conninfo = database_url

        await wait_until(partial(borrowed, pool), 60, "a borrower made the pool try again")


async def test_a_borrower_waits_as_ever_while_a_connection_is_lent_out(
    open_pool: OpenPool, database_url: str
) -> None:
    """Under load a lent connection comes back: failed attempts to grow the pool must not turn its
    queue into refusals."""
    async with open_pool(database_url, **brief(database_pool_max=2)) as pool:
        async with lend(pool) as held:
            pool.conninfo = NOBODY_LISTENS
            with pytest.raises(PoolTimeout):  # it asks the pool to grow, which fails
                async with lend(pool, timeout=0.5):
                    pass
            await refused_longer_than_a_wait(pool)
            waiting = asyncio.ensure_future(borrowed(pool, timeout=LONG_WAIT_S))
            await held.execute("select pg_sleep(0.5)")  # a slow request, longer than UNREACHABLE_WAIT_S
        assert await waiting, "the borrower got the connection given back"


async def refuse_growth(pool: FailFastPool) -> None:
    """Make the pool ask for a second connection (its one lent out), which the role refuses; then
    wait, connection idle again, until the attempts have failed longer than a borrower's wait."""
    async with lend(pool):
        with pytest.raises(PoolTimeout):
            async with lend(pool, timeout=0.5):
                pass
    await refused_longer_than_a_wait(pool)


async def test_a_burst_waits_as_ever_while_postgres_refuses_only_more_connections(
    open_pool: OpenPool, limited_url: str
) -> None:
    """Review: PostgreSQL refused the pool's growth while its one connection worked, and of three
    requests arriving together, two were refused in 0.1 s: the connection being checked for the
    first was counted nowhere."""
    async with open_pool(limited_url, **brief(database_pool_max=4)) as pool:
        await refuse_growth(pool)
        burst = await asyncio.gather(*(borrowed(pool, LONG_WAIT_S, hold_s=0.3) for _ in range(3)))
        assert burst == [True] * 3, burst


async def test_a_connection_lent_ends_the_pools_failing(open_pool: OpenPool, limited_url: str) -> None:
    """Review: ``failing`` ended only with a connection made, so a refused growth while the pool kept
    serving left it set, and the next short restart was answered with 503s instead of waited out.
    Failures that lasted longer than a borrower's wait, ended by a lend, are logged as over (a
    connection that outlived a freeze)."""
    async with open_pool(limited_url, **brief(database_pool_max=4)) as pool:
        await refuse_growth(pool)

        await until_pool_size(pool, 1, "the pool gave its attempts to grow up")
        assert pool.failing is not None
        with captured_logs() as logs:
            assert await borrowed(pool)  # the idle connection: no growth asked
        assert pool.failing is None
        (line,) = logs.events("database_pool_connected_again")
        assert line["failing_s"] >= pool.timeout


async def test_borrowers_that_come_while_the_probe_waits_wait_with_it(
    open_pool: OpenPool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a quiet outage the first burst met a pool with no connection: only the probing
    borrower was let wait for the attempt it started. The others now wait with it (here for as
    long as it does, the probe's wait widened so that the pool has time to grow for each)."""
    monkeypatch.setattr(pool_module, "UNREACHABLE_WAIT_S", LONG_WAIT_S)
    async with open_pool(NOBODY_LISTENS, wait=False, **brief(database_pool_max=4)) as pool:
        await refused_longer_than_a_wait(pool)

        await until_pool_size(pool, 0, "the pool gave its chain of attempts up: a quiet outage")
        pool.conninfo = database_url  # PostgreSQL is back; nothing has asked the pool since
        burst = await asyncio.gather(*(borrowed(pool, LONG_WAIT_S, hold_s=0.3) for _ in range(3)))
        assert burst == [True] * 3, burst


WIDE_PROBE_WAIT_S = 0.9
"""The probe's wait (``UNREACHABLE_WAIT_S``), widened within ``PROBE_INTERVAL_S`` so that the first
connection surely lands in it on a loaded machine."""


def probes_wait_ended(pool: FailFastPool) -> Callable[[], Awaitable[bool]]:
    async def ended() -> bool:
        return time.monotonic() >= pool._probed_at + pool_module.UNREACHABLE_WAIT_S

    return ended


async def borrowed_past_the_probes_wait(pool: FailFastPool) -> bool:
    """Whether a borrower got a connection, which it then holds until the probe's wait has ended."""
    try:
        async with lend(pool, timeout=LONG_WAIT_S) as conn:
            await wait_until(probes_wait_ended(pool), 30, "the probe's wait ended")
            await conn.execute("select 1")
    except PoolTimeout:
        return False
    return True


async def test_a_burst_waits_as_ever_once_the_probes_attempt_lands(
    open_pool: OpenPool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: after a quiet outage a burst of 8 met a pool with no connection; the pool grows one
    connection at a time, and those it had not reached when the probe's wait ended were refused
    (3 of 8 served). Once PostgreSQL has answered, they wait as ever, the rest of their own budget.
    Here every connection after the first is made only after the probe's wait, and each borrower
    holds its connection until then: without the rule, the two joining borrowers are refused."""
    monkeypatch.setattr(pool_module, "UNREACHABLE_WAIT_S", WIDE_PROBE_WAIT_S)
    async with open_pool(NOBODY_LISTENS, wait=False, **brief(database_pool_max=4)) as pool:
        await refused_longer_than_a_wait(pool)
        await until_pool_size(pool, 0, "the pool gave its chain of attempts up: a quiet outage")

        connect, getconn = pool._connect, AsyncConnectionPool.getconn
        made = 0
        asked: defaultdict[asyncio.Task[Any] | None, list[float | None]] = defaultdict(list)

        async def connect_slowly_after_the_first(timeout: float | None = None) -> Any:
            nonlocal made
            made += 1
            if made > 1:
                await wait_until(probes_wait_ended(pool), 30, "the probe's wait ended")
            return await connect(timeout)

        async def psycopgs_getconn(self: Any, timeout: float | None = None) -> Any:
            asked[asyncio.current_task()].append(timeout)
            return await getconn(self, timeout)

        monkeypatch.setattr(pool, "_connect", connect_slowly_after_the_first)
        monkeypatch.setattr(AsyncConnectionPool, "getconn", psycopgs_getconn)
        pool.conninfo = database_url  # PostgreSQL is back; nothing has asked the pool since
        burst = await asyncio.gather(*(borrowed_past_the_probes_wait(pool) for _ in range(3)))
        assert burst == [True] * 3, burst
        assert made >= 2, "the joining borrowers waited for the pool's growth"
        waits = list(asked.values())
        assert any(len(twice) == 2 for twice in waits), waits
        assert all(sum(wait or 0 for wait in each) <= LONG_WAIT_S + 0.01 for each in waits), "one budget"


async def test_a_burst_waits_as_ever_when_postgres_gives_the_pool_one_connection(
    open_pool: OpenPool, limited_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: after a quiet outage PostgreSQL let the pool have one connection (a role's limit, or
    ``max_connections`` while every replica reconnects): the probe's attempt landed, the growth for
    the joining borrowers was refused before the probe's wait ended, and they were refused with it,
    although the pool held a connection for them and the failure was fresh."""
    monkeypatch.setattr(pool_module, "UNREACHABLE_WAIT_S", WIDE_PROBE_WAIT_S)
    async with open_pool(NOBODY_LISTENS, wait=False, **brief(database_pool_max=4)) as pool:
        await refused_longer_than_a_wait(pool)
        await until_pool_size(pool, 0, "the pool gave its chain of attempts up: a quiet outage")

        errors = pool.get_stats().get("connections_errors", 0)
        pool.conninfo = limited_url  # PostgreSQL is back, and lets the pool have one connection
        burst = await asyncio.gather(*(borrowed_past_the_probes_wait(pool) for _ in range(3)))
        assert burst == [True] * 3, burst
        assert pool.get_stats().get("connections_errors", 0) > errors, "the pool's growth was refused"


async def test_a_job_waits_as_ever_while_postgres_refuses(open_pool: OpenPool) -> None:
    """Review: a relayed job's retries (JOB_RETRIES, backing off) were meant to outlast a restart of
    PostgreSQL, and did so only while each attempt waited ``DATABASE_TIMEOUT_S``: failing fast, a job
    failed for good within about 15 s of an outage. A job's context (``bind_job_context``, SAQ's
    ``before_process``) borrows patiently."""
    async with open_pool(NOBODY_LISTENS, wait=False, **brief()) as pool:
        await refused_longer_than_a_wait(pool)

        async def job() -> BaseException | None:
            await bind_job_context({})
            try:
                async with lend(pool):
                    pass
            except PoolTimeout as exc:
                return exc
            return None

        waited = await asyncio.create_task(job())
        assert isinstance(waited, PoolTimeout) and not isinstance(waited, DatabaseUnreachable), waited
        assert "after 1.00 sec" in str(waited), "the whole DATABASE_TIMEOUT_S"
        with pytest.raises(DatabaseUnreachable):  # outside the job, as before
            async with lend(pool):
                pass


class SharedLoad:
    """A load of ``pool`` that callers share (``single_flight``), held before it borrows until ``go``."""

    def __init__(self, pool: FailFastPool) -> None:
        self.pool = pool
        self.flights: Flights = {}
        self.started, self.go = asyncio.Event(), asyncio.Event()
        self.runs = 0

    async def load(self) -> None:
        self.runs += 1
        self.started.set()
        await self.go.wait()
        async with lend(self.pool):
            pass

    async def join(self, joined: asyncio.Event, *, as_job: bool) -> BaseException | None:
        """The caller's outcome (None: served). ``joined`` is set just before it joins or starts the
        load: with no await before ``single_flight``'s own, it has once its task waits."""
        if as_job:
            await bind_job_context({})
        joined.set()
        try:
            await single_flight(self.flights, "key", self.load)
        except PoolTimeout as exc:
            return exc
        return None


def waited_it_out(outcome: BaseException | None) -> bool:
    """Whether a borrower waited the whole ``DATABASE_TIMEOUT_S`` (``brief``'s) and was not told at once."""
    return (
        isinstance(outcome, PoolTimeout)
        and not isinstance(outcome, DatabaseUnreachable)
        and "after 1.00 sec" in str(outcome)
    )


@pytest.mark.parametrize(
    "job_starts", [True, False], ids=["a-request-joins-a-jobs", "a-job-joins-a-requests"]
)
async def test_a_shared_load_tells_a_request_at_once_and_a_job_loads_again_alone(
    open_pool: OpenPool, job_starts: bool
) -> None:
    """Diffreview4: a load several callers share (``single_flight``: the cache's, readiness, the feed's
    reads) borrowed with its starter's patience. A request that joined a job's load waited the whole
    ``DATABASE_TIMEOUT_S``; a job that joined a request's failed with the request's refusal, though a
    job borrows patiently (``test_a_job_waits_as_ever_while_postgres_refuses``). The load borrows as a
    request does, and the job, refused, loads again alone."""
    async with open_pool(NOBODY_LISTENS, wait=False, **brief()) as pool:
        await refused_longer_than_a_wait(pool)
        shared = SharedLoad(pool)
        first = asyncio.create_task(shared.join(asyncio.Event(), as_job=job_starts))
        await shared.started.wait()
        joined = asyncio.Event()
        second = asyncio.create_task(shared.join(joined, as_job=not job_starts))
        await joined.wait()
        shared.go.set()
        job, request = (first, second) if job_starts else (second, first)
        assert isinstance(await request, DatabaseUnreachable)
        assert waited_it_out(await job), "the job waited, on a load of its own"
        assert shared.runs == 2


async def test_a_job_does_not_load_again_after_a_busy_pools_wait(
    open_pool: OpenPool, database_url: str
) -> None:
    """Only ``DatabaseUnreachable`` is a request's refusal a job does not share: a busy pool's
    ``PoolTimeout`` came after the whole wait, which the job would only wait again (diffreview8: the
    test above passed with a reload after any ``PoolTimeout``)."""
    async with open_pool(database_url, **brief(database_pool_max=1)) as pool, lend(pool):
        shared = SharedLoad(pool)
        request = asyncio.create_task(shared.join(asyncio.Event(), as_job=False))
        await shared.started.wait()
        joined = asyncio.Event()
        job = asyncio.create_task(shared.join(joined, as_job=True))
        await joined.wait()
        shared.go.set()
        assert waited_it_out(await request)
        assert waited_it_out(await job)
        assert shared.runs == 1, "the job shared the load's wait, and did not wait again"


@asynccontextmanager
async def readiness_of(pool: FailFastPool, valkey: Valkey, valkey_url: str) -> AsyncIterator[HealthService]:
    """The readiness checks of a process whose pool is ``pool``, each cut at 0.3 s, never shared."""
    health = HealthService(Database(pool), valkey, valkey_url, timeout_s=0.3, shared_s=0.0)
    try:
        yield health
    finally:
        await health.close()


async def test_readiness_names_the_refusal_while_borrowers_wait_it_out(
    open_pool: OpenPool, valkey: Valkey, valkey_url: str
) -> None:
    """Fault review: for the first ``DATABASE_TIMEOUT_S`` of an outage, while borrowers wait the
    refusals out (a restart is ridden out), readiness said ``timeout`` and logged "no answer within
    2s", as for a server that never answers; the pool knew PostgreSQL refused."""
    async with open_pool(NOBODY_LISTENS, wait=False, **patient(database_pool_min=1)) as pool:
        await refused(pool)
        async with readiness_of(pool, valkey, valkey_url) as health:
            with captured_logs() as logs:
                answer = await health.readiness()
    checks = {check.name: check for check in answer.checks}
    assert (checks["postgres"].detail, checks["schema"].detail) == ("error", "error"), checks
    assert checks["valkey"].ok, "the others still answer"
    lines = {line["check"]: line for line in logs.events("readiness_check_failed")}
    assert lines["postgres"]["error"] == "DatabaseUnreachable", lines
    assert "refused" in lines["postgres"]["message"].rsplit(": ", 1)[1].lower(), "the cause is named"


async def test_readiness_says_busy_while_postgres_gives_the_pool_no_more(
    open_pool: OpenPool, limited_url: str, valkey: Valkey, valkey_url: str
) -> None:
    """Review: PostgreSQL let the pool have one connection, lent to a slow request: readiness said
    that PostgreSQL was unreachable (or ``timeout``), while it answered and the instance's own work
    held every connection it would give the pool."""
    async with (
        open_pool(limited_url, **brief(database_pool_max=4)) as pool,
        readiness_of(pool, valkey, valkey_url) as health,
        lend(pool),  # a slow request
    ):
        with captured_logs() as logs:
            answer = await health.readiness()
    checks = {check.name: check for check in answer.checks}
    assert (checks["postgres"].detail, checks["schema"].detail) == ("busy", "busy"), checks
    lines = {line["check"]: line for line in logs.events("readiness_check_failed")}
    assert lines["postgres"]["error"] == "PoolBusy", lines
    assert lines["postgres"]["pool"]["lent"] == 1 and lines["postgres"]["pool"]["pool_max"] == 4
    assert "PostgreSQL refuses the pool more" in lines["postgres"]["message"], lines
    assert "too many connections" in lines["postgres"]["message"], "the cause is named"


async def test_readiness_is_not_busy_while_the_pools_growth_hangs_on_a_frozen_server(
    open_pool: OpenPool, database_url: str, never_answers: str, valkey: Valkey, valkey_url: str
) -> None:
    """Review: with requests holding every connection the pool had when PostgreSQL froze, its growth
    hanging, readiness said ``busy`` and the outage notice that PostgreSQL gave the pool no more: a
    pool holding fewer than ``max_size`` is exhausted only while PostgreSQL refuses it more. Here
    the pool's two connections are lent, and its next ones go to a listener that never answers."""
    settings = brief(database_pool_min=2, database_pool_max=4, database_timeout_s=2.0)
    async with (
        open_pool(database_url, **settings) as pool,
        readiness_of(pool, valkey, valkey_url) as health,
        lend(pool),  # requests inside their work when it froze
        lend(pool),
    ):
        pool.conninfo = never_answers
        hanging = await health.readiness()  # its borrowers ask the pool to grow
        await refused(pool)  # the attempt timed out
        timed_out = await health.readiness()
    for answer, expected in ((hanging, "timeout"), (timed_out, "error")):
        checks = {check.name: check.detail for check in answer.checks}
        assert (checks["postgres"], checks["schema"]) == (expected, expected), checks


async def test_a_refused_growth_no_longer_counts_once_the_next_attempt_hangs(
    open_pool: OpenPool, limited_url: str, never_answers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool holding fewer connections than ``max_size``, all lent, is exhausted only while its
    last attempt to connect was refused: once the next one hangs (PostgreSQL frozen since), the
    refusal is old news, and a caller timed out is told the database's state, not a busy pool."""
    async with open_pool(limited_url, **brief(database_pool_max=4, database_timeout_s=5.0)) as pool:
        db = Database(pool)
        started = 0
        connect = pool._connect

        async def counted(timeout: float | None = None) -> Any:
            nonlocal started
            started += 1
            return await connect(timeout)

        async def another_attempt_started() -> bool:
            return started > attempts

        monkeypatch.setattr(pool, "_connect", counted)
        async with lend(pool):
            with pytest.raises(PoolTimeout):  # asks the pool to grow: the role refuses
                async with lend(pool, timeout=0.5):
                    pass
            assert pool.refusing() and db.exhausted() is not None, "refused: busy"
            attempts = started
            pool.conninfo = never_answers  # psycopg retries the growth after its backoff
            await wait_until(another_attempt_started, 30, "the next attempt started")
            assert not pool.refusing() and db.exhausted() is None, "it hangs: not a busy pool"


async def test_a_borrower_that_waits_past_the_probe_is_told_its_whole_wait(
    open_pool: OpenPool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: the ``PoolTimeout`` of a borrower that waited with the probe, then the rest of its
    budget, named the rest only (and chained the first wait's). Here the probe's connection is made
    once the joiner waits with it, and no other comes."""
    monkeypatch.setattr(pool_module, "UNREACHABLE_WAIT_S", WIDE_PROBE_WAIT_S)
    async with open_pool(NOBODY_LISTENS, wait=False, **brief(database_pool_max=4)) as pool:
        await refused_longer_than_a_wait(pool)
        await until_pool_size(pool, 0, "the pool gave its chain of attempts up: a quiet outage")
        connect, made, done = pool._connect, 0, asyncio.Event()

        def waiting(count: int) -> Callable[[], Awaitable[bool]]:
            async def are() -> bool:
                return pool.borrowers_waiting >= count

            return are

        async def the_first_once_both_wait(timeout: float | None = None) -> Any:
            nonlocal made
            made += 1
            await (done.wait() if made > 1 else wait_until(waiting(2), 30, "the joiner waits too"))
            return await connect(timeout)

        async def probe() -> None:
            async with lend(pool, timeout=LONG_WAIT_S):
                await done.wait()  # holds the one connection until the joiner has given up

        async def joiner() -> PoolTimeout:
            await wait_until(waiting(1), 30, "the probe waits")
            try:
                async with lend(pool, timeout=1.5):
                    raise AssertionError("no connection was to come")
            except PoolTimeout as exc:
                return exc
            finally:
                done.set()

        monkeypatch.setattr(pool, "_connect", the_first_once_both_wait)
        pool.conninfo = database_url
        _, told = await asyncio.gather(probe(), joiner())
    assert str(told) == "couldn't get a connection after 1.50 sec", told
    assert told.__cause__ is None and told.__suppress_context__, "no first wait chained"
    assert not isinstance(told, DatabaseUnreachable)


async def test_the_waiting_gauge_counts_borrowers_waiting_now(open_pool: OpenPool) -> None:
    """Fault re-run: ``app_db_pool_connections{state="waiting"}`` read psycopg's count, which keeps
    the borrowers that gave up until a connection comes back (124 during a 90 s outage, while nobody
    waited)."""

    def gauge() -> float | None:
        record_pool(pool)
        return REGISTRY.get_sample_value("app_db_pool_connections", {"state": "waiting"})

    async with open_pool(NOBODY_LISTENS, wait=False, **brief()) as pool:
        await refused_longer_than_a_wait(pool)
        for _ in range(3):  # the first probes: it waits, gives up, and stays in psycopg's queue
            assert not await borrowed(pool)
        assert pool.get_stats().get("requests_waiting", 0) >= 1
        assert gauge() == 0

        async def job() -> bool:
            await bind_job_context({})
            return await borrowed(pool, timeout=LONG_WAIT_S)

        waiting = asyncio.ensure_future(job())

        async def one_waits() -> bool:
            return gauge() == 1

        await wait_until(one_waits, 30, "the gauge counts the job's borrower")
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert gauge() == 0


async def test_the_pool_lends_again_and_says_postgres_is_back(open_pool: OpenPool, database_url: str) -> None:
    with captured_logs() as logs:
        async with open_pool(NOBODY_LISTENS, wait=False, **patient(database_pool_min=1)) as pool:
            await refused(pool)
            pool.conninfo = database_url
            await wait_until(partial(borrowed, pool), 60, "the pool lends a connection again")
            assert pool.failing is None
            assert await borrowed(pool)
    lines = logs.events("database_pool_connected_again")
    assert len(lines) == 1, "once, for the first connection only"
    assert (lines[0]["dependency"], lines[0]["pool"]) == ("postgresql", "app")
    assert lines[0]["failing_s"] > 0


async def test_another_pools_failures_are_not_the_app_pools(open_pool: OpenPool, database_url: str) -> None:
    """Review: the page-view sink's pool failing made the app pool's next new connection (up to an
    hour later) say that PostgreSQL was back."""
    with captured_logs() as logs:
        sink = AsyncConnectionPool(NOBODY_LISTENS, min_size=1, open=False, name="pageview-sink")
        await sink.open(wait=False)
        try:

            async def failed() -> bool:
                return sink.get_stats().get("connections_errors", 0) >= 1

            await wait_until(failed, 30, "the sink's pool failed to connect")
        finally:
            await sink.close()
        async with open_pool(database_url) as pool:
            assert await borrowed(pool)
    assert logs.events("database_pool_connected_again") == []
