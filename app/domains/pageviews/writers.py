"""How the sink writes one batch of rows (see ``sink.py`` for the protocol, ``benchmarks/README.md``
for the measurements behind each choice).

- Fewer than ``COPY_FROM`` rows: one statement, one round trip. The rows are one JSON parameter
  (``json_populate_recordset``): msgspec encodes it in C, where the drivers' encoding of 16 arrays
  cost several times more client CPU per row. The statement checks that the batch's sites exist,
  claims the event ids and inserts the rows.
- ``COPY_FROM`` rows or more: a transaction with the same check, then two binary COPYs (event ids,
  rows).

The event-id claim is a plain insert (or COPY) into the unique index, not ``ON CONFLICT``: a retried
send is rare, and a speculative insertion per row cost more than the index insert itself. A retried
send makes the claim fail with a unique violation, which rolls back everything of the batch; the
batch is then written by ``STORE_SKIPPING_CLAIMED`` (``ON CONFLICT DO NOTHING`` on the claim, and only
the rows whose id it claimed). The caller's rows may repeat an event id: the first one is kept.

Every write takes its claims in one order, (site, event id) ascending (the SQL ``order by``, the
COPYs' ``event_claims``; a UUID sorts alike in Python and PostgreSQL). Two writes claiming the same
ids in opposite orders (a client's retry reaching another process) each waited for an id the other
held: PostgreSQL broke the deadlock by failing one, and with it every request of its batch. In one
order the later write waits for the earlier, then meets the unique violation above.

Why a claim table at all (the options measured side by side by ``benchmarks/harness/dedup.py``,
results in benchmarks/README.md): a unique index on each daily partition of ``page_views`` costs
less per row, but only catches a retry whose ``ts`` falls on the same UTC day as the original's (a
view without ``ts`` retried across midnight would be stored twice); a staging table with
``ON CONFLICT`` and an array ``INSERT`` of the claims both cost more; time-ordered ids changed little.
The claims keep a retried send stored once for ``services.EVENT_ID_RETENTION`` (two days), across
batches, processes and restarts.

Every use of a connection (borrowing it, then the statement or the COPY transaction) has a
client-side deadline, ``DATABASE_TIMEOUT_S`` (how long a request may wait for the database; not
``STATEMENT_TIMEOUT_MS``, the server's bound on a query that runs: a write waits for the database,
its requests wait on it). At the deadline the connection is severed, not cancelled: a cancel request
to a server that stopped answering (a frozen host) waits as long as the query. The write then raises
``WriteTimeoutError`` and the sink answers its requests 503: a timed-out write is never
acknowledged (it may or may not have committed; a retried send with an event id is stored once).

A severed backend must end on the server too: one waiting on a lock does not notice that its client
left, and the next write opens a new connection. While something held a conflicting lock on
``page_views`` or ``sites`` longer than the deadline, every deadline left one more backend waiting
(until ``max_connections`` refused the whole app), and when the lock went they all committed views
already answered 503, their uncommitted event-id claims blocking the retries meanwhile. So the
sink's sessions (both drivers; ``session_options``) start with ``statement_timeout`` and
``idle_in_transaction_session_timeout`` a little above the deadline (``session_timeout_ms``: a
statement starts after its write's deadline did, so the server never cuts one the client would
still wait for, a large COPY included), and check every ``CONNECTION_CHECK_INTERVAL_MS`` whether
their client is still there (``client_connection_check_interval``: a write cut before its deadline,
when the sink closes or its caller is cancelled, ends within about an interval). They are named
``<APP_NAME>:pageview-sink`` in ``pg_stat_activity``.

SQL lives here, not in ``sql/queries``, because half of it runs on asyncpg (which sqlc's generated
psycopg code cannot use) and the COPY column lists follow ``rows.COLUMNS``.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Json

from app.core.db import SESSION_TIME_ZONE, check_within
from app.core.deadline import DeadlineExceededError, answered_within, finish_within, sever
from app.core.pool import reconnect_timeout_s
from app.domains.pageviews.rows import COLUMNS, COPY_TYPES, Row, as_json

T = TypeVar("T")

COPY_FROM = 256  # rows; below it the one-statement write costs less CPU (client + server) per row
UNIQUE_VIOLATION = "23505"
SESSION_MARGIN_MS = 500
"""How much longer than a write's deadline the server lets a sink statement, or transaction, run."""
CONNECTION_CHECK_INTERVAL_MS = 1000
"""How often a sink session running a statement checks that its client is still connected."""
_MAX_TIMEOUT_MS = 2**31 - 1  # the largest value PostgreSQL's timeouts take
APPLICATION_NAME = "pageview-sink"
_CHECK_CLIENT = (
    f"select set_config('client_connection_check_interval', '{CONNECTION_CHECK_INTERVAL_MS}', false)"
)
_SETTING_REFUSED = ("42704", "22023")
"""``client_connection_check_interval`` unknown (PostgreSQL before 14) or refused (any value but 0 on a
platform where the server cannot check its clients)."""
_COLUMN_LIST = ", ".join(COLUMNS)

_INCOMING_AND_GONE = f"""
with incoming as materialized (
    select {_COLUMN_LIST} from json_populate_recordset(null::page_views, $1::json)
), sites_gone as (
    select coalesce(array_agg(batch.site_id), '{{}}') as ids
    from (select distinct site_id from incoming) batch
    where not exists (select 1 from sites s where s.id = batch.site_id)
)"""
# The batch's sites all exist, its event ids are new: claim them and store every row. Answers the
# ids of the batch's sites that no longer exist (then nothing was stored).
STORE = f"""{_INCOMING_AND_GONE}, claimed as (
    insert into page_view_event_ids (site_id, event_id)
    select site_id, event_id from incoming
    where event_id is not null and (select ids = '{{}}' from sites_gone)
    order by site_id, event_id
), stored as (
    insert into page_views ({_COLUMN_LIST})
    select {_COLUMN_LIST} from incoming where (select ids = '{{}}' from sites_gone)
)
select ids from sites_gone"""
# After a unique violation: store the rows without an event id and those whose id this claims.
STORE_SKIPPING_CLAIMED = f"""{_INCOMING_AND_GONE}, claimed as (
    insert into page_view_event_ids (site_id, event_id)
    select site_id, event_id from incoming
    where event_id is not null and (select ids = '{{}}' from sites_gone)
    order by site_id, event_id
    on conflict do nothing
    returning site_id, event_id
), stored as (
    insert into page_views ({_COLUMN_LIST})
    select {_COLUMN_LIST} from incoming i
    where (select ids = '{{}}' from sites_gone)
      and (i.event_id is null or (i.site_id, i.event_id) in (select site_id, event_id from claimed))
    returning 1
)
select ids, (select count(*) from stored)::integer as stored from sites_gone"""
SITES_GONE = """
select coalesce(array_agg(batch.site_id), '{}') as ids
from unnest($1::bigint[]) as batch (site_id)
where not exists (select 1 from sites s where s.id = batch.site_id)"""
COPY_EVENT_IDS = "copy page_view_event_ids (site_id, event_id) from stdin (format binary)"
COPY_PAGE_VIEWS = f"copy page_views ({_COLUMN_LIST}) from stdin (format binary)"


def session_timeout_ms(timeout_s: float) -> int:
    """The sink sessions' ``statement_timeout`` and ``idle_in_transaction_session_timeout``.

    ``timeout_s`` is the largest deadline a write is given (every write, a COPY of the largest batch
    included, has the writer's one deadline, counted from before its connection is borrowed): a
    statement or transaction that outlives it belongs to a write already severed and answered 503.
    """
    return min(math.ceil(timeout_s * 1000) + SESSION_MARGIN_MS, _MAX_TIMEOUT_MS)


def session_options(timeout_s: float, dsn: str) -> str:
    """The server settings of the sink's sessions (libpq ``options``), then those of ``dsn``, which
    win (as in ``app.core.db.session_options``; either driver's own setting replaces the URL's).
    In UTC as the app's other sessions (``SESSION_TIME_ZONE``, why: ``app.core.db.session_options``)."""
    timeout_ms = session_timeout_ms(timeout_s)
    ours = (
        f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout={timeout_ms} "
        f"-c TimeZone={SESSION_TIME_ZONE}"
    )
    theirs = conninfo_to_dict(dsn).get("options")
    return f"{ours} {theirs}" if theirs else ours


def application_name(app_name: str | None) -> str:
    return f"{app_name}:{APPLICATION_NAME}" if app_name else APPLICATION_NAME


def _refused_setting(exc: Exception) -> bool:
    return getattr(exc, "sqlstate", None) in _SETTING_REFUSED


class SitesGoneError(Exception):
    """A write stored nothing because some of its sites no longer exist."""

    def __init__(self, site_ids: Sequence[int]) -> None:
        super().__init__(f"sites deleted: {sorted(site_ids)}")
        self.site_ids = frozenset(site_ids)


class WriteTimeoutError(TimeoutError):
    """The database did not answer a write within the deadline; its connection was severed."""

    @classmethod
    def after(cls, timeout_s: float) -> WriteTimeoutError:
        return cls(f"the database did not answer a write within {timeout_s:g}s")


async def before_deadline(
    timeout_s: float, work: Callable[[list[Any]], Awaitable[T]], sever: Callable[[Any], None]
) -> T:
    """Run ``work(lent)`` (it appends the connection it borrows to ``lent``) for ``timeout_s`` at most.

    At the deadline the lent connection is severed by ``sever`` (no cancel request reaches the
    server; ``app.core.deadline`` says why not closed under the driver) and the work fails on it by
    itself; work that has not borrowed a connection yet is cancelled. ``WriteTimeoutError`` is raised
    once the work has ended.
    """
    lent: list[Any] = []
    task = asyncio.ensure_future(work(lent))

    def stop() -> None:
        for conn in lent:
            sever(conn)
        if not lent:
            task.cancel()

    try:
        return await finish_within(task, timeout_s, stop)
    except DeadlineExceededError:
        raise WriteTimeoutError.after(timeout_s) from None


class Writer(Protocol):
    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, rows: Sequence[Row]) -> int:
        """Commit ``rows`` in one transaction; the number stored (retries of a stored event id are
        not). Raises ``SitesGoneError`` (nothing stored) when a site of the batch no longer exists."""
        ...


def first_of_each_event(rows: Sequence[Row]) -> Sequence[Row]:
    """``rows`` without the repeats of a (site, event id) within them (the first one is kept).

    Event ids are compared by their ``int``: a UUID's hash and ordering are Python methods, its
    ``int`` a slot whose tuples hash and compare in C (a third of the cost per row of a batch)."""
    keys = [(row[0], row[3].int) for row in rows if row[3] is not None]
    if len(set(keys)) == len(keys):
        return rows
    seen: set[tuple[int, int]] = set()
    kept: list[Row] = []
    for row in rows:
        if row[3] is not None:
            key = (row[0], row[3].int)
            if key in seen:
                continue
            seen.add(key)
        kept.append(row)
    return kept


def event_claims(rows: Sequence[Row]) -> list[tuple[int, uuid.UUID]]:
    """The (site, event id) claims of ``rows`` in the one order every write takes them in: a UUID's
    ``int`` orders as PostgreSQL orders uuids (its 16 bytes, big-endian). ``rows`` hold no repeats
    (``first_of_each_event``), so the sort never compares the UUIDs themselves."""
    keyed = sorted([(row[0], row[3].int, row[3]) for row in rows if row[3] is not None])
    return [(site_id, event_id) for site_id, _, event_id in keyed]


def site_ids(rows: Sequence[Row]) -> list[int]:
    return list({row[0] for row in rows})


class _Writer:
    """The write protocol over two driver primitives: one JSON statement, one COPY transaction."""

    name = "?"
    copy_from = COPY_FROM

    async def write(self, rows: Sequence[Row]) -> int:
        rows = first_of_each_event(rows)
        try:
            if len(rows) >= self.copy_from:
                await self._copy(rows)
                return len(rows)
            gone, _ = await self._statement(STORE, as_json(rows))
            written = len(rows)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            gone, written = await self._statement(STORE_SKIPPING_CLAIMED, as_json(rows))
        if gone:
            raise SitesGoneError(gone)
        return written

    async def _statement(self, sql: str, payload: bytes) -> tuple[list[int], int]:
        """Run ``STORE`` or ``STORE_SKIPPING_CLAIMED`` (autocommit): (sites gone, rows stored)."""
        raise NotImplementedError

    async def _copy(self, rows: Sequence[Row]) -> None:
        """Check the sites, COPY the claims and the rows, commit; ``SitesGoneError`` or a unique
        violation (nothing stored) otherwise."""
        raise NotImplementedError


async def _json_as_text(conn: Any) -> None:
    """asyncpg: take a JSON parameter as the bytes msgspec made (no decode to ``str`` and back)."""
    await conn.set_type_codec("json", encoder=_same, decoder=_same, schema="pg_catalog", format="binary")


def _same(value: bytes) -> bytes:
    return value


async def _check_client(conn: Any) -> None:
    """Set ``client_connection_check_interval`` on ``conn`` (either driver), unless the server refuses it."""
    try:
        await conn.execute(_CHECK_CLIENT)
    except Exception as exc:
        if not _refused_setting(exc):
            raise


def _in_step(exc: Exception) -> bool:
    """Whether an asyncpg connection is still usable after ``exc``: the server answered with an error
    (a SQLSTATE; asyncpg gives its own refusal to encode a parameter one too), or the write refused
    its batch itself. Anything else leaves it out of step: a connection exception (SQLSTATE class 08,
    which asyncpg also gives a connection it lost), the server shutting the session down (57P01-03)
    or one of asyncpg's internal errors."""
    if isinstance(exc, SitesGoneError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and not sqlstate.startswith(("08", "57P"))


class AsyncpgWriter(_Writer):
    """Keeps its own connections (at most ``connections``) instead of an asyncpg pool, and bounds
    each write by a timer that severs its connection instead of a task and ``asyncio.wait``.

    A flusher has one write in flight at a time, so a list of idle connections and a bound are all
    the sharing there is; the pool's checkout and release (its holder queue, the connection proxy,
    the inactivity timer) and the deadline's task were more than half of the client CPU of a
    one-statement write (80 of ~170 µs on the benchmark machine; ``benchmarks/README.md``).

    What the pool gave is kept: connections are made on first use (within the deadline), a lost one
    is dropped and the next write connects again, and one in an unknown state (an open transaction,
    a write severed at its deadline or cancelled) is never lent again. A cancelled write severs its
    connection rather than letting asyncpg send a cancel request, for the reason in
    ``app.core.deadline``.
    """

    name = "asyncpg"

    def __init__(self, dsn: str, connections: int, timeout_s: float, *, app_name: str | None = None) -> None:
        self._dsn = dsn
        self._timeout_s = timeout_s
        self._server_settings = {
            "options": session_options(timeout_s, dsn),
            "application_name": application_name(app_name),
        }
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[Any] = []
        self._closed = False

    async def open(self) -> None:
        """Nothing to do: connections are made by the first writes."""

    async def close(self) -> None:
        """Close the idle connections; one still lent is closed when its write ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.close(timeout=self._timeout_s)
            except Exception:
                conn.terminate()

    async def _on_a_connection(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``work(connection)`` on an idle (or new) connection, within the deadline."""
        async with self._slots:
            conn = await self._idle_or_new()
            loop = asyncio.get_running_loop()
            deadline = loop.call_later(self._timeout_s, conn.terminate)
            try:
                result = await work(conn)
            except asyncio.CancelledError:
                conn.terminate()
                raise
            except Exception as exc:
                if not _in_step(exc):
                    conn.terminate()
                if loop.time() >= deadline.when():
                    raise WriteTimeoutError.after(self._timeout_s) from None
                raise
            finally:
                deadline.cancel()
                if not (self._closed or conn.is_closed() or conn.is_in_transaction()):
                    self._idle.append(conn)
                else:
                    conn.terminate()
            return result

    async def _idle_or_new(self) -> Any:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
        try:
            return await asyncio.wait_for(self._connect(), self._timeout_s)
        except TimeoutError:
            raise WriteTimeoutError(f"no connection to the database within {self._timeout_s:g}s") from None

    async def _connect(self) -> Any:
        import asyncpg

        # No command_timeout: the deadline above bounds every use. The settings travel in the startup
        # packet (the URL's ``options`` among them); the client check, which an older server would
        # refuse there, is one statement more per connection (not per write).
        conn = await asyncpg.connect(self._dsn, server_settings=self._server_settings)
        try:
            await _json_as_text(conn)
            if conn.get_server_version().major >= 14:
                await _check_client(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _statement(self, sql: str, payload: bytes) -> tuple[list[int], int]:
        record = await self._on_a_connection(lambda conn: conn.fetchrow(sql, payload))
        return list(record[0]), record[1] if len(record) > 1 else 0

    async def _copy(self, rows: Sequence[Row]) -> None:
        async def run(conn: Any) -> None:
            async with conn.transaction():
                gone = await conn.fetchval(SITES_GONE, site_ids(rows))
                if gone:
                    raise SitesGoneError(gone)
                if claims := event_claims(rows):
                    await conn.copy_records_to_table(
                        "page_view_event_ids", records=claims, columns=("site_id", "event_id")
                    )
                await conn.copy_records_to_table("page_views", records=rows, columns=COLUMNS)

        await self._on_a_connection(run)


class PsycopgWriter(_Writer):
    name = "psycopg"

    def __init__(self, dsn: str, connections: int, timeout_s: float, *, app_name: str | None = None) -> None:
        self._dsn = dsn
        self._connections = connections
        self._timeout_s = timeout_s
        self._app_name = app_name
        self._pool: Any = None

    async def open(self) -> None:
        """Autocommit: a small batch is one statement (one round trip); large ones open a
        transaction. Borrowing waits ``timeout_s``, with ``connect_timeout`` and the deadline-bound
        check of ``app.core.db`` (why: ``create_pool`` there). The sessions' limits (the module's
        docstring) are in ``options``; the client check is set once per new connection."""
        from psycopg_pool import AsyncConnectionPool

        self._pool = AsyncConnectionPool(
            self._dsn,
            min_size=0,
            max_size=self._connections,
            timeout=self._timeout_s,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(2, math.ceil(self._timeout_s)),
                "options": session_options(self._timeout_s, self._dsn),
                "application_name": application_name(self._app_name),
            },
            configure=self._configure,
            check=check_within(self._timeout_s),
            reconnect_timeout=reconnect_timeout_s(self._timeout_s),
            open=False,
            name=APPLICATION_NAME,
        )
        await self._pool.open()

    async def _configure(self, conn: Any) -> None:
        if conn.info.server_version >= 140000:
            await answered_within(conn, _check_client(conn), self._timeout_s)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def _within(self, work: Callable[[list[Any]], Awaitable[T]]) -> T:
        return await before_deadline(self._timeout_s, work, sever)

    async def _statement(self, sql: str, payload: bytes) -> tuple[list[int], int]:
        from psycopg import AsyncRawCursor

        async def run(lent: list[Any]) -> Any:
            async with self._pool.connection() as conn:
                lent.append(conn)
                async with AsyncRawCursor(conn) as cur:
                    await cur.execute(sql, (Json(payload, dumps=_same),))
                    return await cur.fetchone()

        record = await self._within(run)
        assert record is not None
        return list(record[0]), record[1] if len(record) > 1 else 0

    async def _copy(self, rows: Sequence[Row]) -> None:
        from psycopg import AsyncRawCursor

        async def run(lent: list[Any]) -> None:
            async with self._pool.connection() as conn:
                lent.append(conn)
                async with conn.transaction(), AsyncRawCursor(conn) as cur:
                    await cur.execute(SITES_GONE, (site_ids(rows),))
                    record = await cur.fetchone()
                    if record is not None and record[0]:
                        raise SitesGoneError(record[0])
                    if claims := event_claims(rows):
                        async with cur.copy(COPY_EVENT_IDS) as copy:
                            copy.set_types(["int8", "uuid"])
                            for claim in claims:
                                await copy.write_row(claim)
                    async with cur.copy(COPY_PAGE_VIEWS) as copy:
                        copy.set_types(list(COPY_TYPES))
                        for row in rows:
                            await copy.write_row(row)

        await self._within(run)


class HybridWriter(AsyncpgWriter):
    """The one-statement writes through asyncpg (a round trip costs it a third of psycopg's client
    CPU), the COPYs through psycopg (its binary COPY moved ~1.4-1.9x asyncpg's rows per CPU second)."""

    name = "hybrid"

    def __init__(self, dsn: str, connections: int, timeout_s: float, *, app_name: str | None = None) -> None:
        super().__init__(dsn, connections, timeout_s, app_name=app_name)
        self._copier = PsycopgWriter(dsn, connections, timeout_s, app_name=app_name)

    async def open(self) -> None:
        await super().open()
        await self._copier.open()

    async def close(self) -> None:
        await super().close()
        await self._copier.close()

    async def _copy(self, rows: Sequence[Row]) -> None:
        await self._copier._copy(rows)


def make_writer(
    driver: str, dsn: str, connections: int, timeout_s: float, *, app_name: str | None = None
) -> Writer:
    """``timeout_s``: each write's deadline (the service passes ``DATABASE_TIMEOUT_S``); ``app_name``
    (``APP_NAME``) names the sink's sessions ``<app_name>:pageview-sink``."""
    writers: dict[str, type[AsyncpgWriter] | type[PsycopgWriter]] = {
        "asyncpg": AsyncpgWriter,
        "psycopg": PsycopgWriter,
        "hybrid": HybridWriter,
    }
    return writers[driver](dsn, connections, timeout_s, app_name=app_name)
