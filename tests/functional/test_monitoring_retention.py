"""Retention: the hourly purge deletes what is older than ``MONITORING_RETENTION_DAYS`` in every table
that grows with time, and keeps what is newer (and alert-rule firings an action interval still needs)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.monitoring.schemas import DETAIL_RELEASES
from tests.factories import scalar
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

DAY = 86_400


def ago(now: float, days: float) -> datetime:
    return datetime.fromtimestamp(now - days * DAY, UTC)


async def names(db: AsyncConnection[Any], sql: str) -> list[str]:
    return sorted(row[0] for row in await (await db.execute(sql)).fetchall())


async def test_purge_deletes_activity_budget_periods_and_rule_fires_past_the_retention(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    async with open_monitoring(
        settings, monitoring_retention_days=30, monitoring_action_interval_s=3600
    ) as service:
        await service.write_now([error_event(raise_bug(0))])
        group = await scalar(db, "select id from monitoring_groups where kind = 'error'")
        now = time.time()
        for name, days in (("old", 31), ("recent", 29)):
            await db.execute(
                "insert into monitoring_group_activity (group_id, action, at) values (%s, %s, %s)",
                (group, f"test-{name}", ago(now, days)),
            )
            await db.execute(
                "insert into monitoring_budget_periods (channel, started_at, ends_at, used)"
                " values (%s, %s, %s, 1)",
                (f"test-{name}", ago(now, days + 0.01), ago(now, days)),
            )
            await db.execute(
                "insert into monitoring_rule_fires (rule, group_id, last_fired_at) values (%s, %s, %s)",
                (f"test-{name}", group, ago(now, days)),
            )

        await service.purge(now)

    assert await names(db, "select action from monitoring_group_activity where action like 'test-%'") == [
        "test-recent"
    ]
    assert await names(db, "select channel from monitoring_budget_periods where channel like 'test-%'") == [
        "test-recent"
    ]
    assert await names(db, "select rule from monitoring_rule_fires where rule like 'test-%'") == [
        "test-recent"
    ]
    assert await scalar(db, "select count(*) from monitoring_groups where id = %s", group) == 1


async def test_purge_keeps_rule_fires_an_action_interval_still_needs(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A firing past the retention but within its rule's action interval still silences the rule."""
    async with open_monitoring(
        settings, monitoring_retention_days=1, monitoring_action_interval_s=7 * DAY
    ) as service:
        await service.write_now([error_event(raise_bug(0))])
        group = await scalar(db, "select id from monitoring_groups where kind = 'error'")
        now = time.time()
        for name, days in (("expired", 8), ("silencing", 3)):
            await db.execute(
                "insert into monitoring_rule_fires (rule, group_id, last_fired_at) values (%s, %s, %s)",
                (f"test-{name}", group, ago(now, days)),
            )

        await service.purge(now)

    assert await names(db, "select rule from monitoring_rule_fires where rule like 'test-%'") == [
        "test-silencing"
    ]


async def add_releases(db: AsyncConnection[Any], group: int, seen: list[tuple[str, datetime]]) -> None:
    """The group's events came in each release ``name`` last at ``moment`` (first a minute before)."""
    for name, moment in seen:
        await db.execute(
            "with r as (insert into monitoring_releases (name, first_seen_at) values (%s, %s) returning id)"
            " insert into monitoring_group_releases"
            " (group_id, release_id, first_seen_at, last_seen_at, events)"
            " select %s, r.id, %s - interval '1 minute', %s, 1 from r",
            (name, moment, group, moment, moment),
        )


async def test_purge_deletes_the_releases_a_group_has_not_seen_for_the_retention(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A long-lived group gained one row per release forever: they go once not seen for the retention
    (its release list then holds only those within it)."""
    async with open_monitoring(settings, monitoring_retention_days=30) as service:
        await service.write_now([error_event(raise_bug(0))])
        group = await scalar(db, "select id from monitoring_groups where kind = 'error'")
        now = time.time()
        await add_releases(db, group, [("test-old", ago(now, 31)), ("test-recent", ago(now, 29))])

        await service.purge(now)
        detail = await service.detail(group)

    assert [release.name for release in detail.releases] == ["test-recent", service.release]
    assert await names(
        db,
        "select r.name from monitoring_group_releases gr join monitoring_releases r on r.id = gr.release_id",
    ) == sorted(["test-recent", service.release])
    assert await scalar(db, "select count(*) from monitoring_releases where name = 'test-old'") == 1, (
        "the release itself stays: it orders releases"
    )


async def test_a_group_detail_lists_its_newest_releases_only(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """One row per release of the group's tree: the detail answers the DETAIL_RELEASES seen most
    recently, in the order they were first seen, however many it has."""
    async with open_monitoring(settings) as service:
        await service.write_now([error_event(raise_bug(0))])
        group = await scalar(db, "select id from monitoring_groups where kind = 'error'")
        now = time.time()
        many = DETAIL_RELEASES + 20
        await add_releases(db, group, [(f"test-{n:03}", ago(now, 20 - n / many)) for n in range(many)])
        detail = await service.detail(group)
    newest = [f"test-{n:03}" for n in range(many)][-(DETAIL_RELEASES - 1) :]
    assert [release.name for release in detail.releases] == [*newest, service.release]
