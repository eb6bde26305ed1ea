"""Language statistics of a set of repositories: pure functions, no I/O.

Three views, all returned so a client chooses (github-readme-stats offers one, computed from the
first 100 repositories, and its per-language repository counts were wrong: stats-extended #544):

- ``by_repos``: how many repositories have the language as their *primary* language (GitHub's
  ``language`` field of each repository, known for every repository without extra requests).
  Each repository counts once, whatever its size: one huge repository cannot dominate.
- ``by_bytes``: bytes of code per language, summed over the repositories whose ``/languages`` was
  fetched (the largest ones, up to ``GITHUB_LANGUAGE_REPOS``; the answer reports the coverage).
  These are repository-wide bytes, not the user's own lines.
- ``blend``: ``w * bytes_share + (1 - w) * repos_share`` with ``w = GITHUB_BLEND_BYTES_WEIGHT``
  (default 0.5). Both shares are fractions of 1, so the blend is too, and a single repository can
  move it by at most ``w`` (its bytes) plus ``(1 - w) / repositories`` (its count). When one side has
  no data at all (nothing measured, or no primary languages), the blend is the other side alone.

Ties are broken by name, so equal inputs always give equal lists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import msgspec


class LanguageStat(msgspec.Struct, frozen=True):
    """One language in every view's terms."""

    name: str
    repos: int
    """Repositories in the view whose primary language this is."""
    bytes: int
    """Bytes of this language in the measured repositories of the view."""
    repos_share: float
    bytes_share: float
    score: float
    """The blend: ``w * bytes_share + (1 - w) * repos_share``."""


class LanguageRanking(msgspec.Struct, frozen=True):
    by_bytes: list[LanguageStat]
    by_repos: list[LanguageStat]
    blend: list[LanguageStat]
    bytes_weight: float
    """The weight the blend used (the configured one unless a side had no data)."""


def count_primary_languages(languages: Iterable[str | None]) -> dict[str, int]:
    """Repositories per primary language; repositories without one (empty, docs only) count nowhere."""
    return dict(Counter(language for language in languages if language))


def sum_language_bytes(per_repo: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Bytes per language over the given repositories' ``/languages`` answers."""
    totals: Counter[str] = Counter()
    for languages in per_repo:
        for name, size in languages.items():
            if size > 0:
                totals[name] += size
    return dict(totals)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def rank_languages(
    repo_counts: Mapping[str, int], byte_counts: Mapping[str, int], *, bytes_weight: float, limit: int
) -> LanguageRanking:
    """The three views, each its top ``limit`` languages."""
    if not 0.0 <= bytes_weight <= 1.0:
        raise ValueError("bytes_weight must be within [0, 1]")
    total_repos = sum(repo_counts.values())
    total_bytes = sum(byte_counts.values())
    if not total_bytes:
        bytes_weight = 0.0
    elif not total_repos:
        bytes_weight = 1.0
    stats = []
    for name in set(repo_counts) | set(byte_counts):
        repos = repo_counts.get(name, 0)
        size = byte_counts.get(name, 0)
        repos_share = _share(repos, total_repos)
        bytes_share = _share(size, total_bytes)
        score = round(bytes_weight * bytes_share + (1 - bytes_weight) * repos_share, 6)
        stats.append(LanguageStat(name, repos, size, repos_share, bytes_share, score))
    by_bytes = sorted((s for s in stats if s.bytes > 0), key=lambda s: (-s.bytes, s.name))
    by_repos = sorted((s for s in stats if s.repos > 0), key=lambda s: (-s.repos, s.name))
    blend = sorted(stats, key=lambda s: (-s.score, s.name))
    return LanguageRanking(
        by_bytes=by_bytes[:limit], by_repos=by_repos[:limit], blend=blend[:limit], bytes_weight=bytes_weight
    )
