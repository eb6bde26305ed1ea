"""SAQ jobs of the GitHub domain: thin, they call the service."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import structlog
from redis.exceptions import WatchError
from saq import Job
from saq.job import Status
from saq.queue.redis import RedisQueue
from saq.types import Context
from saq.utils import now

from app.core.repeating import repeating
from app.core.services import services_of
from app.domains.github.services import GithubService

log = structlog.get_logger("app.github.jobs")

BEATS_PER_HEARTBEAT = 3
"""How often a running job touches its heartbeat within one: two missed beats still keep it alive."""


async def refresh_github_profile(
    ctx: Context, *, login: str, refresh_id: str, user_id: int | None = None
) -> str:
    """One refresh (``POST …/refresh`` or a stale read), charged to ``user_id``, the account that asked
    (absent from jobs enqueued by an earlier release); its outcome is stored and pushed over SSE.
    It keeps its SAQ heartbeat while it runs (a refresh may wait minutes for GitHub's turn)."""
    async with _heartbeat(ctx.get("job")):
        return await services_of(ctx)[GithubService].run_refresh(
            login, uuid.UUID(refresh_id), user_id=user_id
        )


@contextlib.asynccontextmanager
async def _heartbeat(job: Job | None) -> AsyncIterator[None]:
    """Touch ``job`` (``touch_if_active``) every ``heartbeat / BEATS_PER_HEARTBEAT`` seconds while
    the block runs. SAQ does not beat for a job by itself: the sweeper aborts an active job not touched
    for its ``heartbeat``, which is what frees a job whose worker died well before its timeout. By hand:
    litestar-saq's ``monitored_job`` needs its HeartbeatManager thread, which ``app/main.py`` turns
    off (it crashed at shutdown), and it beats with ``Job.update()``, which can undo an abort."""
    if job is None or not job.heartbeat:
        yield
        return

    async def beat() -> None:
        try:
            await touch_if_active(job)
        except Exception:  # a missed beat; the next may land (two may be missed)
            log.warning("github_job_heartbeat_failed", job=job.key)

    async with repeating(beat, job.heartbeat / BEATS_PER_HEARTBEAT):
        yield


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


async def snapshot_github_profiles(ctx: Context) -> int:
    """Hourly: the snapshot day's snapshot of every tracked login that has none yet (a snapshot day
    runs from the snapshot hour to the same hour the next day)."""
    return await services_of(ctx)[GithubService].snapshot_due()


async def purge_github_retention(ctx: Context) -> int:
    """Daily: profiles and snapshots past their retention deleted in bounded chunks (idempotent)."""
    purged = await services_of(ctx)[GithubService].purge_expired()
    return purged.profiles + purged.snapshots
