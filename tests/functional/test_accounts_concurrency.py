"""Requests that change one user's sessions at once: one lock order, so never a deadlock (a 503).

Everything that touches a session (a refresh-token family) takes the user's row, then the family's
lock, then its token rows (``AccountService`` in ``app/domains/accounts/services.py``). Each test forces
the interleaving that deadlocked before: a transaction of the ``db`` fixture holds a lock; the
requests start one after the other, each once the ones before wait on a lock; the hold is released
once they all wait, and they meet. The app is served in the test's loop, so the requests really run
at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.security import refresh_token_digest
from app.db.models import User, UserRole
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    Served,
    assert_problem,
    bearer,
    create_user,
    mint_headers,
    serve_in_loop,
    sessions_waiting_for_a_lock,
    wait_until,
)

Request = Callable[[], Coroutine[Any, Any, httpx.Response]]
WAIT_S = 30.0


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve_in_loop(settings, rate_limit_default_per_minute=1_000_000, **GENEROUS_AUTH) as s:
        yield s


@pytest.fixture
async def client(served: Served, db: AsyncConnection[Any], valkey: Valkey) -> httpx.AsyncClient:
    return served.client


async def answers_meeting(
    db: AsyncConnection[Any], hold: str, params: tuple[Any, ...], requests: list[Request]
) -> list[httpx.Response]:
    """The requests' answers, in order, when ``hold`` (SQL that locks) holds in a transaction of ``db``
    while they start one after the other, each once the ones before wait; released once all wait."""
    started: list[asyncio.Task[httpx.Response]] = []
    try:
        async with db.transaction():
            await db.execute(hold, params)
            for request in requests:
                started.append(asyncio.create_task(request()))
                count = len(started)

                async def all_wait(count: int = count) -> bool:
                    return await sessions_waiting_for_a_lock(db) >= count

                await wait_until(all_wait, WAIT_S, f"{count} requests wait")
        return list(await asyncio.gather(*started))
    finally:
        for task in started:
            task.cancel()


async def log_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


async def rotated(client: httpx.AsyncClient, pair: dict[str, Any]) -> dict[str, Any]:
    response = await refresh(client, pair["refresh_token"])()
    assert response.status_code == 200, response.text
    new_pair: dict[str, Any] = response.json()
    return new_pair


async def chain(client: httpx.AsyncClient, email: str, length: int) -> list[dict[str, Any]]:
    """A session's pairs: its login's, then each rotation's."""
    pairs = [await log_in(client, email)]
    for _ in range(length - 1):
        pairs.append(await rotated(client, pairs[-1]))
    return pairs


def refresh(client: httpx.AsyncClient, refresh_token: str) -> Request:
    return lambda: client.post("/api/auth/refresh", json={"refresh_token": refresh_token})


def log_out(client: httpx.AsyncClient, access_token: str) -> Request:
    return lambda: client.post("/api/auth/logout", headers=bearer(access_token))


def change_password(client: httpx.AsyncClient, access_token: str, new_password: str) -> Request:
    return lambda: client.patch(
        "/api/auth/me",
        json={"current_password": PASSWORD, "new_password": new_password},
        headers=bearer(access_token),
    )


def statuses(answers: list[httpx.Response]) -> list[int]:
    return [answer.status_code for answer in answers]


async def me_status(client: httpx.AsyncClient, access_token: str) -> int:
    return (await client.get("/api/auth/me", headers=bearer(access_token))).status_code


HOLD_TOKEN = "select id from refresh_tokens where token_hash = %s for update"
HOLD_USER = "select id from users where id = %s for share"


# -- spent tokens, rotations and logouts of one session --------------------------------------------


async def test_two_spent_tokens_of_a_session_presented_at_once_both_revoke_it(
    client: httpx.AsyncClient, db: AsyncConnection[Any], member: User
) -> None:
    """Two stale tabs (or a thief and the owner): one reuse waits for the other's family, and both
    are 401. Before, the first locked its token and then the family's others, the second the other
    way round: a deadlock, one of them 503."""
    s0, s1, _, s3 = await chain(client, member.email, 4)
    answers = await answers_meeting(
        db,
        HOLD_TOKEN,
        (refresh_token_digest(s1["refresh_token"]),),
        [refresh(client, s1["refresh_token"]), refresh(client, s0["refresh_token"])],
    )
    assert statuses(answers) == [401, 401], [answer.text for answer in answers]
    assert_problem(await refresh(client, s3["refresh_token"])(), 401, "unauthorized")
    assert await me_status(client, s3["access_token"]) == 401


async def test_a_reuse_racing_the_owners_logout_is_401_and_the_logout_204(
    client: httpx.AsyncClient, db: AsyncConnection[Any], member: User
) -> None:
    _, s1, _, s3 = await chain(client, member.email, 4)
    answers = await answers_meeting(
        db,
        HOLD_TOKEN,
        (refresh_token_digest(s1["refresh_token"]),),
        [refresh(client, s1["refresh_token"]), log_out(client, s3["access_token"])],
    )
    assert statuses(answers) == [401, 204], [answer.text for answer in answers]
    assert await me_status(client, s3["access_token"]) == 401


async def test_two_tabs_refreshing_with_one_token_keep_the_session(
    client: httpx.AsyncClient, db: AsyncConnection[Any], member: User
) -> None:
    """The second rotation of one token within REFRESH_REUSE_GRACE_S is a 409 that revokes nothing:
    the first one's tokens live on (before, the second revoked the session the first had just
    extended, so its 200 handed out dead tokens)."""
    (pair,) = await chain(client, member.email, 1)
    first, second = await answers_meeting(
        db,
        HOLD_TOKEN,
        (refresh_token_digest(pair["refresh_token"]),),
        [refresh(client, pair["refresh_token"]), refresh(client, pair["refresh_token"])],
    )
    assert first.status_code == 200, first.text
    assert_problem(second, 409, "refresh-superseded")
    assert await me_status(client, first.json()["access_token"]) == 200
    assert await me_status(client, pair["access_token"]) == 200
    assert (await refresh(client, first.json()["refresh_token"])()).status_code == 200


# -- revoking every session of the user, at once with the rest --------------------------------------


async def test_two_password_changes_at_once_one_is_refused_and_the_other_kept(
    client: httpx.AsyncClient, db: AsyncConnection[Any], member: User
) -> None:
    """Two tabs change the password, both with the right current one, and meet at the user's row
    (held here): the second finds the password it verified replaced, 409, and changes nothing (before,
    both were 200, both sessions revoked, and the last writer's password won)."""
    tab_a, tab_b = await log_in(client, member.email), await log_in(client, member.email)
    new_passwords = ["passphrase of tab A", "passphrase of tab B"]
    answers = await answers_meeting(
        db,
        HOLD_USER,
        (member.id,),
        [
            change_password(client, tab["access_token"], new)
            for tab, new in zip((tab_a, tab_b), new_passwords, strict=True)
        ],
    )
    assert sorted(statuses(answers)) == [200, 409], [answer.text for answer in answers]
    winner = statuses(answers).index(200)
    assert_problem(answers[1 - winner], 409, "password-changed")
    tabs = (tab_a, tab_b)
    assert await me_status(client, tabs[winner]["access_token"]) == 200
    assert await me_status(client, tabs[1 - winner]["access_token"]) == 401
    await log_in(client, member.email, new_passwords[winner])
    refused = await client.post(
        "/api/auth/login", json={"email": member.email, "password": new_passwords[1 - winner]}
    )
    assert_problem(refused, 401, "unauthorized")


async def test_a_password_change_by_a_session_logged_out_meanwhile_is_refused(
    client: httpx.AsyncClient, db: AsyncConnection[Any], member: User
) -> None:
    """The change waits for the user's row (held here) while its own session logs out: once it has
    the row, it finds its session revoked and changes nothing (before: 200 from a dead session)."""
    (session,) = await chain(client, member.email, 1)
    change: asyncio.Task[httpx.Response] | None = None
    try:
        async with db.transaction():
            await db.execute(HOLD_USER, (member.id,))
            change = asyncio.create_task(
                change_password(client, session["access_token"], "a fresh passphrase")()
            )

            async def change_waits() -> bool:
                return await sessions_waiting_for_a_lock(db) >= 1

            await wait_until(change_waits, WAIT_S, "the password change waits for the user's row")
            assert (await log_out(client, session["access_token"])()).status_code == 204
        assert_problem(await change, 401, "unauthorized")
    finally:
        if change is not None:
            change.cancel()
    assert (
        await client.post("/api/auth/login", json={"email": member.email, "password": PASSWORD})
    ).status_code == 200


def pile_up(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user: User, s: dict[str, Any]
) -> list[tuple[str, Request, set[int]]]:
    """Every way one user's sessions change, named, with the answers each may give whatever the
    order they commit in (a session revoked first is a 401; a deactivated user's password stays)."""
    return [
        ("reuse of a leaked token", refresh(client, s["a1"]["refresh_token"]), {401}),
        ("rotation of the leaked session", refresh(client, s["a3"]["refresh_token"]), {200, 401}),
        ("logout of the leaked session", log_out(client, s["a3"]["access_token"]), {204, 401}),
        ("rotation", refresh(client, s["b0"]["refresh_token"]), {200, 401}),
        ("logout", log_out(client, s["b0"]["access_token"]), {204, 401}),
        ("second tab's rotation", refresh(client, s["d0"]["refresh_token"]), {409, 401}),
        ("first tab's rotation", refresh(client, s["d1"]["refresh_token"]), {200, 401}),
        (
            "password change",
            change_password(client, s["c0"]["access_token"], "a changed passphrase"),
            {200, 401},
        ),
        (
            "deactivation",
            lambda: client.patch(
                f"/api/admin/users/{user.id}", json={"is_active": False}, headers=admin_headers
            ),
            {200},
        ),
    ]


@pytest.mark.parametrize("order", range(4))
async def test_every_revocation_at_once_with_rotations_reuses_and_logouts_is_never_a_5xx(
    served: Served, client: httpx.AsyncClient, db: AsyncConnection[Any], password_hash: str, order: int
) -> None:
    """A reuse, rotations, logouts, a password change and a deactivation of one user's sessions all
    wait for the user's refresh tokens (held here), in a different order each time, then meet: each
    answers one of its possible answers, and the user ends with no live session."""
    user = await create_user(db, password_hash)
    admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    _, a1, _, a3 = await chain(client, user.email, 4)
    d0, d1 = await chain(client, user.email, 2)
    sessions = {
        "a1": a1,
        "a3": a3,
        "b0": await log_in(client, user.email),
        "c0": await log_in(client, user.email),
    }
    sessions |= {"d0": d0, "d1": d1}
    ops = pile_up(client, mint_headers(served.app, admin.id, UserRole.ADMIN), user, sessions)
    random.Random(order).shuffle(ops)
    answers = await answers_meeting(
        db,
        "select id from refresh_tokens where user_id = %s for update",
        (user.id,),
        [request for _, request, _ in ops],
    )
    unexpected = [
        (name, answer.status_code, answer.text)
        for (name, _, allowed), answer in zip(ops, answers, strict=True)
        if answer.status_code not in allowed
    ]
    assert not unexpected, unexpected
    live = await (
        await db.execute(
            "select count(*) from refresh_tokens where user_id = %s and revoked_at is null", (user.id,)
        )
    ).fetchone()
    assert live == (0,)
    for pair in sessions.values():
        assert await me_status(client, pair["access_token"]) == 401


async def test_unforced_mixes_of_one_users_session_changes_are_never_a_5xx(
    served: Served, client: httpx.AsyncClient, db: AsyncConnection[Any], password_hash: str
) -> None:
    """The reviewer's mix, without a forced order: whatever interleaving happens, no 5xx."""
    admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    admin_headers = mint_headers(served.app, admin.id, UserRole.ADMIN)
    rng = random.Random(7)
    seen: dict[int, int] = {}
    for _ in range(8):
        user = await create_user(db, password_hash)
        _, a1, _, a3 = await chain(client, user.email, 4)
        d0, d1 = await chain(client, user.email, 2)
        sessions = {"a1": a1, "a3": a3, "b0": await log_in(client, user.email)}
        sessions |= {"c0": await log_in(client, user.email), "d0": d0, "d1": d1}
        ops = pile_up(client, admin_headers, user, sessions)
        rng.shuffle(ops)
        for answer in await asyncio.gather(*(request() for _, request, _ in ops)):
            seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
    assert all(status < 500 for status in seen), seen
