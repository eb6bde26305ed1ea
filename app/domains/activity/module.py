"""The activity feed as the application sees it."""

from __future__ import annotations

from app.core.modules import Job, Module
from app.domains.activity.controllers import FeedController, ProjectFeedController
from app.domains.activity.events import RECORD_ACTIVITY_TASK
from app.domains.activity.jobs import record_activities, record_activity
from app.domains.activity.seed import seed_feed
from app.domains.activity.services import ActivityService

module = Module(
    name="activity",
    controllers=[FeedController, ProjectFeedController],
    service=lambda s: ActivityService(s.db, s.settings, s.broadcaster),
    jobs=[
        Job(
            function=record_activities,
            queue="feed",
            batches=RECORD_ACTIVITY_TASK,
            batch_size=lambda settings: settings.feed_batch_size,
        ),
        Job(function=record_activity, queue="feed"),
    ],
    seed=seed_feed,
)
