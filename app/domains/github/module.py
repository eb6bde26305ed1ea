"""The GitHub analytics domain as the application sees it."""

from __future__ import annotations

from app.core.modules import Cron, Job, Module
from app.core.services import Services
from app.domains.accounts.services import AccountService
from app.domains.github.controllers import (
    GithubRefreshesController,
    GithubTrackingController,
    GithubUsersController,
)
from app.domains.github.jobs import purge_github_retention, refresh_github_profile, snapshot_github_profiles
from app.domains.github.refreshes import QUEUE
from app.domains.github.services import GithubService


def build_service(s: Services) -> GithubService:
    """The service, and its part of an account's erasure (``GithubService.forget_tracker``)."""
    accounts = s.get(AccountService)
    if accounts is not None:
        accounts.before_erasure(GithubService.forget_tracker)
    # Accounts: a refresh stream ends once its caller's session does (logout, deactivation, demotion).
    return GithubService(s.db, s.settings, s.valkey, s.broadcaster, accounts=accounts, stops=s.stream_stops)


module = Module(
    name="github",
    controllers=[GithubUsersController, GithubTrackingController, GithubRefreshesController],
    service=build_service,
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
