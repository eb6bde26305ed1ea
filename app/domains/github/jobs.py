"""SAQ jobs of the GitHub domain: thin, they call the service."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import structlog
from saq import Job
from saq.types import Context

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
    """Touch ``job`` (``Job.update()``, SAQ's heartbeat: it rewrites the job with a new ``touched``,
    keeping its stored status) every ``heartbeat / BEATS_PER_HEARTBEAT`` seconds while the block
    runs. SAQ does not beat for a job by itself: the sweeper aborts an active job not touched for its
    ``heartbeat``, which is what frees a job whose worker died well before its timeout. By hand:
    litestar-saq's ``monitored_job`` needs its HeartbeatManager thread, which ``app/main.py`` turns
    off (it crashed at shutdown), and it rewrites the job the same way."""
    if job is None or not job.heartbeat:
        yield
        return
    every_s = job.heartbeat / BEATS_PER_HEARTBEAT

    async def beat() -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await job.update()
            except Exception:  # a missed beat; the next may land (two may be missed)
                log.warning("github_job_heartbeat_failed", job=job.key)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def snapshot_github_profiles(ctx: Context) -> int:
    """Hourly: the snapshot day's snapshot of every tracked login that has none yet (a snapshot day
    runs from the snapshot hour to the same hour the next day)."""
    return await services_of(ctx)[GithubService].snapshot_due()


async def purge_github_retention(ctx: Context) -> int:
    """Daily: profiles and snapshots past their retention deleted in bounded chunks (idempotent)."""
    purged = await services_of(ctx)[GithubService].purge_expired()
    return purged.profiles + purged.snapshots
