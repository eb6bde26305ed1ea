"""Releases in error monitoring: each deploy is a release of its own, and "older" / "newer" mean
"first ran before" / "first ran after" (every process registers its release when it starts)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import ConflictError, UnprocessableError
from app.db.models import UserRole
from app.domains.monitoring.services import MonitoringService, package_version
from tests.factories import Client, assert_problem, captured_logs, make_user, scalar
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.functional.test_monitoring_http import ADMIN, write
from tests.unit.test_monitoring_fingerprint import raise_bug


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def release_ids(db: AsyncConnection[Any], *names: str) -> list[int | None]:
    rows = dict(
        await (
            await db.execute("select name, id from monitoring_releases where name = any(%s)", (list(names),))
        ).fetchall()
    )
    return [rows.get(name) for name in names]


# ------------------------------------------------------------------------------ the running release


async def test_a_process_registers_its_release_when_it_starts_without_any_error(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    first, second = unique("1.0.0"), unique("0.9.0")
    async with open_monitoring(settings, monitoring_release=first):
        pass
    async with open_monitoring(settings, monitoring_release=second):
        pass
    async with open_monitoring(settings, monitoring_release=first):  # a restart changes nothing
        pass
    first_id, second_id = await release_ids(db, first, second)
    assert first_id is not None and second_id is not None
    assert first_id < second_id, "0.9.0 first ran after 1.0.0: it is the newer one"


async def test_resolving_in_the_next_release_without_a_configured_release_is_refused(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The image as shipped before: no MONITORING_RELEASE, every deploy is pyproject's version, so the
    group would never regress. Refused, and the group stays as it was."""
    exc = raise_bug(0, module=f"app.domains.shop.{unique('dep').replace('-', '')}")
    async with open_monitoring(settings, monitoring_release="") as service:
        assert service.release == package_version()
        [created] = await service.write_now([error_event(exc)])
        with pytest.raises(ConflictError) as refused:
            await service.resolve(created.root_id, None, in_next_release=True)
        assert refused.value.slug == "release-not-configured"
        assert "MONITORING_RELEASE" in str(refused.value)
    status = await scalar(db, "select status::text from monitoring_groups where id = %s", created.root_id)
    assert status == "unresolved"


async def test_production_without_a_release_warns_at_start(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    with captured_logs() as logs:
        async with open_monitoring(settings, app_env="production", monitoring_release=""):
            pass
    [warning] = logs.events("monitoring_release_unset")
    assert warning["level"] == "warning"
    assert warning["release"] == package_version()
    assert "MONITORING_RELEASE" in warning["detail"]


@pytest.mark.parametrize(
    ("app_env", "release"),
    [
        pytest.param("production", "abc1234", id="production-with-a-release"),
        pytest.param("development", "", id="development-without-one"),
    ],
)
async def test_no_release_warning_when_configured_or_outside_production(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, app_env: str, release: str
) -> None:
    with captured_logs() as logs:
        async with open_monitoring(settings, app_env=app_env, monitoring_release=release):
            pass
    assert logs.events("monitoring_release_unset") == []


async def test_resolved_in_the_next_release_regresses_after_a_deploy_of_another_build(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = raise_bug(0, module=f"app.domains.shop.{unique('dep').replace('-', '')}")
    async with open_monitoring(settings, monitoring_release=unique("abc1234")) as before_deploy:
        [created] = await before_deploy.write_now([error_event(exc)])
        await before_deploy.resolve(created.root_id, None, in_next_release=True)
    async with open_monitoring(settings, monitoring_release=unique("def5678")) as after_deploy:
        [again] = await after_deploy.write_now([error_event(exc)])
    assert again.transition == "regressed"


# ------------------------------------------------------------------------------ release order


async def test_resolving_in_a_release_that_never_ran_is_refused(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """1.4.0 has not run: it has no place in the order yet (a 1.3.1 hotfix deployed before it would
    otherwise count as newer than the fix, or older, depending on when someone resolved)."""
    old, fix = unique("1.3.0"), unique("1.4.0")
    exc = raise_bug(0, module=f"app.domains.shop.{unique('rel').replace('-', '')}")
    async with open_monitoring(settings, monitoring_release=old) as service:
        [created] = await service.write_now([error_event(exc)])
        with pytest.raises(UnprocessableError) as refused:
            await service.resolve(created.root_id, None, in_release=fix)
        assert refused.value.slug == "unknown-release"
        assert "in_next_release" in str(refused.value)
    assert await release_ids(db, fix) == [None], "a refused resolve registers nothing"
    status = await scalar(db, "select status::text from monitoring_groups where id = %s", created.root_id)
    assert status == "unresolved"


async def test_a_release_that_ran_before_the_resolve_keeps_its_place_in_the_order(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """1.4.0 (the fix) ran without any recorded error, 1.5.0 runs now and has recorded another error:
    resolved "in 1.4.0", the bug back in 1.5.0 regresses the group (1.4.0 is not made the newest by
    being named after 1.5.0 was first seen)."""
    old, fix, current = unique("1.3.0"), unique("1.4.0"), unique("1.5.0")
    exc = raise_bug(0, module=f"app.domains.shop.{unique('rel').replace('-', '')}")
    other = raise_bug(0, module=f"app.domains.shop.{unique('other').replace('-', '')}")
    async with open_monitoring(settings, monitoring_release=old) as service:
        [created] = await service.write_now([error_event(exc)])
    async with open_monitoring(settings, monitoring_release=fix):
        pass
    async with open_monitoring(settings, monitoring_release=current) as service:
        await service.write_now([error_event(other)])
        detail = await service.resolve(created.root_id, None, in_release=fix)
        assert detail.resolved_in_release == fix
        [back] = await service.write_now([error_event(exc)])
    assert back.transition == "regressed"


async def test_resolved_in_a_release_events_of_releases_that_ran_before_it_never_regress(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A rolling deploy: 2.0.0 still serves while 2.1.0 (the fix) has started."""
    old, fix = unique("2.0.0"), unique("2.1.0")
    exc = raise_bug(0, module=f"app.domains.shop.{unique('rel').replace('-', '')}")
    async with (
        open_monitoring(settings, monitoring_release=old) as old_service,
        open_monitoring(settings, monitoring_release=fix) as new_service,
    ):
        [created] = await old_service.write_now([error_event(exc)])
        await old_service.resolve(created.root_id, None, in_release=fix)
        [from_old] = await old_service.write_now([error_event(exc)])
        assert from_old.transition is None
        [from_fix] = await new_service.write_now([error_event(exc)])
        assert from_fix.transition == "regressed"


# ------------------------------------------------------------------------------ over HTTP


async def test_resolve_problems_tell_the_admin_why(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """The test app runs without MONITORING_RELEASE (as the shipped image did)."""
    service: MonitoringService = app.state.services[MonitoringService]
    assert service.release == package_version()
    admin = await make_user(db, app, UserRole.ADMIN)
    group = await write(client, app, raise_bug(0, source="def handler(v):\n    raise KeyError(v)\n"))
    resolve = f"{ADMIN}/errors/{group}/resolve"

    next_release = await client.post(resolve, json={"mode": "in_next_release"}, headers=admin.headers)
    body = assert_problem(next_release, 409, "release-not-configured")
    assert "MONITORING_RELEASE" in body["detail"]

    never_ran = {"mode": "in_release", "release": unique("9.9.9")}
    body = assert_problem(
        await client.post(resolve, json=never_ran, headers=admin.headers), 422, "unknown-release"
    )
    assert "in_next_release" in body["detail"]

    running = {"mode": "in_release", "release": service.release}
    resolved = await client.post(resolve, json=running, headers=admin.headers)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["resolved_in_release"] == service.release


async def test_a_late_write_of_an_old_release_keeps_the_groups_last_release(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The group's last release is that of its latest event: events of an older release written after
    (its process still running in a rolling deploy, or held back by an outage) do not take it back."""
    exc = raise_bug(0, module=f"app.domains.shop.{unique('late').replace('-', '')}")
    newer, older = unique("2.0.0"), unique("1.0.0")
    now = time.time()
    async with open_monitoring(settings, monitoring_release=newer) as service:
        [written] = await service.write_now([error_event(exc, at=now)])
    async with open_monitoring(settings, monitoring_release=older) as service:
        await service.write_now([error_event(exc, at=now - 60)])
    stored = await scalar(db, "select last_release from monitoring_groups where id = %s", written.root_id)
    assert stored == newer
