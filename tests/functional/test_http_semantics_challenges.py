"""Every 401 carries a challenge (RFC 9110 15.5.2: a 401 MUST send ``WWW-Authenticate``).

The HTTP-semantics review found three without one: a wrong password at ``POST /api/auth/login``, a
bad or reused refresh token at ``POST /api/auth/refresh`` and the SAQ dashboard's sign-in page after
wrong credentials. ``UnauthorizedError`` now names ``Bearer realm="api"`` unless its raiser named a
challenge of its own, which stays (``invalid_token``, ``invalid_request``).
"""

from __future__ import annotations

from typing import Any

import httpx
from psycopg import AsyncConnection

from app.db.models import User
from tests.factories import (
    Client,
    assert_problem,
    bearer,
    create_user,
    login,
    sign_in,
    unique_email,
)

REALM = 'Bearer realm="api"'


def assert_challenged(response: httpx.Response, challenge: str = REALM) -> None:
    assert response.status_code == 401, response.text
    assert response.headers.get_list("www-authenticate") == [challenge], response.headers


async def test_a_wrong_password_or_an_unknown_email_is_challenged(api: Client, member: User) -> None:
    wrong = await api.post("/api/auth/login", json={"email": member.email, "password": "not the password"})
    assert_problem(wrong, 401, "unauthorized")
    assert_challenged(wrong)
    unknown = await api.post("/api/auth/login", json={"email": unique_email(), "password": "whatever it is"})
    assert_problem(unknown, 401, "unauthorized")
    assert_challenged(unknown)


async def test_a_bad_or_reused_refresh_token_is_challenged(api: Client, member: User) -> None:
    bad = await api.post("/api/auth/refresh", json={"refresh_token": "not-a-refresh-token-of-ours"})
    assert_problem(bad, 401, "unauthorized")
    assert_challenged(bad)

    first = (await login(api, member.email))["refresh_token"]
    second = (await api.post("/api/auth/refresh", json={"refresh_token": first})).json()["refresh_token"]
    assert (await api.post("/api/auth/refresh", json={"refresh_token": second})).status_code == 200
    reused = await api.post("/api/auth/refresh", json={"refresh_token": first})  # its successor used
    assert_problem(reused, 401, "unauthorized")
    assert_challenged(reused)


async def test_the_dashboard_sign_in_page_s_401_is_challenged(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    """The page (HTML, not a problem) with a challenge a browser does not prompt for: the dashboard's
    other credential, an administrator's bearer token, never Basic."""
    admin = await create_user(db, password_hash, role="admin")
    refused = await sign_in(api, admin.email, "not the password")
    assert refused.headers["content-type"].startswith("text/html")
    assert_challenged(refused)
    assert_challenged(await sign_in(api, unique_email(), "not the password"))


async def test_the_other_401s_keep_their_challenges(api: Client) -> None:
    anonymous = await api.get("/api/auth/me")
    assert_problem(anonymous, 401, "unauthorized")
    assert_challenged(anonymous)
    dashboard = await api.get("/saq/api/queues")
    assert_problem(dashboard, 401, "unauthorized")
    assert_challenged(dashboard)
    bad_token = await api.get("/api/auth/me", headers=bearer("not.a.token"))
    assert_problem(bad_token, 401, "unauthorized")
    assert_challenged(bad_token, 'Bearer error="invalid_token"')
