"""A session rotates at most REFRESH_ROTATIONS_PER_HOUR times within an hour.

Every rotation adds a refresh token to its session (family) and a live session keeps its spent ones
until it is over (reuse detection), so a session's rows grew with its rotations without bound: only
the per-address limit of the route held it (some 7 million rotations in SESSION_MAX_AGE_S). Past the
limit a rotation answers 429 ``refresh-rate-limited`` with ``Retry-After`` (until the oldest rotation
of the hour is an hour old) and spends and revokes nothing: the presented token rotates once the
client waits. The check reads the family's newest ``limit + 1`` tokens, whatever its history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from psycopg import AsyncConnection

from app.config import Settings, SettingsError, load_settings
from app.core.security import refresh_token_digest
from app.db import accounts as queries
from app.db.models import User
from app.domains.accounts import sessions as accounts_sessions
from tests.factories import Client, assert_problem, generous_client, login
from tests.functional.test_accounts_refresh_cost import make_long_session, rows_read
from tests.functional.test_accounts_sessions import family_of, me_status, refresh

LIMIT = 3
"""REFRESH_ROTATIONS_PER_HOUR of the app the behaviour is checked with."""
SLACK = 10
"""Rows the rotation check may read beyond the ``limit + 1`` newest tokens of the family."""


@pytest.fixture(scope="module")
async def limited(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, refresh_rotations_per_hour=LIMIT):
        yield client


@pytest.fixture
async def limited_api(limited: Client, db: AsyncConnection[Any]) -> Client:
    limited.headers.clear()
    limited.cookies.clear()
    return limited


async def rotate(api: Client, pair: dict[str, Any]) -> dict[str, Any]:
    response = await refresh(api, pair["refresh_token"])
    assert response.status_code == 200, response.text
    rotated: dict[str, Any] = response.json()
    return rotated


async def rotated_to_the_limit(api: Client, email: str) -> dict[str, Any]:
    """A new session's pair after LIMIT rotations (each one succeeds)."""
    pair = await login(api, email)
    for _ in range(LIMIT):
        pair = await rotate(api, pair)
    return pair


async def token_state(db: AsyncConnection[Any], refresh_token: str) -> tuple[Any, Any]:
    row = await (
        await db.execute(
            "select used_at, revoked_at from refresh_tokens where token_hash = %s",
            (refresh_token_digest(refresh_token),),
        )
    ).fetchone()
    assert row is not None
    return row[0], row[1]


async def test_past_the_limit_a_rotation_waits_and_keeps_the_token(
    limited_api: Client, db: AsyncConnection[Any], member: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = limited_api
    pair = await rotated_to_the_limit(api, member.email)
    family = await family_of(db, pair["refresh_token"])

    with structlog.testing.capture_logs() as logs:  # a logger of its own: the app's caches its processors
        monkeypatch.setattr(accounts_sessions, "log", structlog.get_logger("app.accounts"))
        refused = await refresh(api, pair["refresh_token"])
    assert_problem(refused, 429, "refresh-rate-limited")
    assert 0 < int(refused.headers["retry-after"]) <= 3600, refused.headers
    # The route layer's quota is not told beside it: "r=9" with a 429 read as "retry now".
    assert "ratelimit" not in refused.headers and "ratelimit-policy" in refused.headers, refused.headers
    limited = [entry for entry in logs if entry["event"] == "refresh_rotation_limited"]
    assert [(e["log_level"], e["user_id"], e["family_id"]) for e in limited] == [
        ("warning", member.id, str(family))
    ], logs
    assert pair["refresh_token"] not in str(logs)
    # nothing spent, nothing revoked: the token and its access token still hold
    assert await token_state(db, pair["refresh_token"]) == (None, None)
    assert await me_status(api, pair["access_token"]) == 200
    count = await (
        await db.execute("select count(*) from refresh_tokens where family_id = %s", (family,))
    ).fetchone()
    assert count == (LIMIT + 1,)

    # an hour later (the session's tokens moved back an hour), the same token rotates
    await db.execute(
        "update refresh_tokens set issued_at = issued_at - interval '1 hour',"
        " used_at = used_at - interval '1 hour' where family_id = %s",
        (family,),
    )
    later = await rotate(api, pair)
    assert await me_status(api, later["access_token"]) == 200
    used, revoked = await token_state(db, pair["refresh_token"])
    assert used is not None and revoked is None


async def test_another_session_of_the_user_is_not_limited(
    limited_api: Client, db: AsyncConnection[Any], member: User
) -> None:
    api = limited_api
    exhausted = await rotated_to_the_limit(api, member.email)
    assert_problem(await refresh(api, exhausted["refresh_token"]), 429, "refresh-rate-limited")

    other = await rotated_to_the_limit(api, member.email)
    assert_problem(await refresh(api, other["refresh_token"]), 429, "refresh-rate-limited")
    assert await me_status(api, other["access_token"]) == 200
    assert await token_state(db, exhausted["refresh_token"]) == (None, None)


async def test_a_spent_token_past_the_limit_is_still_a_reuse(
    limited_api: Client, db: AsyncConnection[Any], member: User
) -> None:
    """The limit does not shield a leaked token: a spent one presented again revokes the session."""
    api = limited_api
    first = await login(api, member.email)
    pair = await rotate(api, first)
    for _ in range(LIMIT - 1):
        pair = await rotate(api, pair)
    assert_problem(await refresh(api, pair["refresh_token"]), 429, "refresh-rate-limited")
    assert_problem(await refresh(api, first["refresh_token"]), 401, "unauthorized")
    assert await me_status(api, pair["access_token"]) == 401
    assert_problem(await refresh(api, pair["refresh_token"]), 401, "unauthorized")


async def test_the_rotation_check_reads_the_limit_not_the_sessions_history(
    api: Client, db: AsyncConnection[Any], member: User, settings: Settings
) -> None:
    session = await make_long_session(api, db, member)
    per_hour = settings.refresh_rotations_per_hour
    costs = {
        f"{'generic' if generic else 'custom'} limit {limit}": await rows_read(
            db, queries.refresh_rotation_wait, generic=generic, family_id=session.family, per_hour=limit
        )
        for limit in (1, per_hour)
        for generic in (False, True)
    }
    bounds = {label: (int(label.rsplit(" ", 1)[1]) + 1) + SLACK for label in costs}
    assert {label: rows for label, rows in costs.items() if rows > bounds[label]} == {}, costs


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_the_limit_is_a_positive_count(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^invalid configuration: REFRESH_ROTATIONS_PER_HOUR: "):
        load_settings({"APP_ENV": "test", "REFRESH_ROTATIONS_PER_HOUR": value})
    assert (
        load_settings({"APP_ENV": "test", "REFRESH_ROTATIONS_PER_HOUR": "1"}).refresh_rotations_per_hour == 1
    )


async def test_the_refresh_route_documents_the_limit(api: Client) -> None:
    operation = (await api.get("/schema/openapi.json")).json()["paths"]["/api/auth/refresh"]["post"]
    assert "refresh-rate-limited" in operation["description"], operation["description"]
    assert "REFRESH_ROTATIONS_PER_HOUR" in operation["description"]
    limited = operation["responses"]["429"]
    assert "refresh-rate-limited" in limited["description"], limited
    assert "application/problem+json" in limited["content"], limited
