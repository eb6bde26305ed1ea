"""A failed fetch is remembered for a minute at most, per token (``lookups.failed_key``).

Upstream review: after ``GITHUB_TOKEN`` was set, refreshes failed for up to a minute on a rate limit
remembered from the anonymous window (with its ``Retry-After`` of an hour), while nothing had been
asked with the new token.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app.config import Settings
from app.core.services import open_services
from app.domains.github.client import GitHubRefusedError
from app.domains.github.governor import Priority
from app.domains.github.services import GithubService
from tests.factories import clocked_github
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo


async def test_a_failure_remembered_under_another_token_is_not_this_ones(
    settings: Settings, fake_server: FakeGitHubServer, fake: FakeGitHub, valkey: Any, clock: FakeClock
) -> None:
    fake.add_user("switched", [FakeRepo(name="r", stars=3, languages={"Go": 10})])
    anonymous = msgspec.structs.replace(
        settings, github_api_url=fake_server.url, github_token=None, github_retry_wait_s=0.01
    )
    async with open_services(anonymous, [clocked_github(clock)]) as services:
        lookups = services[GithubService].lookups
        fake.fail(451, path_contains="/users/switched")
        with pytest.raises(GitHubRefusedError):
            await lookups.fetch_shared("switched", Priority.BACKGROUND, newer_than=clock.now)
        fake.clear_requests()
        with pytest.raises(GitHubRefusedError):  # remembered: GitHub is not asked again
            await lookups.fetch_shared("switched", Priority.BACKGROUND, newer_than=clock.now)
        assert fake.recorded("/users/switched") == []

    with_token = msgspec.structs.replace(anonymous, github_token="the-new-token")
    async with open_services(with_token, [clocked_github(clock)]) as services:
        lookups = services[GithubService].lookups
        assert not await lookups.remembers_failure("switched")
        stored = await lookups.fetch_shared("switched", Priority.BACKGROUND, newer_than=clock.now)
    assert stored.data.user.login == "switched"
    assert fake.recorded("/users/switched"), "asked with the new token"
