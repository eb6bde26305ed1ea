"""The accounts seeder: one administrator and two members, idempotent, with a working login."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import (
    DEFAULT_ADMIN_EMAIL,
    DEFAULT_ADMIN_PASSWORD,
    DEFAULT_DEMO_PASSWORD,
    Settings,
    SettingsError,
)
from app.core.security import Passwords
from app.core.services import open_services
from app.db import accounts as queries
from app.db.models import UserRole
from app.modules import MODULES
from app.seed import run_seeders


async def seed(settings: Settings) -> list[str]:
    """What ``just seed`` does: every module's seed, through the services."""
    async with open_services(settings, MODULES) as services:
        return await run_seeders(services)


async def users_by_role(db: AsyncConnection[Any]) -> dict[str, list[str]]:
    cursor = await db.execute("select role::text, email from users order by role, email")
    found: dict[str, list[str]] = {}
    for role, email in await cursor.fetchall():
        found.setdefault(role, []).append(email)
    return found


async def test_seeding_twice_creates_one_admin_and_two_members(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    assert await queries.count_users(db) == 0
    await seed(settings)
    after_first = await users_by_role(db)
    await seed(settings)
    assert await users_by_role(db) == after_first
    assert await queries.count_users(db) == 3
    assert after_first["admin"] == [settings.admin_email.lower()]
    assert len(after_first["member"]) == 2
    admin = await queries.get_user_by_email(db, email=settings.admin_email.lower())
    assert admin is not None
    assert admin.role == UserRole.ADMIN
    assert admin.is_active


async def test_seeded_admin_logs_in_with_the_configured_password(
    client: AsyncTestClient[Litestar], db: AsyncConnection[Any], settings: Settings
) -> None:
    await seed(settings)
    response = await client.post(
        "/api/auth/login", json={"email": settings.admin_email, "password": settings.admin_password}
    )
    assert response.status_code == 200, response.text
    pair = response.json()
    assert pair["user"]["role"] == "admin"
    users = await client.get("/api/admin/users", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert users.status_code == 200
    assert len(users.json()["items"]) == 3


async def test_seed_hints_never_print_a_configured_password(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    custom = msgspec.structs.replace(
        settings, admin_password="a-private-admin-secret", demo_password="a-private-demo-secret"
    )
    lines = "\n".join(await seed(custom))
    assert "a-private-admin-secret" not in lines
    assert "a-private-demo-secret" not in lines
    assert custom.admin_email in lines


STRONG = {"admin_password": "Another-Strong-Pass-42", "demo_password": "Members-Strong-Pass-42"}


async def test_a_public_host_refuses_to_start_while_a_seeded_account_keeps_its_public_default(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    """The front-door reviewer: a DATA_DIR first started in development keeps the public default
    passwords (an existing account keeps its own); setting both variables and HOST=0.0.0.0 passed
    the configuration's check, and the hint said ``$ADMIN_PASSWORD`` where the default still worked."""
    defaults = msgspec.structs.replace(
        settings, admin_password=DEFAULT_ADMIN_PASSWORD, demo_password=DEFAULT_DEMO_PASSWORD
    )
    await seed(defaults)
    later = msgspec.structs.replace(settings, **STRONG)

    hints = "\n".join(await seed(later))
    assert DEFAULT_ADMIN_PASSWORD in hints and DEFAULT_DEMO_PASSWORD in hints, hints
    assert "$ADMIN_PASSWORD" not in hints and "$DEMO_PASSWORD" not in hints

    public = msgspec.structs.replace(later, host="192.0.2.10")  # not bound: only judged
    with pytest.raises(SettingsError) as refused:
        await seed(public)
    for email in (settings.admin_email.lower(), "ana@example.com", "ben@example.com"):
        assert email in str(refused.value)

    changed = await Passwords(settings).hash(STRONG["admin_password"])
    for email in (settings.admin_email.lower(), "ana@example.com", "ben@example.com"):
        await db.execute("update users set password_hash = %s where email = %s", (changed, email))
    hints = "\n".join(await seed(public))
    assert "$ADMIN_PASSWORD" in hints and DEFAULT_ADMIN_PASSWORD not in hints, hints


async def test_an_admin_left_under_another_email_or_demoted_still_counts(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    """The second diff reviewer: only the current ADMIN_EMAIL's active administrator was asked, so
    the first administrator, left under the default address (or demoted), opened with the public
    default behind a public HOST."""
    defaults = msgspec.structs.replace(
        settings, admin_password=DEFAULT_ADMIN_PASSWORD, demo_password=DEFAULT_DEMO_PASSWORD
    )
    await seed(defaults)
    changed = await Passwords(settings).hash(STRONG["demo_password"])
    await db.execute("update users set password_hash = %s where role = 'member'", (changed,))
    await db.execute(
        "update users set role = 'member', is_active = false where email = %s", (DEFAULT_ADMIN_EMAIL,)
    )
    moved = msgspec.structs.replace(
        settings,
        **STRONG,
        admin_email="ops@corp.example.com",
        host="192.0.2.10",  # not bound: only judged
    )

    with pytest.raises(SettingsError) as refused:
        await seed(moved)
    assert DEFAULT_ADMIN_EMAIL in str(refused.value)
    assert "ana@example.com" not in str(refused.value)

    hints = "\n".join(await seed(msgspec.structs.replace(moved, host="127.0.0.1")))
    assert "ops@corp.example.com / $ADMIN_PASSWORD" in hints, hints
    assert "ana@example.com / $DEMO_PASSWORD" in hints, hints
