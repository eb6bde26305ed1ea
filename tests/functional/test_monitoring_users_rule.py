"""The users rule counts the users of a group's tree seen in its window, a user two merged members saw
once, and only as far as its threshold: every write of a group asks, and an incident that reaches
many users is when writes come fast (sqlperf: one group's count read every user of the window)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.db import monitoring
from tests.factories import analyzed_plan, insert_root_group, plan_rows_read, plan_scans
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

ONLY_USERS = {  # the users rule alone may fire on volume, with no gap after another alert
    "monitoring_action_interval_s": 0,
    "monitoring_users_threshold": 3,
    "monitoring_frequency_events": 1_000_000,
    "monitoring_escalation_min_events": 1_000_000,
}


def bug() -> BaseException:
    return raise_bug(0, module=f"app.domains.shop.users{uuid.uuid4().hex[:6]}")


async def users_alerts(db: AsyncConnection[Any]) -> list[str]:
    rows = await (
        await db.execute(
            "select text_plain from monitoring_alerts where 'users' = any(string_to_array(rule, ','))"
        )
    ).fetchall()
    return [row[0] for row in rows]


async def test_a_user_two_merged_members_saw_counts_once(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    first, second = bug(), bug()
    async with open_monitoring(settings, **ONLY_USERS) as service:
        [a] = await service.write_now([error_event(first, user_id=1)])
        [b] = await service.write_now([error_event(second, user_id=2)])
        await service.merge(a.root_id, [b.root_id], None)
        await service.write_now([error_event(first, user_id=2)])
        assert await users_alerts(db) == [], "users 1 and 2: two of three"
        await service.write_now([error_event(second, user_id=3)])
    [text] = await users_alerts(db)
    assert "3+ users in 1 h" in text, text


async def test_one_groups_count_stops_at_the_threshold(db: AsyncConnection[Any]) -> None:
    async with db.transaction(force_rollback=True):
        await insert_root_group(db, 920000)
        await db.execute(
            "insert into monitoring_group_users (group_id, user_id, first_seen_at, last_seen_at)"
            " select 920000, n, now(), now() - n * interval '100 milliseconds'"
            " from generate_series(1, 5000) n"
        )
        await db.execute("analyze monitoring_group_users")
        since = datetime.now(UTC) - timedelta(hours=1)
        plan = await analyzed_plan(db, monitoring.GROUP_USERS_SINCE, (920000, since, 20))
        counted = await monitoring.group_users_since(db, group_id=920000, since=since, at_most=20)
    assert counted == 20
    read = sum(plan_rows_read(scan) for scan in plan_scans(plan, "monitoring_group_users"))
    assert read <= 20, plan
