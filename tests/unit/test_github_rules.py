"""GitHub analytics rules that need no I/O: usernames, rate-limit arithmetic, language views."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime

import httpx
import msgspec
import pytest

from app.domains.github.analysis import analyze, is_measurable, repos_to_measure
from app.domains.github.client import (
    LONGEST_BIO,
    LONGEST_PROFILE_TEXT,
    GithubRepo,
    GithubUser,
    _BearerAuth,
    is_valid_username,
    max_pages,
    token_fingerprint,
)
from app.domains.github.governor import parse_retry_after, secondary_backoff
from app.domains.github.languages import rank_languages
from app.domains.github.schemas import Filters, ProfileData

VALID = ["a", "0", "a-b", "a-b-123", "Octo-Cat", "x" * 39, "1-2-3"]
INVALID = [
    "",
    "a_b",
    "a--b",
    "a-b-",
    "-a-b",
    "x" * 40,
    "..",
    "../etc/passwd",
    "a/b",
    "a.b",
    "a%2Fb",
    "https://evil.example",
    "a b",
    "a\x00b",
    "ä",
    "a\n",
]


@pytest.mark.parametrize("name", VALID)
def test_github_usernames_are_accepted(name: str) -> None:
    assert is_valid_username(name)


@pytest.mark.parametrize("name", INVALID)
def test_anything_else_is_refused(name: str) -> None:
    assert not is_valid_username(name)


def test_the_token_identity_is_a_fingerprint_not_the_token() -> None:
    token = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
    fingerprint = token_fingerprint(token)
    assert fingerprint == token_fingerprint(token) != token_fingerprint(token + "x")
    assert token not in fingerprint and len(fingerprint) == 16
    assert token_fingerprint(None) == token_fingerprint("") == "anonymous"


def test_the_bearer_auth_adds_the_header_and_hides_the_token() -> None:
    auth = _BearerAuth("ghp_secret")
    request = httpx.Request("GET", "https://api.github.com/users/x")
    flow = auth.auth_flow(request)
    assert next(flow).headers["Authorization"] == "Bearer ghp_secret"
    assert "ghp_secret" not in repr(auth)


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = time.time()
    assert parse_retry_after("2", now) == 2.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    later = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (parse_retry_after(later, now) or 0) <= 30
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0


def test_secondary_backoff_starts_at_a_minute_doubles_and_is_capped() -> None:
    assert [secondary_backoff(n, 60, 900) for n in (1, 2, 3, 4, 5, 10)] == [60, 120, 240, 480, 900, 900]


def test_the_blend_weight_moves_the_ranking_between_the_two_views() -> None:
    repos = {"Python": 3, "C": 1}
    size = {"Python": 100, "C": 10_000}
    by_count = rank_languages(repos, size, bytes_weight=0.0, limit=10)
    by_size = rank_languages(repos, size, bytes_weight=1.0, limit=10)
    half = rank_languages(repos, size, bytes_weight=0.5, limit=10)
    assert [s.name for s in by_count.blend] == ["Python", "C"]
    assert [s.name for s in by_size.blend] == ["C", "Python"]
    c = next(s for s in half.blend if s.name == "C")
    assert c.score == pytest.approx(0.5 * (10_000 / 10_100) + 0.5 * 0.25, abs=1e-6)
    assert sum(s.score for s in half.blend) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="bytes_weight"):
        rank_languages(repos, size, bytes_weight=1.5, limit=10)


def test_ties_are_broken_by_name_and_limits_apply_per_view() -> None:
    ranking = rank_languages({"b": 1, "a": 1, "c": 1}, {"c": 5}, bytes_weight=0.5, limit=2)
    assert [s.name for s in ranking.by_repos] == ["a", "b"]
    assert [s.name for s in ranking.by_bytes] == ["c"]
    assert [s.name for s in ranking.blend] == ["c", "a"]


def _repo(name: str, **fields: object) -> GithubRepo:
    values: dict[str, object] = {
        "name": name,
        "full_name": f"u/{name}",
        "html_url": f"https://github.example/u/{name}",
        "fork": False,
        "stargazers_count": 1,
        "forks_count": 0,
        "size": 10,
        "languages_url": f"https://api.example/repos/u/{name}/languages",
        "language": "Go",
        **fields,
    }
    return GithubRepo(**values)  # type: ignore[arg-type]


def _data(
    repos: list[GithubRepo], languages: dict[str, dict[str, int]], truncated: bool = False
) -> ProfileData:
    user = GithubUser(
        login="u",
        id=1,
        html_url="https://github.example/u",
        avatar_url="https://avatars.example/u",
        public_repos=len(repos),
        followers=0,
        following=0,
        created_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    return ProfileData(
        user=user, repos=repos, repos_truncated=truncated, languages=languages, measured_limit=2
    )


def test_forks_and_archived_repositories_count_only_when_asked() -> None:
    repos = [
        _repo("own", stargazers_count=5),
        _repo("fork", fork=True, stargazers_count=7),
        _repo("old", archived=True),
    ]
    data = _data(repos, {})

    default = analyze(data, Filters(False, False), top_repos=10, top_languages=10, bytes_weight=0.5)
    everything = analyze(data, Filters(True, True), top_repos=10, top_languages=10, bytes_weight=0.5)

    assert (default.total_stars, default.repositories.counted) == (5, 1)
    assert (everything.total_stars, everything.repositories.counted) == (13, 3)
    assert [r.name for r in everything.top_repositories] == ["fork", "own", "old"]
    assert (default.repositories.forks, default.repositories.archived) == (1, 1)


def test_unmeasured_code_and_a_capped_listing_are_reported_as_truncated() -> None:
    repos = [
        _repo("a", size=300),
        _repo("b", size=200),
        _repo("c", size=100),
        _repo("empty", size=0, language=None),
    ]
    measured = {"u/a": {"Go": 300}, "u/b": {"Go": 150, "C": 50}}

    partial = analyze(
        _data(repos, measured), Filters(False, False), top_repos=1, top_languages=5, bytes_weight=0.5
    )
    assert partial.languages.coverage.repos_measured == 2
    assert partial.languages.coverage.repos_unmeasured == 1  # "c"; "empty" has no code
    assert partial.truncated and not partial.repositories.truncated

    complete = analyze(
        _data(repos, {**measured, "u/c": {"Go": 1}}),
        Filters(False, False),
        top_repos=1,
        top_languages=5,
        bytes_weight=0.5,
    )
    assert not complete.truncated
    capped = analyze(
        _data(repos, {**measured, "u/c": {"Go": 1}}, truncated=True),
        Filters(False, False),
        top_repos=1,
        top_languages=5,
        bytes_weight=0.5,
    )
    assert capped.truncated and capped.repositories.truncated


def test_the_largest_own_repositories_are_measured_unarchived_first() -> None:
    repos = [
        _repo("huge-fork", fork=True, size=10_000),
        _repo("archived-big", archived=True, size=5_000),
        _repo("small", size=10),
        _repo("big", size=1_000),
        _repo("empty", size=0, language=None),
    ]
    assert [r.name for r in repos_to_measure(repos, 3)] == ["big", "small", "archived-big"]
    assert repos_to_measure(repos, 0) == []


def test_a_repository_is_measurable_when_it_is_no_fork_and_has_code() -> None:
    assert is_measurable(_repo("tiny", size=0))  # a few hundred bytes of Go: 0 KB, a language
    assert is_measurable(_repo("unknown", language=None))
    assert not is_measurable(_repo("empty", size=0, language=None))
    assert not is_measurable(_repo("fork", fork=True, size=10_000))
    assert [r.name for r in repos_to_measure([_repo("tiny", size=0), _repo("fork", fork=True)], 5)] == [
        "tiny"
    ]


def test_coverage_counts_unmeasured_code_by_the_rule_that_chooses_what_to_measure() -> None:
    """A repository with a size and no primary language is measured (``is_measurable``); left out of
    the measured limit, it was counted nowhere and the coverage read complete."""
    repos = [_repo("a", size=500, language="Python"), _repo("notebooks", size=400, language=None)]
    data = _data(repos, {"u/a": {"Python": 500_000}})

    view = analyze(data, Filters(False, False), top_repos=0, top_languages=5, bytes_weight=0.5)

    coverage = view.languages.coverage
    assert (coverage.repos_measured, coverage.repos_unmeasured) == (1, 1)
    assert coverage.truncated and view.truncated


def test_forks_in_view_are_reported_apart_and_never_truncate_the_coverage() -> None:
    repos = [
        _repo("own"),
        _repo("tiny", size=0),
        _repo("fork", fork=True),
        _repo("bare-fork", fork=True, language=None),
    ]
    data = _data(repos, {"u/own": {"Go": 10}, "u/tiny": {"Go": 3}})

    view = analyze(data, Filters(True, False), top_repos=0, top_languages=5, bytes_weight=0.5)

    coverage = view.languages.coverage
    assert (coverage.repos_measured, coverage.repos_unmeasured, coverage.forks_unmeasured) == (2, 0, 1)
    assert not coverage.truncated and not view.truncated
    assert not is_measurable(repos[2]) and is_measurable(repos[1])


def test_a_listing_reads_one_page_more_than_the_cap_needs() -> None:
    assert (max_pages(100), max_pages(150), max_pages(1000)) == (2, 3, 11)


def test_free_text_past_githubs_limits_is_truncated_and_identifiers_are_bounded() -> None:
    user = {
        "login": "u",
        "id": 1,
        "html_url": "https://github.example/u",
        "avatar_url": "https://avatars.example/u",
        "public_repos": 0,
        "followers": 0,
        "following": 0,
        "created_at": "2020-01-01T00:00:00Z",
    }
    wordy = msgspec.json.decode(
        msgspec.json.encode({**user, "bio": "b" * 10_000, "name": "n" * 300, "blog": "x" * 3}),
        type=GithubUser,
    )
    assert (len(wordy.bio or ""), len(wordy.name or ""), wordy.blog) == (
        LONGEST_BIO,
        LONGEST_PROFILE_TEXT,
        "xxx",
    )
    stored = msgspec.convert(
        {**user, "bio": "b" * 10_000, "created_at": datetime(2020, 1, 1, tzinfo=UTC)}, GithubUser
    )
    assert stored.bio == "b" * LONGEST_BIO  # a profile stored before the limit is clipped when read
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({**user, "login": "l" * 1000}), type=GithubUser)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**msgspec.to_builtins(_repo("r")), "name": "r" * 101}, GithubRepo)
