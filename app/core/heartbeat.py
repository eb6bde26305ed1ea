"""SAQ heartbeats kept by the worker that runs a job, so that a job whose worker died is swept
within its ``heartbeat`` instead of its ``timeout``.

SAQ does not beat for a job by itself: its sweeper aborts (and retries, while it has retries) an
active job not touched for its ``heartbeat``; without one, a job whose worker was killed stays
``active`` until its whole timeout has passed (a cron's ten minutes, half an hour), and while it is
``active`` its cron key admits no next run. By hand, not litestar-saq's ``monitored_job``: that needs
its HeartbeatManager thread, which ``app/main.py`` turns off (it crashed at shutdown), and it beats
with ``Job.update()``, which can undo an abort (``touch_if_active``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.exceptions import WatchError
from saq import Job
from saq.job import Status
from saq.queue.redis import RedisQueue
from saq.types import Context
from saq.utils import now

from app.core.modules import JobFunction
from app.core.repeating import repeating

log = structlog.get_logger("app.heartbeat")

BEATS_PER_HEARTBEAT = 3
"""How often a running job touches its heartbeat within one: two missed beats still keep it alive."""


@contextlib.asynccontextmanager
async def beating(job: Job | None) -> AsyncIterator[None]:
    """Touch ``job`` (``touch_if_active``) every ``heartbeat / BEATS_PER_HEARTBEAT`` seconds while
    the block runs (nothing for a job without a heartbeat)."""
    if job is None or not job.heartbeat:
        yield
        return

    async def beat() -> None:
        try:
            await touch_if_active(job)
        except Exception:  # a missed beat; the next may land (two may be missed)
            log.warning("job_heartbeat_failed", job=job.key)

    async with repeating(beat, job.heartbeat / BEATS_PER_HEARTBEAT):
        yield


def with_heartbeat(function: JobFunction) -> JobFunction:
    """``function`` keeping its job's heartbeat while it runs (a job without one runs as it is). Same
    name: SAQ registers and finds a job's function by its name, and the cron monitor and logs name it
    too. Every job the app registers is wrapped (``app.core.queues.build_saq_config``)."""

    @functools.wraps(function)
    async def run(ctx: Context, **kwargs: Any) -> Any:
        async with beating(ctx.get("job")):
            return await function(ctx, **kwargs)

    return run


async def touch_if_active(job: Job) -> bool:
    """One heartbeat: the stored job gets a new ``touched`` and nothing else, only while it is still
    active and unchanged since it was read (an optimistic transaction: WATCH, then MULTI/EXEC).

    SAQ's own beat, ``Job.update()``, reads the stored status and then writes the whole in-memory job
    back: an abort (the dashboard's, the sweeper's) landing between the two is undone, and any beat
    after one replaces its error with none. False when the job is no longer active (it is being
    aborted or has ended) or changed under the beat (the next beat tries again)."""
    queue = job.get_queue()
    if not isinstance(queue, RedisQueue):
        raise TypeError(f"a heartbeat needs SAQ's Redis queue, not {type(queue).__name__}")
    async with queue.redis.pipeline(transaction=True) as pipe:
        await pipe.watch(job.id)
        stored = queue.deserialize(await pipe.get(job.id))
        if stored is None or stored.status != Status.ACTIVE:
            return False
        stored.touched = now()
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.set(job.id, queue.serialize(stored))
        try:
            await pipe.execute()
        except WatchError:
            return False
    job.touched = stored.touched
    return True
