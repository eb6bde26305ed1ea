"""The workers' queue: SAQ's Valkey queue whose sweep spares a job a worker has just dequeued.

SAQ's dequeue moves a job's id onto the active list (``BLMOVE``), and only then does the worker mark
the job active, a round trip later. Its sweep (every worker runs one at start-up, then every
``TIMERS["sweep"]`` seconds, 10, one at a time under a lock as long) aborts and re-queues every job
on the active list that is not marked active: a sweep that falls between the two, most likely at
start-up when every worker dequeues at once, aborts a job that is starting, and its retry may run
beside it (tobymao/saq#277, open; seen on outbox relay jobs and feed recordings). A job still
``queued`` on the active list is swept only when the previous sweep saw it there unchanged: the
worker that took it died before marking it (one sweep later than SAQ would, 10-20 s), never one that
is marking it.

A job swept is a worker gone mid-job (killed, or its loop stalled past the job's heartbeat): a warning
(``job_swept``, naming the job) and ``app_jobs_swept_total``, where SAQ logged an info line whose text
held the whole job.

After aborting a job, the sweep waits up to 5 s for its update on the queue's job-update listener
(a pub/sub connection). SAQ's listener blocks on that connection with no timeout of its own, so the
client's socket timeout (``QUEUE_SOCKET_TIMEOUT_S``, also 5 s) cut every quiet read and dropped the
connection: an exception logged each time, and a wait that ended in that moment failed on the dropped
connection (``AttributeError``), so the sweep stopped between a job's abort and its retry, and the
job was run by no one. Here the listener reads with a timeout of its own, which ends a read quietly.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import structlog
from saq.job import Job, Status
from saq.queue.redis import PubSubMultiplexer, RedisQueue

from app.core.metrics import JOBS_SWEPT

logger = logging.getLogger("saq")
log = structlog.get_logger("app.sweep")

_LIST_ACTIVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return -1
end
redis.call('SETEX', KEYS[1], ARGV[1], 1)
local id_jobs = {}
for i, v in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    id_jobs[i] = {v, redis.call('GET', v)}
end
return {id_jobs, redis.call('HGETALL', KEYS[3])}
"""
"""Under SAQ's sweep lock (one sweeper a ``lock`` period, as SAQ's own script): the active list's
jobs and what the previous sweep left as suspects; -1 while another worker holds the lock."""


LISTEN_POLL_S = 1.0
"""How long one read of the job-update listener waits for a message before it reads again."""


class PollingPubSubMultiplexer(PubSubMultiplexer):
    """SAQ 0.26's job-update listener, whose reads end by their own timeout (``LISTEN_POLL_S``), which
    keeps the connection, instead of the client's socket timeout, which drops it. SAQ's loop, copied
    with that one change: it takes no setting for the read's timeout."""

    async def _start(self) -> None:
        await self.pubsub.psubscribe(f"{self.prefix}*")
        while True:
            try:
                message = await self.pubsub.get_message(timeout=LISTEN_POLL_S)
                if message and message["type"] == "pmessage":
                    message["channel"] = message["channel"].decode("utf-8")
                    self.publish(message["channel"], message)
            except asyncio.CancelledError:
                return
            except Exception:
                logger.exception("Failed to consume message")


class TwoSightingSweepQueue(RedisQueue):
    """SAQ 0.26's ``RedisQueue.sweep`` (its abort, retry and finish calls, its log lines), except that
    a ``queued`` job on the active list is a suspect the first time and swept the second, if its stored
    bytes have not changed in between; suspects live in ``saq:<queue>:sweep-suspects``. Its job-update
    listener is ``PollingPubSubMultiplexer``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pubsub = PollingPubSubMultiplexer(self.redis.pubsub(), prefix=self._pubsub.prefix)
        self._suspects = self.namespace("sweep-suspects")
        self._list_active = self.redis.register_script(_LIST_ACTIVE)

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        listing = await self._list_active(keys=[self._sweep, self._active, self._suspects], args=[lock])
        if listing == -1:
            return []
        id_jobs, flat_suspects = listing
        previous = dict(zip(flat_suspects[::2], flat_suspects[1::2], strict=True))
        suspects: dict[bytes, bytes] = {}
        swept: list[bytes] = []
        for job_id, job_bytes in id_jobs:
            job = self.deserialize(job_bytes)
            if job is None:
                swept.append(job_id)
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.lrem(self._active, 0, job_id)
                    pipe.zrem(self._incomplete, job_id)
                    await pipe.execute()
                _swept(self.name, None, job_id)
            elif job.status == Status.QUEUED and previous.get(job_id) != job_bytes:
                suspects[job_id] = job_bytes
            elif job.status != Status.ACTIVE or job.stuck:
                _swept(self.name, job, job_id)
                swept.append(job_id)
                await self.abort(job, error=self.swept_error_message)
                try:
                    await job.refresh(abort)
                except TimeoutError:
                    logger.info("Could not abort job %s", job_id)
                if job.retryable:
                    await self.retry(job, error=self.swept_error_message)
                else:
                    await self.finish(job, Status.ABORTED, error=self.swept_error_message)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._suspects)
            if suspects:
                pipe.hset(self._suspects, mapping=suspects)
                pipe.expire(self._suspects, 3 * lock)
            await pipe.execute()
        return [job_id.decode("utf-8") for job_id in swept]


def _swept(queue: str, job: Job | None, job_id: bytes) -> None:
    """Say and count a job the sweep takes back (``job`` None: its stored record is gone)."""
    JOBS_SWEPT.labels(queue).inc()
    if job is None:
        log.warning("job_swept", queue=queue, job_id=job_id.decode("utf-8", "replace"), record="missing")
        return
    log.warning(
        "job_swept",
        queue=queue,
        job_function=job.function,
        job_key=job.key,
        job_status=job.status.value,
        job_attempt=job.attempts,
        stuck=job.stuck,
    )
