"""The snapshot cron spends a share of GitHub's limit of its own (GITHUB_SNAPSHOT_QUOTA_FRACTION): the
logins every account tracks cannot take a window down to the reserve."""

from __future__ import annotations

import time as clock_time
from datetime import UTC, datetime, time, timedelta
from typing import Any

import msgspec
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.github.analysis import DEFAULT_FILTERS
from app.domains.github.jobs import snapshot_github_profiles
from app.domains.github.services import GithubService
from tests.factories import captured_logs, clocked_github, create_user
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo

LOGINS = [f"tracked-{n:02}" for n in range(20)]


async def test_the_snapshots_stop_at_their_share_and_leave_the_rest_to_the_accounts(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    configured = msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,  # no token: 60 requests an hour, and a 304 costs one
        github_snapshot_hour_utc=4,
        github_snapshot_quota_fraction=0.5,
        github_language_repos=1,
        github_retry_wait_s=0.01,
    )
    for login in [*LOGINS, "looked-up-later"]:
        fake.add_user(login, [FakeRepo(name="r", stars=1, language="Go", languages={"Go": 10})])
    owner = await create_user(db)
    reset = int(clock_time.time()) + 3600
    fake.set_quota(limit=1000, remaining=1000, reset=reset)  # tracking 20 logins costs 60 requests

    async with open_services(configured, [clocked_github(clock)]) as services:
        github = services[GithubService]
        for login in LOGINS:
            await github.track(owner.id, login)
        fake.set_quota(limit=60, remaining=60, reset=reset)  # the hour the cron runs in
        before = fake.charged()
        clock.now = datetime.combine(clock.now.date() + timedelta(days=1), time(5), tzinfo=UTC)
        with captured_logs() as logs:
            taken = await snapshot_github_profiles({"services": services})
        spent_by_snapshots = fake.charged() - before
        other = await create_user(db)
        looked_up = await github.profile(
            "looked-up-later", DEFAULT_FILTERS, top_repos=1, top_languages=1, user_id=other.id
        )

    assert spent_by_snapshots <= 30 + 2, "its share, but for the profile and page a last chain asks first"
    assert taken == spent_by_snapshots // 3 < len(LOGINS)  # a login costs 3: profile, repositories, languages
    [paused] = logs.events("github_snapshots_paused")
    assert paused["reason"] == "share"
    assert looked_up.source == "live", "an account's lookup still has the rest of the window"
    assert fake.violations == 0
