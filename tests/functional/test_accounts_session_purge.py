"""The purge of ended sessions' refresh tokens reads each token once, however long a session was.

It checked "no token of this family is live" once per expired token, and each check read the whole
family through ``(family_id, id)``: a session of K tokens cost K² rows (REFRESH_ROTATIONS_PER_HOUR and
SESSION_MAX_AGE_S allow ~86,000 tokens in one session; one of 20,000 took 72 s). It now finds ended
families once each, in family order and in passes, and deletes their tokens in chunks by ctid. Rows
read are counted with EXPLAIN ANALYZE, never timed.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection, AsyncRawCursor

from app.config import Settings
from app.core.services import open_services
from app.db import accounts as queries
from app.domains.accounts.services import AccountService
from app.modules import MODULES
from tests.factories import create_user, plan_rows_read, plan_scans

LONG_SESSION = 3_000
LIVE = 10_000
"""Live sessions of the keyset test: a table large enough that reading it whole is a choice."""


async def add_session(
    db: AsyncConnection[Any], user_id: int, tokens: int, *, ended: bool, family: uuid.UUID | None = None
) -> uuid.UUID:
    """A session of ``tokens`` refresh tokens, all expired a day ago (``ended``), or its last one live."""
    family = family or uuid.uuid4()
    await db.execute(
        "insert into refresh_tokens (user_id, family_id, token_hash, expires_at)"
        " select %s, %s, sha256(gen_random_uuid()::text::bytea),"
        " case when not %s and g = %s then now() + interval '1 day' else now() - interval '1 day' end"
        " from generate_series(1, %s) g",
        (user_id, family, ended, tokens, tokens),
    )
    return family


async def tokens_by_family(db: AsyncConnection[Any], user_id: int) -> dict[uuid.UUID, int]:
    rows = await (
        await db.execute(
            "select family_id, count(*) from refresh_tokens where user_id = %s group by family_id", (user_id,)
        )
    ).fetchall()
    return {family: int(count) for family, count in rows}


async def test_ended_sessions_are_purged_in_passes_and_chunks_and_live_ones_keep_every_token(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """Seven ended sessions of 1 to 7 tokens and three live ones (their spent tokens expired, the
    last one not): with passes of 2 sessions and chunks of 3 tokens, every ended session's tokens go
    (28) and every live session keeps all of its own."""
    user = await create_user(db)
    for size in range(1, 8):
        await add_session(db, user.id, size, ended=True)
    live = {await add_session(db, user.id, size, ended=False): size for size in (1, 4, 9)}
    async with open_services(settings, MODULES) as services:
        accounts = services[AccountService]
        assert await accounts.purge_expired_sessions(families_per_pass=2, chunk_size=3) == 28
        assert await accounts.purge_expired_sessions(families_per_pass=2, chunk_size=3) == 0
    assert await tokens_by_family(db, user.id) == live


async def test_finding_ended_sessions_reads_each_token_once_however_long_a_session(
    db: AsyncConnection[Any],
) -> None:
    """One ended session of 3,000 tokens beside 100 live sessions, statistics taken before it: the
    query finding ended sessions reads about the table once. Was: 9,400 rows of 3,200 with these
    statistics, and with others the family read again for each of its tokens (K²: 20,000 tokens read
    400 million times over, 72 s)."""
    user = await create_user(db)
    for _ in range(100):
        await add_session(db, user.id, 2, ended=False)
    await db.execute("analyze refresh_tokens")
    async with db.transaction(force_rollback=True):
        await add_session(db, user.id, LONG_SESSION, ended=True)
        total = (await (await db.execute("select count(*) from refresh_tokens")).fetchone() or [0])[0]
        async with AsyncRawCursor(db) as cur:
            await cur.execute(
                "explain (analyze, format json) " + queries.ENDED_REFRESH_FAMILIES,
                (uuid.UUID(int=0), 60.0, 1_000),
            )
            row = await cur.fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    read = sum(plan_rows_read(scan) for scan in plan_scans(plan, "refresh_tokens"))
    assert total <= read <= 2 * total, f"read {read} rows of {total}: {plan}"


async def test_a_later_pass_reads_the_tokens_after_where_the_last_one_ended(
    db: AsyncConnection[Any],
) -> None:
    """10,000 live sessions and one ended session of 3,000 tokens, statistics taken before any of
    them: from the first family the query reads about the table, from a family in the middle only the
    tokens after it (the passes resume: the table is not read again per pass of 1,000 sessions)."""
    user = await create_user(db)
    await db.execute("analyze refresh_tokens")  # the suite's few tokens: none of the sessions below
    await db.execute(  # LIVE sessions of two tokens, the first spent and expired, the second live
        "insert into refresh_tokens (user_id, family_id, token_hash, expires_at)"
        " select %s, f.id, sha256(gen_random_uuid()::text::bytea),"
        " case when g = 1 then now() - interval '1 day' else now() + interval '1 day' end"
        " from (select gen_random_uuid() as id from generate_series(1, %s)) f, generate_series(1, 2) g",
        (user.id, LIVE),
    )
    async with db.transaction(force_rollback=True):
        await add_session(db, user.id, LONG_SESSION, ended=True)
        total = (await (await db.execute("select count(*) from refresh_tokens")).fetchone() or [0])[0]
        middle = (
            await (
                await db.execute(
                    "select family_id from refresh_tokens order by family_id offset %s limit 1", (total // 2,)
                )
            ).fetchone()
            or [None]
        )[0]
        after = (
            await (
                await db.execute("select count(*) from refresh_tokens where family_id > %s", (middle,))
            ).fetchone()
            or [0]
        )[0]
        read_from_start = await rows_read_finding_ended(db, uuid.UUID(int=0))
        read_from_middle = await rows_read_finding_ended(db, middle)
    assert total <= read_from_start <= 2 * total, f"read {read_from_start} rows of {total}"
    # a later pass reads the tokens after where the last one ended, not the table again
    assert after <= read_from_middle <= 2 * after + 10, f"read {read_from_middle} rows for {after}"


async def rows_read_finding_ended(db: AsyncConnection[Any], after_family: uuid.UUID) -> int:
    async with AsyncRawCursor(db) as cur:
        await cur.execute(
            "explain (analyze, format json) " + queries.ENDED_REFRESH_FAMILIES, (after_family, 60.0, 1_000)
        )
        row = await cur.fetchone()
    assert row is not None
    return sum(plan_rows_read(scan) for scan in plan_scans(row[0][0]["Plan"], "refresh_tokens"))
