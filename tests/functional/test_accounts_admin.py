"""/api/admin/users: listing with keyset pagination and filters, role and active changes.

Callers get minted tokens; users whose sessions a change must revoke log in for real (revocation
acts on the sessions a login created)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.db.models import User, UserRole
from tests.factories import (
    PASSWORD,
    Client,
    assert_problem,
    bearer,
    captured_logs,
    create_user,
    generous_client,
    login,
    mint_headers,
)

USERS = "/api/admin/users"


async def never_a_password_hash(response: httpx.Response) -> None:
    """Every response of this module is checked: no argon2 hash ever leaves the API."""
    await response.aread()
    assert "$argon2" not in response.text, f"{response.request.url} leaked a password hash"
    assert '"password_hash"' not in response.text


@pytest.fixture(scope="module")
async def module_client(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings):
        client.event_hooks = {"request": [], "response": [never_a_password_hash]}
        yield client


@pytest.fixture
async def admin(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash, role=UserRole.ADMIN, display_name="Root")


def minted(api: Client, user: User) -> str:
    """An access token for ``user`` without a login."""
    app: Litestar = api.app  # type: ignore[assignment]
    return mint_headers(app, user.id, user.role)["Authorization"].removeprefix("Bearer ")


@pytest.fixture
async def admin_token(api: Client, admin: User) -> str:
    return minted(api, admin)


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def set_user(api: Client, token: str, user_id: int, **patch: Any) -> Any:
    return await api.patch(f"{USERS}/{user_id}", json=patch, headers=bearer(token))


# -- listing ----------------------------------------------------------------------------------------


async def test_listing_is_for_admins_only(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin_token: str
) -> None:
    member = await create_user(db, password_hash)
    member_token = minted(api, member)
    assert_problem(await api.get(USERS), 401, "unauthorized")
    assert_problem(await api.get(USERS, headers=bearer(member_token)), 403, "forbidden")
    response = await api.get(USERS, headers=bearer(admin_token))
    assert response.status_code == 200, response.text
    emails = {user["email"] for user in response.json()["items"]}
    assert member.email in emails
    assert response.json()["next_cursor"] is None


async def test_pages_chain_through_next_cursor(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin: User, admin_token: str
) -> None:
    created = [await create_user(db, password_hash) for _ in range(7)]
    expected = sorted([admin.id, *(user.id for user in created)])
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        response = await api.get(USERS, params=params, headers=bearer(admin_token))
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["items"]) <= 3
        seen.extend(user["id"] for user in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 3
        assert pages < 10, "the cursor chain does not end"
    assert pages == 3
    assert seen == expected  # in order, no duplicates, no gaps


async def test_exact_multiple_of_the_page_size_ends_with_a_null_cursor(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin_token: str
) -> None:
    for _ in range(2):
        await create_user(db, password_hash)
    first = (await api.get(USERS, params={"limit": 3}, headers=bearer(admin_token))).json()
    assert len(first["items"]) == 3
    assert first["next_cursor"] is None


async def test_filters_by_role_and_active(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin: User, admin_token: str
) -> None:
    other_admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    inactive = [await create_user(db, password_hash, is_active=False) for _ in range(2)]
    active_member = await create_user(db, password_hash)
    inactive_admin = await create_user(db, password_hash, role=UserRole.ADMIN, is_active=False)

    admins = (await api.get(USERS, params={"role": "admin"}, headers=bearer(admin_token))).json()
    assert [u["id"] for u in admins["items"]] == [admin.id, other_admin.id, inactive_admin.id]
    assert all(u["role"] == "admin" for u in admins["items"])

    off = (await api.get(USERS, params={"active": "false"}, headers=bearer(admin_token))).json()
    assert [u["id"] for u in off["items"]] == [*(u.id for u in inactive), inactive_admin.id]
    assert all(u["is_active"] is False for u in off["items"])

    both = await api.get(USERS, params={"role": "member", "active": "true"}, headers=bearer(admin_token))
    assert [u["id"] for u in both.json()["items"]] == [active_member.id]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "x"}, {"role": "owner"}])
async def test_bad_query_parameters_are_400(api: Client, admin_token: str, params: dict[str, Any]) -> None:
    response = await api.get(USERS, params=params, headers=bearer(admin_token))
    assert_problem(response, 400, "validation", {f"query.{name}" for name in params})


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "%%%",
        "é",
        cursor_of(b"{}"),
        cursor_of(b'{"after_id": "7"}'),
        cursor_of(b'{"after_id": 1.5}'),
        cursor_of(b"[1]"),
        cursor_of(b"\xff\xfe"),
        "x" * 600,
    ],
)
async def test_tampered_cursor_is_a_400_problem(api: Client, admin_token: str, cursor: str) -> None:
    response = await api.get(USERS, params={"cursor": cursor}, headers=bearer(admin_token))
    assert_problem(response, 400, "invalid-cursor", {"query.cursor"})


@pytest.mark.parametrize("after_id", [-1, 0, 2**63 - 1, 2**63, 2**64, 10**30])
async def test_an_id_cursor_of_the_old_json_form_is_refused(
    api: Client, admin_token: str, after_id: int
) -> None:
    cursor = cursor_of(f'{{"after_id": {after_id}}}'.encode())
    response = await api.get(USERS, params={"cursor": cursor}, headers=bearer(admin_token))
    assert_problem(response, 400, "invalid-cursor", {"query.cursor"})


@pytest.mark.parametrize(
    ("cursor", "status"),
    [
        ("0", 200),  # before every user
        ("9999999999999999", 200),  # the largest position the grammar admits: after every user
        ("-1", 400),
        (str(2**53), 200),
        (str(2**63 - 1), 400),  # 19 digits: past the grammar's 16
        (str(2**63), 400),
        (str(2**64), 400),
        (str(10**30), 400),
        ("0\n", 400),  # Litestar's pattern check is a search: "$" matched before the newline
    ],
)
async def test_an_id_cursor_is_a_position_or_a_400_never_a_500(
    api: Client, admin: User, admin_token: str, cursor: str, status: int
) -> None:
    response = await api.get(USERS, params={"cursor": cursor}, headers=bearer(admin_token))
    if status == 400:
        assert_problem(response, 400, "invalid-cursor", {"query.cursor"})
        return
    assert response.status_code == 200, response.text
    expected = [admin.id] if int(cursor) < admin.id else []
    assert [user["id"] for user in response.json()["items"]] == expected


# -- changing users ---------------------------------------------------------------------------------


async def test_patch_is_for_admins_only(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin: User
) -> None:
    member = await create_user(db, password_hash)
    member_token = minted(api, member)
    assert_problem(await api.patch(f"{USERS}/{admin.id}", json={"is_active": False}), 401, "unauthorized")
    assert_problem(await set_user(api, member_token, admin.id, is_active=False), 403, "forbidden")
    assert_problem(await set_user(api, member_token, member.id, role="admin"), 403, "forbidden")


async def test_patch_unknown_user_is_404(api: Client, admin_token: str) -> None:
    assert_problem(await set_user(api, admin_token, 999_999, is_active=False), 404, "not-found")


async def test_patch_rejects_unknown_fields(api: Client, admin: User, admin_token: str) -> None:
    assert_problem(
        await set_user(api, admin_token, admin.id, email="x@example.com"), 400, "validation", {"email"}
    )


async def test_deactivation_locks_the_user_out_at_once_and_reactivation_lets_them_back(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin_token: str
) -> None:
    member = await create_user(db, password_hash)
    pair = await login(api, member.email)
    assert (await api.get("/api/auth/me", headers=bearer(pair["access_token"]))).status_code == 200

    response = await set_user(api, admin_token, member.id, is_active=False)
    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False

    assert_problem(await api.get("/api/auth/me", headers=bearer(pair["access_token"])), 401, "unauthorized")
    assert_problem(
        await api.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]}),
        401,
        "unauthorized",
    )
    login_attempt = {"email": member.email, "password": PASSWORD}
    assert_problem(await api.post("/api/auth/login", json=login_attempt), 401, "unauthorized")

    assert (await set_user(api, admin_token, member.id, is_active=True)).status_code == 200
    again = await login(api, member.email)
    assert (await api.get("/api/auth/me", headers=bearer(again["access_token"]))).status_code == 200
    # the sessions from before the deactivation stay dead
    assert_problem(await api.get("/api/auth/me", headers=bearer(pair["access_token"])), 401, "unauthorized")


async def test_demotion_takes_effect_at_once(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin_token: str
) -> None:
    deputy = await create_user(db, password_hash, role=UserRole.ADMIN)
    deputy_token = (await login(api, deputy.email))["access_token"]
    assert (await api.get(USERS, headers=bearer(deputy_token))).status_code == 200

    with captured_logs() as logs:
        response = await set_user(api, admin_token, deputy.id, role="member")
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "member"
    [changed] = logs.events("user_access_changed")  # says what it was (the admin reviewer)
    assert (changed["was_role"], changed["role"], changed["was_active"]) == ("admin", "member", True)

    assert_problem(await api.get(USERS, headers=bearer(deputy_token)), 401, "unauthorized")
    fresh = (await login(api, deputy.email))["access_token"]
    assert_problem(await api.get(USERS, headers=bearer(fresh)), 403, "forbidden")


async def test_promotion_needs_a_new_login(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin_token: str
) -> None:
    member = await create_user(db, password_hash)
    old = (await login(api, member.email))["access_token"]
    assert (await set_user(api, admin_token, member.id, role="admin")).status_code == 200
    assert_problem(await api.get(USERS, headers=bearer(old)), 401, "unauthorized")
    fresh = (await login(api, member.email))["access_token"]
    assert (await api.get(USERS, headers=bearer(fresh))).status_code == 200


async def test_an_admin_cannot_deactivate_or_demote_themselves(
    api: Client, admin: User, admin_token: str
) -> None:
    assert_problem(await set_user(api, admin_token, admin.id, is_active=False), 409, "conflict")
    assert_problem(await set_user(api, admin_token, admin.id, role="member"), 409, "conflict")
    # nothing changed and the session lives on
    response = await api.get(USERS, params={"role": "admin"}, headers=bearer(admin_token))
    assert response.status_code == 200
    assert [(u["id"], u["is_active"]) for u in response.json()["items"]] == [(admin.id, True)]


async def test_an_admin_demoted_meanwhile_can_change_no_one(
    api: Client, db: AsyncConnection[Any], admin: User, admin_token: str, password_hash: str
) -> None:
    """The token says admin; the row, read under lock, decides: a request of an administrator whose
    demotion committed while it was under way (here: a token the demotion did not revoke) is
    refused, so two administrators demoting each other leave one."""
    other = await create_user(db, password_hash, role=UserRole.ADMIN)
    await db.execute("update users set role = 'member' where id = %s", (admin.id,))
    assert_problem(await set_user(api, admin_token, other.id, role="member"), 403, "forbidden")
    assert_problem(await set_user(api, admin_token, other.id, is_active=False), 403, "forbidden")
    still = await db.execute("select role::text, is_active from users where id = %s", (other.id,))
    assert await still.fetchone() == ("admin", True)


async def test_a_no_op_patch_keeps_the_sessions_and_updated_at(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin_token: str
) -> None:
    member = await create_user(db, password_hash)
    token = (await login(api, member.email))["access_token"]
    assert (await set_user(api, admin_token, member.id, role="member", is_active=True)).status_code == 200
    assert (await api.get("/api/auth/me", headers=bearer(token))).status_code == 200
    unchanged = await db.execute("select updated_at from users where id = %s", (member.id,))
    assert await unchanged.fetchone() == (member.updated_at,)


async def test_create_admin_refuses_a_weak_password_with_a_message_not_a_traceback(
    settings: Settings, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import _create_admin

    monkeypatch.setenv("ADMIN_PASSWORD", "aaaaaaaaaaaa")  # long enough, but one distinct character
    with pytest.raises(SystemExit, match=r"create-admin: .*too easy to guess"):
        await _create_admin(settings, "weak-admin@example.com", "Weak")
    cursor = await db.execute("select count(*) from users where email = 'weak-admin@example.com'")
    assert await cursor.fetchone() == (0,)
