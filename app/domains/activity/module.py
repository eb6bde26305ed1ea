"""The activity feed as the application sees it."""

from __future__ import annotations

from app.core.modules import Cron, Job, Module
from app.core.services import Services
from app.domains.accounts.services import AccountService
from app.domains.activity.cache import FeedCache
from app.domains.activity.controllers import FeedController, ProjectFeedController
from app.domains.activity.events import RECORD_ACTIVITY_TASK
from app.domains.activity.jobs import (
    purge_private_feed_groups,
    record_activities,
    record_activity,
    recover_feed_events,
)
from app.domains.activity.seed import seed_feed
from app.domains.activity.services import ActivityService
from app.domains.projects.services import ProjectService


def build_service(s: Services) -> ActivityService:
    """The service, its part of an account's erasure (``ActivityService.forget_names``), and the hooks
    that keep its cache honest: a reader's cached answers go stale when their memberships or role
    change or a project of theirs is renamed or deleted, every reader's when a user is renamed."""
    cache = FeedCache(s.cache, s.settings.feed_cache_ttl_s)
    if (projects := s.get(ProjectService)) is not None:  # absent only in assemblies without them
        projects.after_delete(cache.project_gone)
        projects.after_rename(cache.project_renamed)
        projects.after_membership_change(lambda user_id, _project_id: cache.scope_changed(user_id))
    if (accounts := s.get(AccountService)) is not None:
        accounts.before_erasure(ActivityService.forget_names)
        accounts.after_access_change(cache.scope_changed)
        accounts.after_rename(lambda _user_id: cache.names_changed())
    return ActivityService(s.db, s.settings, s.broadcaster, cache, s.valkey, accounts, s.stream_stops)


module = Module(
    name="activity",
    controllers=[FeedController, ProjectFeedController],
    service=build_service,
    jobs=[
        Job(
            function=record_activities,
            queue="feed",
            batches=RECORD_ACTIVITY_TASK,
            batch_size=lambda settings: settings.feed_batch_size,
        ),
        Job(function=record_activity, queue="feed"),
        Job(function=recover_feed_events),
    ],
    cron=[
        Cron(function=recover_feed_events, schedule="* * * * *", timeout_s=300),
        Cron(function=purge_private_feed_groups, schedule="17 4 * * *", timeout_s=600),
    ],
    seed=seed_feed,
)
