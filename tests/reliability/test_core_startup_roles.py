"""Start-up as the production roles (deploy/postgres/10-roles.sh): the owner migrates, the app role
(DML only, no CREATE on schema public) runs ``worker`` and ``create-admin``.

They used to run ``migrate`` first, whose ``create table if not exists schema_migrations`` the app
role may not run (``permission denied for schema public``): the worker crashed at every start and
compose restarted it for ever. Now only ``migrate`` and ``serve`` migrate; the others check,
read-only, that the schema holds every migration of the code, refuse in one line when it is
behind, and wait while a migrate is under way.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from app.core.migrate import MIGRATION_LOCK, migrate, migration_versions
from tests.factories import cli_env, wait_until
from tests.faults import holds

ROOT = Path(__file__).resolve().parents[2]
NEEDED = migration_versions()[-1]
ADMIN_PASSWORD = "a-strong-administrator-passphrase-42"
REFUSAL = (
    "database schema lacks migration {} of this release: run `uv run just migrate` "
    "(`python -m app.cli migrate` in an installed release) as the owner role"
)


@dataclass(frozen=True)
class Roles:
    owner_url: str
    app_url: str
    valkey_url: str


def _url(base: str, user: str, password: str, database: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname or ''}", path=f"/{database}"))


@pytest.fixture(scope="module")
def roles(database_url: str, valkey_url: str) -> Iterator[Roles]:
    """A database of its own set up as 10-roles.sh sets up production's, migrated as the owner."""
    tag = uuid.uuid4().hex[:10]
    database, owner, app = f"startup_roles_{tag}", f"owner_{tag}", f"app_{tag}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
        for role, inherit in ((owner, "inherit"), (app, "noinherit")):
            admin.execute(
                sql.SQL(
                    "create role {} login nosuperuser nocreatedb nocreaterole noreplication {} password {}"
                ).format(sql.Identifier(role), sql.SQL(inherit), sql.Literal(f"pw-{role}"))
            )
    as_superuser = urlunsplit(urlsplit(database_url)._replace(path=f"/{database}"))
    with psycopg.connect(as_superuser, autocommit=True) as conn:
        o, a, d = sql.Identifier(owner), sql.Identifier(app), sql.Identifier(database)
        for statement in (
            "alter database {d} owner to {o}",
            "alter schema public owner to {o}",
            "revoke all on database {d} from public",
            "revoke create on schema public from public",
            "grant connect, temporary on database {d} to {a}",
            "grant usage on schema public to {a}",
            "grant pg_read_all_stats to {a} with inherit true",
            *(
                f"alter default privileges for role {{o}} in schema public grant {grant} to {{a}}"
                for grant in (
                    "select, insert, update, delete on tables",
                    "usage, select on sequences",
                    "execute on functions",
                )
            ),
        ):
            conn.execute(sql.SQL(statement).format(d=d, o=o, a=a))
    owner_url = _url(database_url, owner, f"pw-{owner}", database)
    migrate(owner_url)
    valkey = urlunsplit(urlsplit(valkey_url)._replace(path="/9"))  # its own queues: no other test's jobs
    try:
        yield Roles(owner_url, _url(database_url, app, f"pw-{app}", database), valkey)
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
            for role in (app, owner):
                admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def _env(roles: Roles, data_dir: Path) -> dict[str, str]:
    return cli_env(roles.app_url, roles.valkey_url, data_dir, LOG_LEVEL="INFO", ADMIN_PASSWORD=ADMIN_PASSWORD)


def _cli(
    roles: Roles, data_dir: Path, *args: str, module: str = "app.cli"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(roles, data_dir),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _applied(roles: Roles) -> list[str]:
    with psycopg.connect(roles.owner_url) as conn:
        return [str(v) for (v,) in conn.execute("select version from schema_migrations order by version")]


class _WorkerProcess:
    """``python -m app.cli worker`` (what compose's ``worker`` runs) as the app role."""

    def __init__(self, roles: Roles, data_dir: Path) -> None:
        self.log_path = data_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            cwd=ROOT,
            env=_env(roles, data_dir),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def logged(self, event: str) -> bool:
        assert self.process.poll() is None, f"the worker exited {self.process.returncode}:\n{self.log()}"
        return event in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()


@pytest.fixture
def workers() -> Iterator[list[_WorkerProcess]]:
    started: list[_WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
def behind(roles: Roles) -> Iterator[str]:
    """The schema one migration behind the code (its version forgotten); restored after."""
    with psycopg.connect(roles.owner_url, autocommit=True) as conn:
        conn.execute("delete from schema_migrations where version = %s", (NEEDED,))
        previous = conn.execute("select max(version) from schema_migrations").fetchone()
    assert previous is not None
    yield str(previous[0])
    with psycopg.connect(roles.owner_url, autocommit=True) as conn:
        conn.execute("insert into schema_migrations (version) values (%s) on conflict do nothing", (NEEDED,))


def test_the_app_role_sees_when_the_owners_open_write_began(roles: Roles) -> None:
    """The feed's recovery passes no outbox row an open transaction may yet commit below; the app role
    must see when another role's writing transaction began (pg_read_all_stats), or the horizon falls
    back to -infinity and any such session holds the recovery back (a review)."""
    with psycopg.connect(roles.owner_url) as owner, psycopg.connect(roles.app_url, autocommit=True) as app:
        owner.execute("select txid_current()")  # a writing transaction of the owner role
        began = owner.execute("select now()").fetchone()
        seen = app.execute("select oldest_open_write_started_at() = %s", began).fetchone()
        owner.rollback()
    assert seen == (True,)


async def test_the_worker_starts_as_the_app_role_without_migrating(
    roles: Roles, tmp_path: Path, workers: list[_WorkerProcess]
) -> None:
    before = _applied(roles)
    worker = _WorkerProcess(roles, tmp_path)
    workers.append(worker)

    await wait_until(holds(lambda: worker.logged("workers_started")), 120, "the worker started")

    assert worker.stop() == 0, worker.log()
    assert "permission denied" not in worker.log()
    assert _applied(roles) == before


def test_create_admin_runs_as_the_app_role_without_migrating(roles: Roles, tmp_path: Path) -> None:
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"

    result = _cli(roles, tmp_path, "create-admin", email)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{email} is an administrator" in result.stdout
    with psycopg.connect(roles.owner_url) as conn:
        role = conn.execute("select role::text from users where email = %s", (email,)).fetchone()
    assert role == ("admin",)


@pytest.mark.parametrize("command", [["worker"], ["create-admin", "late@example.com"], ["seed"]])
def test_a_schema_behind_the_code_is_refused_in_one_line(
    roles: Roles, behind: str, tmp_path: Path, command: list[str]
) -> None:
    result = _cli(roles, tmp_path, *command)

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == REFUSAL.format(NEEDED), result.stderr
    assert NEEDED not in _applied(roles), "it did not migrate"


def test_just_worker_refuses_a_schema_behind_the_code_too(roles: Roles, behind: str, tmp_path: Path) -> None:
    """``just worker`` (``python -m workers``) started without any schema check."""
    result = _cli(roles, tmp_path, module="workers")

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == REFUSAL.format(NEEDED), result.stderr


async def test_the_worker_waits_for_a_migrate_under_way_then_starts(
    roles: Roles, behind: str, tmp_path: Path, workers: list[_WorkerProcess]
) -> None:
    """``just serve`` started beside ``just worker``: the worker finds the schema behind while the
    serve's migrate holds the migrations' lock, and starts once that migrate is done."""
    with psycopg.connect(roles.owner_url, autocommit=True) as migrating:
        migrating.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
        worker = _WorkerProcess(roles, tmp_path)
        workers.append(worker)
        waiting = holds(lambda: worker.logged("schema_waiting_for_migrations"))
        await wait_until(waiting, 120, "the worker waits for the migrate")
        migrating.execute("insert into schema_migrations (version) values (%s)", (NEEDED,))
        migrating.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))

    await wait_until(holds(lambda: worker.logged("workers_started")), 120, "the worker started")
    await asyncio.to_thread(worker.stop)
