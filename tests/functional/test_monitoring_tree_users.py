"""A merged tree's users, as the list and the detail show them, are the distinct users of its members,
kept on its root (``tree_users``) through writes, merges, unmerges and the users' retention: the list
counted them again for every merged tree of its page at every request (sqlperf: 60 to 230 ms a page
for two members of 150,000 users each)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.db import monitoring
from app.domains.monitoring.services import MonitoringService
from tests.factories import analyzed_plan, migration_up, plan_scans
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

NO_ALERTS = {"monitoring_users_threshold": 1_000_000, "monitoring_frequency_events": 1_000_000}


def bug() -> BaseException:
    return raise_bug(0, module=f"app.domains.shop.tree{uuid.uuid4().hex[:6]}")


async def shown(service: MonitoringService, root_id: int) -> tuple[int, int]:
    """The users the list shows for the tree of ``root_id``, and the detail."""
    rows = await service.list_groups(status=None, kind=None, release=None, before_id=2**62, limit=100)
    [listed] = [row.users for row in rows if row.id == root_id]
    return listed, (await service.detail(root_id)).users


async def seen(db: AsyncConnection[Any], root_id: int) -> int:
    """What the rows say: the distinct users of the tree's members."""
    row = await (
        await db.execute(
            "select count(distinct u.user_id) from monitoring_group_users u"
            " join monitoring_groups m on m.id = u.group_id where m.root_id = %s",
            (root_id,),
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


async def write(service: MonitoringService, exc: BaseException, users: list[int]) -> int:
    [result] = await service.write_now([error_event(exc, user_id=user) for user in users])
    return result.group_id


async def test_a_merged_trees_users_stay_exact_through_writes_merges_unmerges_and_the_retention(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    first, second = bug(), bug()
    async with open_monitoring(settings, **NO_ALERTS) as service:
        a = await write(service, first, [1, 2])
        b = await write(service, second, [2, 3])
        await service.merge(a, [b], None)
        assert await shown(service, a) == (3, 3) == (await seen(db, a),) * 2
        await write(service, first, [3, 4])  # 3: new to the group, not to the tree
        await write(service, second, [5])
        assert await shown(service, a) == (5, 5)

        await service.unmerge(b, None)
        assert (await shown(service, a), await shown(service, b)) == ((4, 4), (3, 3))  # {1,2,3,4}, {2,3,5}

        await service.merge(a, [b], None)
        await db.execute(
            "update monitoring_group_users set last_seen_at = now() - interval '90 days'"
            " where group_id = %s and user_id = 1",
            (a,),
        )
        await service.purge(time.time())
        assert await shown(service, a) == (4, 4) == (await seen(db, a),) * 2  # {2,3,4,5}


async def test_the_list_reads_no_users_of_a_merged_tree(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    first, second = bug(), bug()
    async with open_monitoring(settings, **NO_ALERTS) as service:
        a = await write(service, first, list(range(1, 200)))
        b = await write(service, second, list(range(100, 300)))
        await service.merge(a, [b], None)
    plan = await analyzed_plan(db, monitoring.LIST_GROUPS, (2**62, None, 50))
    assert plan_scans(plan, "monitoring_group_users") == []


async def test_a_count_left_wrong_is_filled_by_the_migration_and_healed_by_the_hourly_purge(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_url: str
) -> None:
    """What the previous release wrote beside this one during an upgrade kept no ``tree_users``
    (diffreview38): the migration fills the merged trees there are, and every hourly purge counts
    them again."""
    first, second = bug(), bug()
    async with open_monitoring(settings, **NO_ALERTS) as service:
        a = await write(service, first, [1, 2])
        b = await write(service, second, [2, 3])
        await service.merge(a, [b], None)
        await db.execute("update monitoring_groups set tree_users = 0 where id = %s", (a,))
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(migration_up("monitoring_tree_users_filled"))
        assert await shown(service, a) == (3, 3)
        await db.execute("update monitoring_groups set tree_users = 0 where id = %s", (a,))
        await service.purge(time.time())
        assert await shown(service, a) == (3, 3)
