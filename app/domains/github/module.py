"""The GitHub analytics domain as the application sees it."""

from __future__ import annotations

from app.core.modules import Cron, Job, Module
from app.domains.accounts.services import AccountService
from app.domains.github.controllers import (
    GithubRefreshesController,
    GithubTrackingController,
    GithubUsersController,
)
from app.domains.github.jobs import purge_github_retention, refresh_github_profile, snapshot_github_profiles
from app.domains.github.refreshes import QUEUE
from app.domains.github.services import GithubService

module = Module(
    name="github",
    controllers=[GithubUsersController, GithubTrackingController, GithubRefreshesController],
    # Accounts: a refresh stream ends once its caller's session does (logout, deactivation, demotion).
    service=lambda s: GithubService(
        s.db, s.settings, s.valkey, s.broadcaster, accounts=s.get(AccountService), stops=s.stream_stops
    ),
    # Its own queue: a burst of refreshes (or a long snapshot run) never delays the platform's jobs.
    jobs=[Job(function=refresh_github_profile, queue=QUEUE)],
    # Hourly; a snapshot day runs from GITHUB_SNAPSHOT_HOUR_UTC to the same hour the next day and the
    # job skips logins done that day, so the snapshot hour is a setting and a missed run is caught up
    # an hour later (after midnight too).
    # The retention runs daily, away from the snapshot hour's minute (GITHUB_*_RETENTION_DAYS).
    cron=[
        Cron(function=snapshot_github_profiles, schedule="23 * * * *", queue=QUEUE, timeout_s=1800),
        Cron(function=purge_github_retention, schedule="41 2 * * *", queue=QUEUE, timeout_s=1800),
    ],
)
