"""1,000 concurrent event/resolve races produce no false regression (Sentry #30371, #104513).

Each race: an error occurs, then an admin resolves its group while the event is still on its way to
the database; the resolve and the event's write run concurrently on the pool, in a random order. The
event happened before the resolve, so the group must end resolved every time. Events that happen after
the resolve do regress it (the control that makes the test able to fail).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.db.models import MonitoringGroupKind
from app.domains.monitoring.capture import RawEvent
from app.domains.monitoring.fingerprint import RawException
from tests.functional.test_monitoring_groups import open_monitoring

RACES = int(os.environ.get("RACES", "1000"))


def event(index: int, at: float | None = None) -> RawEvent:
    return RawEvent(
        kind=MonitoringGroupKind.ERROR,
        occurred_at=time.time() if at is None else at,
        chain=(RawException(f"RaceError{index}", "lost the race", ()),),
        context={"source": "request"},
    )


async def test_a_thousand_event_resolve_races_never_regress(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    rng = random.Random(30371)
    async with open_monitoring(settings, database_pool_max=20) as service:
        created = await service.write_now([event(i) for i in range(RACES)])
        roots = {result.root_id for result in created}
        assert len(roots) == RACES
        pending = [event(i) for i in range(RACES)]  # they occur now, before any resolve starts
        finished: dict[int, list[str]] = {}

        async def resolve(root: int) -> None:
            await service.resolve(root, None)
            finished.setdefault(root, []).append("resolve")

        async def write(race: RawEvent) -> None:
            [result] = await service.write_now([race])
            finished.setdefault(result.root_id, []).append("event")
            assert result.transition is None, "an event from before the resolve regressed the group"

        in_flight = asyncio.Semaphore(16)  # races at once: the pool (20) is contended, never exhausted

        async def race(root: int, late: RawEvent) -> None:
            async with in_flight:
                pair = [resolve(root), write(late)]
                rng.shuffle(pair)
                await asyncio.gather(*pair)

        await asyncio.gather(
            *(race(result.root_id, late) for result, late in zip(created, pending, strict=True))
        )

        statuses = dict(
            await (
                await db.execute(
                    "select status::text, count(*) from monitoring_groups where kind = 'error' group by 1"
                )
            ).fetchall()
        )
        assert statuses == {"resolved": RACES}
        regressions = await (
            await db.execute(
                "select count(*) from monitoring_group_activity a"
                " join monitoring_groups g on g.id = a.group_id"
                " where a.action = 'regressed' and g.kind = 'error'"
            )
        ).fetchone()
        assert regressions == (0,)
        events = await (
            await db.execute("select min(events), max(events) from monitoring_groups where kind = 'error'")
        ).fetchone()
        assert events == (2, 2), "every racing event was counted"
        orders = {tuple(order) for order in finished.values()}
        assert orders == {("resolve", "event"), ("event", "resolve")}, "both orders of the race happened"

        # The control: events that occur after the resolve regress their group.
        later = await service.write_now([event(i) for i in range(10)])
        assert [result.transition for result in later] == ["regressed"] * 10
