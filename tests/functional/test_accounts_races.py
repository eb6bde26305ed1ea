"""Tokens issued while the account or the session changes: the change wins.

Each test holds a concurrent change in another transaction until a request waits for it
(``answer_racing``), then commits it: what the request answers, and what its tokens can do
afterwards, is what it would be had the change committed first.
"""

from __future__ import annotations

import secrets
from typing import Any

import argon2
from psycopg import AsyncConnection

from app.config import Settings
from app.core.security import Passwords, refresh_token_digest
from app.db.models import User, UserRole
from tests.factories import PASSWORD, Client, answer_racing, assert_problem, bearer, create_user, login

NEW_PASSWORD = "an entirely new passphrase"


async def token_id(db: AsyncConnection[Any], refresh_token: str) -> int:
    cursor = await db.execute(
        "select id from refresh_tokens where token_hash = %s", (refresh_token_digest(refresh_token),)
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def rotation_issuing(raced_token: str) -> str:
    """SQL: what a concurrent refresh of the token (its id the parameter) does: spend it and insert
    the next token of its family."""
    return f"""
        with spent as (
            update refresh_tokens set used_at = now() where id = %s
            returning user_id, family_id, expires_at
        )
        insert into refresh_tokens (user_id, family_id, token_hash, expires_at)
        select user_id, family_id, '\\x{refresh_token_digest(raced_token).hex()}'::bytea, expires_at
        from spent"""


async def test_a_rotation_that_a_logout_waited_for_leaves_no_live_token(
    api: Client, db: AsyncConnection[Any], database_url: str, member: User
) -> None:
    session = await login(api, member.email)
    rotated = secrets.token_urlsafe(32)

    async def log_out() -> Any:
        return await api.post("/api/auth/logout", headers=bearer(session["access_token"]))

    change = rotation_issuing(rotated)
    answer = await answer_racing(database_url, change, await token_id(db, session["refresh_token"]), log_out)
    assert answer.status_code == 204, answer.text
    refused = await api.post("/api/auth/refresh", json={"refresh_token": rotated})
    assert_problem(refused, 401, "unauthorized")


async def test_a_login_racing_a_demotion_issues_the_new_role(
    api: Client, db: AsyncConnection[Any], database_url: str, password_hash: str
) -> None:
    admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    demotion = """
        with locked as (select id from users where id = %s for update)
        update users set role = 'member' where id in (select id from locked)"""

    async def log_in() -> Any:
        return await api.post("/api/auth/login", json={"email": admin.email, "password": PASSWORD})

    answer = await answer_racing(database_url, demotion, admin.id, log_in)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"]["role"] == "member"
    token = answer.json()["access_token"]
    assert_problem(await api.get("/api/admin/users", headers=bearer(token)), 403, "forbidden")


async def test_a_rehash_at_login_never_undoes_a_password_change_it_raced(
    api: Client, db: AsyncConnection[Any], database_url: str, settings: Settings
) -> None:
    weak_hash = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    user = await create_user(db, weak_hash)
    changed_hash = await Passwords(settings).hash(NEW_PASSWORD)
    change = f"update users set password_hash = '{changed_hash}' where id = %s"

    async def log_in() -> Any:
        return await api.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})

    assert_problem(await answer_racing(database_url, change, user.id, log_in), 401, "unauthorized")
    await login(api, user.email, NEW_PASSWORD)
    old = await api.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert_problem(old, 401, "unauthorized")


async def test_a_password_change_verified_against_a_password_changed_meanwhile_is_refused(
    api: Client, database_url: str, member: User, settings: Settings
) -> None:
    """Another change (another tab, or someone else who knows the password) commits while this one,
    verified against the old password, waits for the user's row: this one is refused (409), the other
    password stays (before, this one overwrote it)."""
    session = await login(api, member.email)
    other_hash = await Passwords(settings).hash(NEW_PASSWORD)
    change = f"update users set password_hash = '{other_hash}' where id = %s"

    async def change_password() -> Any:
        return await api.patch(
            "/api/auth/me",
            json={"current_password": PASSWORD, "new_password": "this tab's new passphrase"},
            headers=bearer(session["access_token"]),
        )

    assert_problem(
        await answer_racing(database_url, change, member.id, change_password), 409, "password-changed"
    )
    await login(api, member.email, NEW_PASSWORD)
    refused = await api.post(
        "/api/auth/login", json={"email": member.email, "password": "this tab's new passphrase"}
    )
    assert_problem(refused, 401, "unauthorized")
