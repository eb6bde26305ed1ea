"""The app's PostgreSQL pool: psycopg's, which knows when it cannot connect (``FailFastPool``).

Kept apart from ``app.core.db`` (the units of work and the connection they borrow): this is how the
pool lends while PostgreSQL is away, and how it comes back. ``app.core.db.create_pool`` builds it.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable
from contextvars import Context, ContextVar, copy_context
from typing import Any, TypeVar

import structlog
from psycopg import AsyncConnection
from psycopg.errors import ConnectionTimeout
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.core.logging import error_message

log = structlog.get_logger("app.db")
T = TypeVar("T")


class DatabaseUnreachable(PoolTimeout):
    """No connection to lend while the pool's attempts to connect to PostgreSQL fail and it holds no
    open connection (``FailFastPool``): a ``PoolTimeout`` (what every caller already answers as
    PostgreSQL unavailable) that names the failures' cause and age instead of a wait."""


UNREACHABLE_WAIT_S = 0.1
"""How long the probing borrower waits for a connection while the pool cannot connect and holds none
(``FailFastPool``): long enough for the attempt it starts to land, far short of ``DATABASE_TIMEOUT_S``."""
PROBE_INTERVAL_S = 1.0
"""While the pool cannot connect, one borrower per interval asks it for a connection (``FailFastPool``)."""


def reconnect_timeout_s(timeout_s: float) -> float:
    """How long psycopg's pool keeps trying to replace a lost connection before it gives up: twice a
    borrower's wait. Its attempts back off (1, 2, 4 ... s), and all of a pool's replacements started
    together, so after an outage of a minute or more the next attempt could come 30-60 s after
    PostgreSQL was back (its default, 5 minutes; fault review: requests answered 503 for 42 s after a
    73 s outage). A chain that gives up frees its place, and the next borrower (``FailFastPool``'s
    probe) starts a new one, whose first attempt is immediate."""
    return 2 * timeout_s


_PATIENT: ContextVar[bool] = ContextVar("patient_borrower", default=False)


def borrow_patiently() -> None:
    """From now on in this context (and the tasks it starts), a borrower waits ``DATABASE_TIMEOUT_S``
    for a connection even while the pool cannot connect (``FailFastPool``): for the worker's jobs
    (``app.core.queues``: SAQ runs each job in a task of its own), whose retries (``JOB_RETRIES``,
    backing off) are meant to outlast a restart of PostgreSQL and did so only while each attempt
    waited (review: a relayed job failed for good within about 15 s of an outage); a job keeps
    nobody waiting. ``borrow_as_ever`` ends it."""
    _PATIENT.set(True)


def borrow_as_ever() -> None:
    _PATIENT.set(False)


def shared_load_context() -> Context:
    """A copy of this context in which borrowers wait as a request's do: for a load that several
    callers share (``app.core.cache.single_flight``, the GitHub lookups' flights), which may keep
    requests waiting whoever started it. A job that started or joined one loads again for itself when
    it is refused with ``DatabaseUnreachable`` (``awaited_as_a_borrower``): the refusal is a
    request's, not the job's (diffreview4: a request that joined a job's load waited the whole
    ``DATABASE_TIMEOUT_S``, a job that joined a request's failed at once)."""
    context = copy_context()
    context.run(borrow_as_ever)
    return context


async def awaited_as_a_borrower(shared: Awaitable[T], alone: Callable[[], Awaitable[T]]) -> T:
    """``shared``'s result (a load started in ``shared_load_context``); for a caller that borrows
    patiently and was refused with ``DatabaseUnreachable``, ``alone()``'s: its own load, waiting as
    it does. A busy pool's ``PoolTimeout`` is everyone's: it came after the whole wait."""
    try:
        return await shared
    except DatabaseUnreachable:
        if not _PATIENT.get():  # a request: the refusal is its own
            raise
    return await alone()


class FailFastPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """psycopg's pool, which knows when it cannot connect and then does not keep requests waiting.

    While PostgreSQL refused connections (stopped, restarting), every request waited the whole
    ``DATABASE_TIMEOUT_S`` (5 s) for a connection that could not come, and readiness said
    ``timeout`` as for a frozen server (fault review). Once the attempts to connect have failed for
    longer than a borrower's wait (``failing``: a restart shorter than that is ridden out, as
    before), a borrower that finds no connection while the pool holds no open one (none can come
    back) fails at once with ``DatabaseUnreachable``, which says why (refused, or the connect
    timeout of a server that accepts and never answers). One borrower per ``PROBE_INTERVAL_S`` asks
    the pool instead, waiting ``UNREACHABLE_WAIT_S``: the pool starts an attempt to connect when
    none is under way (``reconnect_timeout_s``), and the probe gets the connection if it lands
    meanwhile, as may the borrowers that come while it waits. Those still waiting when the probe's
    wait ends meet the rule of their arrival again, and wait as ever for the rest of theirs if
    PostgreSQL answered meanwhile (a connection made, perhaps its growth refused since): after a
    quiet outage the pool grows one connection at a time for a burst, and those it had not reached
    in 0.1 s were refused (review: 3 of 8 served). (Every borrower asking left one abandoned entry
    in psycopg's queue of waiting clients, kept until a connection comes back.)

    While the pool holds an open connection, idle, lent out or being checked, a borrower waits as
    ever, whatever the attempts to connect say: PostgreSQL may refuse only more connections ("too
    many clients", a role's limit) while the pool's own keep working, and a page's parallel calls
    must queue for them; on a frozen server its connections are severed at their bound
    (``app.core.db.BoundedConnection``), after which borrowers fail fast too. (Counting the
    connections lent out, as ``app.core.db.lend`` does, missed those taken from the pool and still
    being checked: a burst arriving together was refused in 0.1 s while every connection was about
    to come back; review.) The worker's jobs wait as ever too (``borrow_patiently``).

    The first connection after failed attempts logs that PostgreSQL is back, and after how long
    (``database_pool_connected_again``): the log said when an outage began
    (``database_pool_connect_failed``) and nothing when it ended.

    ``_connect`` is psycopg_pool's own (every new connection, the pool's growth and its
    replacements, goes through it), overridden to observe its outcome; ``test_core_db_refused.py``
    checks that the pinned version still calls it."""

    failing: tuple[float, float, str] | None = None
    """Since when (the start of the first failed attempt: against a frozen server an attempt fails
    only at its connect timeout, and a restart was then ridden out twice as long; fault review) and
    when last (``time.monotonic``) the attempts to connect failed, and the last one's cause; cleared
    by a connection made or lent (PostgreSQL answered)."""

    borrowers_waiting = 0
    """Borrowers waiting for a connection now (in ``getconn``): psycopg's ``requests_waiting`` also
    counts those that gave up, until a connection comes back (faults3: 124 during a 90 s outage, while
    nobody waited)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._made: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        self._refused = False
        self._probed_at = 0.0
        super().__init__(*args, **kwargs)

    def open_connections(self) -> int:
        """How many connections this pool made are still open (idle, lent out or being checked)."""
        return sum(not conn.closed for conn in self._made)

    def refusing(self) -> bool:
        """Whether the pool's last attempt to connect was refused (an answer: a role's or the server's
        limit on connections, a server starting or stopping), and none has started since: not one
        that failed at its connect timeout or still hangs (a frozen server, a partition). Unlike
        ``failing``, a connection lent does not end it: psycopg retries a refused growth after a
        backoff, and the pool meanwhile serves with the connections it holds."""
        return self._refused

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[Any]:
        started = time.monotonic()  # a frozen server fails an attempt only at its connect timeout
        self._refused = False
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            since = self.failing[0] if self.failing is not None else started
            self.failing = (since, time.monotonic(), error_message(exc))
            self._refused = not isinstance(exc, ConnectionTimeout | TimeoutError)
            raise
        self._made.add(conn)
        self._answered(always=True)
        return conn

    def _answered(self, *, always: bool) -> None:
        """PostgreSQL answered (a connection made, or lent: checked): ``failing`` ends. The first
        connection made after failed attempts logs that PostgreSQL is back, and after how long; so
        does a connection lent after failures that lasted longer than a borrower's wait (one that
        outlived a freeze, review), not one lent between refusals of the pool's growth only."""
        failing = self.failing
        if failing is None:
            return
        self.failing = None
        failing_s = time.monotonic() - failing[0]
        if always or failing_s >= self.timeout:
            log.info(
                "database_pool_connected_again",
                dependency="postgresql",
                pool=self.name,
                failing_s=round(failing_s, 3),
            )

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:
        """A connection as psycopg's pool lends it, or ``DatabaseUnreachable`` at once (the class's
        docstring). A connection lent (checked: PostgreSQL answered) ends ``failing``: a refused growth
        ("too many clients") while the pool kept serving left it set, and the next short restart was
        answered with 503s instead of being waited out (review)."""
        self.borrowers_waiting += 1
        try:
            return await self._getconn(timeout)
        finally:
            self.borrowers_waiting -= 1

    async def _getconn(self, timeout: float | None) -> AsyncConnection[Any]:
        failing = self.failing
        now = time.monotonic()
        if failing is None or self._waits_as_ever(failing, now):
            conn = await super().getconn(timeout)
            self._answered(always=False)
            return conn
        if now - self._probed_at >= PROBE_INTERVAL_S:
            self._probed_at = now  # this borrower probes; those that come while it waits join it
        budget = self.timeout if timeout is None else timeout
        wait = self._probed_at + UNREACHABLE_WAIT_S - now
        if wait <= 0:
            raise DatabaseUnreachable(self._failure(failing))
        try:
            conn = await super().getconn(min(wait, budget))
        except PoolTimeout:
            # PostgreSQL answered meanwhile (a connection made, then perhaps a growth refused): the
            # rule a borrower meets on arrival lets it wait the rest of its budget (review).
            failing, waited = self.failing, time.monotonic() - now
            if failing is not None and not self._waits_as_ever(failing, now + waited):
                raise DatabaseUnreachable(self._failure(failing)) from None
            conn = await self._getconn_within(budget, waited)
        self._answered(always=False)
        return conn

    def _waits_as_ever(self, failing: tuple[float, float, str], now: float) -> bool:
        """Whether a borrower waits for a connection as psycopg's pool lets it while attempts to
        connect fail (the class's docstring): for less than a borrower's wait; a job; or a pool that
        holds a connection it may lend."""
        return now - failing[0] < self.timeout or _PATIENT.get() or self.open_connections() > 0

    async def _getconn_within(self, budget: float, waited: float) -> AsyncConnection[Any]:
        """psycopg's ``getconn`` for what is left of ``budget``; its ``PoolTimeout`` names the whole."""
        try:
            if waited < budget:
                return await super().getconn(budget - waited)
        except PoolTimeout:
            pass
        raise PoolTimeout(f"couldn't get a connection after {budget:.2f} sec") from None

    def failure(self) -> str | None:
        """What the pool's attempts to connect say while they fail (since when, the last one's age and
        cause), else None: also while the pool still holds connections (its growth refused)."""
        return None if self.failing is None else self._failure(self.failing)

    @staticmethod
    def _failure(failing: tuple[float, float, str]) -> str:
        since, last, cause = failing
        now = time.monotonic()
        return (
            f"the pool's attempts to connect to PostgreSQL fail (for {now - since:.0f}s, the last "
            f"{now - last:.0f}s ago): {cause}"
        )
