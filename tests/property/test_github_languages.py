"""Per-language repository counts and totals equal a reference count, for random repository sets.

The bug class of github-stats-extended #544 (per-language repository counts that did not count
repositories): the analysis is compared with a plain ``Counter`` over the same view.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domains.github.analysis import analyze, in_view
from app.domains.github.client import GithubRepo, GithubUser
from app.domains.github.schemas import Filters, ProfileData

LANGUAGES = ["Python", "Go", "Rust", "C", "TypeScript", "Shell"]


@st.composite
def repositories(draw: st.DrawFn) -> list[GithubRepo]:
    count = draw(st.integers(min_value=0, max_value=60))
    repos = []
    for index in range(count):
        name = f"r{index}"
        repos.append(
            GithubRepo(
                name=name,
                full_name=f"u/{name}",
                html_url=f"https://github.example/u/{name}",
                fork=draw(st.booleans()),
                archived=draw(st.booleans()),
                stargazers_count=draw(st.integers(min_value=0, max_value=10_000)),
                forks_count=draw(st.integers(min_value=0, max_value=1_000)),
                size=draw(st.integers(min_value=0, max_value=10**6)),
                languages_url=f"https://api.example/repos/u/{name}/languages",
                language=draw(st.none() | st.sampled_from(LANGUAGES)),
            )
        )
    return draw(st.permutations(repos))


@settings(deadline=None, max_examples=300)
@given(
    repos=repositories(),
    include_forks=st.booleans(),
    include_archived=st.booleans(),
    measured_bytes=st.dictionaries(st.sampled_from(LANGUAGES), st.integers(min_value=1, max_value=10**6)),
    measure_every=st.integers(min_value=1, max_value=4),
)
def test_language_counts_and_totals_equal_a_reference_count(
    repos: list[GithubRepo],
    include_forks: bool,
    include_archived: bool,
    measured_bytes: dict[str, int],
    measure_every: int,
) -> None:
    languages = {repo.full_name: measured_bytes for i, repo in enumerate(repos) if i % measure_every == 0}
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
    data = ProfileData(user=user, repos=repos, repos_truncated=False, languages=languages, measured_limit=100)
    filters = Filters(include_forks=include_forks, include_archived=include_archived)

    result = analyze(data, filters, top_repos=100, top_languages=len(LANGUAGES), bytes_weight=0.5)

    view = [
        repo for repo in repos if (include_forks or not repo.fork) and (include_archived or not repo.archived)
    ]
    assert all(in_view(repo, filters) for repo in view)
    expected = Counter(repo.language for repo in view if repo.language is not None)
    assert {stat.name: stat.repos for stat in result.languages.by_repos} == dict(expected)
    assert sum(stat.repos for stat in result.languages.by_repos) == sum(expected.values())
    assert result.total_stars == sum(repo.stargazers_count for repo in view)
    assert result.total_forks == sum(repo.forks_count for repo in view)
    assert result.repositories.counted == len(view)
    measured_in_view = [repo for repo in view if repo.full_name in languages]
    expected_bytes = Counter()
    for _ in measured_in_view:
        expected_bytes.update(measured_bytes)
    assert {stat.name: stat.bytes for stat in result.languages.by_bytes} == dict(expected_bytes)
    assert [r.stars for r in result.top_repositories] == sorted(
        (r.stargazers_count for r in view), reverse=True
    )
    if result.languages.blend:
        assert abs(sum(stat.score for stat in result.languages.blend) - 1.0) < 1e-4
