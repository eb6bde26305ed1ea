"""An account's erasure (``app/domains/accounts/erasure.py``): by an administrator, or by the account
itself with its password. Before it there was none: an account, its name and its address were kept
for good, and an address registered by someone who did not hold it was lost to its owner (the privacy
and appsec reviews)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.errors import UnauthorizedError
from app.core.services import services_of_app
from app.db.models import ProjectRole, UserRole
from app.domains.projects.schemas import ProjectCreate
from app.domains.projects.services import ProjectService
from app.domains.sites.schemas import SiteCreate
from app.domains.sites.services import SiteService
from tests.factories import (
    GENEROUS_AUTH,
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
    serve_in_loop,
    sessions_waiting_for_a_lock,
    wait_until,
)

NEW_PASSWORD = "a brand new passphrase 7"


async def signed_in(
    client: Client, db: AsyncConnection[Any], password_hash: str, name: str
) -> tuple[int, str, str]:
    """A member who signs in for real (a session that an erasure must end): id, email, access token."""
    user = await create_user(db, password_hash, display_name=name)
    return user.id, user.email, (await login(client, user.email))["access_token"]


def tombstone(user_id: int) -> tuple[str, str, bool, bool]:
    """``user_row`` of an erased account."""
    return (f"erased:{user_id}", "Deleted user", False, True)


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

    assert await user_row(db, member_id) == tombstone(member_id)
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
    assert await user_row(db, member_id) == tombstone(member_id)


async def test_an_account_erasing_itself_while_it_owns_a_project_or_a_site_is_refused_and_nothing_changes(
    client: Client, db: AsyncConnection[Any], app: Litestar, password_hash: str
) -> None:
    other = await make_user(db, app, name="Other")
    owner_id, email, token = await signed_in(client, db, password_hash, "Olga Owner")
    shared = await make_project(db, owner_id, {other.id: ProjectRole.EDITOR}, name="Shared")
    erase = {"current_password": PASSWORD}
    refused = assert_problem(
        await client.post("/api/auth/me/erase", json=erase, headers=bearer(token)), 409, "account-still-owns"
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
        await client.post("/api/auth/me/erase", json=erase, headers=bearer(token)), 409, "account-still-owns"
    )
    members = await (
        await db.execute("select count(*) from project_members where user_id = %s", (owner_id,))
    ).fetchone()
    assert members == (1,), "the refusal rolled the project's part back"

    await db.execute("delete from sites where id = %s", (site.id,))
    assert (await client.post("/api/auth/me/erase", json=erase, headers=bearer(token))).status_code == 204
    roles = await (
        await db.execute("select user_id, role from project_members where project_id = %s", (shared,))
    ).fetchall()
    assert roles == [(other.id, ProjectRole.OWNER)], "another owner kept the project"


async def test_an_administrators_erasure_hands_a_squatters_projects_over_or_deletes_them(
    client: Client, db: AsyncConnection[Any], app: Litestar, password_hash: str
) -> None:
    """An address registered by someone who does not hold it is reclaimed by an administrator's
    erasure: one project of its own (a request away) must not keep it (the diff review). A project
    with another active member goes to that member (editors first); one with nobody else is deleted;
    an invitation to the freed address, in a project the account never joined, is withdrawn."""
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    viewer, editor = await make_user(db, app, name="Vic"), await make_user(db, app, name="Eddie")
    squatter_id, email, _ = await signed_in(client, db, password_hash, "Squatter")
    shared = await make_project(
        db, squatter_id, {viewer.id: ProjectRole.VIEWER, editor.id: ProjectRole.EDITOR}
    )
    alone = await make_project(db, squatter_id, name="Alone")
    elsewhere = await make_project(db, admin.id, name="Elsewhere")
    invited = await client.post(
        f"/api/projects/{elsewhere}/invitations",
        json={"email": email, "role": "editor"},
        headers=admin.headers,
    )
    assert invited.status_code == 201, invited.text

    erased = await client.delete(f"/api/admin/users/{squatter_id}", headers=admin.headers)
    assert erased.status_code == 204, erased.text

    roles = await (
        await db.execute(
            "select user_id, role from project_members where project_id = %s order by user_id", (shared,)
        )
    ).fetchall()
    assert roles == sorted([(viewer.id, ProjectRole.VIEWER), (editor.id, ProjectRole.OWNER)])
    deleting = await (
        await db.execute("select deleting_since is not null from projects where id = %s", (alone,))
    ).fetchone()
    assert deleting == (True,)
    waiting = await (
        await db.execute("select count(*) from project_invitations where email = %s", (email,))
    ).fetchone()
    assert waiting == (0,), "an invitation to the freed address does not pass to its next holder"
    unregistrable = await client.post(
        "/api/auth/register",
        json={"email": f"erased:{squatter_id}", "password": NEW_PASSWORD, "display_name": "X"},
    )
    assert_problem(unregistrable, 400)


async def test_an_addition_waiting_for_an_erasure_is_refused_once_it_commits(
    settings: Settings, db: AsyncConnection[Any], password_hash: str, database_url: str
) -> None:
    """A project created (or a site, a tracked login, an acceptance) by a request authenticated before
    the erasure, waiting on the per-user lock the erasure holds, completed for the tombstone: an
    orphan project nobody could manage (the diff review). It now finds the account gone (401)."""
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        admin = await make_user(db, served.app, UserRole.ADMIN, name="Root")
        member = await create_user(db, password_hash, display_name="Racer")
        projects = services_of_app(served.app)[ProjectService]
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute(
                "select 1 from users where id = %s for share", (member.id,)
            )  # the erasure waits
            erasing = asyncio.create_task(
                served.client.delete(f"/api/admin/users/{member.id}", headers=admin.headers)
            )
            await wait_until(
                lambda: _waiting(db, 1), 30, "the erasure holds its hooks' locks and waits for the row"
            )
            creating = asyncio.create_task(projects.create(member.id, ProjectCreate(name="Late")))
            await wait_until(lambda: _waiting(db, 2), 30, "the creation waits for the erasure's lock")
            await holder.rollback()
        assert (await erasing).status_code == 204
        with pytest.raises(UnauthorizedError):
            await creating
    owned = await (
        await db.execute("select count(*) from projects where owner_id = %s", (member.id,))
    ).fetchone()
    assert owned == (0,)


async def _waiting(db: AsyncConnection[Any], sessions: int) -> bool:
    return await sessions_waiting_for_a_lock(db) >= sessions


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
    assert await user_row(db, member_id) == tombstone(member_id)
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


async def test_a_rename_waiting_behind_an_erasure_is_refused_not_written_back(
    settings: Settings, db: AsyncConnection[Any], password_hash: str, database_url: str
) -> None:
    """A rename took no lock and checked nothing: one waiting behind an erasure wrote the person's name
    back onto the row the erasure had just cleared (diffreview35). Every change of one's own account
    now locks the row and checks the session first."""
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        admin = await make_user(db, served.app, UserRole.ADMIN, name="Root")
        member = await create_user(db, password_hash, display_name="Erin")
        token = (await login(served.client, member.email))["access_token"]
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute("select 1 from users where id = %s for share", (member.id,))
            erasing = asyncio.create_task(
                served.client.delete(f"/api/admin/users/{member.id}", headers=admin.headers)
            )
            await wait_until(lambda: _waiting(db, 1), 30, "the erasure waits for the row")
            renaming = asyncio.create_task(
                served.client.patch(
                    "/api/auth/me", json={"display_name": "Erin Real Name"}, headers=bearer(token)
                )
            )
            await wait_until(lambda: _waiting(db, 2), 30, "the rename waits behind the erasure")
            await holder.rollback()
        assert (await erasing).status_code == 204
        assert_problem(await renaming, 401)
    assert await user_row(db, member.id) == tombstone(member.id)


async def test_a_site_created_for_an_erased_account_is_refused(
    settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    """The additions' check (``require_active``, under the owner's creation lock) holds for sites too:
    a request authenticated before the erasure, reaching the service after it, keeps nothing."""
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        admin = await make_user(db, served.app, UserRole.ADMIN, name="Root")
        member = await create_user(db, password_hash, display_name="Late")
        erased = await served.client.delete(f"/api/admin/users/{member.id}", headers=admin.headers)
        assert erased.status_code == 204, erased.text
        sites = services_of_app(served.app)[SiteService]
        with pytest.raises(UnauthorizedError):
            await sites.create(member.id, SiteCreate(domain="late.example.com"))
    owned = await (
        await db.execute("select count(*) from sites where owner_id = %s", (member.id,))
    ).fetchone()
    assert owned == (0,)
