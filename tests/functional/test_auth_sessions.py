"""Registration, login, refresh rotation and reuse detection, logout, password change, throttling."""

from __future__ import annotations

import itertools
from typing import Any

import argon2
from psycopg import AsyncConnection

from app.config import Settings
from app.core.security import Passwords
from app.db import accounts as queries
from app.db.models import User
from tests.factories import (
    PASSWORD,
    Client,
    bearer,
    create_user,
    login,
    unique_email,
)

PROBLEM = "application/problem+json"
NEW_PASSWORD = "an entirely new passphrase"
_peers = itertools.count(1)


def new_peer() -> str:
    """A client address no other request of the run uses."""
    n = next(_peers)
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


async def attempt(api: Client, email: str, password: str, peer: str | None = None) -> Any:
    headers = {"x-test-peer": peer} if peer else {}
    return await api.post("/api/auth/login", json={"email": email, "password": password}, headers=headers)


async def refresh(api: Client, token: str) -> Any:
    return await api.post("/api/auth/refresh", json={"refresh_token": token})


async def me_status(api: Client, access_token: str) -> int:
    return (await api.get("/api/auth/me", headers=bearer(access_token))).status_code


def keys_of(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def without_request_specifics(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in {"request_id", "instance"}}


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


# -- registration ---------------------------------------------------------------------------------


async def test_register_normalises_email_and_never_returns_the_password(
    api: Client, db: AsyncConnection[Any]
) -> None:
    response = await api.post(
        "/api/auth/register",
        json={"email": "Ana.Lima@Example.COM", "password": PASSWORD, "display_name": "  Ana Lima "},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == "ana.lima@example.com"
    assert body["display_name"] == "Ana Lima"
    assert body["role"] == "member"
    assert body["is_active"] is True
    assert not {"password", "password_hash"} & keys_of(body)
    assert "$argon2" not in response.text
    assert PASSWORD not in response.text
    stored = await queries.get_user_by_email(db, email="ana.lima@example.com")
    assert stored is not None
    assert stored.id == body["id"]
    assert stored.password_hash.startswith("$argon2id$")
    # the original spelling logs in too
    pair = await login(api, "ANA.LIMA@example.com")
    assert pair["user"]["id"] == body["id"]


async def test_register_duplicate_email_is_409_case_insensitively(api: Client) -> None:
    first = await api.post(
        "/api/auth/register", json={"email": "dup@example.com", "password": PASSWORD, "display_name": "A"}
    )
    assert first.status_code == 201, first.text
    again = await api.post(
        "/api/auth/register",
        json={"email": "DUP@Example.com", "password": "another password!", "display_name": "B"},
    )
    body = assert_problem(again, 409)
    assert body["type"] == "/problems/conflict"


async def test_register_validation_lists_every_bad_field(api: Client, db: AsyncConnection[Any]) -> None:
    response = await api.post(
        "/api/auth/register", json={"email": "not-an-email", "password": "pw-q7z", "display_name": "X"}
    )
    body = assert_problem(response, 400)
    assert body["type"] == "/problems/validation"
    fields = {error["field"] for error in body["errors"]}
    assert {"email", "password"} <= fields
    assert "display_name" not in fields
    assert "pw-q7z" not in response.text  # the rejected password is not echoed back
    assert await queries.count_users(db) == 0


# -- login ------------------------------------------------------------------------------------------


async def test_login_returns_both_tokens_and_the_user(api: Client, settings: Settings, member: User) -> None:
    response = await attempt(api, member.email.upper(), PASSWORD)
    assert response.status_code == 200, response.text
    pair = response.json()
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == settings.access_token_ttl_s
    assert pair["refresh_expires_in"] == settings.refresh_token_ttl_s
    assert pair["access_token"] != pair["refresh_token"]
    assert pair["user"]["id"] == member.id
    assert pair["user"]["email"] == member.email
    assert "$argon2" not in response.text
    me = await api.get("/api/auth/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    assert me.json()["id"] == member.id


async def test_wrong_password_and_unknown_email_look_the_same(
    api: Client, db: AsyncConnection[Any], password_hash: str, member: User
) -> None:
    inactive = await create_user(db, password_hash, is_active=False)
    wrong_password = await attempt(api, member.email, "not the password", new_peer())
    unknown_email = await attempt(api, unique_email("ghost"), "not the password", new_peer())
    inactive_account = await attempt(api, inactive.email, PASSWORD, new_peer())
    bodies = [assert_problem(r, 401) for r in (wrong_password, unknown_email, inactive_account)]
    assert bodies[0]["request_id"] != bodies[1]["request_id"]
    assert without_request_specifics(bodies[0]) == without_request_specifics(bodies[1])
    assert without_request_specifics(bodies[0]) == without_request_specifics(bodies[2])
    assert wrong_password.headers.get("www-authenticate") == unknown_email.headers.get("www-authenticate")


# -- refresh rotation and reuse -------------------------------------------------------------------


async def test_refresh_rotates_the_pair(api: Client, member: User) -> None:
    first = await login(api, member.email)
    response = await refresh(api, first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["user"]["id"] == member.id
    assert await me_status(api, second["access_token"]) == 200
    third = await refresh(api, second["refresh_token"])
    assert third.status_code == 200, third.text
    # the first refresh token is spent
    assert_problem(await refresh(api, first["refresh_token"]), 401)


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    api: Client, db: AsyncConnection[Any], member: User
) -> None:
    first = await login(api, member.email)
    other_session = await login(api, member.email)
    rotated = (await refresh(api, first["refresh_token"])).json()
    assert await me_status(api, first["access_token"]) == 200
    assert await me_status(api, rotated["access_token"]) == 200

    reuse = await refresh(api, first["refresh_token"])
    assert_problem(reuse, 401)

    # the newest refresh token of the family is dead, and so is every access token from the family
    assert_problem(await refresh(api, rotated["refresh_token"]), 401)
    assert await me_status(api, rotated["access_token"]) == 401
    assert await me_status(api, first["access_token"]) == 401
    cursor = await db.execute(
        "select count(*) filter (where revoked_at is null) from refresh_tokens where user_id = %s",
        (member.id,),
    )
    live = await cursor.fetchone()
    assert live == (1,)  # only the other session's token
    # another session of the same user is untouched
    assert await me_status(api, other_session["access_token"]) == 200
    assert (await refresh(api, other_session["refresh_token"])).status_code == 200


async def test_unknown_refresh_token_is_401(api: Client) -> None:
    assert_problem(await refresh(api, "x" * 43), 401)


# -- logout -----------------------------------------------------------------------------------------


async def test_logout_revokes_only_that_session(api: Client, member: User) -> None:
    session_a = await login(api, member.email)
    session_b = await login(api, member.email)
    response = await api.post("/api/auth/logout", headers=bearer(session_a["access_token"]))
    assert response.status_code == 204, response.text
    assert await me_status(api, session_a["access_token"]) == 401
    assert_problem(await refresh(api, session_a["refresh_token"]), 401)
    assert await me_status(api, session_b["access_token"]) == 200
    assert (await refresh(api, session_b["refresh_token"])).status_code == 200


async def test_logout_needs_a_session(api: Client) -> None:
    assert_problem(await api.post("/api/auth/logout"), 401)


# -- the caller's own account ---------------------------------------------------------------------


async def test_patch_me_changes_the_display_name(api: Client, member: User) -> None:
    pair = await login(api, member.email)
    response = await api.patch(
        "/api/auth/me", json={"display_name": "Renamed Person"}, headers=bearer(pair["access_token"])
    )
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "Renamed Person"
    assert "$argon2" not in response.text
    me = await api.get("/api/auth/me", headers=bearer(pair["access_token"]))
    assert me.json()["display_name"] == "Renamed Person"
    # a name change alone keeps the session alive
    assert (await refresh(api, pair["refresh_token"])).status_code == 200


async def test_password_change_needs_the_current_password(
    api: Client, db: AsyncConnection[Any], member: User
) -> None:
    pair = await login(api, member.email)
    headers = bearer(pair["access_token"])
    wrong = await api.patch(
        "/api/auth/me",
        json={"new_password": NEW_PASSWORD, "current_password": "not the password"},
        headers=headers,
    )
    assert_problem(wrong, 403)
    missing = await api.patch("/api/auth/me", json={"new_password": NEW_PASSWORD}, headers=headers)
    assert_problem(missing, 403)
    stored = await queries.get_user_by_id(db, id=member.id)
    assert stored is not None
    assert stored.password_hash == member.password_hash
    assert await me_status(api, pair["access_token"]) == 200


async def test_password_change_revokes_the_other_sessions_only(api: Client, member: User) -> None:
    current = await login(api, member.email)
    other = await login(api, member.email)
    response = await api.patch(
        "/api/auth/me",
        json={"new_password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=bearer(current["access_token"]),
    )
    assert response.status_code == 200, response.text
    assert "$argon2" not in response.text

    assert await me_status(api, other["access_token"]) == 401
    assert_problem(await refresh(api, other["refresh_token"]), 401)
    assert await me_status(api, current["access_token"]) == 200
    assert (await refresh(api, current["refresh_token"])).status_code == 200

    assert_problem(await attempt(api, member.email, PASSWORD, new_peer()), 401)
    assert (await attempt(api, member.email, NEW_PASSWORD, new_peer())).status_code == 200


# -- login throttling -------------------------------------------------------------------------------


def assert_throttled(response: Any, settings: Settings) -> None:
    body = assert_problem(response, 429)
    assert body["type"] == "/problems/rate-limited"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 0 < int(retry_after) <= settings.login_failure_window_s


async def test_failures_for_one_account_throttle_it(api: Client, settings: Settings, member: User) -> None:
    assert settings.login_max_failures == 5
    for _ in range(5):  # each from another address: only the account's counter adds up
        assert (await attempt(api, member.email, "wrong password", new_peer())).status_code == 401
    # even the right password, from a fresh address, is refused now
    assert_throttled(await attempt(api, member.email, PASSWORD, new_peer()), settings)
    assert_throttled(await attempt(api, member.email.upper(), PASSWORD, new_peer()), settings)


async def test_failures_from_one_address_throttle_it(api: Client, settings: Settings, member: User) -> None:
    peer = new_peer()
    for _ in range(5):
        response = await attempt(api, unique_email("nobody"), "wrong password", peer)
        assert response.status_code == 401
    assert_throttled(await attempt(api, member.email, PASSWORD, peer), settings)
    # the same account from another address is fine: it was the address that failed
    assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200


async def test_a_successful_login_resets_the_account_counter(
    api: Client, settings: Settings, member: User
) -> None:
    for _ in range(4):
        assert (await attempt(api, member.email, "wrong password", new_peer())).status_code == 401
    assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200
    for _ in range(4):
        assert (await attempt(api, member.email, "wrong password", new_peer())).status_code == 401
    assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200


# -- rehash on login --------------------------------------------------------------------------------


async def test_login_rehashes_a_hash_made_with_weaker_parameters(
    api: Client, db: AsyncConnection[Any], settings: Settings
) -> None:
    weak_hash = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    passwords = Passwords(settings)
    assert passwords.needs_rehash(weak_hash)
    user = await create_user(db, weak_hash)
    await login(api, user.email)
    stored = await queries.get_user_by_id(db, id=user.id)
    assert stored is not None
    assert stored.password_hash != weak_hash
    assert passwords.needs_rehash(stored.password_hash) is False
    assert await passwords.verify(stored.password_hash, PASSWORD)
    # and the rehashed password still logs in
    await login(api, user.email)
