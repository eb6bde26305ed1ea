"""One account cannot take what every account shares: GitHub's quota, the token's turn, the job queue.

- Cold lookups (users not stored yet) spend GitHub's hourly quota, shared by every account: each
  account's may cost a share of it, then 429 ``github-lookup-budget`` until GitHub's window ends.
- Requests to GitHub go one at a time per token: an account has at most two cold lookups under way
  (more: 429 ``github-lookups-in-flight``), so its burst cannot queue another account's lookup past
  the wait budget; a lookup that waits its budget out says so (503 ``github-busy``), not "rate limit".
- Refreshes run on the ``github`` queue, not the ``default`` one where alert delivery and the
  monitoring crons run; an account has at most five pending (more: 429 ``github-refresh-limit``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
import redis.asyncio as redis
from litestar_saq import SAQPlugin
from psycopg import AsyncConnection
from saq import Job
from saq.job import Status
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.queues import build_saq_config
from app.core.services import Services, open_services
from app.db.models import UserRole
from app.domains.github.jobs import refresh_github_profile
from app.domains.github.module import module as github_module
from app.domains.github.services import GithubService
from app.modules import MODULES
from tests.factories import assert_problem, make_user, serve_in_loop, wait_until
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo

TOKEN = "fair-share-token"
GITHUB_QUEUE = "github"
TURN_LOCK = "github:gov:anonymous:lock"
"""The governor's lock of the anonymous token: held by a test, no request to GitHub gets its turn."""


@pytest.fixture
def github_settings(
    settings: Settings, fake_server: FakeGitHubServer, db: object, valkey: object
) -> Settings:
    return msgspec.structs.replace(
        settings, github_api_url=fake_server.url, github_retry_wait_s=0.01, github_timeout_s=2.0
    )


def two_repos() -> list[FakeRepo]:
    return [FakeRepo(name=f"r{j}", size=100 + j, languages={"Go": 10}) for j in range(2)]


async def under_way(valkey: Valkey, *logins: str) -> bool:
    """Every login's fetch chain holds its fetch lock (it is in flight)."""
    return bool(await valkey.exists(*(f"github:fetch:{login}" for login in logins)) == len(logins))


# -- the quota every account shares ---------------------------------------------------------------


async def test_one_accounts_cold_lookups_leave_the_shared_quota_to_the_others(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    for index in range(20):
        fake.add_user(f"someone{index}", two_repos())
    fake.add_user("wanted")
    async with serve_in_loop(github_settings) as served:
        greedy = await make_user(db, served.app, name="Greedy")
        other = await make_user(db, served.app, name="Other")

        answers = [
            await served.client.get(f"/api/github/users/someone{index}", headers=greedy.headers)
            for index in range(20)
        ]
        stored = await served.client.get("/api/github/users/someone0", headers=greedy.headers)
        theirs = await served.client.get("/api/github/users/wanted", headers=other.headers)

    # Without a token GitHub allows 60 requests an hour; an account's share is a fifth: 12. Each
    # lookup costs 4 (the user, its repositories, two repositories' languages).
    assert [answer.status_code for answer in answers] == [200] * 3 + [429] * 17
    refused = assert_problem(answers[3], 429, "github-lookup-budget")
    assert "12 GitHub requests per hour" in refused["detail"] and "limit of 60" in refused["detail"]
    assert 1 <= int(answers[3].headers["retry-after"]) <= 3602, "until GitHub's window ends"
    assert fake.charged() == 12 + 2, "the greedy account's share, then the other account's lookup"
    assert stored.status_code == 200 and stored.json()["source"] == "cache", "stored users cost nothing"
    assert theirs.status_code == 200, theirs.text


def many_repos(count: int = 25) -> list[FakeRepo]:
    return [FakeRepo(name=f"r{j:02d}", size=100 + j, languages={"Go": 10}) for j in range(count)]


async def test_lookups_under_way_at_once_stay_within_the_accounts_share(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The share was checked before a lookup and charged after it: an account's two lookups under
    way at once were each admitted below the share and each cost a whole chain (22 requests of a
    user with 25 repositories, against a share of 12: 44 in all), and the other accounts then met
    GitHub's limit. Now a chain is charged as it goes and measures languages only while the share
    has room."""
    for login in ("big0", "big1", "victim"):
        fake.add_user(login, many_repos())
    async with serve_in_loop(github_settings, github_interactive_wait_s=30.0) as served:
        greedy = await make_user(db, served.app, name="Greedy")
        other = await make_user(db, served.app, name="Other")
        client = served.client
        await valkey.set(TURN_LOCK, "the-test", px=60_000)  # both lookups start before either fetches
        try:
            both = [
                asyncio.create_task(client.get(f"/api/github/users/big{i}", headers=greedy.headers))
                for i in range(2)
            ]
            await wait_until(lambda: under_way(valkey, "big0", "big1"), 20, "both lookups are under way")
        finally:
            await valkey.delete(TURN_LOCK)
        answers = [await task for task in both]
        greedy_charged = fake.charged()
        theirs = await client.get("/api/github/users/victim", headers=other.headers)

    assert [answer.status_code for answer in answers] == [200, 200], [a.text for a in answers]
    measured = [a.json()["languages"]["coverage"]["repos_measured"] for a in answers]
    assert 12 <= greedy_charged <= 12 + 2, f"the share, and at most one request more per chain: {measured}"
    assert sum(measured) == greedy_charged - 4, "each chain: its profile, one page, then languages"
    assert theirs.status_code == 200, theirs.text
    assert {r.status for r in fake.recorded()} == {200}, "GitHub refused nothing"


async def test_a_login_known_to_be_missing_is_a_404_even_with_the_share_spent(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    for index in range(3):
        fake.add_user(f"someone{index}", two_repos())
    async with serve_in_loop(github_settings) as served:
        asker = await make_user(db, served.app, name="Asker")
        first = await served.client.get("/api/github/users/ghost", headers=asker.headers)
        for index in range(3):  # 4 requests each: the share (12) is spent
            answer = await served.client.get(f"/api/github/users/someone{index}", headers=asker.headers)
            assert answer.status_code == 200, answer.text
        again = await served.client.get("/api/github/users/ghost", headers=asker.headers)

    assert_problem(first, 404, "github-user-not-found")
    assert_problem(again, 404, "github-user-not-found"), "the truer answer: not 429 github-lookup-budget"
    assert len(fake.recorded("/users/ghost")) == 1


async def test_the_share_is_a_fraction_of_the_limit_github_reports(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    for index in range(8):
        fake.add_user(f"someone{index}", two_repos())
    fake.set_quota(token=TOKEN, limit=100, remaining=100, reset=int(time.time()) + 3600)
    async with serve_in_loop(github_settings, github_token=TOKEN) as served:
        greedy = await make_user(db, served.app, name="Greedy")
        answers = [
            await served.client.get(f"/api/github/users/someone{index}", headers=greedy.headers)
            for index in range(8)
        ]

    assert [answer.status_code for answer in answers] == [200] * 5 + [429] * 3
    refused = assert_problem(answers[5], 429, "github-lookup-budget")
    assert "20 GitHub requests per hour" in refused["detail"] and "limit of 100" in refused["detail"]
    unused = msgspec.structs.replace(github_settings, github_token="a-token-github-never-saw")
    async with open_services(unused, [github_module]) as services:
        budget = await services[GithubService].lookup_budget()
    assert budget == (1000, 5000), "before GitHub answers: its documented limit with a token"


# -- the token's turn -----------------------------------------------------------------------------


async def test_an_account_has_at_most_two_cold_lookups_under_way(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    for login in ("held0", "held1", "third", "wanted"):
        fake.add_user(login)
    async with serve_in_loop(github_settings, github_interactive_wait_s=30.0) as served:
        greedy = await make_user(db, served.app, name="Greedy")
        other = await make_user(db, served.app, name="Other")
        client = served.client
        await valkey.set(TURN_LOCK, "the-test", px=60_000)  # GitHub's turn is taken: lookups wait
        try:
            held = [
                asyncio.create_task(client.get(f"/api/github/users/held{i}", headers=greedy.headers))
                for i in range(2)
            ]
            await wait_until(lambda: under_way(valkey, "held0", "held1"), 20, "two lookups are under way")
            joined = asyncio.create_task(client.get("/api/github/users/held0", headers=greedy.headers))
            third = await client.get("/api/github/users/third", headers=greedy.headers)
            theirs = asyncio.create_task(client.get("/api/github/users/wanted", headers=other.headers))
            await wait_until(
                lambda: under_way(valkey, "wanted"), 20, "the other account's lookup is under way"
            )
        finally:
            await valkey.delete(TURN_LOCK)
        refused = assert_problem(third, 429, "github-lookups-in-flight")
        assert "2 lookups" in refused["detail"] and int(third.headers["retry-after"]) >= 1
        assert [(await task).status_code for task in held] == [200, 200]
        assert (await joined).status_code == 200, "a login already under way adds no work"
        assert (await theirs).status_code == 200
        assert fake.recorded("/users/third") == []
        again = await client.get("/api/github/users/third", headers=greedy.headers)
        assert again.status_code == 200, "the lookups ended: the account's slots are free"


async def test_a_lookup_that_waits_its_budget_out_in_the_queue_is_not_called_a_rate_limit(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    fake.add_user("patient")
    async with serve_in_loop(github_settings, github_interactive_wait_s=0.5) as served:
        user = await make_user(db, served.app)
        await valkey.set(TURN_LOCK, "the-test", px=60_000)  # other requests hold the token's turn
        try:
            waited = await served.client.get("/api/github/users/patient", headers=user.headers)
        finally:
            await valkey.delete(TURN_LOCK)
        again = await served.client.get("/api/github/users/patient", headers=user.headers)

    body = assert_problem(waited, 503, "github-busy")
    assert "rate limit was not the cause" in body["detail"]
    assert int(waited.headers["retry-after"]) >= 1
    assert again.status_code == 200, "nothing was remembered against the login"
    assert [r.path for r in fake.recorded()][:1] == ["/users/patient"] and fake.violations == 0


# -- the job queues ------------------------------------------------------------------------------


async def test_refreshes_wait_in_the_github_queue_not_where_alerts_are_delivered(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    settings = msgspec.structs.replace(github_settings, github_token=TOKEN)
    assert settings.valkey_url is not None
    for index in range(12):
        fake.add_user(f"big{index}", two_repos())
    default = RedisQueue(redis.from_url(settings.valkey_url), name="default")
    github = RedisQueue(redis.from_url(settings.valkey_url), name=GITHUB_QUEUE)
    try:
        async with serve_in_loop(settings) as served:
            admin = await make_user(db, served.app, role=UserRole.ADMIN)
            accounts = [await make_user(db, served.app) for _ in range(3)]
            for index in range(12):
                account = accounts[index % 3]
                assert (
                    await served.client.get(f"/api/github/users/big{index}", headers=account.headers)
                ).status_code == 200
            # Not fetched moments ago (a refresh of such a profile fetches nothing and queues no job).
            await db.execute("update github_profiles set fetched_at = fetched_at - interval '10 minutes'")
            for index in range(12):
                account = accounts[index % 3]
                posted = await served.client.post(
                    f"/api/github/users/big{index}/refresh", headers=account.headers
                )
                assert posted.status_code == 202, posted.text
            listed = await served.client.get("/saq/api/queues", headers=admin.headers)

        assert await github.count("queued") == 12
        assert await default.count("queued") == 0
        await default.enqueue(Job(function="deliver_alerts", key="outbox:999999", timeout=60))
        taken = await default.dequeue(timeout=5)  # what the default queue's worker takes next
        assert taken is not None and taken.function == "deliver_alerts"
        assert listed.status_code == 200 and GITHUB_QUEUE in {
            queue["name"] for queue in listed.json()["queues"]
        }
    finally:
        await default.redis.aclose()
        await github.redis.aclose()


async def test_the_github_queue_has_its_own_workers(github_settings: Settings) -> None:
    assert github_settings.valkey_url is not None
    config = build_saq_config(
        Services(github_settings, MODULES), github_settings.valkey_url, run_workers_in_process=True
    )
    try:
        workers = SAQPlugin(config).get_workers()
        assert "refresh_github_profile" in workers[GITHUB_QUEUE].functions
        assert "snapshot_github_profiles" in {
            job.function.__qualname__ for job in workers[GITHUB_QUEUE].cron_jobs
        }
        assert "refresh_github_profile" not in workers["default"].functions
        assert not {"snapshot_github_profiles"} & {
            j.function.__qualname__ for j in workers["default"].cron_jobs
        }
    finally:
        await config.queue_instances["default"].redis.aclose()  # type: ignore[index,union-attr]


async def test_an_account_has_at_most_five_refreshes_pending(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    settings = msgspec.structs.replace(github_settings, github_token=TOKEN)
    assert settings.valkey_url is not None
    for index in range(8):
        fake.add_user(f"dev{index}")
    fake.add_user("neverseen")
    github = RedisQueue(redis.from_url(settings.valkey_url), name=GITHUB_QUEUE)
    try:
        async with serve_in_loop(settings) as served:
            client = served.client
            greedy = await make_user(db, served.app, name="Greedy")
            other = await make_user(db, served.app, name="Other")
            for index in range(8):
                assert (
                    await client.get(f"/api/github/users/dev{index}", headers=greedy.headers)
                ).status_code == 200
            requests_before = len(fake.recorded())
            # Not fetched moments ago (a refresh of such a profile fetches nothing and queues no job).
            await db.execute("update github_profiles set fetched_at = fetched_at - interval '10 minutes'")

            posted = [
                await client.post(f"/api/github/users/dev{index}/refresh", headers=greedy.headers)
                for index in range(7)
            ]
            unknown = await client.post("/api/github/users/neverseen/refresh", headers=greedy.headers)
            theirs = await client.post("/api/github/users/dev5/refresh", headers=other.headers)
            again = await client.post("/api/github/users/dev0/refresh", headers=greedy.headers)
            await db.execute("update github_profiles set fetched_at = fetched_at - interval '2 hours'")
            stale = await client.get("/api/github/users/dev7", headers=greedy.headers)

            assert [answer.status_code for answer in posted] == [202] * 5 + [429] * 2
            refused = assert_problem(posted[5], 429, "github-refresh-limit")
            assert "5 refreshes" in refused["detail"] and int(posted[5].headers["retry-after"]) >= 1
            assert_problem(unknown, 404, "github-not-stored")
            assert theirs.status_code == 202, "another account's refreshes are its own"
            assert again.status_code == 202 and again.json()["id"] == posted[0].json()["id"], (
                "pending: no new"
            )
            assert stale.json()["stale"] is True and stale.json()["refresh"] is None, "at the cap: no refresh"
            assert await github.count("queued") == 6
            assert len(fake.recorded()) == requests_before, "nothing was fetched for refused refreshes"

            job = await github.dequeue(timeout=5)  # a worker runs the account's first refresh
            assert job is not None and job.kwargs is not None and job.kwargs["login"] == "dev0"
            async with open_services(settings, [github_module]) as services:
                outcome = await refresh_github_profile({"services": services, "job": job}, **job.kwargs)  # type: ignore[typeddict-unknown-key]
            await github.finish(job, Status.COMPLETE, result=outcome)
            freed = await client.post("/api/github/users/dev5/refresh", headers=greedy.headers)
            sixth = await client.post("/api/github/users/dev6/refresh", headers=greedy.headers)

        assert outcome == "succeeded"
        assert freed.json()["id"] == theirs.json()["id"], "pending for the other account: shared, not counted"
        assert sixth.status_code == 202, "one of the five has finished"
    finally:
        await github.redis.aclose()
