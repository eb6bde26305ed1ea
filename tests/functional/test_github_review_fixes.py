"""Review fixes of the GitHub domain.

- Refreshes spend the quota every account shares, so they are charged to the account that asked
  (``POST …/refresh``, or the reader of a stale answer), like its cold lookups, and refused past its
  share; a refresh of a profile fetched moments ago fetches nothing.
- Without a token, a 304 costs GitHub's rate limit like any other answer (GitHub's docs: a 304 is
  free only "if the request was made while correctly authorized with an Authorization header").
- The history route says what it answers for a login without snapshots (200, no points; the 404
  every route with a path parameter documents is the router's).
- A refresh job has a SAQ heartbeat that its run keeps up: a job on a dead worker is swept within
  the heartbeat, not after the 600 s timeout; a beat never undoes an abort or rewrites its error.
- A fetch waiting for another process's polls only the profile's ``fetched_at``; the whole row is read
  once it changed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from psycopg import AsyncConnection
from saq.job import Status
from saq.queue.redis import RedisQueue
from saq.utils import now as saq_now
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.heartbeat import touch_if_active, with_heartbeat
from app.core.services import open_services
from app.domains.github.analysis import DEFAULT_FILTERS
from app.domains.github.client import GitHubDownError
from app.domains.github.governor import Priority
from app.domains.github.jobs import refresh_github_profile
from app.domains.github.lookups import POLL_S
from app.domains.github.module import module as github_module
from app.domains.github.services import GithubService
from tests.factories import Actor, assert_problem, captured_logs, make_user, serve_in_loop, wait_until
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo
from tests.functional.test_github_fair_share import TURN_LOCK, two_repos

TOKEN = "review-fixes-token"


@pytest.fixture
def github_settings(
    settings: Settings, fake_server: FakeGitHubServer, db: object, valkey: object
) -> Settings:
    return msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_retry_wait_s=0.01,
        github_timeout_s=2.0,
        rate_limit_default_per_minute=100_000,
        rate_limit_default_per_hour=1_000_000,
    )


@pytest.fixture
def with_token(github_settings: Settings, fake: FakeGitHub) -> Settings:
    """A token whose limit is 100 an hour: an account's share is 20 requests."""
    fake.set_quota(token=TOKEN, limit=100, remaining=100, reset=int(time.time()) + 3600)
    return msgspec.structs.replace(github_settings, github_token=TOKEN)


async def work_one(settings: Settings, queue: RedisQueue) -> tuple[str, dict[str, Any]]:
    """What a worker does with the next refresh job: its outcome and the job's arguments."""
    job = await queue.dequeue(timeout=5)
    assert job is not None and job.kwargs is not None
    async with open_services(settings, [github_module]) as services:
        context: Any = {"services": services, "job": job}  # what the worker's hooks give a job
        outcome = await refresh_github_profile(context, **job.kwargs)
    await queue.finish(job, Status.COMPLETE, result=outcome)
    return outcome, dict(job.kwargs)


async def nobody_pays() -> None:
    """A chain's payer for the tests that call its wait for another process directly: none."""


async def spent(valkey: Valkey, account: Actor) -> int:
    """GitHub requests charged to the account's share in this window."""
    return int(await valkey.get(f"github:lookup-spent:{account.id}") or 0)


async def age(db: AsyncConnection[Any], login: str, by: timedelta = timedelta(hours=2)) -> None:
    await db.execute("update github_profiles set fetched_at = fetched_at - %s where login = %s", (by, login))


async def spend_share(client: httpx.AsyncClient, account: Actor, fake: FakeGitHub) -> None:
    """Cold lookups until the account's share (20 of 100) is spent: each costs 3."""
    for index in range(8):
        fake.add_user(f"someone{index}", [FakeRepo(name="r", size=1, languages={"Go": 1})])
    answers = [await client.get(f"/api/github/users/someone{i}", headers=account.headers) for i in range(8)]
    assert [answer.status_code for answer in answers] == [200] * 7 + [429]


# -- 1. refreshes are charged to the account that asked -------------------------------------------


async def test_one_accounts_refreshes_spend_only_its_own_share(
    with_token: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey, github_queue: RedisQueue
) -> None:
    active = fake.add_user("active", two_repos())
    async with serve_in_loop(with_token) as served:
        client = served.client
        greedy = await make_user(db, served.app, name="Greedy")
        other = await make_user(db, served.app, name="Other")
        assert (await client.get("/api/github/users/active", headers=other.headers)).status_code == 200
        before = fake.charged(TOKEN)

        refused: httpx.Response | None = None
        rounds = 0
        charged_to: list[object] = []
        while refused is None and rounds < 40:
            rounds += 1
            await age(db, "active")  # stale: far past the refresh's minimum age
            active.followers = rounds  # an active account: its profile changes between refreshes
            for repo in active.repos:
                repo.stars = rounds
            posted = await client.post("/api/github/users/active/refresh", headers=greedy.headers)
            if posted.status_code == 429:
                refused = posted
                break
            assert posted.status_code == 202, posted.text
            outcome, kwargs = await work_one(with_token, github_queue)
            assert outcome == "succeeded"
            charged_to.append(kwargs.get("user_id"))
        by_greedy = fake.charged(TOKEN) - before

        assert refused is not None, f"{rounds} refreshes were accepted, spending {by_greedy} of 100"
        body = assert_problem(refused, 429, "github-lookup-budget")
        assert "20 GitHub requests per hour" in body["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 3602
        # Checked before, charged after: at most one refresh's cost (2: the profile and the page of
        # repositories changed, the /languages revalidated free with a token) past the share.
        assert 20 <= by_greedy <= 22 and await spent(valkey, greedy) == by_greedy
        assert charged_to == [greedy.id] * len(charged_to), "each refresh job names the account"

        stale = await client.get("/api/github/users/active", headers=greedy.headers)
        assert stale.status_code == 200 and stale.json()["stale"] is True
        assert stale.json()["refresh"] is None, "past its share: the stale data, no refresh"
        assert await github_queue.count("queued") == 0

        theirs = await client.post("/api/github/users/active/refresh", headers=other.headers)
        assert theirs.status_code == 202, "another account's share is untouched"


async def test_a_stale_reads_refresh_is_charged_to_the_reader(
    with_token: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey, github_queue: RedisQueue
) -> None:
    user = fake.add_user("watched", two_repos())
    async with serve_in_loop(with_token) as served:
        storer = await make_user(db, served.app, name="Storer")
        reader = await make_user(db, served.app, name="Reader")
        assert (
            await served.client.get("/api/github/users/watched", headers=storer.headers)
        ).status_code == 200
        stored_cost = await spent(valkey, storer)
        await age(db, "watched")
        user.followers = 7

        stale = await served.client.get("/api/github/users/watched", headers=reader.headers)
        assert stale.json()["refresh"]["status"] == "queued"
        outcome, kwargs = await work_one(with_token, github_queue)

    assert outcome == "succeeded" and kwargs["user_id"] == reader.id
    assert await spent(valkey, reader) == 1, "the changed profile; the rest answered 304 (free with a token)"
    assert await spent(valkey, storer) == stored_cost


async def test_a_refresh_another_account_asked_for_costs_the_second_account_nothing(
    with_token: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey, github_queue: RedisQueue
) -> None:
    user = fake.add_user("shared", two_repos())
    fake.add_user("elsewhere", two_repos())
    async with serve_in_loop(with_token) as served:
        client = served.client
        asker = await make_user(db, served.app, name="Asker")
        spender = await make_user(db, served.app, name="Spender")
        for login in ("shared", "elsewhere"):
            assert (await client.get(f"/api/github/users/{login}", headers=asker.headers)).status_code == 200
        await spend_share(client, spender, fake)
        spender_spent, asker_spent = await spent(valkey, spender), await spent(valkey, asker)
        await age(db, "shared")
        await age(db, "elsewhere")
        user.followers = 3

        asked = await client.post("/api/github/users/shared/refresh", headers=asker.headers)
        joined = await client.post("/api/github/users/shared/refresh", headers=spender.headers)
        own = await client.post("/api/github/users/elsewhere/refresh", headers=spender.headers)
        outcome, kwargs = await work_one(with_token, github_queue)

    assert asked.status_code == joined.status_code == 202
    assert joined.json()["id"] == asked.json()["id"], "the pending refresh is shared, not a new one"
    assert_problem(own, 429, "github-lookup-budget")
    assert int(own.headers["retry-after"]) >= 1
    assert outcome == "succeeded" and kwargs["user_id"] == asker.id
    assert await spent(valkey, spender) == spender_spent
    assert await spent(valkey, asker) == asker_spent + 1


async def test_a_refresh_of_a_profile_fetched_moments_ago_answers_the_stored_state(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], github_queue: RedisQueue
) -> None:
    fake.add_user("recent", two_repos())
    async with serve_in_loop(github_settings) as served:
        client = served.client
        account = await make_user(db, served.app)
        profile = (await client.get("/api/github/users/recent", headers=account.headers)).json()
        asked = len(fake.recorded())

        posted = await client.post("/api/github/users/recent/refresh", headers=account.headers)
        again = await client.post("/api/github/users/recent/refresh", headers=account.headers)
        state = await client.get(posted.json()["state_url"], headers=account.headers)

        assert posted.status_code == 200, posted.text
        refresh = posted.json()
        assert refresh["status"] == "succeeded" and refresh["fetched_at"] == profile["fetched_at"]
        assert again.json()["id"] == refresh["id"]
        assert state.status_code == 200 and state.json()["status"] == "succeeded"
        assert await github_queue.count("queued") == 0 and len(fake.recorded()) == asked, "nothing fetched"

        # Older than any minimum age (at most the TTL), yet not stale.
        await age(db, "recent", timedelta(seconds=github_settings.github_profile_ttl_s - 5))
        later = await client.post("/api/github/users/recent/refresh", headers=account.headers)
        assert later.status_code == 202 and later.json()["status"] == "queued"
        assert (await client.get("/api/github/users/recent", headers=account.headers)).json()[
            "stale"
        ] is False


# -- 2. without a token, a 304 is charged ---------------------------------------------------------


async def test_the_fake_charges_an_anonymous_304_and_not_an_authorized_one(
    fake: FakeGitHub, fake_server: FakeGitHubServer
) -> None:
    fake.add_user("etagged")
    async with httpx.AsyncClient(base_url=fake_server.url) as http:
        for token in (None, TOKEN):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            first = await http.get("/users/etagged", headers=headers)
            second = await http.get(
                "/users/etagged", headers={**headers, "If-None-Match": first.headers["etag"]}
            )
            assert second.status_code == 304
            assert fake.charged(token) == (2 if token is None else 1), token
            assert second.headers["x-ratelimit-used"] == str(fake.charged(token))


@pytest.mark.parametrize(("token", "revalidation_cost"), [(None, 4), (TOKEN, 0)])
async def test_revalidating_costs_the_account_only_what_github_charges(
    with_token: Settings,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Valkey,
    token: str | None,
    revalidation_cost: int,
) -> None:
    fake.add_user("kept", two_repos())
    async with serve_in_loop(msgspec.structs.replace(with_token, github_token=token)) as served:
        account = await make_user(db, served.app)
        assert (await served.client.get("/api/github/users/kept", headers=account.headers)).status_code == 200
        first = await spent(valkey, account)
        await db.execute("delete from github_profiles")  # purged; the ETags of its answers are kept
        again = await served.client.get("/api/github/users/kept", headers=account.headers)

    assert again.status_code == 200 and again.json()["source"] == "live"
    assert first == 4, "the user, its repositories, two repositories' languages"
    assert {r.status for r in fake.recorded()[4:]} == {304}
    assert fake.charged(token) == first + revalidation_cost
    assert await spent(valkey, account) == first + revalidation_cost


# -- 3. the history route's documented answers ----------------------------------------------------


async def test_the_history_route_says_and_documents_that_an_unknown_login_is_not_a_404(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    """A login without snapshots is a 200 with no points: the route documents no 404."""
    async with serve_in_loop(github_settings) as served:
        account = await make_user(db, served.app)
        schema = (await served.client.get("/schema/openapi.json")).json()
        unknown = await served.client.get("/api/github/users/nobody-at-all/history", headers=account.headers)
    route = schema["paths"]["/api/github/users/{username}/history"]["get"]
    assert "answers 200 with no points" in route["description"]
    assert "404" not in route["responses"]
    assert unknown.status_code == 200 and unknown.json()["points"] == []
    assert fake.recorded() == [], "history never asks GitHub"


# -- 4. the refresh job's heartbeat; the cross-process poll --------------------------------------


async def test_a_running_refresh_keeps_its_heartbeat_and_is_not_swept(
    github_settings: Settings,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Valkey,
    github_queue: RedisQueue,
) -> None:
    user = fake.add_user("beating", two_repos())
    async with open_services(github_settings, [github_module]) as services:
        github = services[GithubService]
        await github.profile("beating", DEFAULT_FILTERS, top_repos=0, top_languages=1, user_id=1)
        await age(db, "beating")
        user.followers = 5
        requested = await github.request_refresh("beating", user_id=1)
        stored = await github_queue.job("github-refresh:beating")
        assert stored is not None and 0 < stored.heartbeat <= 60, (
            "a dead worker's job is swept within a minute"
        )

        job = await github_queue.dequeue(timeout=5)
        assert job is not None and job.kwargs is not None
        job.heartbeat = 1  # a second, so the test waits for beats, not for 30 s
        job.started = saq_now()
        job.attempts += 1
        await job.update(status=Status.ACTIVE)  # what a worker does before it runs the job
        await valkey.set(TURN_LOCK, "the-test", px=60_000)  # the run waits for GitHub's turn

        async def beaten_twice() -> bool:  # two heartbeats past the start
            current = await github_queue.job(job.key)
            return current is not None and current.touched - job.started >= 2000

        context: Any = {"services": services, "job": job}
        running = asyncio.create_task(with_heartbeat(refresh_github_profile)(context, **job.kwargs))
        try:
            await wait_until(beaten_twice, 30, "the running job touched its heartbeat twice past it")
            swept = await github_queue.sweep()
            current = await github_queue.job(job.key)
            assert swept == [] and current is not None and current.status == Status.ACTIVE
            assert not running.done()
        finally:
            await valkey.delete(TURN_LOCK)  # the run gets its turn and ends, whatever was asserted
            outcome = await running
        assert outcome == "succeeded"
        assert (await github.refresh_state(requested.id)).status == "succeeded"


async def test_a_heartbeat_leaves_an_aborted_job_as_the_abort_wrote_it(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], github_queue: RedisQueue
) -> None:
    """The dashboard aborts a running refresh: the worker reads the stored status (``aborting``) and
    the error it shows. SAQ's ``Job.update()`` wrote the worker's in-memory job back (error: none) on
    every beat after an abort, and back to ``active`` when the abort landed between its read and
    write; a beat touches only an active job's ``touched``."""
    fake.add_user("aborted", two_repos())
    async with open_services(github_settings, [github_module]) as services:
        github = services[GithubService]
        await github.profile("aborted", DEFAULT_FILTERS, top_repos=0, top_languages=1, user_id=1)
        await age(db, "aborted")
        await github.request_refresh("aborted", user_id=1)
        job = await github_queue.dequeue(timeout=5)
        assert job is not None
        job.started = saq_now()
        job.attempts += 1
        await job.update(status=Status.ACTIVE)  # what a worker does before it runs the job

        assert await touch_if_active(job), "an active job is touched"
        touched = await github_queue.job(job.key)
        assert touched is not None and touched.status == Status.ACTIVE and touched.touched == job.touched

        await github_queue.abort(touched, "aborted from the dashboard")
        aborting = await github_queue.redis.get(job.id)
        kept_alive = await touch_if_active(job)
        stored = await github_queue.job(job.key)
        assert stored is not None and stored.status == Status.ABORTING
        assert stored.error == "aborted from the dashboard"
        assert await github_queue.redis.get(job.id) == aborting, "the abort's record is left as it was"
        assert not kept_alive, "an aborting job is not kept alive"


async def test_a_fetch_waiting_for_another_process_reads_the_whole_profile_only_when_it_changed(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    fake.add_user("polled", two_repos())
    configured = msgspec.structs.replace(github_settings, github_cold_wait_s=1.0, github_chain_timeout_s=1.0)
    async with open_services(configured, [github_module]) as services:
        github = services[GithubService]
        await github.profile("polled", DEFAULT_FILTERS, top_repos=0, top_languages=1, user_id=1)
        row = await (await db.execute("select data, fetched_at from github_profiles")).fetchone()
        assert row is not None
        data, known = row[0], row[1]
        assert isinstance(known, datetime)
        await valkey.set("github:fetch:polled", "another-process", px=60_000)  # its chain is under way

        async def unreadable_reads() -> int:
            """Polls until the wait's deadline; counts the reads of the whole (unreadable) row."""
            with captured_logs() as logs, pytest.raises(GitHubDownError):
                await github.lookups._fetch_across_processes(
                    "polled", Priority.BACKGROUND, known, nobody_pays
                )
            return len(logs.events("github_stored_profile_unreadable"))

        await db.execute("update github_profiles set data = '{}'::jsonb")
        assert await unreadable_reads() == 0, "unchanged (fetched_at): the whole row is never read"
        await db.execute("update github_profiles set fetched_at = fetched_at + interval '1 second'")
        assert await unreadable_reads() == 1, "changed: read once"
        await db.execute(
            "update github_profiles set data = %s, fetched_at = %s",
            (msgspec.json.encode(data).decode(), known + timedelta(seconds=2)),
        )
        answer = await github.lookups._fetch_across_processes(
            "polled", Priority.BACKGROUND, known, nobody_pays
        )
        assert answer.fetched_at == known + timedelta(seconds=2)


async def test_a_refresh_meeting_a_finished_refreshs_lingering_job_is_not_answered_with_that_refresh(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A refresh's run ended (its state final, the login's pending marker freed) while SAQ still
    holds its job under the login's key (the moment before ``job.finish``, a worker killed there until
    the sweep, an abort's few seconds): a new refresh cannot be enqueued, and must not be answered
    with the old, final one (a 200 means "fetched moments ago, succeeded")."""
    fake.add_user("raced", two_repos())
    async with serve_in_loop(github_settings) as served:
        account = await make_user(db, served.app)
        path = "/api/github/users/raced"
        assert (await served.client.get(path, headers=account.headers)).status_code == 200
        await age(db, "raced")
        first = await served.client.post(f"{path}/refresh", headers=account.headers)
        assert first.status_code == 202, first.text
        old_id = first.json()["id"]
        raw = await valkey.get(f"github:refresh:{old_id}")
        assert raw is not None
        ended = msgspec.json.decode(raw)
        failed_at = ended["requested_at"]
        ended.update(status="failed", finished_at=failed_at, error={"kind": "unavailable", "at": failed_at})
        await valkey.set(f"github:refresh:{old_id}", msgspec.json.encode(ended))
        await valkey.delete("github:refresh-pending:raced")

        again = await served.client.post(f"{path}/refresh", headers=account.headers)
    assert again.status_code == 202, again.text
    assert again.json()["id"] != old_id and again.json()["status"] == "queued"


async def test_a_job_waits_for_another_process_s_fetch_longer_than_a_request_would(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A refresh job whose login another process is fetching waits for that fetch as long as its chain
    may take (GITHUB_CHAIN_TIMEOUT_S), not a request's GITHUB_COLD_WAIT_S: the job failed as
    unavailable while the other process's fetch was about to succeed."""
    fake.add_user("slow", two_repos())
    configured = msgspec.structs.replace(
        github_settings, github_cold_wait_s=1.0, github_chain_timeout_s=120.0
    )
    async with open_services(configured, [github_module]) as services:
        github = services[GithubService]
        await github.profile("slow", DEFAULT_FILTERS, top_repos=0, top_languages=1, user_id=1)
        row = await (await db.execute("select fetched_at from github_profiles")).fetchone()
        assert row is not None
        known = row[0]
        await valkey.set("github:fetch:slow", "another-process", px=60_000)  # its chain is under way
        job = asyncio.ensure_future(
            github.lookups._fetch_across_processes("slow", Priority.BACKGROUND, known, nobody_pays)
        )
        request = asyncio.ensure_future(
            github.lookups._fetch_across_processes("slow", Priority.INTERACTIVE, known, nobody_pays)
        )
        with pytest.raises(GitHubDownError):  # the request gives up after GITHUB_COLD_WAIT_S
            await request
        gave_up, _ = await asyncio.wait({job}, timeout=10 * POLL_S)  # a few of its polls: still waiting
        assert not gave_up, "the job gave up with the request"
        await db.execute("update github_profiles set fetched_at = fetched_at + interval '1 second'")
        answer = await job  # the other process stored its fetch
        assert answer.fetched_at == known + timedelta(seconds=1)
