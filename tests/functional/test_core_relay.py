"""The relay's batch keys name the exact rows of a batch, its finished jobs leave Valkey within
minutes, and the outbox purge deletes in chunks.

A round rolled back after its enqueue (its connection lost between enqueue and commit) is re-sent;
if a row committed meanwhile between its first and last ids, the re-sent batch holds that row too and
must not be dropped by SAQ as a duplicate of the still-queued job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import pytest
from psycopg import AsyncConnection
from saq import Queue, Status
from saq.types import Context

from app.config import Settings
from app.core import relay
from app.core.relay import batching_of, relay_once
from app.core.services import Services, open_services
from app.db import outbox as outbox_queries
from app.domains.activity.events import emit
from app.domains.activity.jobs import record_activities
from app.domains.activity.module import module as activity_module
from app.modules import MODULES
from tests.factories import Team, saq_queues, scalar, wait_until
from tests.valkey_control import ControlledValkey


@pytest.fixture
def relay_settings(settings: Settings, controlled_valkey: ControlledValkey) -> Settings:
    return msgspec.structs.replace(settings, valkey_url=controlled_valkey.url, outbox_batch_size=50)


@pytest.fixture
async def services(relay_settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[Services]:
    async with open_services(relay_settings, (activity_module,)) as opened:
        yield opened


@pytest.fixture
async def queues(relay_settings: Settings) -> AsyncIterator[dict[str, Queue]]:
    assert relay_settings.valkey_url
    async with saq_queues(relay_settings.valkey_url) as opened:
        yield opened


async def emit_task_created(services: Services, team: Team, task_id: int) -> None:
    async with services.db.transaction() as uow:
        await emit(
            uow,
            actor=team.editor.id,
            verb="task.created",
            obj=("task", task_id),
            project_id=team.project,
            data={"title": f"T{task_id}"},
        )


def test_batch_keys_name_the_exact_rows() -> None:
    assert relay.batch_key("record_activities", [1, 3]) == relay.batch_key("record_activities", [1, 3])
    assert relay.batch_key("record_activities", [1, 2, 3]) != relay.batch_key("record_activities", [1, 3])
    assert len(relay.batch_key("record_activities", list(range(1, 1001)))) < 64


async def test_a_row_committed_between_a_resent_rounds_ids_is_in_a_job(
    db: AsyncConnection[Any],
    team: Team,
    services: Services,
    queues: dict[str, Queue],
    relay_settings: Settings,
    controlled_valkey: ControlledValkey,
    database_url: str,
) -> None:
    batching = batching_of(MODULES, relay_settings)
    pool = services.db.pool
    await emit_task_created(services, team, 101)  # row A, committed
    async with await AsyncConnection.connect(database_url) as late:  # row B: its id taken, not committed
        payload = {
            "actor_id": team.editor.id,
            "verb": "task.created",
            "object_type": "task",
            "object_id": 102,
            "project_id": team.project,
            "data": {"title": "T102"},
            "occurred_at": "2026-12-01T00:00:00+00:00",
        }
        await late.execute(
            "insert into outbox (queue, task, payload) values ('feed', 'record_activity', %s)",
            (json.dumps(payload),),
        )
        await emit_task_created(services, team, 103)  # row C, committed

        controlled_valkey.pause()  # the relay claims A and C, then waits on Valkey
        first_round = asyncio.create_task(relay_once(pool, queues, relay_settings, batching))

        async def relay_holds_its_rows() -> bool:
            return bool(
                await scalar(
                    db,
                    "select count(*) from pg_stat_activity where datname = current_database()"
                    " and state = 'idle in transaction' and query like '%from outbox%'",
                )
            )

        await wait_until(relay_holds_its_rows, 10, "the relay holds its claimed rows")
        await db.execute(  # the relay's connection is lost after its enqueue was sent, before its commit
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database()"
            " and state = 'idle in transaction' and query like '%from outbox%'"
        )
        controlled_valkey.resume()
        with pytest.raises(Exception):  # noqa: B017, PT011 (whichever error the lost connection gives)
            await first_round
        await late.commit()  # B commits, between A and C

    assert await relay_once(pool, queues, relay_settings, batching) == 3  # the round is re-sent, with B
    assert await scalar(db, "select count(*) from outbox where published_at is null") == 0
    redis = queues["feed"].redis  # type: ignore[attr-defined]
    keys = [key.decode() for key in await redis.lrange("saq:feed:queued", 0, -1)]
    jobs = [await queues["feed"]._get_job_by_id(key) for key in keys]  # type: ignore[attr-defined]
    ctx = cast("Context", {"services": services})
    for job in jobs:  # the worker runs what is queued
        assert job is not None
        await record_activities(ctx, **(job.kwargs or {}))
    assert await scalar(db, "select count(*) from activity_events") == 3


async def test_finished_jobs_leave_valkey_within_minutes(
    db: AsyncConnection[Any],
    team: Team,
    services: Services,
    queues: dict[str, Queue],
    relay_settings: Settings,
) -> None:
    """A finished job holds its whole payload (what a client's requests chose) in a Valkey that runs
    with ``noeviction``: it is kept minutes (for the dashboard), never a day."""
    bound_ms = 10 * 60 * 1000
    await emit_task_created(services, team, 101)  # a batched task (the feed's record_activity)
    await outbox_queries.insert_outbox(
        db, queue="default", task="purge_outbox", payload={}, request_id=None
    )  # one job per row
    assert (
        await relay_once(services.db.pool, queues, relay_settings, batching_of(MODULES, relay_settings)) == 2
    )
    finished = 0
    for name in ("feed", "default"):
        queue = queues[name]
        redis = queue.redis  # type: ignore[attr-defined]
        for job_id in await redis.lrange(f"saq:{name}:queued", 0, -1):
            job = await queue._get_job_by_id(job_id.decode())  # type: ignore[attr-defined]
            assert job is not None
            await queue.finish(job, Status.COMPLETE if name == "feed" else Status.FAILED)
            assert 0 < await redis.pttl(job.id) <= bound_ms, (name, await redis.pttl(job.id))
            finished += 1
    assert finished == 2


async def test_the_purge_deletes_in_chunks_each_its_own_transaction(
    db: AsyncConnection[Any], services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await db.execute(
        "insert into outbox (queue, task, payload, created_at, published_at)"
        " select 'default', 'purge_outbox', '{}'::jsonb, now() - interval '9 days', now() - interval '8 days'"
        " from generate_series(1, 35)"
    )
    kept = await outbox_queries.insert_outbox(
        db, queue="default", task="purge_outbox", payload={}, request_id=None
    )
    await db.execute(  # published, but within retention
        "insert into outbox (queue, task, payload, published_at)"
        " values ('default', 'purge_outbox', '{}', now())"
    )
    chunks: list[tuple[int, str]] = []
    purge_chunk = outbox_queries.purge_published_outbox

    async def recorded(conn: AsyncConnection[Any], **kwargs: Any) -> int:
        deleted = await purge_chunk(conn, **kwargs)
        xact = await (await conn.execute("select pg_current_xact_id()::text")).fetchone()
        assert xact is not None
        chunks.append((deleted, xact[0]))
        return deleted

    monkeypatch.setattr(outbox_queries, "purge_published_outbox", recorded)
    cutoff = datetime.now(UTC) - timedelta(days=7)
    assert await relay.purge_published(services.db, cutoff, chunk_size=10) == 35
    assert [deleted for deleted, _ in chunks] == [10, 10, 10, 5, 0]  # until a chunk deletes nothing
    assert len({xact for _, xact in chunks}) == 5
    assert await scalar(db, "select count(*) from outbox") == 2
    assert await scalar(db, f"select count(*) from outbox where id = {kept}") == 1
