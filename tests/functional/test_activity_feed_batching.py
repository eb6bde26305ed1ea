"""The ``feed`` queue takes events in batches: the relay publishes a round's activity events as a few
``record_activities`` jobs (deterministic keys), and a batch stores and groups its events once,
however often it is delivered and however a re-sent round is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from saq import Queue
from saq.types import Context
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.queues import build_queues
from app.core.relay import batch_key, batching_of, job_key, relay_once
from app.core.services import Services, open_services
from app.db import outbox as outbox_queries
from app.domains.activity.events import emit
from app.domains.activity.jobs import record_activities, record_activity
from app.domains.activity.module import module as activity_module
from app.modules import MODULES
from tests.factories import Team

BATCH = 3


@pytest.fixture
def batch_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, feed_batch_size=BATCH, outbox_batch_size=50)


@pytest.fixture
async def services(batch_settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[Services]:
    async with open_services(batch_settings, (activity_module,)) as opened:
        yield opened


@pytest.fixture
async def queues(batch_settings: Settings, valkey: Valkey) -> AsyncIterator[dict[str, Queue]]:
    assert batch_settings.valkey_url
    opened = build_queues(batch_settings.valkey_url)
    yield opened
    with contextlib.suppress(Exception):
        await opened["default"].redis.aclose()  # type: ignore[attr-defined]


async def emit_tasks(services: Services, team: Team, count: int) -> None:
    async with services.db.transaction() as uow:
        for n in range(count):
            await emit(
                uow,
                actor=team.editor.id,
                verb="task.created",
                obj=("task", 100 + n),
                project_id=team.project,
                data={"title": f"T{n}"},
            )


def job_context(services: Services) -> Context:
    """What a SAQ worker hands a job: the process's ``Services`` (what ``services_of`` reads)."""
    return cast("Context", {"services": services})


async def counts(db: AsyncConnection[Any]) -> tuple[int, int, int]:
    row = await (
        await db.execute(
            "select (select count(*) from activity_events), (select count(*) from activity_groups),"
            " (select coalesce(sum(event_count), 0) from activity_groups)"
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def test_a_round_of_events_becomes_few_jobs_that_store_each_event_once(
    app: Litestar,
    db: AsyncConnection[Any],
    team: Team,
    services: Services,
    queues: dict[str, Queue],
    batch_settings: Settings,
) -> None:
    await emit_tasks(services, team, 7)
    other = await outbox_queries.insert_outbox(
        db, queue="default", task="purge_outbox", payload={}, request_id=None
    )
    assert other is not None
    pool: AsyncConnectionPool[Any] = services.db.pool
    assert await relay_once(pool, queues, batch_settings, batching_of(MODULES, batch_settings)) == 8

    ids = [
        row[0]
        for row in await (
            await db.execute("select id from outbox where task = 'record_activity' order by id")
        ).fetchall()
    ]
    keys = [batch_key("record_activities", ids[i : i + BATCH]) for i in range(0, len(ids), BATCH)]
    jobs = await queues["feed"].jobs(keys)
    assert all(job is not None and job.function == "record_activities" for job in jobs)
    batches: list[list[dict[str, Any]]] = [job.kwargs["events"] for job in jobs if job and job.kwargs]
    assert [len(events) for events in batches] == [3, 3, 1]
    assert await queues["feed"].count("queued") == 3, "one job per batch, not per event"
    assert await queues["default"].job(job_key(other)) is not None

    # The relay re-sends the round (it crashed before committing): the same keys, no new jobs.
    await db.execute("update outbox set published_at = null")
    assert await relay_once(pool, queues, batch_settings, batching_of(MODULES, batch_settings)) == 8
    assert await queues["feed"].count("queued") == 3

    ctx = job_context(services)
    assert [await record_activities(ctx, events=events) for events in batches] == [3, 3, 1]
    stored = await counts(db)
    assert stored == (7, 1, 7), "seven events, one burst"

    # Delivered again, alone, or cut differently: nothing changes.
    assert [await record_activities(ctx, events=events) for events in batches] == [0, 0, 0]
    assert await record_activities(ctx, events=[e for events in batches for e in events]) == 0
    first = batches[0][0]
    assert await record_activity(ctx, **first) == 0
    assert await counts(db) == stored

    group = await (
        await db.execute("select event_count, actor_count, object_count from activity_groups")
    ).fetchone()
    assert group == (7, 1, 7)


async def test_events_of_a_project_deleted_before_delivery_are_dropped_not_retried(
    app: Litestar, db: AsyncConnection[Any], team: Team, services: Services
) -> None:
    await emit_tasks(services, team, 2)
    rows = await (await db.execute("select id, payload from outbox order by id")).fetchall()
    await db.execute("delete from projects where id = %s", (team.project,))
    ctx = job_context(services)
    events = [{**payload, "outbox_id": outbox_id} for outbox_id, payload in rows]
    assert await record_activities(ctx, events=events) == 0
    assert await counts(db) == (0, 0, 0)


async def test_concurrent_batches_are_stored_together_and_a_bad_one_fails_alone(
    app: Litestar, db: AsyncConnection[Any], team: Team, services: Services
) -> None:
    """The jobs a worker runs at once share the writer's transactions (``combiner.py``): every
    event is stored once however the batches overlap, and a batch that cannot be stored fails its
    own job only."""
    await emit_tasks(services, team, 9)
    rows = await (await db.execute("select id, payload from outbox order by id")).fetchall()
    events = [{**payload, "outbox_id": outbox_id} for outbox_id, payload in rows]
    bad = [{**events[0], "outbox_id": 10**9, "occurred_at": "yesterday"}]
    batches = [events[0:3], events[3:6], events[6:9], events[1:5], bad]
    ctx = job_context(services)
    results = await asyncio.gather(
        *(record_activities(ctx, events=batch) for batch in batches), return_exceptions=True
    )
    assert isinstance(results[-1], Exception), results
    assert all(isinstance(count, int) for count in results[:-1]), results
    assert sum(results[:3]) == 9  # type: ignore[arg-type]
    assert await counts(db) == (9, 1, 9)


async def test_overlapping_batches_stored_together_count_each_event_as_new_once(
    app: Litestar, db: AsyncConnection[Any], team: Team, services: Services
) -> None:
    """A job's count is of its events that were new: an event two batches of one transaction carry
    was counted by both (concurrev: 43 new for 12 events), and the recovery cron logs this count."""
    await emit_tasks(services, team, 9)
    rows = await (await db.execute("select id, payload from outbox order by id")).fetchall()
    events = [{**payload, "outbox_id": outbox_id} for outbox_id, payload in rows]
    batches = [events[0:5], events[3:9], events[::-1], events[2:4] * 2]
    ctx = job_context(services)
    results = await asyncio.gather(*(record_activities(ctx, events=batch) for batch in batches))
    assert sum(results) == 9, results
    assert await counts(db) == (9, 1, 9)
