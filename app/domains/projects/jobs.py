"""Jobs of the projects domain (queue ``default``)."""

from __future__ import annotations

import math

from saq.types import Context

from app.config import Settings
from app.core.services import services_of
from app.domains.projects.services import PURGE_RUN_BUDGET_S, ProjectService

PURGE_TIMEOUT_MARGIN_S = 10
"""What a purge run may need past its budget: the chunk it began before the budget ran out."""


def purge_timeout_s(settings: Settings) -> int:
    """The timeout of a purge job: ``JOB_TIMEOUT_S``, or more when that would cut a run before its
    budget (``PURGE_RUN_BUDGET_S``) is spent and it enqueues its follow-up. Cut there, every run of a
    large purge failed its last chunk and its retries, and waited for the hourly requeue (a review)."""
    return max(settings.job_timeout_s, math.ceil(PURGE_RUN_BUDGET_S) + PURGE_TIMEOUT_MARGIN_S)


async def purge_expired_invitations(ctx: Context) -> int:
    """Daily: the invitations older than ``INVITATION_TTL_S`` are deleted
    (``ProjectService.purge_expired_invitations``)."""
    return await services_of(ctx)[ProjectService].purge_expired_invitations()


async def purge_deleted_project(ctx: Context, *, project_id: int, outbox_id: int | None = None) -> bool:
    """Enqueued (through the outbox) by a project's deletion, by itself when its run's budget is spent,
    and by ``requeue_lost_project_purges``: what the project held is deleted in bounded chunks
    (``ProjectService.purge_deleted_project``); True once nothing of it is left."""
    return await services_of(ctx)[ProjectService].purge_deleted_project(project_id)


async def requeue_lost_project_purges(ctx: Context) -> int:
    """Hourly: a purge job for each project marked for deletion ``PURGE_LOST_AFTER_S`` ago or more that
    still exists (``ProjectService.requeue_lost_purges``)."""
    return await services_of(ctx)[ProjectService].requeue_lost_purges()
