"""Whatever GitHub's answers hold, what we keep of them can be stored.

msgspec decodes ``"\\u0000"`` without complaint, and PostgreSQL's ``text`` and ``jsonb`` refuse it: a
NUL in a bio made the lookup a 400 ``unstorable-value`` (the caller blamed for GitHub's data) that was
remembered nowhere, so every lookup fetched the whole chain again; a stored profile that gained one
made each refresh job crash while its stale reads said ``last_error: null``. Counts past any of
GitHub's overflowed the snapshots' ``bigint`` columns and crashed the snapshot cron. Every string the
client decodes is made storable (``app.core.types.storable``: NUL becomes U+FFFD) and every count is
bounded where it is decoded, so nothing GitHub sends can reach the database unstorable.

Driven by the local fake GitHub (``tests/fakes/github.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import open_services
from app.domains.github.client import MAX_COUNT, GitHubClient, GitHubDownError, _CacheEntry, token_fingerprint
from app.domains.github.governor import Priority, governor_for
from app.domains.github.lookups import failed_key
from app.domains.github.services import GithubService
from tests.factories import assert_problem, clocked_github, create_user, make_user, serve_in_loop
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo
from tests.functional.test_github_review_fixes import age, work_one

INTERACTIVE = Priority.INTERACTIVE
NUL = "\x00"
REPLACED = "\ufffd"


@pytest.fixture
def github_settings(
    settings: Settings, fake_server: FakeGitHubServer, db: object, valkey: object
) -> Settings:
    return msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_retry_wait_s=0.01,
        github_retry_attempts=1,
        github_timeout_s=2.0,
        rate_limit_default_per_minute=100_000,
        rate_limit_default_per_hour=1_000_000,
    )


@pytest.fixture
async def client(github_settings: Settings, valkey: Valkey) -> AsyncIterator[GitHubClient]:
    github = GitHubClient(github_settings, valkey, governor_for(github_settings, valkey, "anonymous"))
    await github.start()
    yield github
    await github.close()


def _strings(value: object) -> list[str]:
    """Every string of a decoded value (dictionary keys too)."""
    built = msgspec.to_builtins(value)
    found: list[str] = []

    def walk(item: object) -> None:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                walk(key)
                walk(inner)
        elif isinstance(item, list):
            for inner in item:
                walk(inner)

    walk(built)
    return found


async def test_every_string_of_a_profile_and_its_repositories_is_decoded_storable(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    """Every string field, free text or not: one place makes them storable, whatever GitHub adds."""
    user = {
        "login": f"nul{NUL}all",
        "id": 7,
        "html_url": f"https://github.example/nul{NUL}",
        "avatar_url": f"https://avatars.example/{NUL}",
        "type": f"Us{NUL}er",
        "name": f"N{NUL}",
        "bio": f"hello{NUL}world",
        "company": f"C{NUL}",
        "location": f"L{NUL}",
        "blog": f"B{NUL}",
        "public_repos": 1,
        "followers": 1,
        "following": 0,
        "created_at": "2015-03-01T12:00:00Z",
    }
    repo = {
        "id": 11,
        "name": f"r{NUL}",
        "full_name": f"nul-all/r{NUL}",
        "html_url": f"https://github.example/nul-all/r{NUL}",
        "fork": False,
        "stargazers_count": 1,
        "forks_count": 0,
        "size": 1,
        "languages_url": f"{client.base_url}/repos/nul-all/r/languages",
        "language": f"G{NUL}o",
        "pushed_at": "2026-01-02T03:04:05Z",
    }
    fake.fail(200, path_contains="/users/nul-all/repos", body=msgspec.json.encode([repo]))
    fake.fail(200, path_contains="/users/nul-all", body=msgspec.json.encode(user))
    fake.fail(200, path_contains="/languages", body=msgspec.json.encode({f"Ru{NUL}st": 3, "Go": 2}))

    profile = await client.get_user("nul-all", INTERACTIVE)
    (listed,), _ = await client.list_repos("nul-all", INTERACTIVE, max_repos=100)
    languages = await client.get_languages(listed, INTERACTIVE)

    decoded = _strings(profile) + _strings(listed) + _strings(languages)
    assert [text for text in decoded if NUL in text] == []
    assert profile.bio == f"hello{REPLACED}world" and listed.language == f"G{REPLACED}o"
    assert languages == {f"Ru{REPLACED}st": 3, "Go": 2}


async def test_an_answer_kept_for_revalidation_with_a_nul_is_made_storable(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    """An ETag entry an earlier release kept holds the answer as it was decoded, NUL included: a 304
    answered from it goes through the same rule as an answer."""
    fake.add_user("kept", bio="plain")
    await client.get_user("kept", INTERACTIVE)
    key = client._cache_key(f"{client.base_url}/users/kept")
    entry = await client._cached(key)
    assert entry is not None
    kept = msgspec.msgpack.decode(entry.payload) | {"bio": f"as{NUL}kept"}
    await client._store(key, _CacheEntry(entry.etag, entry.next_url, msgspec.msgpack.encode(kept)))

    again = await client.get_user("kept", INTERACTIVE)

    assert fake.recorded("/users/kept")[-1].status == 304
    assert again.bio == f"as{REPLACED}kept"


async def test_a_nul_in_a_profile_answers_200_and_is_stored(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    """Before: a 400 ``unstorable-value`` every time, each one fetching the whole chain again."""
    repo = FakeRepo("r", stars=1, language=f"G{NUL}o", languages={f"Ru{NUL}st": 10, "Go": 5})
    fake.add_user("nulbio", [repo], bio=f"hello{NUL}world", name=f"N{NUL}")
    async with serve_in_loop(github_settings) as served:
        account = await make_user(db, served.app)
        first = await served.client.get("/api/github/users/nulbio", headers=account.headers)
        second = await served.client.get("/api/github/users/nulbio", headers=account.headers)

    assert first.status_code == 200, first.text
    assert (first.json()["source"], second.json()["source"]) == ("live", "cache")
    profile = first.json()["profile"]
    assert (profile["bio"], profile["name"]) == (f"hello{REPLACED}world", f"N{REPLACED}")
    languages = first.json()["languages"]
    assert {stat["name"] for stat in languages["by_bytes"]} == {f"Ru{REPLACED}st", "Go"}
    assert [stat["name"] for stat in languages["by_repos"]] == [f"G{REPLACED}o"]
    assert len(fake.recorded("/users/nulbio")) == 2, "one chain (profile, one page), stored and reused"


async def test_a_stored_profile_that_gains_a_nul_is_refreshed(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], github_queue: RedisQueue
) -> None:
    """Before: each refresh job crashed (``UntranslatableCharacter``) and the stale reads said
    ``last_error: null``, asking for another refresh each time."""
    user = fake.add_user("nulbio2", [FakeRepo("r", stars=1, languages={"Go": 10})], bio="fine")
    async with serve_in_loop(github_settings) as served:
        account = await make_user(db, served.app)
        first = await served.client.get("/api/github/users/nulbio2", headers=account.headers)
        assert first.status_code == 200, first.text
        user.bio = f"now{NUL}changed"
        await age(db, "nulbio2")

        stale = await served.client.get("/api/github/users/nulbio2", headers=account.headers)
        assert stale.json()["source"] == "stale" and stale.json()["refresh"]["status"] == "queued"
        outcome, _ = await work_one(github_settings, github_queue)
        fresh = await served.client.get("/api/github/users/nulbio2", headers=account.headers)

    assert outcome == "succeeded"
    assert fresh.json()["source"] == "cache" and fresh.json()["last_error"] is None
    assert fresh.json()["profile"]["bio"] == f"now{REPLACED}changed"


@pytest.mark.parametrize(
    ("user_fields", "repo_fields"),
    [({"followers": 2**63}, {}), ({}, {"stars": MAX_COUNT + 1}), ({"following": -1}, {})],
    ids=["followers-past-bigint", "stars-past-any-github-count", "negative"],
)
async def test_a_count_no_github_answer_holds_is_refused_as_githubs_failure(
    github_settings: Settings,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Valkey,
    user_fields: dict[str, int],
    repo_fields: dict[str, int],
) -> None:
    fake.add_user("counted", [FakeRepo("r", **repo_fields)], **user_fields)
    async with serve_in_loop(github_settings) as served:
        account = await make_user(db, served.app)
        response = await served.client.get("/api/github/users/counted", headers=account.headers)

    assert_problem(response, 503, "github-unavailable")
    assert await valkey.exists(failed_key(token_fingerprint(github_settings.github_token), "counted")) == 1
    assert await valkey.exists("github:last-error:counted") == 0, "no stored profile: no week-long key"


async def test_counts_that_would_overflow_a_snapshot_never_reach_it(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Before: 3 repositories of 2^62 stars each were stored (``jsonb`` takes any number), then the
    snapshot cron crashed on their ``bigint`` sum (``NumericValueOutOfRange``), every hour. Now the
    answer is GitHub's failure: remembered, and the run pauses as for any malformed answer."""
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    fake.add_user("aaa-starry", [FakeRepo(f"r{index}", stars=1) for index in range(3)])
    user = fake.add_user("zzz-quiet", [FakeRepo("r", stars=1)])
    owner = await create_user(db)
    async with open_services(github_settings, [clocked_github(clock)]) as services:
        github = services[GithubService]
        await github.track(owner.id, "aaa-starry")
        await github.track(owner.id, "zzz-quiet")
        for repo in fake.users["aaa-starry"].repos:
            repo.stars = 2**62
        user.followers = 5
        clock.now += timedelta(days=2)

        taken = await github.snapshot_due()

    snapshots = await (await db.execute("select login, total_stars from github_snapshots")).fetchall()
    assert all(stars <= 3 * MAX_COUNT for _, stars in snapshots)
    assert taken == len(snapshots)
    assert await valkey.exists("github:last-error:aaa-starry") == 1


async def test_a_count_at_the_bound_is_kept(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_user("bounded", [FakeRepo("r", stars=MAX_COUNT)], followers=MAX_COUNT)
    assert (await client.get_user("bounded", INTERACTIVE)).followers == MAX_COUNT
    (repo,), _ = await client.list_repos("bounded", INTERACTIVE, max_repos=100)
    assert repo.stargazers_count == MAX_COUNT


async def test_an_answer_past_the_bound_is_githubs_failure(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_user("past", followers=MAX_COUNT + 1)
    with pytest.raises(GitHubDownError, match="shape"):
        await client.get_user("past", INTERACTIVE)
