"""From a stored profile document to the analytics of one view: pure functions, no I/O.

A view is the set of repositories counted: every owned repository the listing returned, minus
forks and archived ones unless the caller includes them. Totals (stars, forks) are exact over the
whole view, not over a first page (github-readme-stats sums the first 100).

Language coverage follows one rule, ``is_measurable``: what the fetch measures is what the answer
misses when it was not measured. Forks are never measured and are reported apart from the
unmeasured (``forks_unmeasured``): including forks in a view never makes it "truncated".
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from app.domains.github.client import GithubRepo
from app.domains.github.languages import count_primary_languages, rank_languages, sum_language_bytes
from app.domains.github.schemas import (
    Filters,
    LanguageCoverage,
    LanguagesOut,
    ProfileData,
    ProfileOut,
    RepositoryTotals,
    TopRepository,
)

DEFAULT_FILTERS = Filters(include_forks=False, include_archived=False)


class Analysis(msgspec.Struct, frozen=True):
    profile: ProfileOut
    repositories: RepositoryTotals
    total_stars: int
    total_forks: int
    top_repositories: list[TopRepository]
    languages: LanguagesOut
    language_bytes: dict[str, int]
    """Bytes per language over the measured repositories of the view (all languages, for snapshots)."""

    @property
    def truncated(self) -> bool:
        return self.repositories.truncated or self.languages.coverage.truncated


def is_measurable(repo: GithubRepo) -> bool:
    """Whether a repository's ``/languages`` is worth a request: not a fork (its bytes are upstream's
    work) and with code: a size above 0 or a primary language (GitHub reports the size in kilobytes,
    rounded: a repository of a few hundred bytes of code reads 0 and still has a language)."""
    return not repo.fork and (repo.size > 0 or repo.language is not None)


def repos_to_measure(repos: Sequence[GithubRepo], limit: int) -> list[GithubRepo]:
    """Which repositories get a ``/languages`` request: the ``limit`` largest measurable ones
    (``is_measurable``), unarchived ones first so the default view is covered best."""
    candidates = [repo for repo in repos if is_measurable(repo)]
    candidates.sort(key=lambda repo: (repo.archived, -repo.size, repo.full_name))
    return candidates[:limit]


def in_view(repo: GithubRepo, filters: Filters) -> bool:
    return (filters.include_forks or not repo.fork) and (filters.include_archived or not repo.archived)


def analyze(
    data: ProfileData, filters: Filters, *, top_repos: int, top_languages: int, bytes_weight: float
) -> Analysis:
    view = [repo for repo in data.repos if in_view(repo, filters)]
    measured = [repo for repo in view if repo.full_name in data.languages]
    not_measured = [repo for repo in view if repo.full_name not in data.languages]
    unmeasured = [repo for repo in not_measured if is_measurable(repo)]
    repo_counts = count_primary_languages(repo.language for repo in view)
    byte_counts = sum_language_bytes(data.languages[repo.full_name] for repo in measured)
    ranking = rank_languages(repo_counts, byte_counts, bytes_weight=bytes_weight, limit=top_languages)
    top = sorted(view, key=lambda repo: (-repo.stargazers_count, repo.full_name.lower()))[:top_repos]
    user = data.user
    return Analysis(
        profile=ProfileOut(
            login=user.login,
            name=user.name,
            bio=user.bio,
            company=user.company,
            location=user.location,
            blog=user.blog,
            html_url=user.html_url,
            avatar_url=user.avatar_url,
            type=user.type,
            followers=user.followers,
            following=user.following,
            public_repos=user.public_repos,
            created_at=user.created_at,
        ),
        repositories=RepositoryTotals(
            total=user.public_repos,
            scanned=len(data.repos),
            counted=len(view),
            forks=sum(repo.fork for repo in data.repos),
            archived=sum(repo.archived for repo in data.repos),
            truncated=data.repos_truncated,
        ),
        total_stars=sum(repo.stargazers_count for repo in view),
        total_forks=sum(repo.forks_count for repo in view),
        top_repositories=[
            TopRepository(
                name=repo.name,
                full_name=repo.full_name,
                html_url=repo.html_url,
                stars=repo.stargazers_count,
                forks=repo.forks_count,
                language=repo.language,
                fork=repo.fork,
                archived=repo.archived,
                pushed_at=repo.pushed_at,
            )
            for repo in top
        ],
        languages=LanguagesOut(
            by_bytes=ranking.by_bytes,
            by_repos=ranking.by_repos,
            blend=ranking.blend,
            bytes_weight=ranking.bytes_weight,
            coverage=LanguageCoverage(
                repos_in_view=len(view),
                repos_measured=len(measured),
                repos_unmeasured=len(unmeasured),
                forks_unmeasured=sum(repo.fork and repo.language is not None for repo in not_measured),
                measured_limit=data.measured_limit,
                truncated=bool(unmeasured),
            ),
        ),
        language_bytes=byte_counts,
    )
