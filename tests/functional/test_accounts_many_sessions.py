"""A user with very many live sessions: revoking them all (a deactivation, a change of role, a password
change) still works, and a login past ``SESSIONS_PER_USER_MAX`` ends the user's oldest sessions.

Every login starts a session that lives up to ``SESSION_MAX_AGE_S`` unless logged out. Revoking a
user's sessions used to take one advisory lock per session in one transaction: past ~12,000 sessions
PostgreSQL's shared lock table ran out ("out of shared memory", a 503 taken for a database outage),
and the user could no longer be deactivated nor change their password. Sessions are inserted here in
bulk, one statement, as that many logins would leave them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.db.models import User, UserRole
from tests.factories import (
    PASSWORD,
    Client,
    answer_racing,
    assert_problem,
    bearer,
    create_user,
    generous_client,
    login,
    mint_headers,
    session_of,
    sign_in,
    with_session,
)

MANY = 20_000
"""Well past what one transaction's advisory locks could hold (64 x 100 slots on the embedded server)."""
CAP = 3


async def insert_sessions(db: AsyncConnection[Any], user: User, count: int) -> None:
    """``count`` live sessions of ``user`` (one refresh token each), older than any login to come."""
    await db.execute(
        "insert into refresh_tokens (user_id, family_id, token_hash, issued_at, expires_at) "
        "select %s, gen_random_uuid(), sha256(('many-' || %s || '-' || i)::bytea), "
        "now() - interval '1 hour', now() + interval '29 days' "
        "from generate_series(1, %s) as i",
        (user.id, user.id, count),
    )


async def live_sessions(db: AsyncConnection[Any], user: User) -> int:
    cursor = await db.execute(
        "select count(distinct family_id) from refresh_tokens where user_id = %s and revoked_at is null",
        (user.id,),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def me_status(api: Client, access_token: str) -> int:
    return (await api.get("/api/auth/me", headers=bearer(access_token))).status_code


# -- revoking every session of a user that has very many -------------------------------------------


@pytest.mark.parametrize(
    "patch", [{"is_active": False}, {"role": "admin"}], ids=["deactivation", "promotion"]
)
async def test_an_administrator_changes_the_access_of_a_user_with_very_many_sessions(
    api: Client, db: AsyncConnection[Any], password_hash: str, patch: dict[str, Any]
) -> None:
    admin = await create_user(db, role=UserRole.ADMIN)
    user = await create_user(db, password_hash)
    session = await login(api, user.email)
    await insert_sessions(db, user, MANY)
    app: Litestar = api.app
    response = await api.patch(
        f"/api/admin/users/{user.id}", json=patch, headers=mint_headers(app, admin.id, UserRole.ADMIN)
    )
    assert response.status_code == 200, response.text
    assert await live_sessions(db, user) == 0
    assert await me_status(api, session["access_token"]) == 401


async def test_a_user_with_very_many_sessions_changes_the_password(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    user = await create_user(db, password_hash)
    other = await login(api, user.email)
    own = await login(api, user.email)
    await insert_sessions(db, user, MANY)
    response = await api.patch(
        "/api/auth/me",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase 42"},
        headers=bearer(own["access_token"]),
    )
    assert response.status_code == 200, response.text
    assert await live_sessions(db, user) == 1  # the caller's own
    assert await me_status(api, own["access_token"]) == 200
    assert await me_status(api, other["access_token"]) == 401


# -- the lock order that lets them take no lock per session -------------------------------------------


async def test_a_logout_waits_for_whatever_holds_the_users_row(
    api: Client, db: AsyncConnection[Any], database_url: str, member: User
) -> None:
    """Revoking all of a user's sessions holds the user's row FOR UPDATE and locks no session: a logout
    must take the row too (FOR SHARE, before the session's lock), or the two would change the same
    token rows in different orders."""
    session = await login(api, member.email)

    async def log_out() -> Any:
        return await api.post("/api/auth/logout", headers=bearer(session["access_token"]))

    hold = "select id from users where id = %s for update"
    answer = await answer_racing(database_url, hold, member.id, log_out)
    assert answer.status_code == 204, answer.text
    assert await me_status(api, session["access_token"]) == 401


async def test_a_login_waits_for_a_rotation_of_the_users_sessions(
    api: Client, db: AsyncConnection[Any], database_url: str, member: User
) -> None:
    """A sign-in may end the user's least recently used sessions without locking them: it holds the
    user's row against the FOR SHARE a rotation or a logout takes (held here)."""
    await login(api, member.email)

    async def log_in() -> Any:
        return await api.post("/api/auth/login", json={"email": member.email, "password": PASSWORD})

    answer = await answer_racing(
        database_url, "select id from users where id = %s for share", member.id, log_in
    )
    assert answer.status_code == 200, answer.text
    assert await live_sessions(db, member) == 2


# -- at most SESSIONS_PER_USER_MAX live sessions per user -----------------------------------------------


@pytest.fixture(scope="module")
async def capped(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, sessions_per_user_max=CAP):
        yield client


@pytest.fixture
async def capped_api(capped: Client, db: AsyncConnection[Any]) -> Client:
    capped.headers.clear()
    capped.cookies.clear()
    return capped


async def test_a_login_past_the_cap_ends_the_oldest_session_as_a_logout_would(
    capped_api: Client, db: AsyncConnection[Any], member: User
) -> None:
    api = capped_api
    pairs = [await login(api, member.email) for _ in range(CAP + 1)]
    assert await live_sessions(db, member) == CAP
    oldest, kept = pairs[0], pairs[1:]
    refused = await api.post("/api/auth/refresh", json={"refresh_token": oldest["refresh_token"]})
    assert_problem(refused, 401, "unauthorized")
    assert await me_status(api, oldest["access_token"]) == 401
    for pair in kept:
        assert await me_status(api, pair["access_token"]) == 200
    rotated = await api.post("/api/auth/refresh", json={"refresh_token": kept[0]["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    # a rotated session was used last: the next login ends the least recently used one instead
    await login(api, member.email)
    assert await live_sessions(db, member) == CAP
    assert await me_status(api, kept[1]["access_token"]) == 401
    assert await me_status(api, rotated.json()["access_token"]) == 200


async def test_a_login_past_the_cap_ends_ended_sessions_before_a_live_one(
    capped_api: Client, db: AsyncConnection[Any], member: User
) -> None:
    """Review: sessions that have ended (a dashboard sign-in past its hours, a session past
    SESSION_MAX_AGE_S) but are not purged yet ranked by their last token, so a login kept them and
    ended a live session rotated before them."""
    live = await login(capped_api, member.email)
    await db.execute(  # the live session was last rotated an hour ago
        "update refresh_tokens set issued_at = now() - interval '1 hour' where user_id = %s", (member.id,)
    )
    await db.execute(  # CAP - 1 sessions issued two minutes ago that ended a minute ago
        "insert into refresh_tokens (user_id, family_id, token_hash, issued_at, expires_at) "
        "select %s, gen_random_uuid(), sha256(('ended-' || %s || '-' || i)::bytea), "
        "now() - interval '2 minutes', now() - interval '1 minute' from generate_series(1, %s) as i",
        (member.id, member.id, CAP - 1),
    )
    newest = await login(capped_api, member.email)
    assert await me_status(capped_api, live["access_token"]) == 200, "the live session is kept"
    assert await me_status(capped_api, newest["access_token"]) == 200
    rows = await db.execute(
        "select count(distinct family_id) from refresh_tokens where user_id = %s and revoked_at is null"
        " and expires_at <= now()",
        (member.id,),
    )
    assert await rows.fetchone() == (CAP - 2,), "an ended session made room"


async def test_the_first_login_of_a_user_with_very_many_sessions_ends_all_but_the_newest(
    capped_api: Client, db: AsyncConnection[Any], member: User
) -> None:
    """Sessions begun before the cap existed (or before it was lowered) end at the next login."""
    await insert_sessions(db, member, MANY)
    pair = await login(capped_api, member.email)
    assert await live_sessions(db, member) == CAP
    assert await me_status(capped_api, pair["access_token"]) == 200


async def test_a_dashboard_sign_in_counts_as_a_session(
    capped_api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    api = capped_api
    admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    first = await login(api, admin.email)
    for _ in range(CAP):
        response = await sign_in(api, admin.email)
        assert response.status_code == 303, response.text
        cookie = session_of(response)
    assert await live_sessions(db, admin) == CAP
    assert await me_status(api, first["access_token"]) == 401
    dashboard = await api.get("/saq/api/queues", headers=with_session(cookie), follow_redirects=False)
    assert dashboard.status_code == 200, dashboard.text
