"""Accounts review fixes: ``create-admin`` never hands a pre-registered account administrator rights
on its own, nor makes one that cannot sign in; the seed never promotes someone else's account; reading
one's profile never costs the owner the password change or the logout; two logins at once after an
argon2 parameter change both succeed, and a wrong password for an account hashed before it costs
what it costs for an unknown email; a spent refresh token presented after its own expiry still
revokes its session; registration does not document a 401 it never answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import argon2
import msgspec
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.security import Passwords, refresh_token_digest
from app.core.services import open_services
from app.db import accounts as queries
from app.domains.accounts.seed import seed_accounts
from app.modules import MODULES
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    Client,
    all_waiting_behind,
    bearer,
    cli_env,
    create_user,
    generous_client,
    login,
    serve_in_loop,
    unique_email,
)

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_PASSWORD = "the operator's chosen passphrase 42"
OUTSIDER_PASSWORD = "the outsider's own passphrase"


def create_admin(settings: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ADMIN_PASSWORD=... python -m app.cli create-admin ...`` on the test database."""
    assert settings.database_url and settings.valkey_url
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "create-admin", *args],
        cwd=ROOT,
        env=cli_env(settings.database_url, settings.valkey_url, tmp_path, ADMIN_PASSWORD=OPERATOR_PASSWORD),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def register(api: Client, email: str, password: str = OUTSIDER_PASSWORD) -> None:
    response = await api.post(
        "/api/auth/register", json={"email": email, "password": password, "display_name": "Ops"}
    )
    assert response.status_code == 202, response.text


async def role_and_activity(db: AsyncConnection[Any], email: str) -> tuple[str, bool] | None:
    cursor = await db.execute("select role::text, is_active from users where email = %s", (email,))
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1])


# -- create-admin and the seed's administrator -----------------------------------------------------


async def test_create_admin_refuses_an_address_someone_registered_first(
    api: Client, db: AsyncConnection[Any], settings: Settings, tmp_path: Path
) -> None:
    email = unique_email("ops")
    await register(api, email)
    outsider = await queries.get_user_by_email(db, email=email)
    assert outsider is not None

    result = create_admin(settings, tmp_path, email)

    assert result.returncode == 1, result.stdout + result.stderr
    refusal = result.stderr.strip()
    assert len(refusal.splitlines()) == 1, refusal
    assert (
        f"{email} already has an account (id {outsider.id}, created {outsider.created_at:%Y-%m-%d}" in refusal
    )
    assert "--promote-existing" in refusal
    assert await role_and_activity(db, email) == ("member", True)
    assert (await login(api, email, OUTSIDER_PASSWORD))["user"]["role"] == "member"
    operator = await api.post("/api/auth/login", json={"email": email, "password": OPERATOR_PASSWORD})
    assert operator.status_code == 401


async def test_create_admin_promote_existing_promotes_and_activates_keeping_the_password(
    api: Client, db: AsyncConnection[Any], settings: Settings, tmp_path: Path
) -> None:
    email = unique_email("ops")
    await register(api, email)
    await db.execute("update users set is_active = false where email = %s", (email,))

    result = create_admin(settings, tmp_path, email, "--promote-existing")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{email} is an administrator" in result.stdout
    assert "promoted" in result.stdout and "password is unchanged" in result.stdout, result.stdout
    assert await role_and_activity(db, email) == ("admin", True)
    assert (await login(api, email, OUTSIDER_PASSWORD))["user"]["role"] == "admin"
    operator = await api.post("/api/auth/login", json={"email": email, "password": OPERATOR_PASSWORD})
    assert operator.status_code == 401


async def test_create_admin_creates_a_new_address_with_admin_password(
    api: Client, db: AsyncConnection[Any], settings: Settings, tmp_path: Path
) -> None:
    email = unique_email("ops")

    result = create_admin(settings, tmp_path, email)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{email} is an administrator" in result.stdout
    assert "created" in result.stdout
    assert await role_and_activity(db, email) == ("admin", True)
    assert (await login(api, email, OPERATOR_PASSWORD))["user"]["role"] == "admin"

    again = create_admin(settings, tmp_path, email)  # a deploy script running it every time

    assert again.returncode == 0, again.stdout + again.stderr
    assert "administrator" in again.stdout and "already" in again.stdout, again.stdout
    assert (await login(api, email, OPERATOR_PASSWORD))["user"]["role"] == "admin"


@pytest.mark.parametrize("email", ["admin@localhost", "ops@intranet.corp1", "ops@example.c0m"])
async def test_create_admin_refuses_an_address_the_login_refuses(
    api: Client, db: AsyncConnection[Any], settings: Settings, monkeypatch: pytest.MonkeyPatch, email: str
) -> None:
    from app.cli import _create_admin

    monkeypatch.setenv("ADMIN_PASSWORD", OPERATOR_PASSWORD)
    login_refuses = await api.post("/api/auth/login", json={"email": email, "password": OPERATOR_PASSWORD})
    assert login_refuses.status_code == 400  # what the administrator would get for ever

    with pytest.raises(SystemExit) as refused:
        await _create_admin(settings, email, "Administrator")

    message = str(refused.value.code)
    assert message.startswith(f"create-admin: {email} is not an address"), message
    assert "\n" not in message
    assert await queries.count_users(db) == 0


async def test_the_seed_leaves_an_account_of_the_admin_address_alone(
    api: Client, db: AsyncConnection[Any], settings: Settings
) -> None:
    await register(api, settings.admin_email)

    async with open_services(settings, MODULES) as services:
        lines = await seed_accounts(services)

    assert await role_and_activity(db, settings.admin_email.lower()) == ("member", True)
    notes = [line for line in lines if "ADMIN_EMAIL" in line]
    assert len(notes) == 1 and "already has an account" in notes[0], lines
    assert (await login(api, settings.admin_email, OUTSIDER_PASSWORD))["user"]["role"] == "member"


async def test_the_seed_makes_no_administrator_who_cannot_sign_in(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    unusable = msgspec.structs.replace(settings, admin_email="admin@localhost")

    async with open_services(unusable, MODULES) as services:
        lines = await seed_accounts(services)

    assert await role_and_activity(db, "admin@localhost") is None
    assert any(line.startswith("ADMIN_EMAIL admin@localhost is not an address") for line in lines), lines
    cursor = await db.execute("select count(*) from users where role = 'member'")
    assert await cursor.fetchone() == (2,)  # the demo members are seeded all the same


# -- rate limits of the caller's own account -------------------------------------------------------


async def test_logout_is_not_refused_because_the_user_read_their_profile(
    settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    user = await create_user(db, password_hash)
    async for api in generous_client(settings, rate_limit_auth_per_minute=20, rate_limit_auth_per_hour=200):
        headers = bearer((await login(api, user.email))["access_token"])
        for _ in range(20):
            assert (await api.get("/api/auth/me", headers=headers)).status_code == 200

        logout = await api.post("/api/auth/logout", headers=headers)

        assert logout.status_code == 204, logout.text
        assert "ratelimit-policy" not in logout.headers


async def test_a_thief_cannot_stop_the_owner_from_changing_the_password(
    settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    """The ``auth`` quota of an authenticated request is keyed by the user: a thief's GET /me calls
    used to spend the owner's, whose password change (which revokes the thief) then answered 429."""
    user = await create_user(db, password_hash)
    async for api in generous_client(settings, rate_limit_auth_per_minute=20, rate_limit_auth_per_hour=200):
        thief = bearer((await login(api, user.email))["access_token"])
        for _ in range(20):
            await api.get("/api/auth/me", headers={**thief, "x-test-peer": "203.0.113.9"})
        owner = bearer((await login(api, user.email))["access_token"])

        change = await api.patch(
            "/api/auth/me",
            json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
            headers={**owner, "x-test-peer": "198.51.100.7"},
        )

        assert change.status_code == 200, change.text
        assert (await api.get("/api/projects", headers=thief)).status_code == 401


async def test_a_thief_spending_the_default_quota_cannot_stop_the_password_change(
    settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    """Moved to ``default``, the quota of /me was still keyed by the user: a thief's session spent it
    with GET /me at the start of every minute, and the owner's password change answered 429 for the
    rest of it (the sessions reviewer: 19 of 20 changes over two minutes). Each session now has its
    own, and the thief's is still limited."""
    user = await create_user(db, password_hash)
    async for api in generous_client(  # as many an hour: no window resets within the test
        settings, rate_limit_default_per_minute=20, rate_limit_default_per_hour=20
    ):
        thief = bearer((await login(api, user.email))["access_token"])
        spent = [(await api.get("/api/auth/me", headers=thief)).status_code for _ in range(21)]
        assert spent == [200] * 20 + [429]
        owner = bearer((await login(api, user.email))["access_token"])

        change = await api.patch(
            "/api/auth/me",
            json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
            headers=owner,
        )

        assert change.status_code == 200, change.text
        assert (await api.get("/api/auth/me", headers=thief)).status_code == 401


async def test_a_wrong_current_password_is_still_throttled_like_a_login(
    settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    """PATCH /me left the ``auth`` limit: its password check keeps the login throttle (the pair's
    hard limit, LOGIN_MAX_FAILURES)."""
    user = await create_user(db, password_hash)
    async for api in generous_client(settings, login_max_failures=3):
        headers = {**bearer((await login(api, user.email))["access_token"]), "x-test-peer": "203.0.113.9"}
        wrong = {"current_password": "not the password", "new_password": "a brand new passphrase"}
        statuses = [
            (await api.patch("/api/auth/me", json=wrong, headers=headers)).status_code for _ in range(4)
        ]
        assert statuses == [403, 403, 403, 429]


# -- password rehash, refresh reuse ----------------------------------------------------------------


async def test_two_logins_at_once_after_a_parameter_change_both_succeed(
    settings: Settings, db: AsyncConnection[Any], database_url: str
) -> None:
    """A hash made with older argon2 parameters is rehashed at login, only over the hash verified. Two
    logins at once both verify the old hash; the second's rehash then finds the first's: it used to
    answer 401 for the right password. Both rehashes are held at the user's row until both wait."""
    weak_hash = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    user = await create_user(db, weak_hash)
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        answers = await all_waiting_behind(
            database_url,
            "select 1 from users where id = %s for update",
            user.id,
            [
                served.client.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})
                for _ in range(2)
            ],
        )

    assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
    rehashed = await queries.get_user_by_id(db, id=user.id)
    assert rehashed is not None and rehashed.password_hash != weak_hash


async def test_an_unknown_email_costs_what_a_wrong_password_costs_and_an_invalid_one_nothing(
    settings: Settings, db: AsyncConnection[Any], argon2_verifications: list[str]
) -> None:
    """Login timing is flat, counted rather than timed (it was a ratio of wall-clock medians, which a
    loaded machine can skew): an unknown email costs one argon2 check, against a hash made with the
    same parameters as the account's, as a wrong password costs one against the account's; a body
    refused by validation costs none."""
    user = await create_user(db, await Passwords(settings).hash(PASSWORD))
    checks: list[list[str]] = []
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        for email, status in (("not-an-email", 400), (unique_email(), 401), (user.email, 401)):
            before = len(argon2_verifications)
            answer = await served.client.post(
                "/api/auth/login", json={"email": email, "password": "not the password"}
            )
            assert answer.status_code == status, answer.text
            checks.append(argon2_verifications[before:])

    invalid, unknown, known = checks
    assert invalid == [] and known == [user.password_hash]
    [stand_in] = unknown
    assert stand_in != user.password_hash
    assert argon2.extract_parameters(stand_in) == argon2.extract_parameters(user.password_hash)


async def test_a_wrong_password_for_an_older_hash_costs_a_check_with_the_current_parameters(
    settings: Settings, db: AsyncConnection[Any], argon2_verifications: list[str]
) -> None:
    """An unknown email is checked against a dummy hash made with the current parameters. An account
    whose hash predates a parameter change was checked against that hash alone: a wrong password
    answered faster than for an unknown email (one request told the email had an account). Its check
    now also pays for one with the current parameters."""
    older = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    user = await create_user(db, older)
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        answers = [
            await served.client.post("/api/auth/login", json={"email": email, "password": "not the password"})
            for email in (unique_email(), user.email)
        ]

    assert [answer.status_code for answer in answers] == [401, 401]
    current = argon2.PasswordHasher(
        time_cost=settings.password_time_cost,
        memory_cost=settings.password_memory_kib,
        parallelism=settings.password_parallelism,
    )
    made_with = sorted("older" if current.check_needs_rehash(h) else "current" for h in argon2_verifications)
    assert made_with == ["current", "current", "older"], "the unknown email's check, then the account's two"


async def test_an_expired_spent_refresh_token_presented_again_still_revokes_its_family(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    """With REFRESH_TOKEN_TTL_S shorter than SESSION_MAX_AGE_S each rotation's token outlives its
    predecessor: a spent one presented after its own expiry must still revoke the session."""
    user = await create_user(db, password_hash)
    first = await login(api, user.email)
    second = (await api.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    # An hour passes (far beyond REFRESH_REUSE_GRACE_S): the first token's own expiry is behind it.
    await db.execute(
        "update refresh_tokens set issued_at = issued_at - interval '1 hour' where user_id = %s", (user.id,)
    )
    await db.execute(
        "update refresh_tokens set expires_at = now() - interval '1 minute' where token_hash = %s",
        (refresh_token_digest(first["refresh_token"]),),
    )

    again = await api.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})

    assert again.status_code == 401
    assert "already used" in again.json()["detail"]
    after = await api.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert after.status_code == 401
    assert (await api.get("/api/auth/me", headers=bearer(second["access_token"]))).status_code == 401


async def test_an_expired_unspent_refresh_token_is_only_refused(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    user = await create_user(db, password_hash)
    pair = await login(api, user.email)
    await db.execute(
        "update refresh_tokens set expires_at = now() - interval '1 minute' where token_hash = %s",
        (refresh_token_digest(pair["refresh_token"]),),
    )

    expired = await api.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})

    assert expired.status_code == 401
    assert "invalid or expired" in expired.json()["detail"]
    assert (await api.get("/api/auth/me", headers=bearer(pair["access_token"]))).status_code == 200


# -- what the OpenAPI document says ----------------------------------------------------------------


async def test_registration_documents_no_401_and_answers_none(api: Client) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    assert "401" not in paths["/api/auth/register"]["post"]["responses"]
    assert "401" in paths["/api/auth/login"]["post"]["responses"]
    assert "401" in paths["/api/auth/refresh"]["post"]["responses"]
    # Logout is never limited for a valid token; its 429 is a refused token's (charged to the address).
    logout_429 = paths["/api/auth/logout"]["post"]["responses"]["429"]
    assert logout_429["description"].startswith("Only for a refused token")

    response = await api.post(
        "/api/auth/register",
        json={"email": unique_email(), "password": "a long enough passphrase", "display_name": "New"},
        headers=bearer("not.a.token"),
    )
    assert response.status_code == 202, response.text
