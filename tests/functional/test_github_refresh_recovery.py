"""A refresh whose job can no longer finish it is reported failed, instead of "running" for a day.

A refresh's state lives in Valkey and only its job writes the final one. A worker killed mid-job
(the sweeper then aborts the job: it has no retry left), a job that failed before its final write, or
an enqueue lost after the state was saved left the state "queued" or "running" for 24 hours, the
client's stream waiting all along, and every refresh of that login for 15 minutes answered with it.
Reading the state now looks the job up once ``REFRESH_JOB_GRACE_S`` has passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
import pytest
from saq.job import Status
from saq.queue.redis import RedisQueue

from app.config import Settings
from app.core.services import open_services
from app.domains.github.analysis import DEFAULT_FILTERS
from app.domains.github.refreshes import REFRESH_JOB_GRACE_S, REFRESH_MIN_AGE_S
from app.domains.github.services import GithubService
from tests.factories import clocked_github, wait_until
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer

GRACE = timedelta(seconds=REFRESH_JOB_GRACE_S)
ACCOUNT = 1


@pytest.fixture
async def github(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    clock: FakeClock,
    db: object,
    valkey: object,
) -> AsyncIterator[GithubService]:
    fake.add_user("ghost", followers=1)
    module = clocked_github(clock)
    configured = msgspec.structs.replace(settings, github_api_url=fake_server.url)
    async with open_services(configured, [module]) as services:
        github = services[GithubService]
        await github.profile("ghost", DEFAULT_FILTERS, top_repos=0, top_languages=1, user_id=ACCOUNT)
        clock.now += timedelta(seconds=REFRESH_MIN_AGE_S)  # a refresh sooner fetches nothing
        yield github


async def test_a_refresh_whose_worker_died_fails_once_its_job_is_aborted(
    github: GithubService, github_queue: RedisQueue, clock: FakeClock
) -> None:
    requested = await github.request_refresh("ghost", user_id=ACCOUNT)
    job = await github_queue.dequeue(timeout=5)  # a worker took it, saved "running", and was killed
    assert job is not None and job.kwargs is not None and job.kwargs["refresh_id"] == str(requested.id)
    await job.update(status=Status.ACTIVE)  # as saq's Worker.process does
    await github.refreshes._save_refresh(
        msgspec.structs.replace(requested, status="running", started_at=clock())
    )

    clock.now += GRACE * 3
    assert (await github.refresh_state(requested.id)).status == "running", "its job is still active"

    await github_queue.finish(job, Status.ABORTED)  # what the sweeper does to a job past its timeout
    state = await github.refresh_state(requested.id)
    assert state.status == "failed" and state.error is not None and state.error.kind == "unavailable"
    again = await github.request_refresh("ghost", user_id=ACCOUNT)
    assert again.id != requested.id and again.status == "queued", "the login is free to refresh again"


async def test_a_refresh_whose_job_is_gone_fails_after_the_grace(
    github: GithubService, github_queue: RedisQueue, clock: FakeClock
) -> None:
    requested = await github.request_refresh("ghost", user_id=ACCOUNT)
    await github_queue.redis.delete(github_queue.job_id("github-refresh:ghost"))  # the enqueue never landed

    clock.now += GRACE / 2
    assert (await github.refresh_state(requested.id)).status == "queued", "within the grace"
    clock.now += GRACE
    assert (await github.refresh_state(requested.id)).status == "failed"


async def test_a_job_that_finished_while_its_state_was_judged_keeps_its_outcome(
    github: GithubService, github_queue: RedisQueue, clock: FakeClock
) -> None:
    requested = await github.request_refresh("ghost", user_id=ACCOUNT)
    judged = msgspec.json.encode(requested)  # read as "queued" ...
    await github.refreshes._finish_refresh(requested, None, fetched_at=clock())  # ... then the job finished
    clock.now += GRACE * 2

    assert (await github.refreshes._abandoned(requested, judged)).status == "succeeded"
    assert (await github.refresh_state(requested.id)).status == "succeeded"


async def test_a_job_that_runs_after_its_refresh_was_judged_lost_changes_nothing(
    github: GithubService, github_queue: RedisQueue, clock: FakeClock, fake: FakeGitHub
) -> None:
    """Clients were told ``failed`` (their streams ended): a job the queue still runs afterwards
    (taken by a worker that stalled) neither fetches nor changes the outcome."""
    requested = await github.request_refresh("ghost", user_id=ACCOUNT)
    await github_queue.redis.delete(github_queue.job_id("github-refresh:ghost"))
    clock.now += GRACE * 2
    assert (await github.refresh_state(requested.id)).status == "failed"
    fetches = len(fake.recorded())

    assert await github.run_refresh("ghost", requested.id) == "failed"
    assert (await github.refresh_state(requested.id)).status == "failed"
    assert len(fake.recorded()) == fetches


@pytest.mark.parametrize("stopping", [True, False], ids=["worker-stop", "timeout-or-abort"])
async def test_a_refresh_cut_by_its_workers_stop_is_handed_back_to_the_job_run_again(
    github: GithubService,
    github_queue: RedisQueue,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    stopping: bool,
) -> None:
    """SAQ queues a job its worker's stop cancelled again (whatever its retries): the refresh goes back
    to "queued", a refresh asked meanwhile joins it, and the job's next run finishes it. It was
    reported failed, and the refresh asked next had no job (the job key was taken by the cut one): it
    too failed, "lost", after the grace. A job cancelled otherwise (a timeout, an abort) is not run
    again: that refresh fails at once, as before."""
    requested = await github.request_refresh("ghost", user_id=ACCOUNT)
    job = await github_queue.dequeue(timeout=5)
    assert job is not None
    await job.update(status=Status.ACTIVE)
    fetch = github.lookups.fetch_paid
    monkeypatch.setattr(github.lookups, "fetch_paid", lambda *args, **kwargs: asyncio.Event().wait())
    if stopping:
        github.stopping()
    run = asyncio.create_task(github.run_refresh("ghost", requested.id, user_id=ACCOUNT))

    async def running() -> bool:
        return (await github.refresh_state(requested.id)).status == "running"

    await wait_until(running, 30, "the job runs")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    if not stopping:
        assert (await github.refresh_state(requested.id)).status == "failed"
        return
    await github_queue.retry(job, "cancelled")  # what SAQ does with a job its stop cancelled

    assert (await github.refresh_state(requested.id)).status == "queued"
    assert (await github.request_refresh("ghost", user_id=ACCOUNT)).id == requested.id, "joined"
    clock.now += GRACE * 3
    assert (await github.refresh_state(requested.id)).status == "queued", "its job is queued again"

    monkeypatch.setattr(github.lookups, "fetch_paid", fetch)
    again = await github_queue.dequeue(timeout=5)
    assert again is not None and again.id == job.id
    assert await github.run_refresh("ghost", requested.id, user_id=ACCOUNT) == "succeeded"
    assert (await github.refresh_state(requested.id)).status == "succeeded"
