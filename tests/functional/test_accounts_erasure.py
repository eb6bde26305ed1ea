"""An account's erasure (``app/domains/accounts/erasure.py``): by an administrator, or by the account
itself with its password. Before it there was none: an account, its name and its address were kept
for good, and an address registered by someone who did not hold it was lost to its owner (the privacy
and appsec reviews)."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar
from psycopg import AsyncConnection

from app.db.models import ProjectRole, UserRole
from tests.factories import (
    PASSWORD,
    Actor,
    Client,
    assert_problem,
    bearer,
    captured_logs,
    create_user,
    login,
    make_project,
    make_site,
    make_user,
)

NEW_PASSWORD = "a brand new passphrase 7"


async def signed_in(
    client: Client, db: AsyncConnection[Any], password_hash: str, name: str
) -> tuple[int, str, str]:
    """A member who signs in for real (a session that an erasure must end): id, email, access token."""
    user = await create_user(db, password_hash, display_name=name)
    return user.id, user.email, (await login(client, user.email))["access_token"]


async def user_row(db: AsyncConnection[Any], user_id: int) -> tuple[Any, ...]:
    row = await (
        await db.execute(
            "select email, display_name, is_active, erased_at is not null from users where id = %s",
            (user_id,),
        )
    ).fetchone()
    assert row is not None
    return tuple(row)


async def test_an_administrator_erases_an_account_whose_address_can_then_be_registered_again(
    client: Client, db: AsyncConnection[Any], app: Litestar, password_hash: str
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    owner = await make_user(db, app, name="Owner")
    member_id, email, token = await signed_in(client, db, password_hash, "Erin Example")
    project = await make_project(db, owner, {member_id: ProjectRole.EDITOR}, name="Apollo")
    task = await client.post(f"/api/projects/{project}/tasks", json={"title": "Plan"}, headers=bearer(token))
    assert task.status_code == 201, task.text
    await db.execute("insert into github_tracked (user_id, login) values (%s, 'octocat')", (member_id,))

    with captured_logs(logging.INFO) as logs:
        erased = await client.delete(f"/api/admin/users/{member_id}", headers=admin.headers)
    assert erased.status_code == 204, erased.text
    (line,) = logs.events("account_erased")
    assert (line["user_id"], line["by"], line["sessions_revoked"]) == (member_id, admin.id, 1)
    assert email not in logs.text and "Erin" not in logs.text

    assert await user_row(db, member_id) == (
        f"erased-{member_id}@erased.invalid",
        "Deleted user",
        False,
        True,
    )
    assert_problem(await client.get("/api/auth/me", headers=bearer(token)), 401)
    refused = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert_problem(refused, 401)
    left = await (
        await db.execute("select count(*) from project_members where user_id = %s", (member_id,))
    ).fetchone()
    tracked = await (
        await db.execute("select count(*) from github_tracked where user_id = %s", (member_id,))
    ).fetchone()
    assert (left, tracked) == ((0,), (0,))
    kept = await (
        await db.execute("select created_by from tasks where id = %s", (task.json()["id"],))
    ).fetchone()
    assert kept == (member_id,), "other people's records stay, under the tombstone"

    again = await client.post(
        "/api/auth/register", json={"email": email, "password": NEW_PASSWORD, "display_name": "Erin Again"}
    )
    assert again.status_code == 202, again.text
    session = await login(client, email, NEW_PASSWORD)
    assert session["user"]["id"] != member_id and session["user"]["email"] == email

    twice = await client.delete(f"/api/admin/users/{member_id}", headers=admin.headers)
    assert twice.status_code == 204, "erased already: nothing changes"
    patched = await client.patch(
        f"/api/admin/users/{member_id}", json={"is_active": True}, headers=admin.headers
    )
    assert_problem(patched, 409)
    assert await user_row(db, member_id) == (
        f"erased-{member_id}@erased.invalid",
        "Deleted user",
        False,
        True,
    )


async def test_an_account_that_still_owns_a_project_or_a_site_is_refused_and_nothing_changes(
    client: Client, db: AsyncConnection[Any], app: Litestar, password_hash: str
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    other = await make_user(db, app, name="Other")
    owner_id, email, token = await signed_in(client, db, password_hash, "Olga Owner")
    shared = await make_project(db, owner_id, {other.id: ProjectRole.EDITOR}, name="Shared")
    refused = assert_problem(
        await client.delete(f"/api/admin/users/{owner_id}", headers=admin.headers), 409, "account-still-owns"
    )
    assert str(shared) in refused["detail"]
    assert (await client.get("/api/auth/me", headers=bearer(token))).status_code == 200, "sessions stand"
    assert (await user_row(db, owner_id))[:3] == (email, "Olga Owner", True)

    promoted = await client.patch(
        f"/api/projects/{shared}/members/{other.id}", json={"role": "owner"}, headers=bearer(token)
    )
    assert promoted.status_code == 200, promoted.text
    site = await make_site(db, owner_id)
    assert_problem(
        await client.delete(f"/api/admin/users/{owner_id}", headers=admin.headers), 409, "account-still-owns"
    )
    members = await (
        await db.execute("select count(*) from project_members where user_id = %s", (owner_id,))
    ).fetchone()
    assert members == (1,), "the refusal rolled the project's part back"

    await db.execute("delete from sites where id = %s", (site.id,))
    assert (await client.delete(f"/api/admin/users/{owner_id}", headers=admin.headers)).status_code == 204
    roles = await (
        await db.execute("select user_id, role from project_members where project_id = %s", (shared,))
    ).fetchall()
    assert roles == [(other.id, ProjectRole.OWNER)], "another owner kept the project"


async def test_a_member_erases_their_own_account_with_their_password(
    client: Client, db: AsyncConnection[Any], app: Litestar, password_hash: str
) -> None:
    member_id, email, token = await signed_in(client, db, password_hash, "Mia Member")
    wrong = await client.post(
        "/api/auth/me/erase", json={"current_password": "not it at all"}, headers=bearer(token)
    )
    assert_problem(wrong, 403)
    assert (await user_row(db, member_id))[:3] == (email, "Mia Member", True)

    erased = await client.post(
        "/api/auth/me/erase", json={"current_password": PASSWORD}, headers=bearer(token)
    )
    assert erased.status_code == 204, erased.text
    assert await user_row(db, member_id) == (
        f"erased-{member_id}@erased.invalid",
        "Deleted user",
        False,
        True,
    )
    assert_problem(await client.get("/api/auth/me", headers=bearer(token)), 401)


async def test_only_administrators_erase_others_and_not_themselves(
    client: Client, db: AsyncConnection[Any], app: Litestar, password_hash: str
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    member: Actor = await make_user(db, app, name="Plain")
    assert_problem(await client.delete(f"/api/admin/users/{admin.id}", headers=member.headers), 403)
    assert_problem(await client.delete(f"/api/admin/users/{admin.id}", headers=admin.headers), 409)
    assert_problem(await client.delete("/api/admin/users/999999", headers=admin.headers), 404)
    admin_id, _, admin_token = await signed_in(client, db, password_hash, "Ada Admin")
    await db.execute("update users set role = 'admin' where id = %s", (admin_id,))
    admin_token = (await login(client, (await user_row(db, admin_id))[0]))["access_token"]
    own = await client.post(
        "/api/auth/me/erase", json={"current_password": PASSWORD}, headers=bearer(admin_token)
    )
    assert_problem(own, 409)
    assert (await user_row(db, admin_id))[2] is True
