"""The workers' sweep spares a job a worker has just dequeued (``app.core.sweep``).

SAQ's dequeue moves the job's id onto the active list, then the worker marks the job active; SAQ's
own sweep, falling between the two (most likely at start-up, when every worker dequeues at once),
aborted the starting job and queued it again beside the run (tobymao/saq#277). A worker's dequeue is
cut in two here by doing its first half by hand; deleting the sweep's lock stands for the time
between two sweeps.
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
from tests.factories import captured_logs


@pytest.fixture
async def queue(valkey_url: str) -> AsyncIterator[RedisQueue]:
    """The default queue as the workers build it, under a private name that ends in a letter: one
    ending in five digits makes its job ids (``saq:job:<queue>:<uuid>``) look like a Telegram bot
    token (``<digits>:<30 or more characters>``) to the log scrubber, which masks them."""
    built = build_queues(valkey_url)["default"]
    assert isinstance(built, RedisQueue)
    private = type(built)(built.redis, name=f"sweep-{uuid.uuid4().hex[:8]}-q")
    try:
        yield private
    finally:
        await built.redis.aclose()


async def _dequeued_but_not_marked(queue: RedisQueue, valkey: Valkey) -> Job:
    """A job enqueued, then taken as SAQ's dequeue takes it, not yet marked active by its worker."""
    job = await queue.enqueue("relay_outbox", retries=3)
    assert job is not None
    assert await valkey.lmove(queue.namespace("queued"), queue.namespace("active"), "LEFT", "RIGHT")
    return job


async def _next_sweep(queue: RedisQueue, valkey: Valkey) -> None:
    await valkey.delete(queue.namespace("sweep"))


async def _listed(queue: RedisQueue, valkey: Valkey, name: str) -> list[bytes]:
    return list(await valkey.lrange(queue.namespace(name), 0, -1))  # type: ignore[misc]


async def _incomplete(queue: RedisQueue, valkey: Valkey) -> set[bytes]:
    return set(await valkey.zrange(queue.namespace("incomplete"), 0, -1))


def _swept_count(queue: RedisQueue) -> float:
    return REGISTRY.get_sample_value("app_jobs_swept_total", {"queue": queue.name}) or 0.0


async def test_a_sweep_between_dequeue_and_start_leaves_the_job_to_its_worker(
    queue: RedisQueue, valkey: Valkey
) -> None:
    job = await _dequeued_but_not_marked(queue, valkey)

    assert await queue.sweep() == []

    stored = await queue.job(job.key)
    assert stored is not None
    assert (stored.status, stored.error, stored.attempts) == (Status.QUEUED, None, 0)
    assert await _listed(queue, valkey, "active") == [job.id.encode()]
    assert await _listed(queue, valkey, "queued") == []  # not queued again beside its run

    stored.started, stored.attempts = now(), 1  # the worker marks it, as SAQ's Worker.process does
    await stored.update(status=Status.ACTIVE)
    await _next_sweep(queue, valkey)
    assert await queue.sweep() == []
    marked = await queue.job(job.key)
    assert marked is not None and marked.status == Status.ACTIVE


async def test_a_job_left_queued_on_the_active_list_is_swept_the_next_sweep(
    queue: RedisQueue, valkey: Valkey
) -> None:
    """Its worker died between the dequeue and the mark: the second sweep that sees it unchanged
    queues it again, as SAQ's sweep would have at once."""
    job = await _dequeued_but_not_marked(queue, valkey)
    assert await queue.sweep() == []

    await _next_sweep(queue, valkey)
    assert await queue.sweep() == [job.id]

    assert await _listed(queue, valkey, "active") == []
    retried = await queue.job(job.key)
    assert retried is not None
    assert (retried.status, retried.error) == (Status.QUEUED, queue.swept_error_message)
    assert await _listed(queue, valkey, "queued") == [job.id.encode()]


async def test_a_sweep_under_another_workers_lock_keeps_the_suspects(
    queue: RedisQueue, valkey: Valkey
) -> None:
    """Only the sweep that holds the lock looks, so one that finds it held must not forget what the
    previous sweep saw: the job is still swept on the next sweep that looks."""
    job = await _dequeued_but_not_marked(queue, valkey)
    assert await queue.sweep() == []
    assert await queue.sweep() == []  # the lock is held: nothing looked at, nothing forgotten

    await _next_sweep(queue, valkey)
    assert await queue.sweep() == [job.id]


async def test_an_active_job_past_its_timeout_is_still_swept_at_once(
    queue: RedisQueue, valkey: Valkey
) -> None:
    job = await queue.enqueue("relay_outbox", timeout=1, retries=1)
    assert job is not None
    taken = await queue.dequeue()
    assert taken is not None
    taken.started, taken.attempts = 1, 1  # started in 1970: long past its one-second timeout
    await taken.update(status=Status.ACTIVE)

    swept = REGISTRY.get_sample_value("app_jobs_swept_total", {"queue": queue.name}) or 0.0
    with captured_logs(logging.INFO) as logs:
        assert await queue.sweep(abort=0.01) == [job.id]

    ended = await queue.job(job.key)
    assert ended is not None and ended.status == Status.ABORTED
    # a worker gone mid-job: said as a warning naming the job, and counted (SAQ: an info line)
    [line] = logs.events("job_swept")
    assert (line["level"], line["job_function"], line["job_status"]) == ("warning", "relay_outbox", "active")
    assert REGISTRY.get_sample_value("app_jobs_swept_total", {"queue": queue.name}) == swept + 1


async def test_a_job_whose_record_is_gone_is_swept_once_and_the_other_jobs_keep_their_fate(
    queue: RedisQueue, valkey: Valkey
) -> None:
    """A job's record (``saq:job:<queue>:<key>``) can vanish while its id is still on the active list
    (SAQ's ``ttl``, or deleted by hand): the sweep takes it off the active list and the incomplete set
    with one ``job_swept`` warning (``record="missing"``) and one count, without an error; the running
    job keeps running, and a job left queued there is still a suspect, swept on the next sweep, once.
    A sweep that read the missing record as a job would stop at that id for ever; one that kept it
    listed would sweep it every ten seconds; one that lost the suspects would leave a job nobody runs."""
    running = await _dequeued_but_not_marked(queue, valkey)
    running.started, running.attempts = now(), 1  # its worker marks it, as SAQ's Worker.process does
    await running.update(status=Status.ACTIVE)
    gone = await _dequeued_but_not_marked(queue, valkey)
    assert await valkey.delete(gone.id) == 1  # its record expired or was deleted; its id is still listed
    starting = await _dequeued_but_not_marked(queue, valkey)  # dequeued, its worker not yet marking it
    waiting = await queue.enqueue("relay_outbox", retries=3)
    assert waiting is not None
    assert await _listed(queue, valkey, "active") == [job.id.encode() for job in (running, gone, starting)]
    before = _swept_count(queue)

    with captured_logs(logging.INFO) as logs:
        first = await queue.sweep()
    assert first == [gone.id]
    assert await _listed(queue, valkey, "active") == [running.id.encode(), starting.id.encode()]
    assert gone.id.encode() not in await _incomplete(queue, valkey)
    [line] = logs.events("job_swept")
    assert (line["level"], line["job_id"], line["record"]) == ("warning", gone.id, "missing")
    assert not [line for line in logs.lines if line["level"] in ("error", "critical")], logs.text
    assert _swept_count(queue) == before + 1
    # the others untouched: the running job runs, the starting one is a suspect, nothing requeued
    still_running = await queue.job(running.key)
    assert still_running is not None and still_running.status == Status.ACTIVE
    suspect = await queue.job(starting.key)
    assert suspect is not None and (suspect.status, suspect.error) == (Status.QUEUED, None)
    assert await _listed(queue, valkey, "queued") == [waiting.id.encode()]
    assert {running.id, starting.id, waiting.id} <= {
        job_id.decode() for job_id in await _incomplete(queue, valkey)
    }

    await _next_sweep(queue, valkey)
    assert await queue.sweep() == [starting.id]  # its worker died before marking it: swept now, once
    assert await _listed(queue, valkey, "active") == [running.id.encode()]
    assert await _listed(queue, valkey, "queued") == [waiting.id.encode(), starting.id.encode()]
    retried = await queue.job(starting.key)
    assert retried is not None and (retried.status, retried.error) == (
        Status.QUEUED,
        queue.swept_error_message,
    )

    await _next_sweep(queue, valkey)
    assert await queue.sweep() == []  # nothing swept twice
    assert _swept_count(queue) == before + 2
    assert await valkey.get(gone.id) is None  # not brought back
