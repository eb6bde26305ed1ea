"""Migrations at start-up: processes that start together on one database (``just serve`` beside
``just worker``, two serves, two test sessions) each run ``migrate``; every one must succeed and
the migrations be applied exactly once. dbmate takes no lock of its own: two ``dbmate up`` at once
failed with ``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from app.core import migrate as migrate_module
from app.core.migrate import MIGRATIONS_DIR, MigrationLockTimeoutError, migrate
from tests.factories import captured_logs, database_to_come

MIGRATIONS = sorted(path.name.split("_", 1)[0] for path in MIGRATIONS_DIR.glob("*.sql"))


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[tuple[str, str]]:
    """(URL of a database that does not exist yet, its name) on the session's server; dropped after."""
    with database_to_come(database_url, "migrate_race") as created:
        yield created


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


def test_a_database_another_process_creates_meanwhile_is_connected_to(
    fresh_database: tuple[str, str], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving the test above meets now and then, made certain: this process's first
    connection finds no database, and another process creates it before this one looks again. It was
    then taken for another error, and the first one ("database ... does not exist") raised."""
    url, name = fresh_database
    connect = psycopg.connect

    def another_process_creates_it_meanwhile(conninfo: str, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(psycopg, "connect", connect)  # the first connection only
        try:
            return connect(conninfo, *args, **kwargs)
        finally:
            with connect(database_url, autocommit=True) as other:
                other.execute(sql.SQL("create database {}").format(sql.Identifier(name)))

    monkeypatch.setattr(psycopg, "connect", another_process_creates_it_meanwhile)
    with migrate_module.migration_lock(url) as conn:
        assert conn.execute("select current_database()").fetchone() == (name,)


def test_migrating_an_up_to_date_database_applies_nothing(fresh_database: tuple[str, str]) -> None:
    url, _ = fresh_database
    assert "Applying" in migrate(url)

    assert "Applying" not in migrate(url)


LOCKING_MIGRATIONS = {
    "20260101000000_table.sql": "-- migrate:up\ncreate table t (id int);\n\n-- migrate:down\ndrop table t;\n",
    "20260101000100_alter.sql": (
        "-- migrate:up\nset local lock_timeout = '100ms';\nalter table t add column x int;\n\n"
        "-- migrate:down\nalter table t drop column x;\n"
    ),
}


def _locking_migrations(directory: Path) -> Path:
    directory.mkdir()
    for name, text in LOCKING_MIGRATIONS.items():
        (directory / name).write_text(text)
    return directory


def _unapply_alter(conn: psycopg.Connection[Any]) -> None:
    """As before the second migration (its column gone, its version forgotten)."""
    conn.execute("alter table t drop column x")
    conn.execute("delete from schema_migrations where version = '20260101000100'")


@pytest.mark.parametrize("checks_clients", [True, False], ids=["client-check", "no-client-check"])
def test_a_long_migration_is_not_cut_by_the_urls_statement_timeout(
    fresh_database: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checks_clients: bool
) -> None:
    """A URL's ``statement_timeout`` bounds the app's queries, not a backfill that walks a table (the
    upgrade review: cancelled at the same point on every run of ``migrate``), on a server that checks
    its clients and on one that refuses to (PostgreSQL 13; a review found the timeout kept there)."""
    if not checks_clients:
        monkeypatch.setattr(migrate_module, "check_client_connection", lambda conn: False)
    url, _ = fresh_database
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "20260101000000_walk.sql").write_text(
        "-- migrate:up transaction:false\nselect pg_sleep(0.5);\n\n-- migrate:down transaction:false\n"
    )
    timed = f"{url}{'&' if '?' in url else '?'}options={quote('-c statement_timeout=100')}"

    assert "Applying" in migrate(timed, migrations_dir=migrations, retry_delays_s=())
    with psycopg.connect(timed) as conn:  # the URL's own sessions do time out
        assert conn.execute("show statement_timeout").fetchone() == ("100ms",)


def test_a_migration_that_times_out_on_a_lock_fails_instead_of_queueing_traffic(
    fresh_database: tuple[str, str], tmp_path: Path
) -> None:
    """A reader holds the table: the migration's lock request gives up (its lock_timeout) rather than
    wait in front of every later query of the table; with no retries left, migrate says so."""
    url, _ = fresh_database
    migrations = _locking_migrations(tmp_path / "migrations")
    migrate(url, migrations_dir=migrations, retry_delays_s=())
    with psycopg.connect(url) as reader:
        _unapply_alter(reader)
        reader.commit()
        reader.execute("select * from t")  # ACCESS SHARE until this transaction ends
        with pytest.raises(MigrationLockTimeoutError, match="55P03"):
            migrate(url, migrations_dir=migrations, retry_delays_s=())


def test_a_run_that_timed_out_on_a_lock_is_tried_again_and_completes(
    fresh_database: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = fresh_database
    migrations = _locking_migrations(tmp_path / "migrations")
    migrate(url, migrations_dir=migrations, retry_delays_s=())
    with psycopg.connect(url, autocommit=True) as conn:
        _unapply_alter(conn)

    with captured_logs() as logs, psycopg.connect(url) as reader:
        reader.execute("select * from t")
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(migrate, url, migrations_dir=migrations, retry_delays_s=(0.05,) * 1000)
            deadline = time.monotonic() + 60
            while not logs.events("migration_lock_timeout_retrying"):
                assert time.monotonic() < deadline and not run.done(), "no retry after a lock timeout"
                time.sleep(0.05)
            reader.rollback()  # the reader is done: the next try gets the lock
            output = run.result(timeout=60)

    assert "Applied: 20260101000100_alter.sql" in output
    retry = logs.events("migration_lock_timeout_retrying")[0]
    assert retry["migration"] == "20260101000100_alter.sql"
    with psycopg.connect(url, autocommit=True) as conn:
        columns = conn.execute("select column_name from information_schema.columns where table_name = 't'")
        assert {name for (name,) in columns.fetchall()} == {"id", "x"}


def _up_section(text: str) -> tuple[str, str]:
    """(the ``-- migrate:up`` line, the up section's SQL without comments)."""
    up = text.split("-- migrate:down", 1)[0]
    header, _, body = up.partition("\n")
    statements = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
    return header, statements.strip()


STRONG_LOCKS_FROM = "20261202013000"
"""Migrations from this one on follow the rule below (the earlier ones are applied everywhere)."""


def test_every_migration_that_alters_a_table_in_a_transaction_sets_a_lock_timeout() -> None:
    """CONVENTIONS.md: a migration taking a strong lock on an existing table starts with
    ``set local lock_timeout``, so a long reader makes it fail and retry instead of stalling traffic;
    an index is built or dropped ``concurrently`` in a ``transaction:false`` file of its own."""
    offenders = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < STRONG_LOCKS_FROM:
            continue
        header, statements = _up_section(path.read_text())
        lowered = statements.lower()
        if "transaction:false" in header:
            continue
        if "alter table" in lowered and not lowered.startswith("set local lock_timeout"):
            offenders.append(f"{path.name}: alters a table without `set local lock_timeout` first")
        if ("create index" in lowered or "drop index" in lowered) and "create table" not in lowered:
            offenders.append(f"{path.name}: builds or drops an index inside a transaction")
    assert offenders == []


def _builds_without_if_not_exists(migrations_dir: Path) -> list[str]:
    """The ``create index`` statements of ``transaction:false`` sections (up or down) of the files in
    ``migrations_dir`` that do not say ``concurrently if not exists``, as "file: statement"."""
    offenders = []
    for path in sorted(migrations_dir.glob("*.sql")):
        for section in re.split(r"^(?=-- migrate:(?:up|down)\b)", path.read_text(), flags=re.MULTILINE):
            header, _, body = section.partition("\n")
            if "transaction:false" not in header:
                continue
            code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
            for statement in re.findall(r"\bcreate\s+(?:unique\s+)?index\b[^;]*", code, re.IGNORECASE):
                if not re.match(
                    r"create\s+(?:unique\s+)?index\s+concurrently\s+if\s+not\s+exists\s",
                    statement,
                    re.IGNORECASE,
                ):
                    offenders.append(f"{path.name}: {' '.join(statement.split())}")
    return offenders


def test_every_concurrent_index_build_says_if_not_exists() -> None:
    """A ``migrate`` killed during a concurrent build may leave the index VALID (finished in the
    orphaned backend before its client check cancelled it) and the version unrecorded: running the
    file again must keep that index, not fail on ``relation ... already exists`` (42P07) at every
    later start (``app/core/migrate.py``; dbmate records versions, never a file's text)."""
    assert _builds_without_if_not_exists(MIGRATIONS_DIR) == []
