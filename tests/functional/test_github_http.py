"""The GitHub analytics API over HTTP, on the real app, against the local fake GitHub."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as redis
from psycopg import AsyncConnection
from saq.job import Status
from saq.queue.redis import RedisQueue

from app.config import Settings
from app.core.errors import UnauthorizedError
from app.core.services import open_services
from app.db.models import UserRole
from app.domains.github.jobs import refresh_github_profile
from app.domains.github.module import module as github_module
from app.domains.github.refreshes import QUEUE
from app.domains.github.services import GithubService
from tests.factories import Client, captured_logs, generous_client, make_user
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo
from tests.served import free_port

MAX_TRACKED = 3


@pytest.fixture(scope="module")
def github_settings(settings: Settings, fake_server: FakeGitHubServer) -> Settings:
    return msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_retry_wait_s=0.01,
        github_timeout_s=2.0,
        github_interactive_wait_s=5.0,
        github_max_tracked_per_user=MAX_TRACKED,
        github_user_quota_fraction=0.5,  # 30 of an anonymous hour's 60: whole chains of the large users below
        github_address_quota_fraction=1.0,  # every account of these tests asks from 127.0.0.1
        github_address_lookups_in_flight=1000,
        rate_limit_default_per_minute=100_000,
        rate_limit_default_per_hour=1_000_000,
    )


@pytest.fixture(scope="module")
async def module_api(github_settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(github_settings):
        yield client


@pytest.fixture
async def api(module_api: Client, db: AsyncConnection[Any], valkey: Any) -> Client:
    module_api.headers.clear()
    return module_api


@pytest.fixture
async def headers(api: Client, db: AsyncConnection[Any]) -> dict[str, str]:
    return (await make_user(db, api.app)).headers


def octo_repos() -> list[FakeRepo]:
    """250 repositories: 240 own (stars = index), 5 forks, 5 archived; languages by index."""
    repos = []
    for index in range(250):
        language = ["Python", "Go", "Rust", None][index % 4]
        repos.append(
            FakeRepo(
                name=f"repo-{index:03d}",
                stars=index,
                forks=index % 3,
                fork=index >= 245,
                archived=240 <= index < 245,
                language=language,
                size=1000 + index,
                languages={language: 1000 + index, "Shell": 10} if language else {},
            )
        )
    return repos


async def past_the_ttl(db: AsyncConnection[Any]) -> None:
    """Every stored profile fetched two hours earlier: stale (``GITHUB_PROFILE_TTL_S``, an hour), so a
    read answers it with a refresh under way."""
    await db.execute("update github_profiles set fetched_at = fetched_at - interval '2 hours'")


async def older_than_a_refresh_fetches(db: AsyncConnection[Any]) -> None:
    """Every stored profile fetched 10 minutes earlier: a refresh of a profile fetched moments ago
    (``refresh_min_age_s``, 5 minutes) answers the stored state and fetches nothing."""
    await db.execute("update github_profiles set fetched_at = fetched_at - interval '10 minutes'")


async def work_refresh(settings: Settings, refresh_id: str) -> str:
    """What a worker does with the queued refresh: take the job from the queue, run it (in this, the
    test's, event loop) and finish it. Returns the refresh's outcome."""
    assert settings.valkey_url is not None
    queue = RedisQueue(redis.from_url(settings.valkey_url), name=QUEUE)
    try:
        job = await queue.dequeue(timeout=5)
        assert job is not None and job.function == "refresh_github_profile"
        assert job.kwargs is not None and job.kwargs["refresh_id"] == refresh_id
        async with open_services(settings, [github_module]) as services:
            outcome = await refresh_github_profile({"services": services, "job": job}, **job.kwargs)  # type: ignore[typeddict-unknown-key]
        await queue.finish(job, Status.COMPLETE, result=outcome)
        return outcome
    finally:
        await queue.redis.aclose()


async def test_a_profile_is_fetched_live_with_exact_totals_then_served_from_the_cache(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    repos = octo_repos()
    fake.add_user("Octo", repos, followers=42, following=7, name="Octo Cat", bio="hi")

    response = await api.get("/api/github/users/octo", headers=headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["source"], body["stale"], body["age_s"] < 5) == ("live", False, True)
    assert body["profile"]["login"] == "Octo" and body["profile"]["followers"] == 42
    own = [r for r in repos if not r.fork and not r.archived]
    assert body["total_stars"] == sum(r.stars for r in own) == sum(range(240))
    assert body["total_forks"] == sum(r.forks for r in own)
    assert body["repositories"] == {
        "total": 250,
        "scanned": 250,
        "counted": 240,
        "forks": 5,
        "archived": 5,
        "truncated": False,
    }
    assert len(fake.recorded("/repos?")) + len([r for r in fake.recorded() if r.path.endswith("/repos")]) >= 3
    assert len([r for r in fake.recorded() if r.path.endswith("/repos")]) == 3
    assert [r["stars"] for r in body["top_repositories"]] == list(range(239, 229, -1))
    by_repos = {s["name"]: s["repos"] for s in body["languages"]["by_repos"]}
    assert by_repos == {"Python": 60, "Go": 60, "Rust": 60}
    coverage = body["languages"]["coverage"]
    assert coverage["repos_measured"] == 20 and coverage["measured_limit"] == 20
    assert coverage["truncated"] is True and body["truncated"] is True
    assert {s["name"] for s in body["languages"]["by_bytes"]} == {"Python", "Go", "Rust", "Shell"}
    requests = len(fake.recorded())
    assert requests == 1 + 3 + 20

    cached = await api.get("/api/github/users/OCTO", headers=headers)
    with_forks = await api.get(
        "/api/github/users/octo",
        params={"include_forks": "true", "include_archived": "true"},
        headers=headers,
    )

    assert cached.json()["source"] == "cache" and cached.json()["fetched_at"] == body["fetched_at"]
    assert with_forks.json()["total_stars"] == sum(range(250))
    assert with_forks.json()["repositories"]["counted"] == 250
    assert len(fake.recorded()) == requests


async def test_signed_in_users_only(api: Client, fake: FakeGitHub) -> None:
    response = await api.get("/api/github/users/octo")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert fake.recorded() == []


@pytest.mark.parametrize(
    "name",
    [
        "a_b",
        "a--b",
        "-a",
        "a-",
        "x" * 40,
        "a.b",
        "evil.example",
        "%2E%2Ex",
        "a%00",
        "a%0A",
        "%40admin",
        "a%20b",
    ],
)
async def test_invalid_usernames_are_refused_before_any_request(
    api: Client, fake: FakeGitHub, headers: dict[str, str], name: str
) -> None:
    for path in (f"/api/github/users/{name}", f"/api/github/users/{name}/history"):
        response = await api.get(path, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["errors"][0]["field"] == "path.username"
    refreshed = await api.post(f"/api/github/users/{name}/refresh", headers=headers)
    assert refreshed.status_code == 400
    assert fake.recorded() == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/github/users/a%2Fb",
        "/api/github/users/..%2F..%2Fetc",
        "/api/github/users/https:%2F%2Fevil",
        "/api/github/users/../../users/x",
        "/api/github/users/%2E%2E",
        "/api/github/users/%2F/history",  # was routed as a lookup of the user `history`
        "/api/github/users/%2Fx",
        "/api/github/users/x%2F/history",
    ],
)
async def test_dot_segments_and_slashes_in_a_username_never_reach_github(
    api: Client, fake: FakeGitHub, headers: dict[str, str], path: str
) -> None:
    response = await api.get(path, headers=headers)
    assert response.status_code in (400, 404), response.text
    assert fake.recorded() == []


async def test_an_invalid_username_in_a_body_names_the_field(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    for bad in ["../x", "a\n", "", "x" * 40]:
        response = await api.post("/api/github/tracked", json={"username": bad}, headers=headers)
        assert response.status_code == 400, response.text
        assert "username" in response.text
    assert fake.recorded() == []


async def test_an_unknown_user_is_a_404_and_is_remembered(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    first = await api.get("/api/github/users/nobody", headers=headers)
    second = await api.get("/api/github/users/nobody", headers=headers)

    assert first.status_code == second.status_code == 404
    assert first.json()["type"] == "/problems/github-user-not-found"
    assert len(fake.recorded()) == 1


async def test_github_answering_502_serves_the_last_good_data_as_stale(
    api: Client,
    fake: FakeGitHub,
    headers: dict[str, str],
    db: AsyncConnection[Any],
    github_settings: Settings,
) -> None:
    fake.add_user("steady", [FakeRepo(name="one", stars=5, language="Go", languages={"Go": 9})], followers=3)
    assert (await api.get("/api/github/users/steady", headers=headers)).json()["source"] == "live"
    await past_the_ttl(db)
    fake.fail(502, times=1000)

    stale = await api.get("/api/github/users/steady", headers=headers)

    assert stale.status_code == 200, stale.text
    body = stale.json()
    assert (body["source"], body["stale"], body["total_stars"]) == ("stale", True, 5)
    assert body["refresh"]["status"] == "queued"
    assert await work_refresh(github_settings, body["refresh"]["id"]) == "failed"

    after = (await api.get("/api/github/users/steady", headers=headers)).json()
    assert (after["stale"], after["total_stars"], after["profile"]["followers"]) == (True, 5, 3)
    assert after["last_error"]["kind"] == "unavailable"
    assert after["last_error"]["type"] == "/problems/github-unavailable"
    state = (await api.get(body["refresh"]["state_url"], headers=headers)).json()
    assert state["status"] == "failed" and state["error"]["kind"] == "unavailable"
    assert state["error"]["type"] == "/problems/github-unavailable"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (451, b'{"message": "Repository access blocked", "block": {"reason": "dmca"}}'),
        (403, b'{"message": "Repository access blocked", "block": {"reason": "tos"}}'),
    ],
)
async def test_a_blocked_repository_is_skipped_and_the_others_are_measured(
    api: Client, fake: FakeGitHub, headers: dict[str, str], status: int, body: bytes
) -> None:
    fake.add_user(
        "takedown",
        [
            FakeRepo(name="big", size=9000, language="C", languages={"C": 900}),
            FakeRepo(name="mid", size=500, language="Go", languages={"Go": 50}),
            FakeRepo(name="small", size=10, language="Rust", languages={"Rust": 5}),
        ],
    )
    fake.fail(status, body=body, path_contains="/repos/takedown/big/languages")

    response = await api.get("/api/github/users/takedown", headers=headers)

    assert response.status_code == 200, response.text
    languages = response.json()["languages"]
    assert languages["coverage"]["repos_measured"] == 2
    assert {s["name"]: s["bytes"] for s in languages["by_bytes"]} == {"Go": 50, "Rust": 5}
    assert [r.status for r in fake.recorded("/languages")] == [status, 200, 200]


async def test_github_down_with_nothing_stored_is_a_503_with_retry_after(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    fake.add_user("unlucky")
    fake.fail(502, times=1000)

    response = await api.get("/api/github/users/unlucky", headers=headers)

    assert response.status_code == 503
    assert response.json()["type"] == "/problems/github-unavailable"
    assert int(response.headers["retry-after"]) >= 1


async def test_a_failed_fetch_is_logged_with_what_github_answered(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    fake.add_user("flaky")

    with captured_logs() as logs:
        missing = await api.get("/api/github/users/nobody-here", headers=headers)
        fake.fail(502, times=1000)
        down = await api.get("/api/github/users/flaky", headers=headers)

    assert (down.status_code, missing.status_code) == (503, 404)
    failures = {entry["login"]: entry for entry in logs.events("github_fetch_failed")}
    assert failures["flaky"]["level"] == "warning"
    assert "502" in failures["flaky"]["reason"], failures["flaky"]
    assert failures["nobody-here"]["level"] == "info", "a mistyped login is not an incident"


async def test_an_unreachable_github_is_logged_once_with_what_was_met(
    github_settings: Settings, db: AsyncConnection[Any], valkey: Any
) -> None:
    """Each failed request wrote two ``stamina.retry_scheduled`` warnings naming neither the host nor
    the error, and ``github_fetch_failed`` only "transport-error" (the operability reviewer): an
    operator could not tell DNS from a refused connection. One line now, with the cause."""
    closed = msgspec.structs.replace(github_settings, github_api_url=f"http://127.0.0.1:{free_port()}")
    async for api in generous_client(closed):
        headers = (await make_user(db, api.app)).headers
        with captured_logs() as logs:
            response = await api.get("/api/github/users/somebody", headers=headers)
        assert response.status_code == 503
        assert [line["event"] for line in logs.lines if "stamina" in line["event"]] == []
        [failed] = logs.events("github_fetch_failed")
        assert failed["cause"].startswith("ConnectError"), failed
        assert failed["setting"] == "GITHUB_API_URL"
        assert "ConnectError" not in response.text, "the client's answer does not describe our network"


async def test_a_primary_rate_limit_with_nothing_stored_is_a_503_saying_when(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    fake.add_user("limited")
    reset = int(time.time()) + 600
    fake.fail(403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})

    response = await api.get("/api/github/users/limited", headers=headers)

    assert response.status_code == 503
    assert response.json()["type"] == "/problems/github-rate-limited"
    assert 590 <= int(response.headers["retry-after"]) <= 602
    again = await api.get("/api/github/users/limited", headers=headers)
    assert again.status_code == 503
    assert len(fake.recorded()) == 1  # nothing sent while blocked


async def test_a_refresh_stopped_by_githubs_rate_limit_says_so_apart_from_the_callers_own_limits(
    api: Client,
    fake: FakeGitHub,
    headers: dict[str, str],
    db: AsyncConnection[Any],
    github_settings: Settings,
) -> None:
    """A refresh's error and a stale answer's last error are both ``rate-limited`` whether GitHub's
    limit or the caller's own share refused: their ``type`` is the problem a lookup would answer."""
    fake.add_user("limited-later")
    assert (await api.get("/api/github/users/limited-later", headers=headers)).json()["source"] == "live"
    await past_the_ttl(db)
    reset = int(time.time()) + 600
    fake.fail(403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})
    stale = (await api.get("/api/github/users/limited-later", headers=headers)).json()

    assert await work_refresh(github_settings, stale["refresh"]["id"]) == "failed"

    state = (await api.get(stale["refresh"]["state_url"], headers=headers)).json()
    after = (await api.get("/api/github/users/limited-later", headers=headers)).json()
    for error in (state["error"], after["last_error"]):
        assert error["kind"] == "rate-limited" and error["type"] == "/problems/github-rate-limited", error
        assert 590 <= error["retry_after_s"] <= 602


async def test_a_stale_answer_enqueues_one_refresh_job(
    api: Client, fake: FakeGitHub, db: AsyncConnection[Any], github_settings: Settings
) -> None:
    reader = await make_user(db, api.app)
    headers = reader.headers
    fake.add_user("busy")
    await api.get("/api/github/users/busy", headers=headers)
    await past_the_ttl(db)

    first = (await api.get("/api/github/users/busy", headers=headers)).json()["refresh"]
    second = (await api.get("/api/github/users/busy", headers=headers)).json()["refresh"]
    posted = await api.post("/api/github/users/busy/refresh", headers=headers)

    assert first["id"] == second["id"] == posted.json()["id"]
    assert posted.status_code == 202
    assert posted.headers["location"] == posted.json()["state_url"] == f"/api/github/refreshes/{first['id']}"
    assert github_settings.valkey_url is not None
    queue = RedisQueue(redis.from_url(github_settings.valkey_url), name=QUEUE)
    try:
        job = await queue.job("github-refresh:busy")
        assert job is not None and job.function == "refresh_github_profile"
        assert job.kwargs == {"login": "busy", "refresh_id": first["id"], "user_id": reader.id}
    finally:
        await queue.redis.aclose()


async def test_a_refresh_answers_202_and_its_state_becomes_final(
    api: Client,
    fake: FakeGitHub,
    headers: dict[str, str],
    db: AsyncConnection[Any],
    github_settings: Settings,
) -> None:
    user = fake.add_user("fresh", followers=1)
    await api.get("/api/github/users/fresh", headers=headers)
    await older_than_a_refresh_fetches(db)
    user.followers = 2

    posted = await api.post("/api/github/users/fresh/refresh", headers=headers)

    assert posted.status_code == 202
    refresh = posted.json()
    assert refresh["status"] == "queued"
    assert refresh["events_url"] == f"/api/github/refreshes/{refresh['id']}/events"
    assert await work_refresh(github_settings, refresh["id"]) == "succeeded"
    state = (await api.get(refresh["state_url"], headers=headers)).json()
    assert state["status"] == "succeeded" and state["fetched_at"] is not None
    profile = (await api.get("/api/github/users/fresh", headers=headers)).json()
    assert profile["profile"]["followers"] == 2 and profile["source"] == "cache"
    missing = await api.get(f"/api/github/refreshes/{uuid.uuid4()}", headers=headers)
    assert missing.status_code == 404
    malformed = await api.get("/api/github/refreshes/not-a-uuid/events", headers=headers)
    assert malformed.status_code == 400 and malformed.json()["errors"][0]["field"] == "path.refresh_id"


async def test_a_refresh_of_an_unchanged_profile_revalidates_it_with_304s(
    api: Client,
    fake: FakeGitHub,
    headers: dict[str, str],
    db: AsyncConnection[Any],
    github_settings: Settings,
) -> None:
    """No body is sent again. Without a token (this app's) GitHub still charges each 304; with one
    they are free (``test_github_review_fixes``). A second refresh of this profile by one account
    costs what is left of its share without a token (7 of 30 here: fewer languages measured, the
    others kept from the last fetch), and its next refresh is refused."""
    fake.add_user("unchanged", octo_repos()[:150])
    assert (await api.get("/api/github/users/unchanged", headers=headers)).status_code == 200
    spent = fake.charged()
    assert spent == 1 + 2 + 20  # profile, two pages, the 20 largest repositories' languages

    await older_than_a_refresh_fetches(db)
    asker = (await make_user(db, api.app)).headers
    refresh = (await api.post("/api/github/users/unchanged/refresh", headers=asker)).json()
    assert await work_refresh(github_settings, refresh["id"]) == "succeeded"
    await older_than_a_refresh_fetches(db)
    assert fake.charged() == 2 * spent, "anonymous: a 304 costs a request"
    revalidations = fake.recorded()[spent:]
    assert len(revalidations) == spent and {r.status for r in revalidations} == {304}

    again = (await api.post("/api/github/users/unchanged/refresh", headers=asker)).json()
    assert await work_refresh(github_settings, again["id"]) == "succeeded"
    await older_than_a_refresh_fetches(db)
    refused = await api.post("/api/github/users/unchanged/refresh", headers=asker)

    assert fake.charged() == 2 * spent + 7, "the profile, two pages and four languages: the share's rest"
    assert refused.status_code == 429 and refused.json()["type"] == "/problems/github-lookup-budget"
    profile = (await api.get("/api/github/users/unchanged", headers=headers)).json()
    assert profile["source"] == "cache" and profile["repositories"]["scanned"] == 150
    assert profile["languages"]["coverage"]["repos_measured"] == 20, "the rest kept from the last fetch"


async def test_a_refresh_whose_account_spent_its_share_since_it_asked_fetches_nothing(
    api: Client, fake: FakeGitHub, db: AsyncConnection[Any], github_settings: Settings
) -> None:
    """The share was checked when a refresh was asked for, not when its job ran: an account could
    queue refreshes, spend its share on lookups, and its jobs then fetched profiles and pages of
    repositories on nothing."""
    fake.add_user("small", [FakeRepo("r", language="C", languages={"C": 1})])
    for login in ("big0", "big1"):
        fake.add_user(login, octo_repos()[:150])
    asker = (await make_user(db, api.app)).headers
    assert (await api.get("/api/github/users/small", headers=asker)).status_code == 200  # 3 requests
    await older_than_a_refresh_fetches(db)
    refresh = await api.post("/api/github/users/small/refresh", headers=asker)
    assert refresh.status_code == 202, refresh.text
    for login in ("big0", "big1"):  # the share's rest (30 - 3): 1 + 2 pages + 20 languages, then 3
        assert (await api.get(f"/api/github/users/{login}", headers=asker)).status_code == 200
    asked = len(fake.recorded("/users/small"))

    outcome = await work_refresh(github_settings, refresh.json()["id"])

    state = (await api.get(f"/api/github/refreshes/{refresh.json()['id']}", headers=asker)).json()
    assert outcome == "failed" and state["error"]["kind"] == "rate-limited", state
    assert state["error"]["type"] == "/problems/github-lookup-budget", "the account's share, not GitHub's"
    assert len(fake.recorded("/users/small")) == asked, "nothing asked of GitHub"


async def test_tracking_is_per_user_idempotent_and_bounded(
    api: Client, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    alice = (await make_user(db, api.app)).headers
    bob = (await make_user(db, api.app)).headers
    for index in range(MAX_TRACKED + 1):
        fake.add_user(f"dev-{index}")

    created = await api.post("/api/github/tracked", json={"username": "Dev-0"}, headers=alice)
    again = await api.post("/api/github/tracked", json={"username": "dev-0"}, headers=alice)
    for index in (1, 2):
        assert (
            await api.post("/api/github/tracked", json={"username": f"dev-{index}"}, headers=alice)
        ).status_code == 201
    over = await api.post("/api/github/tracked", json={"username": "dev-3"}, headers=alice)
    unknown = await api.post("/api/github/tracked", json={"username": "ghost"}, headers=bob)

    assert (created.status_code, again.status_code) == (201, 200)
    assert created.json()["username"] == "dev-0"
    assert created.headers["location"] == "/api/github/tracked/dev-0"  # what DELETE stops
    assert over.status_code == 409 and over.json()["type"] == "/problems/github-tracking-limit"
    assert unknown.status_code == 404
    page = (await api.get("/api/github/tracked", params={"limit": 2}, headers=alice)).json()
    assert [item["username"] for item in page["items"]] == ["dev-0", "dev-1"]
    rest = (
        await api.get("/api/github/tracked", params={"cursor": page["next_cursor"]}, headers=alice)
    ).json()
    assert [item["username"] for item in rest["items"]] == ["dev-2"] and rest["next_cursor"] is None
    assert (await api.get("/api/github/tracked", headers=bob)).json()["items"] == []

    assert (await api.delete("/api/github/tracked/DEV-1", headers=alice)).status_code == 204
    assert (await api.delete("/api/github/tracked/dev-1", headers=alice)).status_code == 404
    assert (
        await api.post("/api/github/tracked", json={"username": "dev-3"}, headers=alice)
    ).status_code == 201


async def test_a_tracking_past_the_limit_is_refused_before_its_lookup_costs_the_share(
    api: Client, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    """A full list refused a new login (409) only after looking it up: each refusal fetched the
    profile, its repositories and their languages, on the account's share of the quota."""
    alice = (await make_user(db, api.app)).headers
    for index in range(MAX_TRACKED):
        fake.add_user(f"full-{index}")
        tracked = await api.post("/api/github/tracked", json={"username": f"full-{index}"}, headers=alice)
        assert tracked.status_code == 201, tracked.text
    fake.add_user("one-too-many", [FakeRepo("r", language="C", languages={"C": 1})])
    charged = fake.charged()

    over = await api.post("/api/github/tracked", json={"username": "one-too-many"}, headers=alice)
    again = await api.post("/api/github/tracked", json={"username": "full-0"}, headers=alice)

    assert over.status_code == 409 and over.json()["type"] == "/problems/github-tracking-limit"
    assert fake.recorded("one-too-many") == [] and fake.charged() == charged
    assert again.status_code == 200, "a login already tracked is still answered with a full list"


async def test_a_login_asked_in_another_case_is_one_profile_and_one_tracked_row(
    api: Client, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    """GitHub matches logins case-insensitively (``OctoCat`` is octocat) and so does the API: a login
    is stored lower-case, so asking and tracking it in any case reach one profile and one tracked row,
    fetched from GitHub once, and the answers carry GitHub's canonical case."""
    alice = await make_user(db, api.app)
    fake.add_user("octocat", [FakeRepo("Hello-World", language="C", languages={"C": 10})])

    asked = await api.get("/api/github/users/OctoCat", headers=alice.headers)
    again = await api.get("/api/github/users/OCTOCAT", headers=alice.headers)
    tracked = await api.post("/api/github/tracked", json={"username": "OctoCat"}, headers=alice.headers)
    tracked_again = await api.post("/api/github/tracked", json={"username": "octocat"}, headers=alice.headers)

    assert (asked.status_code, again.status_code) == (200, 200), asked.text
    assert (asked.json()["source"], again.json()["source"]) == ("live", "cache")
    assert asked.json()["profile"]["login"] == "octocat"
    assert asked.json()["top_repositories"][0]["full_name"] == "octocat/Hello-World"
    assert (tracked.status_code, tracked_again.status_code) == (201, 200)
    assert tracked.json()["username"] == tracked_again.json()["username"] == "octocat"
    profiles = await (await db.execute("select login from github_profiles")).fetchall()
    tracked_rows = await db.execute("select login from github_tracked where user_id = %s", (alice.id,))
    rows = await tracked_rows.fetchall()
    assert (profiles, rows) == ([("octocat",)], [("octocat",)])
    assert [r.path for r in fake.recorded("/users/")] == ["/users/octocat", "/users/octocat/repos"]


async def test_a_repository_renamed_between_the_listing_and_its_languages_is_measured(
    api: Client, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Any
) -> None:
    """The owner renames a repository once the listing is read: its ``languages_url`` (the old name)
    answers GitHub's 301 to ``/repositories/{id}/languages`` and the lookup follows it (same base), so
    its languages are counted. Each request is charged, the 301 too: GitHub's quota and the account's
    share agree."""
    alice = await make_user(db, api.app)
    big = FakeRepo("big", language="Rust", size=900, languages={"Rust": 9000})
    user = fake.add_user("mover", [FakeRepo("small", language="Go", size=10, languages={"Go": 10}), big])

    def rename(page: int) -> None:
        if page == 1:
            fake.rename_repo("mover", "big", "bigger")

    user.after_page = rename

    response = await api.get("/api/github/users/mover", headers=alice.headers)

    assert response.status_code == 200, response.text
    languages = response.json()["languages"]
    assert {stat["name"]: stat["bytes"] for stat in languages["by_bytes"]} == {"Rust": 9000, "Go": 10}
    assert languages["coverage"]["repos_measured"] == 2 and languages["coverage"]["truncated"] is False
    assert [(r.path, r.status) for r in fake.recorded("/languages")] == [
        ("/repos/mover/big/languages", 301),
        (f"/repositories/{big.id}/languages", 200),
        ("/repos/mover/small/languages", 200),
    ]
    assert fake.charged() == len(fake.recorded()) == 5
    assert int(await valkey.get(f"github:lookup-spent:{alice.id}") or 0) == 5


async def test_history_ranges_are_validated(api: Client, headers: dict[str, str]) -> None:
    empty = await api.get("/api/github/users/octo/history", headers=headers)
    backwards = await api.get(
        "/api/github/users/octo/history", params={"from": "2026-02-01", "to": "2026-01-01"}, headers=headers
    )
    too_long = await api.get(
        "/api/github/users/octo/history", params={"from": "2020-01-01", "to": "2026-01-01"}, headers=headers
    )
    not_a_date = await api.get(
        "/api/github/users/octo/history", params={"from": "yesterday"}, headers=headers
    )
    before_the_calendar = await api.get(
        "/api/github/users/octo/history", params={"to": "0001-01-10"}, headers=headers
    )
    first_days = await api.get(
        "/api/github/users/octo/history", params={"from": "0001-01-01", "to": "0001-01-10"}, headers=headers
    )

    assert empty.status_code == 200 and empty.json()["points"] == [] and empty.json()["deltas"] is None
    assert backwards.status_code == too_long.status_code == 400
    assert backwards.json()["type"] == "/problems/invalid-range"
    assert not_a_date.status_code == 400 and not_a_date.json()["errors"][0]["field"] == "query.from"
    assert before_the_calendar.status_code == 400, before_the_calendar.text
    assert before_the_calendar.json()["type"] == "/problems/invalid-range"
    assert before_the_calendar.json()["detail"].startswith("query.to:")
    assert first_days.status_code == 200 and first_days.json()["from"] == "0001-01-01"


async def test_metrics_report_quota_and_conditional_hits(
    api: Client,
    fake: FakeGitHub,
    headers: dict[str, str],
    db: AsyncConnection[Any],
    github_settings: Settings,
) -> None:
    fake.add_user("measured")
    await api.get("/api/github/users/measured", headers=headers)
    await older_than_a_refresh_fetches(db)
    refresh = (await api.post("/api/github/users/measured/refresh", headers=headers)).json()
    await work_refresh(github_settings, refresh["id"])  # revalidates: two 304s

    assert [r.status for r in fake.recorded()] == [200, 200, 304, 304]
    text = (await api.get("/metrics")).text
    assert 'github_ratelimit_remaining{resource="core",token="anonymous"}' in text
    assert "github_conditional_hits_total" in text
    assert "github_secondary_limit_hits_total" in text and "github_retries_total" in text


async def test_an_account_erased_meanwhile_tracks_nothing(
    api: Client, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    """A request authenticated before an erasure that reaches the service after it keeps nothing:
    ``require_active``, under the account's tracking lock, which the erasure holds until it commits
    (untested until now)."""
    fake.add_user("late-dev")
    admin = await make_user(db, api.app, UserRole.ADMIN)
    member = await make_user(db, api.app)
    erased = await api.delete(f"/api/admin/users/{member.id}", headers=admin.headers)
    assert erased.status_code == 204, erased.text
    github: GithubService = api.app.state.services[GithubService]
    portal = api.blocking_portal
    assert portal is not None
    with pytest.raises(UnauthorizedError):
        await asyncio.wrap_future(portal.start_task_soon(github.track, member.id, "late-dev"))
    tracked = await (
        await db.execute("select count(*) from github_tracked where user_id = %s", (member.id,))
    ).fetchone()
    assert tracked == (0,)
