"""Registration, login, refresh rotation and reuse detection, logout, password change, throttling."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import argon2
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.security import Passwords, refresh_token_digest
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.domains.accounts.services import AccountService
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    Client,
    assert_problem,
    bearer,
    create_user,
    generous_client,
    login,
    mint_headers,
    serve_in_loop,
    unique_email,
)

NEW_PASSWORD = "an entirely new passphrase"
_peers = itertools.count(1)


def new_peer() -> str:
    """A client address no other request of the run uses."""
    n = next(_peers)
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


async def attempt(api: Client, email: str, password: str, peer: str | None = None) -> Any:
    headers = {"x-test-peer": peer} if peer else {}
    return await api.post("/api/auth/login", json={"email": email, "password": password}, headers=headers)


def security_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The structured security events named ``name`` logged so far (structlog's event dicts)."""
    return [
        record.msg
        for record in caplog.records
        if record.name == "security" and isinstance(record.msg, dict) and record.msg.get("event") == name
    ]


async def refresh(api: Client, token: str) -> Any:
    return await api.post("/api/auth/refresh", json={"refresh_token": token})


async def family_of(db: AsyncConnection[Any], refresh_token: str) -> Any:
    row = await (
        await db.execute(
            "select family_id from refresh_tokens where token_hash = %s",
            (refresh_token_digest(refresh_token),),
        )
    ).fetchone()
    assert row is not None
    return row[0]


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


# -- registration ---------------------------------------------------------------------------------


async def test_register_normalises_email_and_never_returns_the_password(
    api: Client, db: AsyncConnection[Any]
) -> None:
    response = await api.post(
        "/api/auth/register",
        json={"email": "Ana.Lima@Example.COM", "password": PASSWORD, "display_name": "  Ana Lima "},
    )
    assert response.status_code == 202, response.text
    assert "$argon2" not in response.text
    assert PASSWORD not in response.text
    stored = await queries.get_user_by_email(db, email="ana.lima@example.com")
    assert stored is not None
    assert (stored.display_name, stored.role, stored.is_active) == ("Ana Lima", "member", True)
    assert stored.password_hash.startswith("$argon2id$")
    # the original spelling logs in too
    pair = await login(api, "ANA.LIMA@example.com")
    assert pair["user"]["id"] == stored.id
    assert pair["user"]["email"] == "ana.lima@example.com"
    assert not {"password", "password_hash"} & keys_of(pair)


async def test_registration_does_not_reveal_whether_an_email_has_an_account(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """Review L1 (probe P11): a taken email (any case) gets exactly the answer a free one gets, and the
    existing account is left as it was (its password still works, the new one does not)."""
    first = await api.post(
        "/api/auth/register", json={"email": "dup@example.com", "password": PASSWORD, "display_name": "A"}
    )
    again = await api.post(
        "/api/auth/register",
        json={"email": "DUP@Example.com", "password": "another password!", "display_name": "B"},
    )
    fresh = await api.post(
        "/api/auth/register",
        json={"email": "fresh@example.com", "password": PASSWORD, "display_name": "C"},
    )
    assert first.status_code == again.status_code == fresh.status_code == 202
    assert first.json() == again.json() == fresh.json()
    assert first.headers["content-type"] == again.headers["content-type"]
    assert await queries.count_users(db) == 2
    stored = await queries.get_user_by_email(db, email="dup@example.com")
    assert stored is not None and stored.display_name == "A"
    assert (await attempt(api, "dup@example.com", PASSWORD, new_peer())).status_code == 200
    assert (await attempt(api, "dup@example.com", "another password!", new_peer())).status_code == 401


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
    bodies = [
        assert_problem(r, 401, "unauthorized") for r in (wrong_password, unknown_email, inactive_account)
    ]
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
    assert_problem(await refresh(api, first["refresh_token"]), 401, "unauthorized")


async def test_a_session_cannot_be_refreshed_past_its_absolute_lifetime(
    settings: Settings, db: AsyncConnection[Any], member: User
) -> None:
    """Review L3: rotation never extends a session past SESSION_MAX_AGE_S from its login: each new
    refresh token expires by then at the latest, and once it has passed, refreshing is refused."""
    async for api in generous_client(settings, session_max_age_s=3600):
        first = await login(api, member.email)
        assert first["refresh_expires_in"] == 3600
        family = await family_of(db, first["refresh_token"])
        await db.execute(  # the session began 50 minutes ago
            "update refresh_tokens set issued_at = issued_at - interval '50 minutes' where family_id = %s",
            (family,),
        )
        second = (await refresh(api, first["refresh_token"])).json()
        assert 0 < second["refresh_expires_in"] <= 600, second["refresh_expires_in"]
        stored = await (
            await db.execute(
                "select expires_at - (select min(issued_at) from refresh_tokens where family_id = %(f)s)"
                " from refresh_tokens where family_id = %(f)s order by id desc limit 1",
                {"f": family},
            )
        ).fetchone()
        assert stored is not None and stored[0].total_seconds() <= 3600
        await db.execute(  # and now 61 minutes ago: over, though the last token is not expired itself
            "update refresh_tokens set issued_at = issued_at - interval '11 minutes' where family_id = %s",
            (family,),
        )
        assert_problem(await refresh(api, second["refresh_token"]), 401, "unauthorized")
        assert (await refresh(api, (await login(api, member.email))["refresh_token"])).status_code == 200


async def test_ended_sessions_are_purged_and_live_ones_kept(
    api: Client, db: AsyncConnection[Any], member: User
) -> None:
    """Review L3: a daily job deletes the refresh tokens of ended sessions; a live session keeps its
    spent tokens (reuse detection needs them)."""
    ended = await login(api, member.email)
    live = await login(api, member.email)
    spent = live["refresh_token"]
    live = (await refresh(api, spent)).json()
    ended_family, live_family = await family_of(db, ended["refresh_token"]), await family_of(db, spent)
    await db.execute(  # ended longer ago than an access token lives
        "update refresh_tokens set expires_at = now() - interval '16 minutes' where family_id = %s",
        (ended_family,),
    )
    await db.execute(  # the live session's spent token has expired, its current one has not
        "update refresh_tokens set expires_at = now() - interval '1 second'"
        " where family_id = %s and used_at is not null",
        (live_family,),
    )
    app: Litestar = api.app  # type: ignore[assignment]
    purged = api.blocking_portal.call(app.state.services[AccountService].purge_expired_sessions)
    assert purged == 1
    rows = await (
        await db.execute("select family_id, count(*) from refresh_tokens group by family_id")
    ).fetchall()
    assert dict(rows) == {live_family: 2}
    assert_problem(await refresh(api, ended["refresh_token"]), 401, "unauthorized")
    assert (await refresh(api, live["refresh_token"])).status_code == 200


async def test_a_session_ended_less_than_an_access_token_ago_is_kept_so_revocation_finds_it(
    api: Client, db: AsyncConnection[Any], member: User
) -> None:
    """A refresh just before the session's end gives a refresh token that expires before the access
    token issued with it: purged then, a deactivation would find no session to revoke and the access
    token would live on."""
    session = await login(api, member.email)
    await db.execute(
        "update refresh_tokens set expires_at = now() - interval '1 second' where family_id = %s",
        (await family_of(db, session["refresh_token"]),),
    )
    app: Litestar = api.app  # type: ignore[assignment]
    assert api.blocking_portal.call(app.state.services[AccountService].purge_expired_sessions) == 0
    admin = await create_user(db, role=UserRole.ADMIN)
    deactivated = await api.patch(
        f"/api/admin/users/{member.id}",
        json={"is_active": False},
        headers=mint_headers(app, admin.id, admin.role),
    )
    assert deactivated.status_code == 200, deactivated.text
    assert await me_status(api, session["access_token"]) == 401


async def issued_longer_ago_than_the_reuse_grace(db: AsyncConnection[Any], refresh_token: str) -> None:
    """Backdate a token's issue past REFRESH_REUSE_GRACE_S (the session's start moves by as much)."""
    await db.execute(
        "update refresh_tokens set issued_at = issued_at - interval '61 seconds' where token_hash = %s",
        (refresh_token_digest(refresh_token),),
    )


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    api: Client, db: AsyncConnection[Any], member: User
) -> None:
    first = await login(api, member.email)
    other_session = await login(api, member.email)
    rotated = (await refresh(api, first["refresh_token"])).json()
    assert await me_status(api, first["access_token"]) == 200
    assert await me_status(api, rotated["access_token"]) == 200
    await issued_longer_ago_than_the_reuse_grace(db, rotated["refresh_token"])

    reuse = await refresh(api, first["refresh_token"])
    assert_problem(reuse, 401, "unauthorized")

    # the newest refresh token of the family is dead, and so is every access token from the family
    assert_problem(await refresh(api, rotated["refresh_token"]), 401, "unauthorized")
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


async def test_a_token_presented_again_within_the_grace_is_superseded_until_its_successor_is_used(
    api: Client, member: User
) -> None:
    """Two tabs refreshing with one token: the later one is told 409 and the session lives on; once
    the successor has been used, the same token's reuse is a leak and revokes the session."""
    first = await login(api, member.email)
    second = (await refresh(api, first["refresh_token"])).json()

    superseded = assert_problem(await refresh(api, first["refresh_token"]), 409, "refresh-superseded")
    assert "other request" in superseded["detail"]
    assert await me_status(api, first["access_token"]) == 200
    assert await me_status(api, second["access_token"]) == 200
    third = await refresh(api, second["refresh_token"])
    assert third.status_code == 200, third.text

    assert_problem(await refresh(api, first["refresh_token"]), 401, "unauthorized")
    assert_problem(await refresh(api, third.json()["refresh_token"]), 401, "unauthorized")
    assert await me_status(api, third.json()["access_token"]) == 401


async def test_a_token_presented_again_after_the_grace_revokes_the_session(
    api: Client, db: AsyncConnection[Any], member: User
) -> None:
    first = await login(api, member.email)
    second = (await refresh(api, first["refresh_token"])).json()
    await issued_longer_ago_than_the_reuse_grace(db, second["refresh_token"])

    assert_problem(await refresh(api, first["refresh_token"]), 401, "unauthorized")
    assert_problem(await refresh(api, second["refresh_token"]), 401, "unauthorized")
    assert await me_status(api, second["access_token"]) == 401


async def test_unknown_refresh_token_is_401(api: Client) -> None:
    assert_problem(await refresh(api, "x" * 43), 401, "unauthorized")


# -- logout -----------------------------------------------------------------------------------------


async def test_logout_revokes_only_that_session(api: Client, member: User) -> None:
    session_a = await login(api, member.email)
    session_b = await login(api, member.email)
    response = await api.post("/api/auth/logout", headers=bearer(session_a["access_token"]))
    assert response.status_code == 204, response.text
    assert await me_status(api, session_a["access_token"]) == 401
    assert_problem(await refresh(api, session_a["refresh_token"]), 401, "unauthorized")
    assert await me_status(api, session_b["access_token"]) == 200
    assert (await refresh(api, session_b["refresh_token"])).status_code == 200


async def test_logout_needs_a_session(api: Client) -> None:
    assert_problem(await api.post("/api/auth/logout"), 401, "unauthorized")


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
    assert_problem(wrong, 403, "forbidden")
    missing = await api.patch("/api/auth/me", json={"new_password": NEW_PASSWORD}, headers=headers)
    assert_problem(missing, 403, "forbidden")
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
    assert_problem(await refresh(api, other["refresh_token"]), 401, "unauthorized")
    assert await me_status(api, current["access_token"]) == 200
    assert (await refresh(api, current["refresh_token"])).status_code == 200

    assert_problem(await attempt(api, member.email, PASSWORD, new_peer()), 401, "unauthorized")
    assert (await attempt(api, member.email, NEW_PASSWORD, new_peer())).status_code == 200


async def test_a_profile_patch_that_changes_nothing_keeps_updated_at_and_the_feeds_names(
    api: Client, db: AsyncConnection[Any], valkey: Valkey, member: User
) -> None:
    headers = bearer((await login(api, member.email))["access_token"])
    names_version = await valkey.get("feed:names")
    for body in ({}, {"display_name": member.display_name}):
        response = await api.patch("/api/auth/me", json=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["display_name"] == member.display_name
        stored = await queries.get_user_by_id(db, id=member.id)
        assert stored is not None
        assert stored.updated_at == member.updated_at, body
        assert await valkey.get("feed:names") == names_version, body
    # a new password with the name as it was changes the account, not the name
    new_password = {"current_password": PASSWORD, "new_password": "a brand new passphrase 7"}
    changed = await api.patch(
        "/api/auth/me", json=new_password | {"display_name": member.display_name}, headers=headers
    )
    assert changed.status_code == 200, changed.text
    assert await valkey.get("feed:names") == names_version
    renamed = await api.patch("/api/auth/me", json={"display_name": "Renamed"}, headers=headers)
    assert renamed.status_code == 200, renamed.text
    stored = await queries.get_user_by_id(db, id=member.id)
    assert stored is not None
    assert stored.updated_at > member.updated_at
    assert await valkey.get("feed:names") != names_version


async def test_bad_profile_changes_and_refreshes_are_400_naming_the_field(api: Client, member: User) -> None:
    assert_problem(await api.patch("/api/auth/me", json={"display_name": "X"}), 401, "unauthorized")
    headers = bearer((await login(api, member.email))["access_token"])
    for body, field in (
        ({"email": "other@example.com"}, "email"),
        ({"new_password": "short", "current_password": PASSWORD}, "new_password"),
    ):
        assert_problem(
            await api.patch("/api/auth/me", json=body, headers=headers), 400, "validation", {field}
        )
    for body in ({}, {"refresh_token": "too-short"}):
        assert_problem(await api.post("/api/auth/refresh", json=body), 400, "validation", {"refresh_token"})
    assert await me_status(api, headers["Authorization"].removeprefix("Bearer ")) == 200


# -- login throttling -------------------------------------------------------------------------------


def assert_throttled(response: Any, settings: Settings) -> None:
    body = assert_problem(response, 429, "rate-limited")
    assert body["type"] == "/problems/rate-limited"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 0 < int(retry_after) <= settings.login_failure_window_s


async def test_failures_from_anywhere_never_lock_the_owner_out(
    api: Client, settings: Settings, member: User
) -> None:
    """ASVS 2.2.1 / review M1: five wrong passwords from an attacker's address refuse that address for
    that account (429), not the account: its owner, elsewhere, still signs in with the right password."""
    assert settings.login_max_failures == 5
    attacker = new_peer()
    for _ in range(5):
        assert (await attempt(api, member.email, "wrong password", attacker)).status_code == 401
    assert_throttled(await attempt(api, member.email, PASSWORD, attacker), settings)
    assert_throttled(await attempt(api, member.email.upper(), "wrong password", attacker), settings)
    assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200


async def test_failures_spread_over_addresses_slow_the_account_but_never_refuse_it(
    api: Client, settings: Settings, member: User, caplog: pytest.LogCaptureFixture
) -> None:
    """Guesses for one account from many addresses are slowed (progressive delay, logged) once the
    account has LOGIN_MAX_FAILURES in the window; none is refused, and the owner still gets in."""
    with caplog.at_level(logging.INFO):
        for _ in range(settings.login_max_failures + 1):
            assert (await attempt(api, member.email, "wrong password", new_peer())).status_code == 401
        assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200
        slowed = security_events(caplog, "login_slowed")
        assert [e["failures"] for e in slowed] == [5, 6], caplog.records
        assert [e["delay_s"] for e in slowed] == [1.0, 2.0]
        assert member.email not in str(slowed)
        # the success ended the account's slow-down
        assert (await attempt(api, member.email, "wrong password", new_peer())).status_code == 401
        assert len(security_events(caplog, "login_slowed")) == 2


async def test_failures_from_one_address_throttle_it(
    settings: Settings, member: User, caplog: pytest.LogCaptureFixture
) -> None:
    """Past LOGIN_ADDRESS_MAX_FAILURES failures for any accounts, the address is refused (for every
    account), and the refusal is logged as a security event that names no account."""
    async for api in generous_client(settings, login_address_max_failures=7):
        logging.getLogger().addHandler(caplog.handler)  # the new app configured logging afresh
        peer = new_peer()
        for _ in range(7):
            response = await attempt(api, unique_email("nobody"), "wrong password", peer)
            assert response.status_code == 401
        with caplog.at_level(logging.INFO):
            assert_throttled(await attempt(api, member.email, PASSWORD, peer), settings)
        locked = security_events(caplog, "login_locked_out")
        assert [e["scope"] for e in locked] == ["address"], caplog.records
        assert member.email not in str(locked)
        # the same account from another address is fine: it was the address that failed
        assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200


async def test_a_successful_login_resets_the_account_counter(
    api: Client, settings: Settings, member: User, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(4):
        assert (await attempt(api, member.email, "wrong password", new_peer())).status_code == 401
    assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            assert (await attempt(api, member.email, "wrong password", new_peer())).status_code == 401
        assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200
    assert not security_events(caplog, "login_slowed")


async def test_wrong_current_passwords_count_as_failed_logins(
    api: Client, settings: Settings, member: User
) -> None:
    """Review L2: a stolen access token does not buy unthrottled guesses of the password through
    PATCH /api/auth/me; they share the login's counters (this address is refused for the account,
    in both places), while the owner elsewhere is unaffected."""
    token = (await login(api, member.email))["access_token"]
    thief = new_peer()
    headers = {**bearer(token), "x-test-peer": thief}
    for n in range(settings.login_max_failures):
        response = await api.patch(
            "/api/auth/me",
            json={"new_password": NEW_PASSWORD, "current_password": f"guess {n}"},
            headers=headers,
        )
        assert_problem(response, 403, "forbidden")
    response = await api.patch(
        "/api/auth/me", json={"new_password": NEW_PASSWORD, "current_password": PASSWORD}, headers=headers
    )
    assert_throttled(response, settings)
    assert_throttled(await attempt(api, member.email, PASSWORD, thief), settings)
    assert (await attempt(api, member.email, PASSWORD, new_peer())).status_code == 200


async def test_concurrent_failures_for_one_account_get_no_more_password_checks_than_the_limit(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    password_hash: str,
    argon2_verifications: list[str],
) -> None:
    """A burst of wrong passwords for one account, all at once: past LOGIN_MAX_FAILURES every attempt
    is refused (429) without a password check, so a burst guesses no more passwords than a sequence:
    each attempt is counted and checked against the limit in one Lua script, before the (slow)
    password check."""
    victim = await create_user(db, password_hash)
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        guesses = await asyncio.gather(
            *(
                served.client.post("/api/auth/login", json={"email": victim.email, "password": f"guess {n}"})
                for n in range(20)
            )
        )
    statuses = sorted(response.status_code for response in guesses)
    assert set(statuses) <= {401, 429}, statuses
    assert argon2_verifications.count(victim.password_hash) <= settings.login_max_failures, statuses
    assert statuses.count(401) <= settings.login_max_failures, statuses


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
