"""The embedded servers: Valkey keeps its data across restarts and is shared by processes that ask
for it; PostgreSQL starts whatever a killed start or a reboot left behind (a half-made cluster, a
``postmaster.pid`` naming another process), and never remakes a cluster that holds data."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from valkey import Valkey

from app.core import embedded


def test_embedded_valkey_data_survives_a_restart(tmp_path: Path) -> None:
    url, server = embedded.start_valkey(tmp_path)
    assert server is not None
    try:
        joined_url, joined = embedded.start_valkey(tmp_path)
        assert (joined_url, joined) == (url, None), "a second caller joins the running server"
        with Valkey.from_url(url) as client:
            client.set("survives", "yes")
    finally:
        server.stop()
    url, server = embedded.start_valkey(tmp_path)
    assert server is not None, "the recorded server is gone, so a new one starts"
    try:
        with Valkey.from_url(url) as client:
            assert client.get("survives") == b"yes"
    finally:
        server.stop()


# --- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture
def data_dirs() -> Iterator[Callable[[], Path]]:
    """Fresh DATA_DIRs outside pytest's tmp_path (whose base pytest resets to 0700 when a session
    starts, which would cut off a PostgreSQL that pgserver runs as another user, as root); each one's
    embedded PostgreSQL is released (stopped) and the directory removed after the test."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="embedded-test-")) / "data")
        return made[-1]

    yield make
    for data_dir in made:
        embedded.release("postgres", data_dir)
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def _query(server: Any, database: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(embedded.postgres_url(server, database), autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])


def test_a_stale_pid_file_naming_another_clusters_postmaster_is_ignored(
    data_dirs: Callable[[], Path],
) -> None:
    """After a reboot, the pid in a dead cluster's ``postmaster.pid`` may be any process's, a
    ``postgres`` of another cluster included: it must not pass for this cluster's server."""
    other, mine = data_dirs(), data_dirs()
    embedded.start_postgres(other)
    embedded.start_postgres(mine)
    embedded.release("postgres", mine)  # stopped: its pid file is gone
    pgdata = mine / "postgres"
    assert not (pgdata / "postmaster.pid").exists()
    foreign = _postmaster_pid(other)
    assert Path(f"/proc/{foreign}/comm").read_text().strip() == "postgres"
    (pgdata / "postmaster.pid").write_text(f"{foreign}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n0 0\nready\n")

    server = embedded.start_postgres(mine)

    assert _query(server, "postgres", "select 1") == [(1,)]
    assert _postmaster_pid(mine) != foreign
    assert _query(embedded.start_postgres(other), "postgres", "select 1") == [(1,)], (
        "the other one is untouched"
    )


def test_a_cluster_whose_initdb_was_killed_is_made_again_and_starts(data_dirs: Callable[[], Path]) -> None:
    """A first start killed during initdb left ``PG_VERSION`` and ``base/`` but no ``global/pg_control``
    (nor the completion mark): pgserver skips initdb when ``PG_VERSION`` exists, so the cluster never
    started again. It held nothing, so it is made again."""
    data_dir = data_dirs()
    pgdata = data_dir / "postgres"
    (pgdata / "base" / "1").mkdir(parents=True)
    (pgdata / "global").mkdir()
    (pgdata / "PG_VERSION").write_text("16\n")

    server = embedded.start_postgres(data_dir)

    assert _query(server, "postgres", "select 1") == [(1,)]
    assert (pgdata / "global" / "pg_control").exists()
    assert (pgdata / embedded.INITIALISED_MARKER).exists()
    embedded.ensure_database(server, "app")
    assert _query(server, "app", "select current_database()") == [("app",)]


def test_an_interrupted_initialisation_leaves_nothing_that_blocks_the_next_start(
    data_dirs: Callable[[], Path],
) -> None:
    """initdb runs in a temporary sibling directory: a start killed during it leaves that directory
    (here: made by hand) and no ``postgres/``; the next start removes it and initialises."""
    data_dir = data_dirs()
    leftover = data_dir / ".postgres-init-killed"
    (leftover / "base" / "1").mkdir(parents=True)
    (leftover / "PG_VERSION").write_text("16\n")

    server = embedded.start_postgres(data_dir)

    assert _query(server, "postgres", "select 1") == [(1,)]
    assert not leftover.exists()
    assert [path.name for path in data_dir.iterdir() if path.name.startswith(".postgres")] == []


def test_a_cluster_that_holds_data_is_never_made_again(data_dirs: Callable[[], Path]) -> None:
    """A cluster made before the completion mark existed (no mark) that holds a database is kept,
    and marked."""
    data_dir = data_dirs()
    server = embedded.start_postgres(data_dir)
    embedded.ensure_database(server, "app")
    _query(server, "app", "create table kept (value text); insert into kept values ('still here')")
    embedded.release("postgres", data_dir)
    marker = data_dir / "postgres" / embedded.INITIALISED_MARKER
    marker.unlink()

    server = embedded.start_postgres(data_dir)

    assert _query(server, "app", "select value from kept") == [("still here",)]
    assert marker.exists()
