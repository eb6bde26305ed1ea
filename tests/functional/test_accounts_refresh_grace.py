"""REFRESH_REUSE_GRACE_S is measured from the rotation to the moment the reuse is checked.

A spent token presented again waits for its session's lock (``LockRefreshFamilies``) behind whatever
holds it; the grace used to be measured against the reusing transaction's start (``now()``), taken
before that wait, so a reuse that waited past the grace was still forgiven (409, the session kept),
and at ``REFRESH_REUSE_GRACE_S=0`` a duplicate whose transaction began before the rotation it
duplicates was forgiven too (a probe of two concurrent refreshes: 14 of 40 sessions survived).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.security import refresh_token_digest
from app.db import accounts as accounts_queries
from app.db.models import User
from tests.factories import (
    GENEROUS_AUTH,
    assert_problem,
    bearer,
    create_user,
    login,
    scalar,
    serve_in_loop,
    sessions_waiting_for_a_lock,
    wait_until,
)


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/api/auth/refresh", json={"refresh_token": refresh_token})


async def rotated(client: httpx.AsyncClient, user: User) -> tuple[dict[str, Any], dict[str, Any]]:
    """``user`` logs in and refreshes once: the spent session tokens and their successors."""
    spent = await login(client, user.email)
    rotation = await refresh(client, spent["refresh_token"])
    assert rotation.status_code == 200, rotation.text
    return spent, rotation.json()


async def test_a_reuse_that_waited_past_the_grace_for_the_sessions_lock_revokes_it(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, password_hash: str
) -> None:
    """The spent token comes back well within the grace (1 s) of its rotation, but waits for its
    session's lock (held here) until the rotation is older than the grace: checked then, it is a
    reuse like any other, 401, and the session is revoked (before: 409, forgiven, the session kept)."""
    user: User = await create_user(db, password_hash)
    async with serve_in_loop(settings, refresh_reuse_grace_s=1, **GENEROUS_AUTH) as served:
        client = served.client
        spent, successor = await rotated(client, user)
        reuse: asyncio.Task[httpx.Response] | None = None
        try:
            async with db.transaction():
                family = await accounts_queries.get_refresh_token_family(
                    db, token_hash=refresh_token_digest(spent["refresh_token"])
                )
                assert family is not None
                await accounts_queries.lock_refresh_families(db, family_ids=[family])
                reuse = asyncio.create_task(refresh(client, spent["refresh_token"]))

                async def reuse_waits() -> bool:
                    return bool(await sessions_waiting_for_a_lock(db))

                await wait_until(reuse_waits, 30, "the reuse waits for the session's lock")

                async def grace_over() -> bool:
                    return bool(
                        await scalar(
                            db,
                            "select clock_timestamp() > used_at + interval '1.5 seconds'"
                            " from refresh_tokens where token_hash = %s",
                            refresh_token_digest(spent["refresh_token"]),
                        )
                    )

                await wait_until(grace_over, 30, "the rotation is older than the grace")
            answer = await reuse
        finally:
            if reuse is not None and not reuse.done():
                reuse.cancel()
        assert_problem(answer, 401, "unauthorized")
        assert_problem(await refresh(client, successor["refresh_token"]), 401, "unauthorized")
        me = await client.get("/api/auth/me", headers=bearer(successor["access_token"]))
        assert me.status_code == 401, me.text


async def test_at_grace_zero_a_duplicate_refresh_revokes_the_session(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, password_hash: str
) -> None:
    """REFRESH_REUSE_GRACE_S=0: even a reuse right after the rotation (its successor unused) is a 401
    that revokes the session, never a 409."""
    user: User = await create_user(db, password_hash)
    async with serve_in_loop(settings, refresh_reuse_grace_s=0, **GENEROUS_AUTH) as served:
        client = served.client
        spent, successor = await rotated(client, user)
        assert_problem(await refresh(client, spent["refresh_token"]), 401, "unauthorized")
        assert_problem(await refresh(client, successor["refresh_token"]), 401, "unauthorized")


async def test_at_the_default_grace_a_duplicate_right_after_the_rotation_is_a_409_that_keeps_it(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, password_hash: str
) -> None:
    """The default grace (10 s) still forgives a client racing itself: 409 ``refresh-superseded``, the
    successor's tokens live on."""
    assert settings.refresh_reuse_grace_s == 10
    user: User = await create_user(db, password_hash)
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        client = served.client
        spent, successor = await rotated(client, user)
        assert_problem(await refresh(client, spent["refresh_token"]), 409, "refresh-superseded")
        me = await client.get("/api/auth/me", headers=bearer(successor["access_token"]))
        assert me.status_code == 200, me.text
        assert (await refresh(client, successor["refresh_token"])).status_code == 200
