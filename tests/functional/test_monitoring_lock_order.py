"""Monitoring's lock order under concurrent writes, merges, the users purge and the end of timed
ignores: whoever locks groups locks roots, several in id order, a write one, and a lock on a group
that turned out not to be (or no longer be) a root is given back before the next is taken. Each test
forces one interleaving that deadlocked (PostgreSQL aborted one side with ``DeadlockDetected``), found
by a review that held rows from other connections; afterwards every group's ``users`` still counts its
rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.monitoring.services import MonitoringService
from tests.factories import wait_until
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

LOCK_ROW = "select id from monitoring_groups where id = %s for update"


async def groups_of(
    service: MonitoringService, module: str, count: int
) -> tuple[list[BaseException], list[int]]:
    """``count`` new groups, ids ascending, each with users 1 to 3 last seen 400 days ago (past the
    retention), and the exceptions whose events go to them."""
    bugs: list[BaseException] = [raise_bug(0, module=f"{module}.g{n}") for n in range(count)]
    ids = []
    for bug in bugs:
        results = await service.write_now([error_event(bug, user_id=user) for user in (1, 2, 3)])
        ids.append(results[0].group_id)
    assert ids == sorted(ids)
    return bugs, ids


async def age_users(db: AsyncConnection[Any], groups: Sequence[int]) -> None:
    await db.execute(
        "update monitoring_group_users set first_seen_at = now() - interval '400 days',"
        " last_seen_at = now() - interval '400 days' where group_id = any(%s)",
        (list(groups),),
    )


async def lock_waiters(db: AsyncConnection[Any], *, not_behind: Sequence[int] = ()) -> int:
    """Backends waiting for a lock (that none of the backends ``not_behind`` holds)."""
    row = await (
        await db.execute(
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
            " and datname = current_database() and not pg_blocking_pids(pid) && %s::int[]",
            (list(not_behind),),
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


async def until_waiting(db: AsyncConnection[Any], count: int, *, not_behind: Sequence[int] = ()) -> None:
    async def waiting() -> bool:
        return await lock_waiters(db, not_behind=not_behind) >= count

    await wait_until(waiting, 30, f"{count} backends wait for a lock")


async def users_counted_right(db: AsyncConnection[Any], groups: Sequence[int]) -> list[tuple[int, int, int]]:
    """The groups whose ``users`` is not the count of their rows: (id, users, rows)."""
    rows = await (
        await db.execute(
            "select g.id, g.users, (select count(*) from monitoring_group_users u where u.group_id = g.id)"
            " from monitoring_groups g where g.id = any(%s) order by g.id",
            (list(groups),),
        )
    ).fetchall()
    return [row for row in rows if row[1] != row[2]]


async def test_a_write_gives_back_a_stale_root_before_locking_the_new_one(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_url: str
) -> None:
    """A write of s waits for s's lock while s is merged into t; it then holds s, no longer a root,
    and needs t. The purge (roots t, s in id order) holds t and waits for s: was a deadlock."""
    async with open_monitoring(settings) as service:
        bugs, (t, s) = await groups_of(service, "app.lock_a", 2)
        await age_users(db, [t, s])
        async with await AsyncConnection.connect(database_url) as merger:
            # the merge of s into t, up to its commit (MonitoringService.merge's statements)
            await merger.execute(
                "select id from monitoring_groups where id = any(%s) order by id for update", ([t, s],)
            )
            await merger.execute("update monitoring_groups set parent_id = %s where id = %s", (t, s))
            await merger.execute("update monitoring_groups set root_id = %s where root_id = %s", (t, s))
            purge = asyncio.ensure_future(service.purge(time.time()))
            await until_waiting(db, 1)
            write = asyncio.ensure_future(service.write_now([error_event(bugs[1], user_id=9)]))
            await until_waiting(db, 2)
            await merger.commit()
            purged, written = await asyncio.gather(purge, write)
    assert purged >= 6
    assert written[0].root_id == t
    assert await users_counted_right(db, [t, s]) == []


async def test_the_purge_gives_back_a_group_a_merge_moved_before_locking_the_next(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_url: str
) -> None:
    """The purge's roots a < x < t: it waits for a while x is merged into t, then locked x (no
    longer a root) and waited for t, whose writer (of x) waited for x: was a deadlock."""
    async with open_monitoring(settings) as service:
        bugs, (a, x, t) = await groups_of(service, "app.lock_b", 3)
        await age_users(db, [a, x, t])
        async with (
            await AsyncConnection.connect(database_url) as holder,
            await AsyncConnection.connect(database_url) as user_holder,
        ):
            await holder.execute(LOCK_ROW, (a,))
            purge = asyncio.ensure_future(service.purge(time.time()))
            await until_waiting(db, 1)
            await service.merge(t, [x], None)
            # x's writer will hold t and then wait for one of x's user rows, held here
            await user_holder.execute(
                "select 1 from monitoring_group_users where group_id = %s and user_id = 1 for update", (x,)
            )
            write = asyncio.ensure_future(service.write_now([error_event(bugs[1], user_id=1)]))
            await until_waiting(db, 2)
            holder_pids = [holder.info.backend_pid, user_holder.info.backend_pid]
            await holder.rollback()
            await until_waiting(db, 1, not_behind=holder_pids)  # the purge, now behind x's writer (t)
            await user_holder.rollback()
            purged, written = await asyncio.gather(purge, write)
    assert purged >= 3
    assert written[0].root_id == t
    assert await users_counted_right(db, [a, x, t]) == []


async def test_a_write_adding_a_hash_does_not_deadlock_with_a_merge_it_refuses(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_url: str
) -> None:
    """g is merged into r; a second, identical merge (a double submit) waits for r, then locks g
    to refuse it (409). A write of g adding a missing hash holds the hash's foreign-key lock on g
    and waits for r: with FOR UPDATE on g, the merge waited for it, a deadlock."""
    async with open_monitoring(settings) as service:
        bugs, (r, g) = await groups_of(service, "app.lock_c", 2)
        await service.merge(r, [g], None)
        hashes = await (
            await db.execute(
                "select hash from monitoring_fingerprints where group_id = %s order by created_at", (g,)
            )
        ).fetchall()
        await db.execute("delete from monitoring_fingerprints where hash = %s", (hashes[0][0],))
        async with await AsyncConnection.connect(database_url) as holder:
            await holder.execute(LOCK_ROW, (r,))
            merge = asyncio.ensure_future(service.merge(r, [g], None))
            await until_waiting(db, 1)
            write = asyncio.ensure_future(service.write_now([error_event(bugs[1], user_id=2)]))
            await until_waiting(db, 2)
            await holder.rollback()
            merged, written = await asyncio.gather(merge, write, return_exceptions=True)
    assert type(merged).__name__ == "ConflictError", merged
    assert not isinstance(written, BaseException), written
    assert written[0].root_id == r


@pytest.mark.parametrize("other", ["purge", "merge"])
async def test_ending_timed_ignores_locks_one_group_at_a_time(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_url: str, other: str
) -> None:
    """a < b both ignored until a time now past, b's ending first. One statement ending both locked
    them in its index's order (b, then a) while the purge or a merge locked a, then b: a deadlock."""
    async with open_monitoring(settings) as service:
        _, (a, b) = await groups_of(service, "app.lock_e", 2)
        await age_users(db, [a, b])
        for group, ended in ((b, "2 minutes"), (a, "1 minute")):
            await db.execute(
                "update monitoring_groups set status = 'ignored', ignore_mode = 'until_time',"
                f" ignore_until = now() - interval '{ended}' where id = %s",
                (group,),
            )
        # a long-lived installation: many groups ignored for good, so the index on timed ignores is used
        await db.execute(
            "insert into monitoring_groups (id, root_id, kind, title, status, ignore_mode,"
            " status_changed_at, first_seen_at, last_seen_at)"
            " select 900000 + g, 900000 + g, 'error', 'g', 'ignored', 'forever', now(), now(), now()"
            " from generate_series(1, 5000) g"
        )
        await db.execute("analyze monitoring_groups")
        async with await AsyncConnection.connect(database_url) as holder:
            await holder.execute(LOCK_ROW, (a,))
            first = asyncio.ensure_future(
                service.purge(time.time()) if other == "purge" else service.merge(a, [b], None)
            )
            await until_waiting(db, 1)
            expiry = asyncio.ensure_future(service.triage.expire_timed_ignores(datetime.now(UTC)))
            await until_waiting(db, 2)
            await holder.rollback()
            await asyncio.gather(first, expiry)
        status = await (
            await db.execute(
                "select id, status from monitoring_groups where id = any(%s) order by id", ([a, b],)
            )
        ).fetchall()
    if other == "purge":
        assert status == [(a, "unresolved"), (b, "unresolved")]
        assert await users_counted_right(db, [a, b]) == []
    else:  # b merged into a first: only the root a is ended
        assert status[0] == (a, "unresolved")
