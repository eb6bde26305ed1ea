"""The workers' sweep (``TwoSightingSweepQueue.sweep``, ``app/core/sweep.py``) takes a job whose stored
record is gone off the active list, and only that job.

A job's record (the value at ``saq:job:<queue>:<key>``) can vanish while its id is still on the
active list: it expired (SAQ's ``ttl``), or it was deleted by hand. What the sweep promises for it:
no error (the sweep walks on to the other jobs), the id removed from the active list and the
incomplete set, a ``job_swept`` warning naming it with ``record="missing"`` and
``app_jobs_swept_total`` counted, once; and the other jobs on the active list keep their fate: a
running job stays as it is, and a job left ``queued`` there is still a suspect on this sweep and
swept on the next, exactly once. A sweep that stumbled on the missing record (a ``None`` read as a
job) would stop every later sweep of the queue at that id; one that forgot to remove it would sweep
it again every ten seconds; one that lost the suspects while handling it would leave a job nobody
runs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from saq import Job, Status
from saq.queue.redis import RedisQueue
from saq.utils import now
from valkey.asyncio import Valkey

from app.core.queues import build_queues
from app.core.sweep import TwoSightingSweepQueue
from tests.factories import captured_logs


@pytest.fixture
async def queue(valkey_url: str) -> AsyncIterator[RedisQueue]:
    """The default queue as the workers build it, under a private name."""
    built = build_queues(valkey_url)["default"]
    assert isinstance(built, TwoSightingSweepQueue)
    private = type(built)(built.redis, name=f"sweep-{uuid.uuid4().hex[:8]}")
    try:
        yield private
    finally:
        await built.redis.aclose()


async def listed(valkey: Valkey, queue: RedisQueue, name: str) -> list[bytes]:
    return list(await valkey.lrange(queue.namespace(name), 0, -1))  # type: ignore[misc]


async def incomplete(valkey: Valkey, queue: RedisQueue) -> set[bytes]:
    return set(await valkey.zrange(queue.namespace("incomplete"), 0, -1))


async def taken_by_a_worker(queue: RedisQueue, valkey: Valkey) -> Job:
    """A job enqueued and moved onto the active list, as SAQ's dequeue moves it (not marked yet)."""
    job = await queue.enqueue("relay_outbox", retries=3)
    assert job is not None
    assert await valkey.lmove(queue.namespace("queued"), queue.namespace("active"), "LEFT", "RIGHT")
    return job


def swept_count(queue: RedisQueue) -> float:
    return REGISTRY.get_sample_value("app_jobs_swept_total", {"queue": queue.name}) or 0.0


async def test_a_job_whose_record_is_gone_is_swept_once_and_the_other_jobs_keep_their_fate(
    queue: RedisQueue, valkey: Valkey
) -> None:
    running = await taken_by_a_worker(queue, valkey)
    running.started, running.attempts = now(), 1  # its worker marks it, as SAQ's Worker.process does
    await running.update(status=Status.ACTIVE)
    gone = await taken_by_a_worker(queue, valkey)
    assert await valkey.delete(gone.id) == 1  # its record expired or was deleted; its id is still listed
    starting = await taken_by_a_worker(queue, valkey)  # dequeued, its worker not yet marking it
    waiting = await queue.enqueue("relay_outbox", retries=3)
    assert waiting is not None
    assert await listed(valkey, queue, "active") == [job.id.encode() for job in (running, gone, starting)]
    before = swept_count(queue)

    with captured_logs(logging.INFO) as logs:
        first = await queue.sweep()
    assert first == [gone.id]
    assert await listed(valkey, queue, "active") == [running.id.encode(), starting.id.encode()]
    assert gone.id.encode() not in await incomplete(valkey, queue)
    [line] = logs.events("job_swept")
    assert (line["level"], line["job_id"], line["record"]) == ("warning", gone.id, "missing")
    assert not [line for line in logs.lines if line["level"] in ("error", "critical")], logs.text
    assert swept_count(queue) == before + 1
    # the others untouched: the running job runs, the starting one is a suspect, nothing requeued
    still_running = await queue.job(running.key)
    assert still_running is not None and still_running.status == Status.ACTIVE
    suspect = await queue.job(starting.key)
    assert suspect is not None and (suspect.status, suspect.error) == (Status.QUEUED, None)
    assert await listed(valkey, queue, "queued") == [waiting.id.encode()]
    assert {running.id, starting.id, waiting.id} <= {
        job_id.decode() for job_id in await incomplete(valkey, queue)
    }

    await valkey.delete(queue.namespace("sweep"))  # the time between two sweeps
    assert await queue.sweep() == [starting.id]  # its worker died before marking it: swept now, once
    assert await listed(valkey, queue, "active") == [running.id.encode()]
    assert await listed(valkey, queue, "queued") == [waiting.id.encode(), starting.id.encode()]
    retried = await queue.job(starting.key)
    assert retried is not None and (retried.status, retried.error) == (
        Status.QUEUED,
        queue.swept_error_message,
    )

    await valkey.delete(queue.namespace("sweep"))
    assert await queue.sweep() == []  # nothing swept twice
    assert swept_count(queue) == before + 2
    assert await valkey.get(gone.id) is None  # not brought back
