"""Migrations at start-up: processes that start together on one database (``just serve`` beside
``just worker``, two serves, two test sessions) each run ``migrate``; every one must succeed and
the migrations be applied exactly once. dbmate takes no lock of its own: two ``dbmate up`` at once
failed with ``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from app.core.migrate import MIGRATIONS_DIR, migrate

MIGRATIONS = sorted(path.name.split("_", 1)[0] for path in MIGRATIONS_DIR.glob("*.sql"))


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[tuple[str, str]]:
    """(URL of a database that does not exist yet, its name) on the session's server; dropped after."""
    name = f"migrate_race_{uuid.uuid4().hex[:12]}"
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    yield url, name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _migrate_together(url: str, processes: int) -> list[str | BaseException]:
    """``migrate`` in ``processes`` threads released at once (each runs dbmate as a subprocess)."""
    start = threading.Barrier(processes)

    def one() -> str | BaseException:
        start.wait()
        try:
            return migrate(url)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(processes) as pool:
        return list(pool.map(lambda _: one(), range(processes)))


@pytest.mark.parametrize("exists", [False, True], ids=["missing-database", "empty-database"])
def test_concurrent_migrations_of_a_fresh_database_all_succeed_and_apply_once(
    fresh_database: tuple[str, str], database_url: str, exists: bool
) -> None:
    url, name = fresh_database
    if exists:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))

    outcomes = _migrate_together(url, 3)

    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert failures == [], "\n\n".join(str(failure) for failure in failures)
    applied = [
        line for outcome in outcomes for line in str(outcome).splitlines() if line.startswith("Applying")
    ]
    assert len(applied) == len(MIGRATIONS), "each migration applied once, by one of them"
    with psycopg.connect(url) as conn:
        versions = [row[0] for row in conn.execute("select version from schema_migrations order by version")]
    assert versions == MIGRATIONS


def test_migrating_an_up_to_date_database_applies_nothing(fresh_database: tuple[str, str]) -> None:
    url, _ = fresh_database
    assert "Applying" in migrate(url)

    assert "Applying" not in migrate(url)
