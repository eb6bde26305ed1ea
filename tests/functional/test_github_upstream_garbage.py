"""Whatever GitHub sends, the client does bounded work and only GitHub errors leave it: endless or
looping next links, bodies that trickle forever, huge bodies and gzip bombs, broken gzip, a 204
where a document is due, a 410, absurd ``retry-after`` and ``x-ratelimit-reset`` values.

Driven by the local fake GitHub (``tests/fakes/github.py``); a dripping body never ends, so only the
client's deadlines can end the request (no timing is asserted, only which error and how many
requests).
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.github import governor as governor_module
from app.domains.github.client import GitHubClient, GitHubDownError, GitHubRateLimitError
from app.domains.github.governor import WINDOW_S, Priority, WaitBudgetExceededError, governor_for
from app.domains.github.lookups import failed_key
from tests.factories import Client, assert_problem, generous_client, make_user, wait_until
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo, repos_named

INTERACTIVE = Priority.INTERACTIVE
DRIP_S = 0.02
"""The fake's pace for a dripping body: far below every per-read timeout used here."""

MakeClient = Callable[..., AbstractAsyncContextManager[GitHubClient]]


def _settings(settings: Settings, server: FakeGitHubServer, **changes: object) -> Settings:
    base: dict[str, object] = {
        "github_api_url": server.url,
        "github_retry_wait_s": 0.01,
        "github_timeout_s": 5.0,
        "github_interactive_wait_s": 10.0,
    }
    return msgspec.structs.replace(settings, **{**base, **changes})


@pytest.fixture
def make_client(settings: Settings, fake_server: FakeGitHubServer, valkey: Valkey) -> MakeClient:
    @asynccontextmanager
    async def made(**changes: object) -> AsyncIterator[GitHubClient]:
        configured = _settings(settings, fake_server, **changes)
        client = GitHubClient(configured, valkey, governor_for(configured, valkey, "anonymous"))
        await client.start()
        try:
            yield client
        finally:
            await client.close()

    return made


def _user_json(login: str, **fields: object) -> bytes:
    return msgspec.json.encode(
        {
            "login": login,
            "id": 7,
            "html_url": f"https://github.example/{login}",
            "avatar_url": "https://avatars.example/u/7",
            "public_repos": 0,
            "followers": 1,
            "following": 0,
            "created_at": "2015-03-01T12:00:00Z",
            **fields,
        }
    )


def _recorded(fake: FakeGitHub, path: str) -> Callable[[], Awaitable[bool]]:
    async def recorded() -> bool:
        return bool(fake.recorded(path))

    return recorded


async def _run_until(work: asyncio.Task[Any], condition: Callable[[], bool]) -> None:
    """Wait for ``work`` to end; fail (and stop it) as soon as ``condition`` holds first."""
    while not work.done():
        if condition():
            work.cancel()
            pytest.fail("the client kept going")
        await asyncio.sleep(0.01)


# -- 1. listings that never end -------------------------------------------------------------------


async def test_empty_pages_linking_on_end_the_listing_at_the_first_one(
    fake: FakeGitHub, make_client: MakeClient
) -> None:
    fake.add_user("loopy", repos_named(150), endless_pages=True)
    async with make_client() as client:
        listing = asyncio.ensure_future(client.list_repos("loopy", INTERACTIVE, max_repos=1000))
        await _run_until(listing, lambda: len(fake.recorded("/repos")) > 20)
        repos, truncated = listing.result()

    assert len(repos) == 150 and not truncated
    assert len(fake.recorded("/repos")) == 3  # 100, 50, then an empty page: done


async def test_a_listing_reads_at_most_its_page_cap(fake: FakeGitHub, make_client: MakeClient) -> None:
    fake.add_user("short-pages", repos_named(30), page_size=1)
    async with make_client() as client:
        repos, truncated = await client.list_repos("short-pages", INTERACTIVE, max_repos=100)

    assert len(fake.recorded("/repos")) == 2  # max_pages(100): one page more than 100 repositories need
    assert len(repos) == 2 and truncated


async def test_a_next_link_already_followed_is_refused(
    fake: FakeGitHub, fake_server: FakeGitHubServer, make_client: MakeClient
) -> None:
    fake.add_user("circular")
    page = msgspec.json.encode(
        [FakeGitHub._repo_json(fake_server.url, fake.users["circular"], FakeRepo("r"))]
    )
    again = f'<{fake_server.url}/users/circular/repos?page=2>; rel="next"'
    fake.fail(200, path_contains="/users/circular/repos", body=page, headers={"link": again}, times=50)
    async with make_client() as client:
        with pytest.raises(GitHubDownError, match="already read"):
            await client.list_repos("circular", INTERACTIVE, max_repos=1000)

    assert len(fake.recorded("/repos")) == 2


async def test_a_lookup_asks_for_no_more_than_its_budget(fake: FakeGitHub, make_client: MakeClient) -> None:
    fake.add_user("budget", repos_named(10, language="Go", languages={"Go": 1}))
    async with make_client(github_max_repos=100, github_language_repos=2) as client:
        budget = client.chain_budget()
        await client.get_user("budget", INTERACTIVE)
        repos, _ = await client.list_repos("budget", INTERACTIVE, max_repos=100)
        for repo in repos[:4]:  # GITHUB_LANGUAGE_REPOS, and the slack the listing left unused
            await client.get_languages(repo, INTERACTIVE)
        with pytest.raises(GitHubDownError, match="more resources"):
            await client.get_languages(repos[4], INTERACTIVE)

    assert budget == 1 + 2 + 1 + 2  # the profile, max_pages(100), one re-validation, the languages
    assert len(fake.recorded()) == budget


async def test_an_endless_listing_answers_the_lookup_and_stops(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    """The reviewer's case: empty pages linking on forever. The lookup is answered and the listing
    stops at the first empty page (the old client followed 1,760 links while the user had a 503)."""
    fake.add_user("loopy", endless_pages=True)

    response = await api.get("/api/github/users/loopy", headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["repositories"]["scanned"] == 0
    assert len(fake.recorded("/repos")) == 1


# -- 2. bodies that trickle ---------------------------------------------------------------------


async def test_a_dripping_body_is_cut_at_the_request_deadline(
    fake: FakeGitHub, make_client: MakeClient
) -> None:
    fake.add_user("slow")
    fake.fail(200, path_contains="/users/slow", body=_user_json("slow"), drip_s=DRIP_S, times=5)
    async with make_client(github_timeout_s=0.5, github_retry_attempts=2) as client:
        with pytest.raises(GitHubDownError, match="timeout"):
            await client.get_user("slow", INTERACTIVE)
        fake.add_user("next-one")
        assert (await client.get_user("next-one", INTERACTIVE)).login == "next-one"  # the lane is free

    assert len(fake.recorded("/users/slow")) == 2


async def test_a_lookup_ends_at_its_chain_deadline(fake: FakeGitHub, make_client: MakeClient) -> None:
    fake.add_user("slow")
    fake.fail(200, path_contains="/users/slow", body=_user_json("slow"), drip_s=DRIP_S, times=5)
    async with make_client(github_timeout_s=60.0, github_chain_timeout_s=0.5) as client:
        with pytest.raises(GitHubDownError, match="GITHUB_CHAIN_TIMEOUT_S"):
            await client.get_user("slow", INTERACTIVE)

    assert len(fake.recorded("/users/slow")) == 1


async def test_a_dripping_body_does_not_hold_up_other_users_lookups(
    api: Client, fake: FakeGitHub, headers: dict[str, str], db: AsyncConnection[Any]
) -> None:
    bob = (await make_user(db, api.app)).headers
    fake.add_user("slow")
    fake.add_user("fast")
    fake.fail(200, path_contains="/users/slow", body=_user_json("slow"), drip_s=DRIP_S, times=5)
    alice = asyncio.ensure_future(api.get("/api/github/users/slow", headers=headers))
    await wait_until(_recorded(fake, "/users/slow"), 30, "the drip began")  # it holds the lane from here

    other = await api.get("/api/github/users/fast", headers=bob)
    slow = await alice

    assert other.status_code == 200, other.text
    assert_problem(slow, 503, "github-unavailable")


async def test_the_token_lock_is_renewed_while_a_request_lasts(settings: Settings, valkey: Valkey) -> None:
    """A request may last longer than the lock's lifetime: the lock is renewed meanwhile, so another
    process (another governor of the token) still cannot send."""
    holder = governor_for(settings, valkey, "renewed", lock_ttl_s=1.0)
    other = governor_for(settings, valkey, "renewed", interactive_wait_s=0.2)
    async with holder.turn(INTERACTIVE):
        renewals = 0
        last = await valkey.pttl(holder.lock_key)
        deadline = time.monotonic() + 30
        while renewals < 4:  # over a second of lock lifetimes
            assert time.monotonic() < deadline, "the token's lock was never renewed"
            await asyncio.sleep(0.05)
            now = await valkey.pttl(holder.lock_key)
            renewals += now > last
            last = now
        with pytest.raises(WaitBudgetExceededError, match="queued behind other requests"):
            async with other.turn(INTERACTIVE):
                pytest.fail("another process sent while the lock was held")
    assert await valkey.exists(holder.lock_key) == 0


# -- 3. absurd rate-limit headers ---------------------------------------------------------------


class _Warnings:
    """Stands in for a module's structlog logger: keeps its warnings (structlog's own capture does
    not see loggers cached before it)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    def info(self, event: str, **fields: Any) -> None:
        pass


async def test_an_absurd_retry_after_is_bounded_and_logged(
    fake: FakeGitHub, make_client: MakeClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged = _Warnings()
    monkeypatch.setattr(governor_module, "log", logged)
    fake.add_user("victim")
    fake.fail(429, path_contains="/users/victim", headers={"retry-after": "315360000"}, times=5)
    async with make_client(github_interactive_wait_s=1.0) as client:
        with pytest.raises(GitHubRateLimitError) as caught:
            await client.get_user("victim", INTERACTIVE)
        blocked = await client.governor.blocked_until()
    logs = logged.events

    most = settings.github_secondary_backoff_max_s
    assert caught.value.retry_after is not None and caught.value.retry_after <= most + 1
    assert blocked is not None and blocked <= time.time() + most + 1
    warnings = [e for e in logs if e["event"] == "github_rate_limit_header_out_of_range"]
    assert [w["header"] for w in warnings] == ["retry-after"]


async def test_an_absurd_reset_is_bounded(fake: FakeGitHub, make_client: MakeClient, valkey: Valkey) -> None:
    fake.add_user("victim")
    ten_years = str(int(time.time()) + 10 * 365 * 24 * 3600)
    limit = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": ten_years}
    fake.fail(
        403, path_contains="/users/victim", headers=limit, body=b'{"message": "API rate limit exceeded"}'
    )
    async with make_client(github_interactive_wait_s=1.0) as client:
        with pytest.raises(GitHubRateLimitError):
            await client.get_user("victim", INTERACTIVE)
        blocked = await client.governor.blocked_until()
        _, window_end = await client.governor.window()

    assert blocked is not None and blocked <= time.time() + WINDOW_S + 600
    assert window_end <= time.time() + WINDOW_S + 600
    reset = await valkey.hget(f"{client.governor.quota_prefix}core", "reset")  # type: ignore[misc]
    assert reset is not None and int(reset) <= time.time() + WINDOW_S + 600


async def test_an_absurd_block_stored_earlier_is_bounded_when_read(
    settings: Settings, valkey: Valkey
) -> None:
    governor = governor_for(settings, valkey, "stored")
    await valkey.set(governor.blocked_key, repr(time.time() + 1e9))

    blocked = await governor.blocked_until()

    assert blocked is not None and blocked <= time.time() + governor.max_block_s


# -- 4. malformed answers -----------------------------------------------------------------------


async def test_a_broken_gzip_body_is_github_down(fake: FakeGitHub, make_client: MakeClient) -> None:
    fake.add_user("garbage")
    fake.fail(200, path_contains="/users/garbage", headers={"content-encoding": "gzip"}, body=b"not gzip")
    async with make_client() as client:
        with pytest.raises(GitHubDownError, match="gzip"):
            await client.get_user("garbage", INTERACTIVE)


async def test_a_valid_gzip_body_is_read(fake: FakeGitHub, make_client: MakeClient) -> None:
    fake.add_user("zipped")
    body = gzip.compress(_user_json("zipped"))
    fake.fail(200, path_contains="/users/zipped", headers={"content-encoding": "gzip"}, body=body)
    async with make_client() as client:
        assert (await client.get_user("zipped", INTERACTIVE)).login == "zipped"


async def test_a_204_is_an_answer_only_where_nothing_is_valid(
    fake: FakeGitHub, make_client: MakeClient
) -> None:
    fake.add_user("empty", [FakeRepo("r", language="Go", languages={"Go": 3})])
    async with make_client() as client:
        fake.fail(204, path_contains="/users/empty")
        with pytest.raises(GitHubDownError, match="204"):
            await client.get_user("empty", INTERACTIVE)
        (repo,), _ = await client.list_repos("empty", INTERACTIVE, max_repos=100)
        fake.fail(204, path_contains="/languages")
        assert await client.get_languages(repo, INTERACTIVE) == {}


async def test_an_unparsable_redirect_is_github_down(fake: FakeGitHub, make_client: MakeClient) -> None:
    fake.fail(301, path_contains="/users/moved", headers={"location": "http://[::1"}, times=5)
    async with make_client() as client:
        with pytest.raises(GitHubDownError):  # httpx reads it as a protocol error: retried, then down
            await client.get_user("moved", INTERACTIVE)


@pytest.mark.parametrize(
    ("fault_headers", "body"),
    [({"content-encoding": "gzip"}, b"this is not gzip"), ({}, b"<html>Unicorn!</html>"), ({}, b"")],
    ids=["bad-gzip", "html", "204"],
)
async def test_a_malformed_answer_is_a_503_remembered_as_a_failure(
    api: Client,
    fake: FakeGitHub,
    headers: dict[str, str],
    valkey: Valkey,
    fault_headers: dict[str, str],
    body: bytes,
) -> None:
    fake.add_user("garbage")
    status = 204 if not body else 200
    fake.fail(status, path_contains="/users/garbage", headers=fault_headers, body=body, times=5)

    response = await api.get("/api/github/users/garbage", headers=headers)

    assert_problem(response, 503, "github-unavailable")
    assert await valkey.exists(failed_key("anonymous", "garbage")) == 1
    assert await valkey.exists("github:last-error:garbage") == 0, "no stored profile: no week-long key"


# -- 5. sizes -----------------------------------------------------------------------------------


async def test_a_body_larger_than_the_limit_is_refused(fake: FakeGitHub, make_client: MakeClient) -> None:
    fake.add_user("huge")
    fake.fail(200, path_contains="/users/huge", body=_user_json("huge", bio="x" * 200_000))
    async with make_client(github_max_body_bytes=64 * 1024) as client:
        with pytest.raises(GitHubDownError, match="too large"):
            await client.get_user("huge", INTERACTIVE)


async def test_a_gzip_bomb_is_refused(fake: FakeGitHub, make_client: MakeClient) -> None:
    fake.add_user("bomb")
    bomb = gzip.compress(_user_json("bomb", bio=" " * (20 * 1024 * 1024)), 9)
    assert len(bomb) < 64 * 1024
    fake.fail(200, path_contains="/users/bomb", headers={"content-encoding": "gzip"}, body=bomb)
    async with make_client(github_max_body_bytes=64 * 1024) as client:
        with pytest.raises(GitHubDownError, match="too large"):
            await client.get_user("bomb", INTERACTIVE)


async def test_free_text_beyond_githubs_limits_is_truncated_not_fatal(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    fake.add_user("wordy", bio="b" * 5000, name="n" * 5000)

    response = await api.get("/api/github/users/wordy", headers=headers)

    assert response.status_code == 200, response.text
    profile = response.json()["profile"]
    assert profile["bio"] == "b" * 160  # GitHub's own limit
    assert len(profile["name"]) == 255


async def test_a_repository_with_an_impossible_name_refuses_the_page(
    fake: FakeGitHub, make_client: MakeClient
) -> None:
    fake.add_user("odd", [FakeRepo("x" * 5000)])
    async with make_client() as client:
        with pytest.raises(GitHubDownError, match="shape"):
            await client.list_repos("odd", INTERACTIVE, max_repos=100)


async def test_an_account_id_past_json_and_bigint_refuses_the_profile(
    fake: FakeGitHub, make_client: MakeClient
) -> None:
    """Upstream review: an id of 2^63 was stored and served, then failed the hourly snapshot cron
    (bigint out of range) five times an hour."""
    user = fake.add_user("huge-id")
    user.id = 2**63
    async with make_client() as client:
        with pytest.raises(GitHubDownError, match="shape"):
            await client.get_user("huge-id", INTERACTIVE)


# -- 6. gone ------------------------------------------------------------------------------------


async def test_a_410_is_not_found_and_remembered(
    api: Client, fake: FakeGitHub, headers: dict[str, str], valkey: Valkey
) -> None:
    fake.fail(410, path_contains="/users/gone-user", body=b'{"message": "Gone"}')

    response = await api.get("/api/github/users/gone-user", headers=headers)

    assert_problem(response, 404, "github-user-not-found")
    assert await valkey.exists("github:missing:gone-user") == 1


async def test_a_repository_gone_with_410_is_left_unmeasured(
    fake: FakeGitHub, make_client: MakeClient
) -> None:
    fake.add_user("owner", [FakeRepo("r", language="Go", languages={"Go": 3})])
    async with make_client() as client:
        (repo,), _ = await client.list_repos("owner", INTERACTIVE, max_repos=100)
        fake.fail(410, path_contains="/languages")
        assert await client.get_languages(repo, INTERACTIVE) is None


# -- 7. coverage --------------------------------------------------------------------------------


async def test_forks_and_tiny_repositories_do_not_truncate_the_coverage(
    api: Client, fake: FakeGitHub, headers: dict[str, str]
) -> None:
    repos = [FakeRepo(name=f"own{i}", language="Python", languages={"Python": 100}) for i in range(3)]
    repos += [FakeRepo(name=f"fork{i}", fork=True, language="Go", languages={"Go": 100}) for i in range(2)]
    repos += [FakeRepo(name="tiny", language="Go", size=0, languages={"Go": 300})]
    fake.add_user("forky", repos)

    response = await api.get("/api/github/users/forky", params={"include_forks": "true"}, headers=headers)

    body = response.json()
    coverage = body["languages"]["coverage"]
    assert body["truncated"] is False, coverage
    counts = (coverage["repos_measured"], coverage["repos_unmeasured"], coverage["forks_unmeasured"])
    assert counts == (4, 0, 2)
    assert {s["name"] for s in body["languages"]["by_bytes"]} == {"Python", "Go"}


# -- the app under test -------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def module_api(settings: Settings, fake_server: FakeGitHubServer) -> AsyncIterator[Client]:
    async for client in generous_client(
        settings,
        github_api_url=fake_server.url,
        github_retry_wait_s=0.01,
        github_retry_attempts=1,
        github_timeout_s=2.0,
        github_interactive_wait_s=10.0,
        github_cold_wait_s=20.0,
        rate_limit_default_per_minute=100_000,
        rate_limit_default_per_hour=1_000_000,
    ):
        yield client


@pytest.fixture
async def api(module_api: Client, db: AsyncConnection[Any], valkey: Valkey) -> Client:
    module_api.headers.clear()
    return module_api


@pytest.fixture
async def headers(api: Client, db: AsyncConnection[Any]) -> dict[str, str]:
    return (await make_user(db, api.app)).headers


async def test_a_languages_answer_keeps_its_largest_plausible_entries(
    fake: FakeGitHub, make_client: MakeClient
) -> None:
    """An answer's entries were bounded only by its body size: 5,000 of them were stored and served."""
    many = {f"Lang{i}": i for i in range(5_000)} | {"x" * 101: 10**9, "Negative": -5}
    fake.add_user("polyglot", [FakeRepo("r", language="Go", languages=many)])
    async with make_client() as client:
        (repo,), _ = await client.list_repos("polyglot", INTERACTIVE, max_repos=100)
        kept = await client.get_languages(repo, INTERACTIVE)
    assert kept == {f"Lang{i}": i for i in range(4_999, 4_899, -1)}
    assert list(kept) == [f"Lang{i}" for i in range(4_999, 4_899, -1)], "largest first"
