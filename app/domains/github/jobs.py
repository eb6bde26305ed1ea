"""SAQ jobs of the GitHub domain: thin, they call the service."""

from __future__ import annotations

import uuid

from saq.types import Context

from app.core.services import services_of
from app.domains.github.services import GithubService


async def refresh_github_profile(
    ctx: Context, *, login: str, refresh_id: str, user_id: int | None = None
) -> str:
    """One refresh (``POST …/refresh`` or a stale read), charged to ``user_id``, the account that asked
    (absent from jobs enqueued by an earlier release); its outcome is stored and pushed over SSE.
    Its heartbeat (a refresh may wait minutes for GitHub's turn) is kept by ``with_heartbeat``, as
    every job's."""
    return await services_of(ctx)[GithubService].run_refresh(login, uuid.UUID(refresh_id), user_id=user_id)


async def snapshot_github_profiles(ctx: Context) -> int:
    """Hourly: the snapshot day's snapshot of every tracked login that has none yet (a snapshot day
    runs from the snapshot hour to the same hour the next day)."""
    return await services_of(ctx)[GithubService].snapshot_due()


async def purge_github_retention(ctx: Context) -> int:
    """Daily: profiles and snapshots past their retention deleted in bounded chunks (idempotent)."""
    purged = await services_of(ctx)[GithubService].purge_expired()
    return purged.profiles + purged.snapshots
