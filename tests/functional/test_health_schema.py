"""``/health/ready``'s ``schema`` check: a database missing migrations this release needs is not
ready (the api image never migrates); one with newer migrations is (a rolling deploy)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app.config import Settings
from app.core.migrate import MIGRATIONS_DIR, migrate, migration_versions
from app.domains.health.services import HealthService
from app.main import create_app
from tests.factories import captured_logs, migrations_before, serve_in_loop

FIRST_MIGRATION_SKIPPED = "task_project_versions"
"""The behind database stops before this migration (its ``projects.version`` the code reads)."""


@pytest.fixture
def behind_database_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A database migrated up to (not including) ``FIRST_MIGRATION_SKIPPED``; dropped afterwards."""
    older = migrations_before(FIRST_MIGRATION_SKIPPED, tmp_path / "migrations")
    assert settings.database_url
    name = f"behind_{uuid.uuid4().hex[:8]}"
    base, _, query = settings.database_url.partition("?")  # a URL: dbmate takes no key=value DSN
    url = base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")
    migrate(url, migrations_dir=older)
    try:
        yield url
    finally:
        with psycopg.connect(
            make_conninfo(settings.database_url, dbname="postgres"), autocommit=True
        ) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


async def test_ready_is_503_while_the_schema_lacks_migrations(
    settings: Settings, behind_database_url: str
) -> None:
    app = create_app(msgspec.structs.replace(settings, database_url=behind_database_url))
    with captured_logs() as logs:
        async with AsyncTestClient(app=app) as client:
            ready = await client.get("/health/ready")
    assert ready.status_code == 503, ready.text
    checks = {check["name"]: check for check in ready.json()["checks"]}
    assert checks["schema"] == {**checks["schema"], "ok": False, "required": True, "detail": "error"}
    assert checks["postgres"]["ok"] is True
    skipped = next(
        p.name.split("_", 1)[0]
        for p in sorted(MIGRATIONS_DIR.glob("*.sql"))
        if FIRST_MIGRATION_SKIPPED in p.name
    )
    assert skipped not in ready.text, "the versions are for the log, not the public answer"
    failed = [line for line in logs.lines if line.get("event") == "readiness_check_failed"]
    schema = [line for line in failed if line["check"] == "schema"]
    assert len(schema) == 1, failed
    assert schema[0]["error"] == "SchemaBehindError"
    assert skipped in schema[0]["message"], schema[0]


async def test_the_schema_must_hold_every_migration_of_the_release(settings: Settings) -> None:
    """The same database (migrated to this release) is ready for this release and for an older one
    (a subset of what is applied), and not for a release with one more migration — even one older
    than the newest applied (a migration merged late: review of today's change)."""
    async with serve_in_loop(settings) as served:
        running = served.app.state.services[HealthService]
        versions = list(migration_versions())
        assert running.required_migrations == versions, "read from migrations/ at start-up"

        def health(required: list[str]) -> HealthService:
            return HealthService(
                running.db,
                running.valkey,
                settings.valkey_url or "",
                timeout_s=5.0,
                shared_s=0.0,
                required_migrations=required,
            )

        merged_late = str(int(versions[-1]) - 1)
        assert merged_late not in versions
        newer = str(int(versions[-1]) + 1)
        for required, ready in (
            (versions, True),
            (versions[:-1], True),
            ([*versions, newer], False),
            (sorted([*versions, merged_late]), False),
        ):
            service = health(required)
            try:
                answer = await service.readiness()
            finally:
                await service.close()
            schema = next(check for check in answer.checks if check.name == "schema")
            assert (schema.ok, answer.status == "ok") == (ready, ready), (required[-2:], answer)
