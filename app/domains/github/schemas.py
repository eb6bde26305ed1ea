"""Wire shapes of the GitHub analytics API, and the stored profile document."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import msgspec
from litestar.openapi.spec import Example
from litestar.params import PathParameter

from app.domains.github.client import MAX_USERNAME, USERNAME_PATTERN, GithubRepo, GithubUser
from app.domains.github.languages import LanguageStat

_USERNAME_RULE = (
    "A GitHub username: letters, digits and single hyphens, no hyphen first or last, "
    f"at most {MAX_USERNAME} characters (case-insensitive)."
)

Username = Annotated[
    str,
    msgspec.Meta(
        pattern=USERNAME_PATTERN,
        min_length=1,
        max_length=MAX_USERNAME,
        description=_USERNAME_RULE,
        examples=["octocat"],
    ),
]
UsernamePath = Annotated[
    str,
    PathParameter(
        pattern=USERNAME_PATTERN,
        min_length=1,
        max_length=MAX_USERNAME,
        description=_USERNAME_RULE,
        # the parameter's example, so Swagger UI fills it in: a login GitHub (and the fake GitHub of
        # `python -m tests.fakes.github`) answers
        examples=[Example(summary="GitHub's mascot", value="octocat")],  # no id: Litestar prints it (invalid)
    ),
]

Source = Literal["live", "cache", "stale"]
RefreshStatus = Literal["queued", "running", "succeeded", "failed"]
ErrorKind = Literal["not-found", "rate-limited", "unavailable"]


class ProfileData(msgspec.Struct, frozen=True):
    """What one fetch chain stored (``github_profiles.data``): everything the answers are computed from."""

    user: GithubUser
    repos: list[GithubRepo]
    repos_truncated: bool
    languages: dict[str, dict[str, int]]
    """``/languages`` of the measured repositories, by ``full_name``."""
    measured_limit: int
    requests: int = 0
    not_modified: int = 0


class ProfileOut(msgspec.Struct, frozen=True):
    login: str
    name: str | None
    bio: str | None
    company: str | None
    location: str | None
    blog: str | None
    html_url: str
    avatar_url: str
    type: str
    followers: int
    following: int
    public_repos: int
    created_at: dt.datetime


class RepositoryTotals(msgspec.Struct, frozen=True):
    total: int
    """``public_repos`` as GitHub reports it."""
    scanned: int
    """Repositories listed (every page, up to ``GITHUB_MAX_REPOS``)."""
    counted: int
    """Repositories in this view (after the fork/archived filters)."""
    forks: int
    archived: int
    truncated: bool
    """True when ``GITHUB_MAX_REPOS`` cut the listing: totals then cover the first ``scanned``."""


class TopRepository(msgspec.Struct, frozen=True):
    name: str
    full_name: str
    html_url: str
    stars: int
    forks: int
    language: str | None
    fork: bool
    archived: bool
    pushed_at: dt.datetime | None


class LanguageCoverage(msgspec.Struct, frozen=True):
    repos_in_view: int
    repos_measured: int
    """Repositories of the view whose ``/languages`` was fetched (the bytes view covers these)."""
    repos_unmeasured: int
    """Repositories of the view with code whose bytes were not fetched though they are measured
    (``analysis.is_measurable``: not forks): beyond the measured limit, or gone or blocked when
    measured (GitHub answered 404, 410, 451, or a 403 that was not a rate limit)."""
    measured_limit: int
    truncated: bool
    """True when ``repos_unmeasured`` is not 0: the bytes view misses code it would count."""
    forks_unmeasured: int = 0
    """Forks of the view with code (``include_forks``): never measured, their bytes are upstream's
    work; the bytes view leaves them out by design, so they do not make the coverage truncated."""


class LanguagesOut(msgspec.Struct, frozen=True):
    by_bytes: list[LanguageStat]
    by_repos: list[LanguageStat]
    blend: list[LanguageStat]
    bytes_weight: float
    """The blend's weight of bytes (``GITHUB_BLEND_BYTES_WEIGHT``; 0 when nothing was measured)."""
    coverage: LanguageCoverage


class Filters(msgspec.Struct, frozen=True):
    include_forks: bool
    include_archived: bool


class UpstreamError(msgspec.Struct, frozen=True):
    kind: ErrorKind
    at: dt.datetime
    retry_after_s: int | None = None
    type: str | None = None
    """The problem type (``/problems/<slug>``, each its own page) of this failure, as a lookup would
    answer it: ``github-rate-limited`` (GitHub's limit), ``github-lookup-budget`` (the share of the
    account or of the address it was asked from), ``github-lookups-in-flight`` (the address's chains
    under way), ``github-busy`` (a wait behind other requests), ``github-unavailable``,
    ``github-user-not-found``. None in errors recorded before it was kept."""


class RefreshOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    username: str
    status: RefreshStatus
    requested_at: dt.datetime
    events_url: str
    state_url: str
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    fetched_at: dt.datetime | None = None
    error: UpstreamError | None = None

    @property
    def is_final(self) -> bool:
        return self.status in ("succeeded", "failed")


class RefreshEvent(msgspec.Struct, frozen=True):
    """One Server-Sent Event of a refresh's stream (for the schema; the wire is ``text/event-stream``)."""

    event: Literal["refresh"]
    id: str
    """``<refresh id>:<status>``."""
    data: str
    """The refresh (``RefreshOut``) as JSON."""


class GithubProfileOut(msgspec.Struct, frozen=True):
    username: str
    profile: ProfileOut
    repositories: RepositoryTotals
    total_stars: int
    total_forks: int
    top_repositories: list[TopRepository]
    languages: LanguagesOut
    filters: Filters
    fetched_at: dt.datetime
    age_s: float
    ttl_s: int
    source: Source
    """``live``: fetched for this request; ``cache``: stored and younger than the TTL; ``stale``:
    stored and older (a refresh is under way: ``refresh``) or GitHub failed (``last_error``)."""
    stale: bool
    truncated: bool
    """Anything left out: repositories beyond ``GITHUB_MAX_REPOS`` or unmeasured language bytes."""
    refresh: RefreshOut | None = None
    last_error: UpstreamError | None = None


class TrackCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    username: Username


class TrackedOut(msgspec.Struct, frozen=True):
    username: str
    tracked_since: dt.datetime


class Change(msgspec.Struct, frozen=True):
    followers: int
    following: int
    public_repos: int
    repos_counted: int
    total_stars: int
    total_forks: int
    language_bytes: dict[str, int]
    """Per-language change in bytes (languages whose bytes did not change are left out)."""


class HistoryPoint(msgspec.Struct, frozen=True):
    date: dt.date
    taken_at: dt.datetime
    github_id: int | None
    """GitHub's id of the account that held the login that day (a rename keeps it; a login renamed
    away and registered again by someone else changes it). None for snapshots taken before ids were
    recorded."""
    followers: int
    following: int
    public_repos: int
    repos_counted: int
    total_stars: int
    total_forks: int
    language_bytes: dict[str, int]
    change: Change | None
    """Against the previous point: None for the first, and where the login changed hands (the
    previous point's ``github_id`` is another account's): one account's numbers are never subtracted
    from another's."""
    days_since_previous: int | None


class HistoryOut(msgspec.Struct, frozen=True):
    username: str
    from_: dt.date = msgspec.field(name="from")
    to: dt.date
    points: list[HistoryPoint]
    deltas: Change | None
    """Last point minus the first point of the same account (``deltas_from``): the whole range's
    change unless the login changed hands in it. None with fewer than two such points."""
    deltas_from: dt.date | None = None
    """The day of the first point ``deltas`` counts from (None without points)."""
