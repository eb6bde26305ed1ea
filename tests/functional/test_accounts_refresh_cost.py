"""What a rotation, a sign-in and a logout cost the database when a session has a long history,
measured by their plans, not by a clock.

Every rotation adds a refresh token to its session (family) and a live session keeps all its spent
ones until it is over (reuse detection: ``PurgeExpiredRefreshTokens``). A session refreshed every few
seconds for SESSION_MAX_AGE_S reaches hundreds of thousands of rows, and each rotation read all of
them: ``GetFamilyState`` aggregated the family (when it began, whether any token was revoked),
``IsRefreshTokenRecentlySuperseded`` sorted it to find a token's successor (or walked the primary key
past every other session's tokens issued meanwhile), each sign-in's ``ListSessionsBeyond`` (and
revoking a user's sessions, ``ListLiveUserFamilies``) read every spent token of the user through the
index of tokens not revoked, and a logout's ``LockSessionOwner`` scanned the table up to the session's
first token (the planner expects a session that fills the table to have a row anywhere).

Here a session holds ``SPENT`` spent tokens, inserted in bulk among other sessions' tokens, and each
statement of those paths is run under EXPLAIN ANALYZE with the plan PostgreSQL chooses for the values
(custom) and the one a prepared statement may switch to (generic): the rows each takes from
``refresh_tokens`` and its indexes, kept or filtered out, over all loops, stay under ``BOUND``.
Revoking a session (``RevokeRefreshFamilies``, at a logout, a reuse or a sign-in past the cap) marks
every token of it, once per session, and is not measured. Then the session with that history still
rotates, tells two tabs apart from a leak, revokes itself on a reuse, and counts against
SESSIONS_PER_USER_MAX.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection, sql

from app.config import Settings
from app.core.security import refresh_token_digest
from app.db import accounts as queries
from app.db.models import User
from tests.factories import Client, assert_problem, create_user, generous_client, login
from tests.functional.test_accounts_sessions import family_of, me_status, refresh
from tests.functional.test_tasks_search_cost import plan_nodes

SPENT = 50_000
"""Spent tokens of the long session: a few days of a client refreshing every few seconds."""
NEIGHBOURS = 10_000
"""Tokens of another user's sessions issued before the long session began, and as many between its
first token and its second."""
BOUND = 20
"""Rows of refresh_tokens and its indexes one statement may read, whatever the session's history (an
index entry counts beside its row: a bitmap scan reads each twice; the user has three sessions)."""
CAP = 2
"""SESSIONS_PER_USER_MAX of the app the behaviour is checked with."""
LIVE_TOKEN = "the-long-sessions-live-refresh-token"
SPENT_TOKEN = "a-spent-token-of-the-long-session-"
TABLE = "refresh_tokens"


def spent_token(n: int) -> str:
    """The secret of the long session's ``n``-th spent token (1 … SPENT), as a client would hold it."""
    return f"{SPENT_TOKEN}{n}"


class LongSession(msgspec.Struct):
    family: uuid.UUID
    first_id: int
    """The login's token (spent), the family's first."""
    live_id: int
    started_at: datetime


async def add_neighbours(db: AsyncConnection[Any], neighbour: User, first: int, count: int) -> None:
    """``count`` tokens of ``neighbour``'s sessions (ten per session, the last one live), numbered from
    ``first``: the other sessions a busy table holds."""
    await db.execute(
        "insert into refresh_tokens (user_id, family_id, token_hash, issued_at, expires_at, used_at)"
        " select %s, md5('neighbour-' || i / 10)::uuid, sha256(convert_to('neighbour-' || i, 'UTF8')),"
        " now() - interval '1 day', now() + interval '1 day',"
        " case when i %% 10 <> 9 then now() - interval '1 day' end"
        " from generate_series(%s::integer, %s::integer) as i order by i",
        (neighbour.id, first, first + count - 1),
    )


async def make_long_session(api: Client, db: AsyncConnection[Any], user: User) -> LongSession:
    """A session of ``user`` as it is after SPENT rotations: its login's token issued two days ago
    and spent, SPENT spent tokens after it, one a second, then ``LIVE_TOKEN`` (issued a minute ago,
    not spent), in issue order (the chain a rotation builds). Another user's sessions received
    NEIGHBOURS tokens before the login and as many between the session's first token and its second:
    the session's tokens are neither the table's first nor next to each other."""
    neighbour = await create_user(db)
    await add_neighbours(db, neighbour, 0, NEIGHBOURS)
    pair = await login(api, user.email)
    family = await family_of(db, pair["refresh_token"])
    first = await (
        await db.execute(
            "update refresh_tokens set issued_at = now() - interval '2 days',"
            " used_at = now() - interval '2 days' + interval '1 second'"
            " where token_hash = %s returning id, issued_at",
            (refresh_token_digest(pair["refresh_token"]),),
        )
    ).fetchone()
    assert first is not None
    await add_neighbours(db, neighbour, NEIGHBOURS, NEIGHBOURS)
    await db.execute(
        "insert into refresh_tokens (user_id, family_id, token_hash, issued_at, expires_at, used_at)"
        " select t.user_id, t.family_id, sha256(convert_to(%s || i, 'UTF8')),"
        " t.issued_at + i * interval '1 second', t.expires_at, t.issued_at + (i + 1) * interval '1 second'"
        " from refresh_tokens t, generate_series(1, %s) as i where t.id = %s order by i",
        (SPENT_TOKEN, SPENT, first[0]),
    )
    live = await (
        await db.execute(
            "insert into refresh_tokens (user_id, family_id, token_hash, issued_at, expires_at)"
            " select user_id, family_id, %s, now() - interval '1 minute', expires_at"
            " from refresh_tokens where id = %s returning id",
            (refresh_token_digest(LIVE_TOKEN), first[0]),
        )
    ).fetchone()
    assert live is not None
    await db.execute("analyze refresh_tokens")
    return LongSession(family=family, first_id=first[0], live_id=live[0], started_at=first[1])


def read_from_table(plan: dict[str, Any]) -> int:
    """Rows a plan took from refresh_tokens and its indexes, kept or filtered out, over all loops."""
    read = 0
    for node in plan_nodes(plan):
        if node.get("Relation Name") == TABLE or str(node.get("Index Name", "")).startswith(TABLE):
            per_loop = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            per_loop += node.get("Rows Removed by Index Recheck", 0)
            read += round(per_loop * node["Actual Loops"])
    return read


def statement_of(query: Callable[..., Any]) -> str:
    """The SQL a generated query function runs (``get_family_state``: ``GET_FAMILY_STATE``)."""
    statement: str = getattr(queries, query.__name__.upper())
    return statement


async def rows_read(
    db: AsyncConnection[Any], query: Callable[..., Any], *, generic: bool, **params: Any
) -> int:
    """Rows of refresh_tokens ``query``'s statement reads, run as a prepared statement with ``params``
    (the generated function's keyword parameters, its ``$n`` in order) under its custom plan or its
    generic one (a prepared statement's plan after a few executions). Whatever it writes or locks is
    rolled back."""
    names = [name for name in inspect.signature(query).parameters if name != "conn"]
    arguments = sql.SQL(", ").join(sql.Literal(params[name]) for name in names)
    mode = "force_generic_plan" if generic else "force_custom_plan"
    async with db.transaction(force_rollback=True):
        await db.execute("prepare measured as " + statement_of(query), prepare=False)
        await db.execute("set local plan_cache_mode = " + mode, prepare=False)
        explained = sql.SQL("explain (analyze, format json) execute measured ({})").format(arguments)
        row = await (await db.execute(explained, prepare=False)).fetchone()
        await db.execute("deallocate measured", prepare=False)
    assert row is not None
    return read_from_table(row[0][0]["Plan"])


async def test_no_statement_of_a_rotation_sign_in_or_logout_reads_the_sessions_history(
    api: Client, db: AsyncConnection[Any], member: User
) -> None:
    for _ in range(2):  # the user's other sessions
        await login(api, member.email)
    session = await make_long_session(api, db, member)
    live, family = refresh_token_digest(LIVE_TOKEN), session.family
    measured: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        # a rotation (AccountService.refresh), the check of a spent token presented again included
        ("owner", queries.get_refresh_token_owner_for_share, {"token_hash": live}),
        ("family", queries.get_refresh_token_family, {"token_hash": live}),
        ("token", queries.get_refresh_token_for_update, {"token_hash": live}),
        ("family state", queries.get_family_state, {"family_id": family}),
        (
            "successor of the oldest",
            queries.is_refresh_token_recently_superseded,
            {"grace_s": 10.0, "family_id": family, "id": session.first_id},
        ),
        (
            "successor of the newest",
            queries.is_refresh_token_recently_superseded,
            {"grace_s": 10.0, "family_id": family, "id": session.live_id - 1},
        ),
        ("spend", queries.mark_refresh_token_used, {"id": session.live_id}),
        (
            "issue",
            queries.insert_refresh_token,
            {
                "user_id": member.id,
                "family_id": family,
                "token_hash": b"1" * 32,
                "expires_at": session.started_at,
            },
        ),
        # a sign-in ending the sessions past the cap (Sessions.make_room), revoking all of them (revoke_all)
        ("sessions beyond", queries.list_sessions_beyond, {"user_id": member.id, "kept": 1}),
        ("live sessions", queries.list_live_user_families, {"user_id": member.id}),
        # a logout (Sessions.end_session)
        ("session owner", queries.lock_session_owner, {"family_id": family}),
    ]
    costs = {
        f"{label} ({'generic' if generic else 'custom'})": await rows_read(
            db, query, generic=generic, **params
        )
        for label, query, params in measured
        for generic in (False, True)
    }
    assert {label: rows for label, rows in costs.items() if rows > BOUND} == {}


@pytest.fixture(scope="module")
async def capped(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, sessions_per_user_max=CAP):
        yield client


@pytest.fixture
async def capped_api(capped: Client, db: AsyncConnection[Any]) -> Client:
    capped.headers.clear()
    capped.cookies.clear()
    return capped


async def test_a_session_with_a_long_history_still_rotates_detects_reuse_and_counts_against_the_cap(
    capped_api: Client, db: AsyncConnection[Any], member: User, settings: Settings
) -> None:
    api = capped_api
    other = await login(api, member.email)
    await db.execute(  # the other session was last used an hour ago
        "update refresh_tokens set issued_at = issued_at - interval '1 hour' where token_hash = %s",
        (refresh_token_digest(other["refresh_token"]),),
    )
    session = await make_long_session(api, db, member)

    rotated = await refresh(api, LIVE_TOKEN)
    assert rotated.status_code == 200, rotated.text
    pair = rotated.json()
    # the session's age counts from its login, two days ago, not from its latest token
    left = min(settings.refresh_token_ttl_s, settings.session_max_age_s - 2 * 24 * 3600)
    assert left - 60 <= pair["refresh_expires_in"] <= left

    # two tabs: the token just rotated, presented again within the grace, revokes nothing
    assert_problem(await refresh(api, LIVE_TOKEN), 409, "refresh-superseded")
    assert await me_status(api, pair["access_token"]) == 200

    # a sign-in past the cap ends the least recently used session, not the long one (rotated last)
    newest = await login(api, member.email)
    assert await me_status(api, other["access_token"]) == 401
    assert_problem(await refresh(api, other["refresh_token"]), 401, "unauthorized")
    assert await me_status(api, pair["access_token"]) == 200

    # an old spent token presented again is a leak: the long session is revoked, the newest is not
    assert_problem(await refresh(api, spent_token(17)), 401, "unauthorized")
    assert_problem(await refresh(api, pair["refresh_token"]), 401, "unauthorized")
    assert await me_status(api, pair["access_token"]) == 401
    assert await me_status(api, newest["access_token"]) == 200
    unrevoked = await (
        await db.execute(
            "select count(*) from refresh_tokens where family_id = %s and revoked_at is null",
            (session.family,),
        )
    ).fetchone()
    assert unrevoked == (0,)
