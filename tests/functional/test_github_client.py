"""The GitHub client and its rate-limit governor against the local fake GitHub (real Valkey).

Timing claims are checked on the fake's recorded arrival times, never on the test's clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.github.client import (
    GitHubClient,
    GitHubDownError,
    GitHubNotFoundError,
    GitHubRateLimitError,
    metered,
    token_fingerprint,
)
from app.domains.github.governor import Priority, WaitBudgetExceededError, governor_for
from tests.factories import captured_logs
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo, repos_named

TOKEN = "ghp_fake_secret_token_1234567890abcdef"


def github_settings(settings: Settings, server: FakeGitHubServer, **changes: object) -> Settings:
    base: dict[str, object] = {
        "github_api_url": server.url,
        "github_retry_wait_s": 0.01,
        "github_timeout_s": 2.0,
        "github_interactive_wait_s": 10.0,
    }
    return msgspec.structs.replace(settings, **{**base, **changes})


@pytest.fixture
async def client(
    settings: Settings, fake_server: FakeGitHubServer, valkey: Valkey
) -> AsyncIterator[GitHubClient]:
    configured = github_settings(settings, fake_server)
    github = GitHubClient(configured, valkey, governor_for(configured, valkey, "anonymous"))
    await github.start()
    yield github
    await github.close()


@pytest.fixture
async def token_client(
    settings: Settings, fake_server: FakeGitHubServer, valkey: Valkey
) -> AsyncIterator[GitHubClient]:
    configured = github_settings(settings, fake_server, github_token=TOKEN)
    github = GitHubClient(configured, valkey, governor_for(configured, valkey, token_fingerprint(TOKEN)))
    await github.start()
    yield github
    await github.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_250_repositories_take_3_list_requests_following_link_and_all_are_listed(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    fake.add_user("many", repos_named(250, stars=2))

    repos, truncated = await client.list_repos("many", Priority.INTERACTIVE, max_repos=1000)

    assert len(repos) == 250 and not truncated
    assert len({repo.full_name for repo in repos}) == 250
    pages = fake.recorded("/repos")
    assert len(pages) == 3
    # The first page is ours; the next two are exactly the URLs GitHub's link header gave.
    assert pages[0].path == "/users/many/repos"
    assert [page.path for page in pages[1:]] == [f"/user/{fake.users['many'].id}/repos"] * 2
    assert ["page=2" in pages[1].query, "page=3" in pages[2].query] == [True, True]


async def test_a_repository_created_while_the_listing_is_paged_is_listed_once(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    """Pages are by number: a repository created after page 1, sorted before the rest, shifts every
    later one a place, so page 2 began with page 1's last (``repo-0099`` listed twice, its stars and
    forks counted twice). The listing keeps a repository once, by its id; the new one is missed
    until the next fetch."""
    user = fake.add_user("pager", repos_named(150, stars=1))

    def create_one(page: int) -> None:
        if page == 1:
            user.repos.append(FakeRepo(name="aaa-new", stars=1))

    user.after_page = create_one

    repos, truncated = await client.list_repos("pager", Priority.INTERACTIVE, max_repos=1000)

    names = [repo.full_name for repo in repos]
    assert len(fake.recorded("/repos")) == 2 and not truncated
    assert len(names) == len(set(names)) == 150, [name for name in names if names.count(name) > 1]
    assert names == [f"pager/repo-{index:04d}" for index in range(150)]
    assert sum(repo.stargazers_count for repo in repos) == 150


async def test_the_repository_cap_truncates_and_says_so(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_user("capped", repos_named(250))

    repos, truncated = await client.list_repos("capped", Priority.INTERACTIVE, max_repos=200)

    assert len(repos) == 200 and truncated
    assert len(fake.recorded("/repos")) == 2


async def test_an_unchanged_resource_is_revalidated_for_free_with_the_etag_verbatim(
    fake: FakeGitHub, token_client: GitHubClient
) -> None:
    """Free with a token only: GitHub charges a 304 to an anonymous request (``test_github_review_fixes``)."""
    client = token_client
    fake.add_user("octo", repos_named(150))
    await client.get_user("octo", Priority.INTERACTIVE)
    await client.list_repos("octo", Priority.INTERACTIVE, max_repos=1000)
    spent = fake.charged(TOKEN)
    hits = metric("github_conditional_hits_total")

    user = await client.get_user("octo", Priority.INTERACTIVE)
    repos, _ = await client.list_repos("octo", Priority.INTERACTIVE, max_repos=1000)

    assert user.login == "octo" and len(repos) == 150
    assert fake.charged(TOKEN) == spent == 3
    second = fake.recorded()[3:]
    assert [r.status for r in second] == [304, 304, 304]
    # Sent exactly as served: the weak marker and the quotes included.
    assert second[0].if_none_match is not None and second[0].if_none_match.startswith('W/"')
    assert second[1].if_none_match is not None and second[1].if_none_match.startswith('"')
    assert metric("github_conditional_hits_total") == hits + 3


async def test_a_repository_added_after_an_unchanged_full_page_is_listed(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    user = fake.add_user("hundred", repos_named(100))
    first, _ = await client.list_repos("hundred", Priority.INTERACTIVE, max_repos=1000)
    user.repos.append(FakeRepo(name="zz-newest"))  # sorts last: page 1's body (and ETag) unchanged

    again, truncated = await client.list_repos("hundred", Priority.INTERACTIVE, max_repos=1000)

    assert len(first) == 100
    assert len(again) == 101 and not truncated
    assert again[-1].name == "zz-newest"
    assert [r.status for r in fake.recorded("/repos")] == [200, 304, 200, 200]


async def test_a_repository_added_after_an_unchanged_short_last_page_is_listed(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    """Upstream review: GitHub may answer pages shorter than asked. A last page of seven, full for
    its size, kept its ETag when a repository was added after it, and the repository was never
    listed while the ETag was kept. The profile's ``public_repos`` says the listing fell short."""
    user = fake.add_user("shorty", repos_named(14), page_size=7)
    first, _ = await client.list_repos("shorty", Priority.INTERACTIVE, max_repos=1000, expected=14)
    user.repos.append(FakeRepo(name="zz-newest"))  # sorts last: pages 1 and 2 unchanged

    again, truncated = await client.list_repos("shorty", Priority.INTERACTIVE, max_repos=1000, expected=15)

    assert len(first) == 14
    assert len(again) == 15 and not truncated
    assert again[-1].name == "zz-newest"
    assert [r.status for r in fake.recorded("/repos")] == [200, 200, 304, 304, 200, 200]


async def test_a_changed_resource_is_fetched_again(fake: FakeGitHub, client: GitHubClient) -> None:
    user = fake.add_user("changing", followers=1)
    await client.get_user("changing", Priority.INTERACTIVE)
    user.followers = 2

    assert (await client.get_user("changing", Priority.INTERACTIVE)).followers == 2
    assert [r.status for r in fake.recorded()] == [200, 200]


async def test_a_repository_renamed_after_the_listing_is_measured_through_githubs_redirect(
    fake: FakeGitHub, token_client: GitHubClient
) -> None:
    """GitHub answers a renamed repository's old ``/languages`` ``301 Moved Permanently`` with an
    absolute ``location`` on its own base, ``/repositories/{id}/languages``: the client follows it and
    measures the repository. Each request is charged, the redirect too: with a token, a revalidation's
    304 is free and its 301 is not (the client's meter agrees with GitHub's count)."""
    client = token_client
    fake.add_user("mover", [FakeRepo("old-name", language="Go", languages={"Go": 1200, "Shell": 30})])
    (listed,), _ = await client.list_repos("mover", Priority.INTERACTIVE, max_repos=100)
    renamed = fake.rename_repo("mover", "old-name", "new-name")
    spent = fake.charged(TOKEN)

    with metered() as first:
        languages = await client.get_languages(listed, Priority.INTERACTIVE)
    with metered() as again:
        revalidated = await client.get_languages(listed, Priority.INTERACTIVE)

    assert languages == revalidated == {"Go": 1200, "Shell": 30}
    old, by_id = "/repos/mover/old-name/languages", f"/repositories/{renamed.id}/languages"
    assert [(r.path, r.status) for r in fake.recorded("/languages")] == [
        (old, 301),
        (by_id, 200),
        (old, 301),
        (by_id, 304),
    ]
    assert (first.charged, again.charged) == (2, 1)
    assert fake.charged(TOKEN) - spent == first.charged + again.charged


async def test_a_repository_renamed_while_the_listing_is_paged_is_listed_once(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    """A rename keeps GitHub's id: ``repo-0000``, renamed after page 1 to sort last, is on page 2 again
    under its new name and kept once, by its id (``repo-0100``, shifted back onto page 1 by it, is
    missed until the next fetch, like a repository shifted back by a deletion)."""
    user = fake.add_user("renamer", repos_named(150, stars=1))

    def rename_one(page: int) -> None:
        if page == 1:
            fake.rename_repo("renamer", "repo-0000", "zzz-renamed")

    user.after_page = rename_one

    repos, truncated = await client.list_repos("renamer", Priority.INTERACTIVE, max_repos=1000)

    names = [repo.full_name for repo in repos]
    assert len(fake.recorded("/repos")) == 2 and not truncated
    assert len(names) == len({repo.id for repo in repos}) == 149
    assert names[0] == "renamer/repo-0000" and "renamer/zzz-renamed" not in names
    assert sum(repo.stargazers_count for repo in repos) == 149


async def test_logins_and_repository_names_are_matched_case_insensitively(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    """GitHub matches ``{login}``, ``{owner}`` and ``{repo}`` case-insensitively and answers the
    canonical case: ``OctoCat`` is octocat, and a repository whose name changed only in case is still
    served at the path the listing gave (no redirect, no 404: its languages are measured)."""
    fake.add_user("octocat", [FakeRepo("Hello-World", language="C", languages={"C": 10})])

    user = await client.get_user("OctoCat", Priority.INTERACTIVE)
    (listed,), _ = await client.list_repos("OCTOCAT", Priority.INTERACTIVE, max_repos=100)
    fake.rename_repo("octocat", "Hello-World", "hello-world")
    languages = await client.get_languages(listed, Priority.INTERACTIVE)

    assert (user.login, listed.full_name) == ("octocat", "octocat/Hello-World")
    assert listed.languages_url.endswith("/repos/octocat/Hello-World/languages")
    assert languages == {"C": 10}
    assert [r.status for r in fake.recorded()] == [200, 200, 200]


ETAG_BYTES_PER_COLD_LOOKUP = 64 * 1024
"""What a cold lookup of a 1,000-repository user may leave in Valkey for ``GITHUB_ETAG_TTL_S``: its
profile, ten pages of repositories and twenty repositories' languages, compressed (it was ~244 KiB)."""


def varied_repos(count: int) -> list[FakeRepo]:
    """Repositories whose names, counts and languages differ, as a real user's do."""
    words = ["kube", "rust", "tool", "lib", "web", "cli", "data", "ml", "parser", "notes", "dotfiles"]
    languages = ["Python", "Go", "Rust", None, "TypeScript", "C++"]
    return [
        FakeRepo(
            name=f"{words[index % 11]}-{words[index * 7 % 11]}-{index * 7919 % 100_003}",
            stars=index * 37 % 5000,
            forks=index * 13 % 400,
            size=index * 7331 % 250_000,
            language=languages[index % 6],
            fork=index % 5 == 0,
            languages={"Python": index * 11, "Shell": index},
        )
        for index in range(count)
    ]


async def etag_entries(valkey: Valkey) -> dict[bytes, int]:
    """Every stored ETag entry and the bytes Valkey spends on it."""
    return {key: await valkey.memory_usage(key) or 0 async for key in valkey.scan_iter("github:etag:*")}


async def test_a_cold_lookup_of_a_thousand_repositories_keeps_little_in_valkey(
    fake: FakeGitHub, token_client: GitHubClient, valkey: Valkey, settings: Settings
) -> None:
    """Anyone may look up any login, and Valkey runs with ``noeviction``: what a lookup leaves there
    for a week is compressed and capped per entry, yet still answers the next lookup with 304s (free
    with a token)."""
    client = token_client
    fake.add_user("thousand", varied_repos(1000))
    await client.get_user("thousand", Priority.INTERACTIVE)
    repos, _ = await client.list_repos("thousand", Priority.INTERACTIVE, max_repos=1000)
    for repo in repos[:20]:
        await client.get_languages(repo, Priority.INTERACTIVE)
    spent = fake.charged(TOKEN)

    entries = await etag_entries(valkey)
    assert len(entries) == 1 + 10 + 20
    assert sum(entries.values()) <= ETAG_BYTES_PER_COLD_LOOKUP, sum(entries.values())
    stored = [len(await valkey.get(key) or b"") for key in entries]
    assert max(stored) <= settings.github_etag_max_bytes

    again, _ = await client.list_repos("thousand", Priority.INTERACTIVE, max_repos=1000)
    assert again == repos  # ten 304s answered from the entries; the full last page is asked again
    assert [r.status for r in fake.recorded("/repos")[-11:]] == [304] * 10 + [200]
    assert fake.charged(TOKEN) == spent + 1


async def test_an_answer_larger_than_the_cap_is_not_kept(
    settings: Settings, fake: FakeGitHub, fake_server: FakeGitHubServer, valkey: Valkey
) -> None:
    configured = github_settings(settings, fake_server, github_etag_max_bytes=1024)
    client = GitHubClient(configured, valkey, governor_for(configured, valkey, "anonymous"))
    await client.start()
    try:
        fake.add_user("capped", varied_repos(100))
        await client.get_user("capped", Priority.INTERACTIVE)
        first, _ = await client.list_repos("capped", Priority.INTERACTIVE, max_repos=1000)
        assert len(await etag_entries(valkey)) == 1  # the profile; the page of 100 is over the cap
        again, _ = await client.list_repos("capped", Priority.INTERACTIVE, max_repos=1000)
        await client.get_user("capped", Priority.INTERACTIVE)
    finally:
        await client.close()
    assert again == first
    assert [r.status for r in fake.recorded()] == [200, 200, 200, 304]


async def test_a_429_with_retry_after_delays_the_next_request_by_at_least_that(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    fake.add_user("patient")
    fake.fail(
        429, headers={"retry-after": "2"}, body=b'{"message": "You have exceeded a secondary rate limit"}'
    )

    user = await client.get_user("patient", Priority.INTERACTIVE)

    assert user.login == "patient"
    first, second = fake.recorded()
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 2.0


async def test_remaining_zero_sends_nothing_before_the_reset(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_user("thrifty", repos_named(3))
    reset = int(time.time()) + 3
    fake.set_quota(remaining=1, reset=reset)

    await client.get_user("thrifty", Priority.INTERACTIVE)  # spends the last request of the window
    repos, _ = await client.list_repos("thrifty", Priority.INTERACTIVE, max_repos=100)

    assert len(repos) == 3
    first, second = fake.recorded()
    assert (first.status, second.status) == (200, 200)
    assert second.at >= reset
    assert fake.violations == 0


async def test_a_primary_limit_answer_blocks_until_reset_and_a_short_budget_gives_up_without_sending(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    fake.add_user("blocked")
    reset = int(time.time()) + 120
    fake.fail(403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})

    with pytest.raises(GitHubRateLimitError) as caught:
        await client.get_user("blocked", Priority.INTERACTIVE)
    assert caught.value.retry_after is not None and caught.value.retry_after > 100
    with pytest.raises(GitHubRateLimitError):
        await client.get_user("blocked", Priority.INTERACTIVE)

    assert len(fake.recorded()) == 1
    blocked_until = await client.governor.blocked_until()
    assert blocked_until is not None and blocked_until >= reset


async def test_a_secondary_limit_without_retry_after_waits_at_least_a_minute_then_longer(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    fake.add_user("bursty")
    hits = metric("github_secondary_limit_hits_total")
    fake.fail(403, body=b'{"message": "You have exceeded a secondary rate limit."}')

    before = time.time()
    with pytest.raises(GitHubRateLimitError):
        await client.get_user("bursty", Priority.INTERACTIVE)

    first_block = await client.governor.blocked_until()
    assert first_block is not None and first_block - before >= 60
    assert len(fake.recorded()) == 1  # a 60 s wait exceeds the interactive budget: nothing re-sent
    assert metric("github_secondary_limit_hits_total") == hits + 1
    # A second consecutive hit doubles the wait (GitHub: exponentially longer, capped).
    observed_at = time.time()
    second = await client.governor.observe(403, {}, b"secondary rate limit")
    assert second is not None and second - observed_at >= 119


async def test_background_work_stops_at_the_reserve_interactive_work_does_not(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    fake.add_user("reserved")
    fake.set_quota(remaining=7, reset=int(time.time()) + 600)  # limit 60, reserve 10% = 6

    await client.get_user("reserved", Priority.BACKGROUND)  # leaves 6: the reserve
    with pytest.raises(GitHubRateLimitError):
        await client.get_user("reserved", Priority.BACKGROUND)
    await client.get_user("reserved", Priority.INTERACTIVE)  # a 304 in fact, but it may go

    assert len(fake.recorded()) == 2


async def test_transient_failures_are_retried(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.add_user("flaky")
    retries = metric("github_retries_total", reason="status-502")
    fake.fail(502, times=2)

    assert (await client.get_user("flaky", Priority.INTERACTIVE)).login == "flaky"
    assert [r.status for r in fake.recorded()] == [502, 502, 200]
    assert metric("github_retries_total", reason="status-502") == retries + 2


async def test_a_timeout_is_retried(
    fake: FakeGitHub, settings: Settings, fake_server: FakeGitHubServer, valkey: Valkey
) -> None:
    configured = github_settings(settings, fake_server, github_timeout_s=1.0)  # the retry's answer fits
    github = GitHubClient(configured, valkey, governor_for(configured, valkey, "anonymous"))
    await github.start()
    fake.add_user("slow")
    fake.fail(200, delay_s=3.0, body=b"{}", path_contains="/users/slow")
    retries = metric("github_retries_total", reason="timeout")
    try:
        assert (await github.get_user("slow", Priority.INTERACTIVE)).login == "slow"
    finally:
        await github.close()
    assert metric("github_retries_total", reason="timeout") == retries + 1


async def test_github_down_for_every_attempt_is_an_error_not_a_hang(
    fake: FakeGitHub, client: GitHubClient
) -> None:
    fake.add_user("down")
    fake.fail(502, times=10)

    with pytest.raises(GitHubDownError, match="status-502"):
        await client.get_user("down", Priority.INTERACTIVE)
    assert len(fake.recorded()) == 3  # GITHUB_RETRY_ATTEMPTS


async def test_an_unknown_user_is_not_found(fake: FakeGitHub, client: GitHubClient) -> None:
    with pytest.raises(GitHubNotFoundError):
        await client.get_user("nobody-here", Priority.INTERACTIVE)


async def test_one_token_never_has_two_requests_in_flight(
    fake: FakeGitHub, token_client: GitHubClient
) -> None:
    for index in range(6):
        fake.add_user(f"parallel-{index}", [FakeRepo(name="r", language="Go", languages={"Go": 10})])
    fake.latency_s = 0.05

    await asyncio.gather(*(token_client.get_user(f"parallel-{i}", Priority.INTERACTIVE) for i in range(6)))

    assert len(fake.recorded()) == 6
    assert fake.max_in_flight[TOKEN] == 1


async def test_the_token_is_sent_to_github_and_never_logged(
    fake: FakeGitHub, token_client: GitHubClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_user("secretive", repos_named(2, language="Rust", languages={"Rust": 5}))
    fake.fail(502, times=1)
    fake.fail(429, headers={"retry-after": "1"}, path_contains="/repos")

    # the app's own handler (structlog's capture misses loggers cached before it), at DEBUG for every
    # logger: the app's logging setup quiets httpx and httpcore
    with captured_logs(logging.DEBUG) as logs:
        for name in ("httpx", "httpcore"):
            caplog.set_level(logging.DEBUG, logger=name)
        await token_client.get_user("secretive", Priority.INTERACTIVE)
        await token_client.list_repos("secretive", Priority.INTERACTIVE, max_repos=100)
        with pytest.raises(GitHubNotFoundError):
            await token_client.get_user("ghost", Priority.INTERACTIVE)

    assert {r.token for r in fake.recorded()} == {TOKEN}, fake.recorded()
    assert logs.events("github_rate_limited"), "the rate-limit refusal must be logged"
    assert TOKEN not in logs.text
    assert "HTTP Request" in logs.text
    assert TOKEN not in repr(token_client) and TOKEN not in repr(token_client._http)
    assert token_fingerprint(TOKEN) in {entry.get("token_id") for entry in logs.lines}, "which token"


async def test_the_governor_refuses_to_wait_past_the_budget(valkey: Valkey, settings: Settings) -> None:
    governor = governor_for(settings, valkey, "budget", interactive_wait_s=0.5)
    await governor.observe(429, {"retry-after": "30"}, b"")

    with pytest.raises(WaitBudgetExceededError) as caught:
        async with governor.turn(Priority.INTERACTIVE):
            pytest.fail("must not be allowed to send")
    assert 25 <= caught.value.retry_after <= 30


async def test_a_revoked_token_is_an_outage_named_in_the_log_never_the_token(
    fake: FakeGitHub, token_client: GitHubClient
) -> None:
    fake.add_user("anyone", [FakeRepo(name="a", languages={"Go": 1})])
    fake.revoke(TOKEN)

    with captured_logs() as logs, pytest.raises(GitHubDownError, match="401"):
        await token_client.get_user("anyone", Priority.INTERACTIVE)

    assert [r.status for r in fake.recorded("/users/anyone")] == [401]  # not retried: it cannot heal
    assert [e.get("token_fingerprint") for e in logs.events("github_bad_credentials")] == [
        token_fingerprint(TOKEN)
    ]
    assert TOKEN not in logs.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"User-Agent": ""}, 403),
        ({"X-GitHub-Api-Version": "1999-01-01"}, 400),
        ({"Accept": "text/html"}, 415),
        ({}, 200),
    ],
)
async def test_the_fake_refuses_the_requests_github_refuses(
    fake: FakeGitHub, fake_server: FakeGitHubServer, headers: dict[str, str], status: int
) -> None:
    """The fake is as strict as GitHub where the client's headers are concerned (a client that sent
    a wrong one would pass against a lax fake)."""
    fake.add_user("anyone")
    sent = {"User-Agent": "test", "Accept": "application/vnd.github+json", **headers}
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{fake_server.url}/users/anyone", headers=sent)
    assert response.status_code == status, response.text
