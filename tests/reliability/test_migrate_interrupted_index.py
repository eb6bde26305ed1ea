"""A ``migrate`` killed (Ctrl-C of ``just serve`` during start, a deploy's migrate container stopped)
while a ``transaction:false`` migration's ``create index concurrently`` waits or builds.

PostgreSQL does not notice a gone client during a statement (``client_connection_check_interval`` is
0 by default): the orphaned backend finished the build, the index ended VALID, dbmate never recorded
the version, and every later ``migrate`` failed with ``relation "..._idx" already exists (42P07)``.
Now dbmate's sessions check their client (the orphan is cancelled and leaves an INVALID index, which
``migrate`` drops), every concurrent build says ``if not exists`` (a build that finished in an orphan
is kept), and ``migrate`` waits, within a bound, for a build still under way on the table.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.core.migrate import ROOT, IndexBuildUnderWayError, migrate, migration_versions
from tests.factories import captured_logs, database_to_come, migrations_before

TARGET = "20261202010500_github_profiles_fetched_at_index.sql"
VERSION = TARGET.split("_", 1)[0]
INDEX = "github_profiles_fetched_at_idx"
BUILD = f"create index concurrently {INDEX} on github_profiles (fetched_at)"
WAIT_S = 120.0
"""Generous deadline of every poll below (a shared, loaded machine); never a speed bound."""


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    with database_to_come(database_url, "interrupted_index") as (url, _):
        yield url


@pytest.fixture
def before_target(fresh_database: str, tmp_path: Path) -> str:
    """A fresh database migrated up to (not including) the GitHub profiles' concurrent index."""
    migrate(fresh_database, migrations_dir=migrations_before(TARGET, tmp_path / "before"))
    return fresh_database


def _index(conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[int, bool] | None:
    """(oid, valid) of the index, if it exists."""
    row = conn.execute(
        "select i.indexrelid::int, i.indisvalid from pg_index i where i.indexrelid = to_regclass(%s)",
        (INDEX,),
    ).fetchone()
    return (int(row[0]), bool(row[1])) if row is not None else None


def _applied(conn: psycopg.Connection[tuple[Any, ...]]) -> set[str]:
    return {str(version) for (version,) in conn.execute("select version from schema_migrations")}


def _waiting_build(conn: psycopg.Connection[tuple[Any, ...]]) -> int | None:
    """The pid of a backend whose build of the index waits for a lock (a writer's transaction)."""
    row = conn.execute(
        "select pid from pg_stat_activity where wait_event_type = 'Lock' and pid <> pg_backend_pid()"
        " and query ilike %s",
        (f"%create index concurrently%{INDEX}%",),
    ).fetchone()
    return int(row[0]) if row is not None else None


def _poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WAIT_S} s")
        time.sleep(0.05)


def test_a_killed_migrate_leaves_no_build_running_and_the_next_migrate_succeeds(before_target: str) -> None:
    """The reviewer's reproduction: the orphaned build no longer outlives its client."""
    url = before_target
    with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as watch:
        # An ordinary writer's open transaction: the concurrent build waits for it (its phase 2).
        writer.execute("update github_profiles set fetched_at = fetched_at where false")
        child = subprocess.Popen(
            [sys.executable, "-c", f"from app.core.migrate import migrate; migrate({url!r})"],
            start_new_session=True,
            cwd=ROOT,
        )
        try:
            _poll(
                lambda: _waiting_build(watch) is not None or child.poll() is not None,
                "the build never waited",
            )
            orphan = _waiting_build(watch)
            assert orphan is not None, f"migrate ended first: {child.returncode}"
        finally:
            os.killpg(child.pid, signal.SIGKILL)  # the launcher's Ctrl-C, a container stop: dbmate too
            child.wait()

        # The writer's transaction stays open: without the client check the orphan waits for it, then
        # builds a VALID index nobody recorded.
        _poll(
            lambda: (
                watch.execute("select 1 from pg_stat_activity where pid = %s", (orphan,)).fetchone() is None
            ),
            f"the orphaned build (pid {orphan}) still runs after its client was killed",
        )
        state = _index(watch)
        assert state is not None and state[1] is False  # cancelled: INVALID
        assert VERSION not in _applied(watch)
        writer.rollback()

        with captured_logs() as logs:
            migrate(url)

        state = _index(watch)
        assert state is not None and state[1] is True
        assert set(migration_versions()) <= _applied(watch)
    assert [event["index"] for event in logs.events("migration_invalid_index_dropped")] == [f"public.{INDEX}"]


def test_an_index_an_orphan_finished_is_kept_and_its_migration_recorded(before_target: str) -> None:
    """The build finished in the orphan before the client check cancelled it: VALID, unrecorded."""
    url = before_target
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BUILD)
        built = _index(conn)
        assert built is not None and built[1] is True

        migrate(url)  # was: relation "github_profiles_fetched_at_idx" already exists (42P07)

        assert _index(conn) == built  # the same index, not dropped and built again
        assert set(migration_versions()) <= _applied(conn)


class _Build:
    """A concurrent build of the index on a connection of its own, waiting for ``writer``'s open
    transaction: from the server's side, what an orphan of a killed migrate is."""

    def __init__(self, url: str, watch: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(url,))
        self.thread.start()
        _poll(
            lambda: _waiting_build(watch) is not None or not self.thread.is_alive(), "the build never waited"
        )
        pid = _waiting_build(watch)
        assert pid is not None, f"the build ended first: {self.error!r}"
        self.pid = pid

    def _run(self, url: str) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(BUILD)
        except BaseException as exc:
            self.error = exc


def test_migrate_waits_for_a_build_under_way_then_finishes_the_migration(before_target: str) -> None:
    """With ``if not exists`` and no wait, migrate would skip the index being built, record the
    version, and the build's cancellation would then leave an INVALID index nobody rebuilds."""
    url = before_target
    outcome: list[BaseException | str] = []

    def run_migrate() -> None:
        try:
            outcome.append(migrate(url))
        except BaseException as exc:
            outcome.append(exc)

    with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as watch:
        writer.execute("update github_profiles set fetched_at = fetched_at where false")
        build = _Build(url, watch)
        with captured_logs() as logs:
            migrating = threading.Thread(target=run_migrate)
            migrating.start()
            _poll(
                lambda: bool(logs.events("migration_waiting_for_index_build")) or not migrating.is_alive(),
                "migrate neither waited nor ended",
            )
            assert outcome == [], f"migrate ended while the build was under way: {outcome}"
            [waiting] = logs.events("migration_waiting_for_index_build")
            assert waiting["pid"] == build.pid
            assert waiting["migration"] == TARGET
            assert VERSION not in _applied(watch)

            watch.execute("select pg_cancel_backend(%s)", (build.pid,))  # the client check's effect
            build.thread.join()
            writer.rollback()
            _poll(lambda: not migrating.is_alive(), "migrate did not end once the build was gone")

        assert isinstance(build.error, psycopg.errors.QueryCanceled)
        assert len(outcome) == 1 and isinstance(outcome[0], str), outcome
        state = _index(watch)
        assert state is not None and state[1] is True
        assert set(migration_versions()) <= _applied(watch)
    assert [event["index"] for event in logs.events("migration_invalid_index_dropped")] == [f"public.{INDEX}"]


def test_migrate_gives_up_on_a_build_that_outlasts_its_bound(before_target: str) -> None:
    url = before_target
    with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as watch:
        writer.execute("update github_profiles set fetched_at = fetched_at where false")
        build = _Build(url, watch)
        try:
            with pytest.raises(IndexBuildUnderWayError, match=rf"pg_cancel_backend\({build.pid}\)") as raised:
                migrate(url, index_build_wait_s=0)
            assert raised.value.pid == build.pid
            assert VERSION not in _applied(watch)
            assert _waiting_build(watch) == build.pid  # left alone: neither dropped nor cancelled
        finally:
            watch.execute("select pg_cancel_backend(%s)", (build.pid,))
            build.thread.join()
            writer.rollback()
