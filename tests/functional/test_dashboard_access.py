"""The SAQ dashboard's gate: an admin's bearer token or HTTP Basic with an admin's credentials."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import AsyncConnection

from app.db.models import User, UserRole
from tests.factories import PASSWORD, Client, basic, bearer, create_user, login

PROBLEM = "application/problem+json"
PATHS = ["/saq", "/saq/api/queues"]
NEW_PASSWORD = "the admin's brand new passphrase"


@pytest.fixture
async def admin(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash, role=UserRole.ADMIN)


def assert_basic_challenge(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Basic ")
    assert 'realm="' in challenge


def assert_forbidden(response: Any) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("path", PATHS)
async def test_anonymous_gets_a_basic_challenge(api: Client, path: str) -> None:
    assert_basic_challenge(await api.get(path))


@pytest.mark.parametrize("path", PATHS)
async def test_member_is_forbidden_by_bearer_and_by_basic(api: Client, member: User, path: str) -> None:
    token = (await login(api, member.email))["access_token"]
    assert_forbidden(await api.get(path, headers=bearer(token)))
    assert_forbidden(await api.get(path, headers=basic(member.email, PASSWORD)))


@pytest.mark.parametrize("path", PATHS)
async def test_admin_gets_in_by_basic_and_by_bearer(api: Client, admin: User, path: str) -> None:
    by_basic = await api.get(path, headers=basic(admin.email, PASSWORD))
    assert by_basic.status_code == 200, by_basic.text
    token = (await login(api, admin.email))["access_token"]
    by_bearer = await api.get(path, headers=bearer(token))
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
    assert_basic_challenge(await api.get("/saq/api/queues", headers=basic(admin.email, "not the password")))
    assert_basic_challenge(await api.get("/saq", headers=basic("nobody@example.com", PASSWORD)))


async def test_deactivated_admin_is_shut_out_despite_remembered_credentials(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin: User
) -> None:
    credentials = basic(admin.email, PASSWORD)
    assert (await api.get("/saq/api/queues", headers=credentials)).status_code == 200
    assert (await api.get("/saq/api/queues", headers=credentials)).status_code == 200  # remembered

    other_admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    token = (await login(api, other_admin.email))["access_token"]
    patched = await api.patch(
        f"/api/admin/users/{admin.id}", json={"is_active": False}, headers=bearer(token)
    )
    assert patched.status_code == 200, patched.text

    assert_basic_challenge(await api.get("/saq/api/queues", headers=credentials))
    assert_basic_challenge(await api.get("/saq", headers=credentials))


async def test_demoted_admin_is_forbidden_despite_remembered_credentials(
    api: Client, db: AsyncConnection[Any], password_hash: str, admin: User
) -> None:
    credentials = basic(admin.email, PASSWORD)
    assert (await api.get("/saq/api/queues", headers=credentials)).status_code == 200

    other_admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    token = (await login(api, other_admin.email))["access_token"]
    patched = await api.patch(f"/api/admin/users/{admin.id}", json={"role": "member"}, headers=bearer(token))
    assert patched.status_code == 200, patched.text

    assert_forbidden(await api.get("/saq/api/queues", headers=credentials))


async def test_password_change_invalidates_remembered_basic_credentials(api: Client, admin: User) -> None:
    old = basic(admin.email, PASSWORD)
    assert (await api.get("/saq/api/queues", headers=old)).status_code == 200

    token = (await login(api, admin.email))["access_token"]
    changed = await api.patch(
        "/api/auth/me",
        json={"new_password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=bearer(token),
    )
    assert changed.status_code == 200, changed.text

    assert_basic_challenge(await api.get("/saq/api/queues", headers=old))
    new = await api.get("/saq/api/queues", headers=basic(admin.email, NEW_PASSWORD))
    assert new.status_code == 200, new.text
