"""Two processes (two service registries on one PostgreSQL and Valkey) never fetch a login twice
because one looked just before the other's fetch chain ended.

The interleaving these tests pin down is what a burst of cold requests across two workers hits at
random: worker B reads "no profile" while worker A's chain is still running; A stores its result and
frees the fetch lock; B then finds the lock free. B must answer A's profile, not ask GitHub again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import msgspec
import pytest

from app.config import Settings
from app.core.services import open_services
from app.domains.github.analysis import DEFAULT_FILTERS
from app.domains.github.governor import Priority
from app.domains.github.refreshes import REFRESH_MIN_AGE_S
from app.domains.github.services import GithubService
from tests.factories import clocked_github
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, repos_named

ACCOUNT = 1


@pytest.fixture
def cold(fake: FakeGitHub) -> str:
    fake.add_user("cold", repos_named(3, language="Go", languages={"Go": 10}))
    return "cold"


@pytest.fixture
async def workers(
    settings: Settings, fake_server: FakeGitHubServer, clock: FakeClock, db: object, valkey: object
) -> AsyncIterator[tuple[GithubService, GithubService]]:
    configured = msgspec.structs.replace(
        settings, github_api_url=fake_server.url, github_language_repos=2, github_retry_wait_s=0.01
    )
    module = clocked_github(clock)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_services(configured, [module]))
        b = await stack.enter_async_context(open_services(configured, [module]))
        yield a[GithubService], b[GithubService]


def chains(fake: FakeGitHub) -> int:
    return [r.path for r in fake.recorded()].count("/users/cold")


async def test_a_cold_caller_takes_the_profile_another_process_stored_after_it_looked(
    workers: tuple[GithubService, GithubService], fake: FakeGitHub, clock: FakeClock, cold: str
) -> None:
    a, b = workers
    stored_by_a = await a.profile(cold, DEFAULT_FILTERS, top_repos=5, top_languages=5, user_id=ACCOUNT)
    clock.now += timedelta(seconds=1)

    # B's request read no profile before A stored one; its fetch starts only now, with the lock free.
    answer = await b.lookups.fetch_shared(cold, Priority.INTERACTIVE, newer_than=None)

    assert answer.fetched_at == stored_by_a.fetched_at
    assert chains(fake) == 1


async def test_a_refresh_is_answered_by_a_fetch_that_ended_after_it_was_requested(
    workers: tuple[GithubService, GithubService], fake: FakeGitHub, clock: FakeClock, cold: str
) -> None:
    a, b = workers
    refresh = await b.refreshes.join_or_enqueue(cold, ACCOUNT)  # nothing stored yet: only the service may
    assert refresh is not None
    clock.now += timedelta(seconds=1)
    stored_by_a = await a.profile(cold, DEFAULT_FILTERS, top_repos=5, top_languages=5, user_id=ACCOUNT)

    assert await b.run_refresh(cold, refresh.id) == "succeeded"

    state = await b.refresh_state(refresh.id)
    assert state.fetched_at == stored_by_a.fetched_at
    assert chains(fake) == 1


async def test_a_refresh_requested_after_the_last_fetch_fetches_again(
    workers: tuple[GithubService, GithubService], fake: FakeGitHub, clock: FakeClock, cold: str
) -> None:
    a, b = workers
    stored_by_a = await a.profile(cold, DEFAULT_FILTERS, top_repos=5, top_languages=5, user_id=ACCOUNT)
    clock.now += timedelta(seconds=REFRESH_MIN_AGE_S)  # a refresh sooner fetches nothing
    refresh = await b.request_refresh(cold, user_id=ACCOUNT)

    assert await b.run_refresh(cold, refresh.id) == "succeeded"

    state = await b.refresh_state(refresh.id)
    assert state.fetched_at is not None and state.fetched_at > stored_by_a.fetched_at
    assert chains(fake) == 2
