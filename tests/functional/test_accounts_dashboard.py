"""The SAQ dashboard's gate: an admin's bearer token or HTTP Basic with an admin's credentials.

A verified Basic header is remembered for a while (``_basic_verified``) so the dashboard's polling
costs no argon2 hash per request; the account's role, active flag and password are still checked on
every request. ``argon2_verifications`` (conftest) counts the hashes actually verified, to tell a
remembered header from a fresh check.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db.models import User, UserRole
from app.domains.accounts.guards import _basic_verified
from tests.factories import PASSWORD, Client, assert_problem, basic, create_user, mint_headers

PATHS = ["/saq", "/saq/api/queues"]
NEW_PASSWORD = "the admin's brand new passphrase"


@pytest.fixture
async def admin(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash, role=UserRole.ADMIN)


def headers_of(api: Client, user: User) -> dict[str, str]:
    """A minted bearer token for ``user`` (no login: the login is not what is tested here)."""
    app: Litestar = api.app  # type: ignore[assignment]
    return mint_headers(app, user.id, user.role)


def remembered(credentials: dict[str, str]) -> tuple[int, str] | None:
    """What the guard remembers of a Basic header: (user id, password hash at verification)."""
    encoded = credentials["Authorization"].removeprefix("Basic ")
    return _basic_verified.get(hashlib.sha256(encoded.encode()).hexdigest())


def assert_basic_challenge(response: Any) -> None:
    assert_problem(response, 401, "unauthorized")
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Basic ")
    assert 'realm="' in challenge


def assert_forbidden(response: Any) -> None:
    assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize("path", PATHS)
async def test_anonymous_gets_a_basic_challenge(api: Client, path: str) -> None:
    assert_basic_challenge(await api.get(path))


@pytest.mark.parametrize("path", PATHS)
async def test_member_is_forbidden_by_bearer_and_by_basic(api: Client, member: User, path: str) -> None:
    assert_forbidden(await api.get(path, headers=headers_of(api, member)))
    assert_forbidden(await api.get(path, headers=basic(member.email, PASSWORD)))


@pytest.mark.parametrize("path", PATHS)
async def test_admin_gets_in_by_basic_and_by_bearer(api: Client, admin: User, path: str) -> None:
    by_basic = await api.get(path, headers=basic(admin.email, PASSWORD))
    assert by_basic.status_code == 200, by_basic.text
    by_bearer = await api.get(path, headers=headers_of(api, admin))
    assert by_bearer.status_code == 200, by_bearer.text
    if path.endswith("/queues"):
        assert {queue["name"] for queue in by_basic.json()["queues"]} >= {"default"}


async def test_admin_basic_email_is_case_insensitive(api: Client, admin: User) -> None:
    response = await api.get("/saq/api/queues", headers=basic(admin.email.upper(), PASSWORD))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic !!!not-base64!!!",
        "Basic ",
        "Basic bm8tY29sb24taGVyZQ==",  # "no-colon-here"
        "Basic //79/A==",  # not UTF-8
    ],
)
async def test_malformed_basic_credentials_are_401(api: Client, authorization: str) -> None:
    assert_basic_challenge(await api.get("/saq/api/queues", headers={"Authorization": authorization}))


async def test_wrong_basic_password_is_401(api: Client, admin: User) -> None:
    wrong = basic(admin.email, "not the password")
    assert_basic_challenge(await api.get("/saq/api/queues", headers=wrong))
    assert remembered(wrong) is None, "a failed check is not remembered"
    assert_basic_challenge(await api.get("/saq", headers=basic("nobody@example.com", PASSWORD)))


async def test_verified_basic_credentials_are_remembered_without_another_hash(
    api: Client, admin: User, argon2_verifications: list[str]
) -> None:
    credentials = basic(admin.email, PASSWORD)
    assert (await api.get("/saq/api/queues", headers=credentials)).status_code == 200
    assert argon2_verifications == [admin.password_hash]
    assert remembered(credentials) == (admin.id, admin.password_hash)
    for path in ("/saq/api/queues", "/saq", "/saq/api/queues"):
        assert (await api.get(path, headers=credentials)).status_code == 200
    assert argon2_verifications == [admin.password_hash], "the dashboard's polling costs no argon2 hash"


async def test_deactivated_admin_is_shut_out_despite_remembered_credentials(
    api: Client, db: AsyncConnection[Any], admin: User, argon2_verifications: list[str]
) -> None:
    credentials = basic(admin.email, PASSWORD)
    assert (await api.get("/saq/api/queues", headers=credentials)).status_code == 200
    assert (await api.get("/saq/api/queues", headers=credentials)).status_code == 200  # remembered
    assert len(argon2_verifications) == 1

    other_admin = await create_user(db, role=UserRole.ADMIN)
    patched = await api.patch(
        f"/api/admin/users/{admin.id}", json={"is_active": False}, headers=headers_of(api, other_admin)
    )
    assert patched.status_code == 200, patched.text

    assert_basic_challenge(await api.get("/saq/api/queues", headers=credentials))
    assert_basic_challenge(await api.get("/saq", headers=credentials))
    # Refused on the remembered entry, by the account's current state: no new hash was verified.
    assert len(argon2_verifications) == 1
    assert remembered(credentials) == (admin.id, admin.password_hash)


async def test_demoted_admin_is_forbidden_despite_remembered_credentials(
    api: Client, db: AsyncConnection[Any], admin: User, argon2_verifications: list[str]
) -> None:
    credentials = basic(admin.email, PASSWORD)
    assert (await api.get("/saq/api/queues", headers=credentials)).status_code == 200
    assert remembered(credentials) == (admin.id, admin.password_hash)

    other_admin = await create_user(db, role=UserRole.ADMIN)
    patched = await api.patch(
        f"/api/admin/users/{admin.id}", json={"role": "member"}, headers=headers_of(api, other_admin)
    )
    assert patched.status_code == 200, patched.text

    assert_forbidden(await api.get("/saq/api/queues", headers=credentials))
    assert len(argon2_verifications) == 1, "refused on the remembered entry, by the current role"


async def test_password_change_invalidates_remembered_basic_credentials(
    api: Client, admin: User, argon2_verifications: list[str]
) -> None:
    old = basic(admin.email, PASSWORD)
    assert (await api.get("/saq/api/queues", headers=old)).status_code == 200
    assert remembered(old) == (admin.id, admin.password_hash)

    changed = await api.patch(
        "/api/auth/me",
        json={"new_password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=headers_of(api, admin),
    )
    assert changed.status_code == 200, changed.text
    verified_before = len(argon2_verifications)

    assert_basic_challenge(await api.get("/saq/api/queues", headers=old))
    # The remembered entry no longer matched the stored hash: it was dropped and checked afresh.
    assert remembered(old) is None
    assert len(argon2_verifications) == verified_before + 1
    new = await api.get("/saq/api/queues", headers=basic(admin.email, NEW_PASSWORD))
    assert new.status_code == 200, new.text


async def test_failed_logins_from_elsewhere_do_not_lock_the_admin_out_of_the_dashboard(
    api: Client, admin: User
) -> None:
    """Review M1 (probe P2): wrong passwords for the admin from one address — by login or by Basic —
    refuse that address only; the admin's Basic sign-in from another address still opens /saq."""
    attacker = {"x-test-peer": "203.0.113.66"}
    for _ in range(5):
        response = await api.post(
            "/api/auth/login", json={"email": admin.email, "password": "wrong"}, headers=attacker
        )
        assert response.status_code == 401
    refused = await api.get("/saq/api/queues", headers={**basic(admin.email, PASSWORD), **attacker})
    assert_problem(refused, 429, "rate-limited")
    elsewhere = {**basic(admin.email, PASSWORD), "x-test-peer": "198.51.100.78"}
    assert (await api.get("/saq/api/queues", headers=elsewhere)).status_code == 200
