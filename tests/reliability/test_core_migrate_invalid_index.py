"""A ``create index concurrently`` migration that fails once (cancelled by a statement timeout, an
operator's ``pg_cancel_backend``, a deploy stopped; a unique build meeting a duplicate) leaves its
index behind, INVALID, and dbmate does not record the version: every later ``migrate`` failed with
``relation ... already exists (42P07)``. ``migrate`` now drops such an index of a pending
``transaction:false`` file before ``dbmate up``, and never a valid one, nor one no pending file builds.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from app.core.migrate import drop_invalid_indexes, migrate
from tests.factories import captured_logs, database_to_come, migrations_before

TARGET = "20261202010500_github_profiles_fetched_at_index.sql"
BUILD_WAIT_S = 120.0


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    with database_to_come(database_url, "invalid_index") as (url, _):
        yield url


def _indexes(url: str, *names: str) -> dict[str, bool]:
    """{index name: valid} of those of ``names`` that exist."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "select c.relname, i.indisvalid from pg_index i join pg_class c on c.oid = i.indexrelid"
            " where c.relname = any(%s)",
            (list(names),),
        ).fetchall()
    return {str(name): bool(valid) for name, valid in rows}


def _applied(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {str(version) for (version,) in conn.execute("select version from schema_migrations")}


def test_a_cancelled_concurrent_index_build_does_not_block_the_next_migrate(
    fresh_database: str, tmp_path: Path
) -> None:
    """The real migration, cancelled while its build waits for a writer's open transaction."""
    url = fresh_database
    migrate(url, migrations_dir=migrations_before(TARGET, tmp_path / "before"))

    cancelled = threading.Event()

    def cancel_the_waiting_build() -> None:
        with psycopg.connect(url, autocommit=True) as watch:
            deadline = time.monotonic() + BUILD_WAIT_S
            while time.monotonic() < deadline:
                row = watch.execute(
                    "select pid from pg_stat_activity where wait_event_type = 'Lock'"
                    " and query ilike '%%create index concurrently%%github_profiles_fetched_at_idx%%'"
                ).fetchone()
                if row is not None:
                    watch.execute("select pg_cancel_backend(%s)", row)
                    cancelled.set()
                    return
                time.sleep(0.05)

    with psycopg.connect(url) as writer:
        # An ordinary writer's open transaction: the concurrent build waits for it (its phase 2).
        writer.execute("update github_profiles set fetched_at = fetched_at where false")
        canceller = threading.Thread(target=cancel_the_waiting_build)
        canceller.start()
        with pytest.raises(RuntimeError, match="canceling statement"):
            migrate(url)
        canceller.join()
        writer.rollback()
    assert cancelled.is_set()
    assert _indexes(url, "github_profiles_fetched_at_idx") == {"github_profiles_fetched_at_idx": False}

    with captured_logs() as logs:
        output = migrate(url)  # the operator retries once nothing blocks the build any more

    assert f"Applied: {TARGET}" in output
    assert _indexes(url, "github_profiles_fetched_at_idx") == {"github_profiles_fetched_at_idx": True}
    assert TARGET.split("_", 1)[0] in _applied(url)
    [dropped] = logs.events("migration_invalid_index_dropped")
    assert dropped["index"] == "public.github_profiles_fetched_at_idx"
    assert dropped["migration"] == TARGET


TABLE = "20260101000000_table.sql"
UNIQUE_INDEX = "20260101000100_unique_index.sql"
MIGRATIONS = {
    TABLE: "-- migrate:up\ncreate table t (a int, b int);\n\n-- migrate:down\ndrop table t;\n",
    UNIQUE_INDEX: (
        "-- migrate:up transaction:false\n"
        "create unique index concurrently if not exists t_a_key on t (a);\n\n"
        "-- migrate:down transaction:false\ndrop index concurrently if exists t_a_key;\n"
    ),
}


@pytest.fixture
def small_migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in MIGRATIONS.items():
        (directory / name).write_text(text)
    return directory


def _leave_invalid(url: str, index: str, column: str) -> None:
    """A unique concurrent build that meets a duplicate: it fails and leaves ``index`` INVALID."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into t values (1, 1), (1, 1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                sql.SQL("create unique index concurrently {} on t ({})").format(
                    sql.Identifier(index), sql.Identifier(column)
                )
            )
        conn.execute("delete from t")


def test_a_failed_unique_build_is_dropped_and_built_again(
    fresh_database: str, small_migrations: Path
) -> None:
    url = fresh_database
    pending = small_migrations.parent / "pending"
    pending.mkdir()
    shutil.copy(small_migrations / TABLE, pending / TABLE)
    migrate(url, migrations_dir=pending)
    _leave_invalid(url, "t_a_key", "a")
    _leave_invalid(url, "someone_elses_idx", "b")
    assert _indexes(url, "t_a_key", "someone_elses_idx") == {"t_a_key": False, "someone_elses_idx": False}

    with captured_logs() as logs:
        migrate(url, migrations_dir=small_migrations)

    assert _indexes(url, "t_a_key", "someone_elses_idx") == {"t_a_key": True, "someone_elses_idx": False}
    assert [event["index"] for event in logs.events("migration_invalid_index_dropped")] == ["public.t_a_key"]
    assert "20260101000100" in _applied(url)


def test_valid_indexes_and_those_of_applied_migrations_are_never_dropped(
    fresh_database: str, small_migrations: Path
) -> None:
    url = fresh_database
    pending = small_migrations.parent / "pending"
    pending.mkdir()
    shutil.copy(small_migrations / TABLE, pending / TABLE)
    migrate(url, migrations_dir=pending)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create unique index concurrently t_a_key on t (a)")  # valid, built by hand

        assert drop_invalid_indexes(conn, small_migrations) == []
        assert _indexes(url, "t_a_key") == {"t_a_key": True}

        conn.execute("drop index concurrently t_a_key")
        conn.execute("insert into schema_migrations (version) values ('20260101000100')")  # applied
    _leave_invalid(url, "t_a_key", "a")
    with psycopg.connect(url, autocommit=True) as conn:
        assert drop_invalid_indexes(conn, small_migrations) == []
    assert _indexes(url, "t_a_key") == {"t_a_key": False}
