"""The problems the GitHub routes answer (``app.core.errors``: each its own slug), and the one a
failed fetch with nothing stored to fall back to becomes (``problem_for``)."""

from __future__ import annotations

import math

from app.core.errors import (
    AppError,
    ConflictError,
    NotFoundError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from app.domains.github.client import GitHubBusyError, GitHubError, GitHubNotFoundError, GitHubRateLimitError


class UnknownGithubUserError(NotFoundError):
    slug = "github-user-not-found"
    title = "No such GitHub user"


class GithubUnavailableError(ServiceUnavailableError):
    slug = "github-unavailable"
    title = "GitHub is unavailable"


class GithubQuotaExhaustedError(ServiceUnavailableError):
    slug = "github-rate-limited"
    title = "GitHub rate limit reached"


class GithubBusyError(ServiceUnavailableError):
    slug = "github-busy"
    title = "Requests to GitHub are queued up"


class LookupBudgetError(TooManyRequestsError):
    slug = "github-lookup-budget"
    title = "Your share of GitHub lookups is used up"


class TooManyLookupsError(TooManyRequestsError):
    slug = "github-lookups-in-flight"
    title = "Too many GitHub lookups at once"


class RefreshLimitError(TooManyRequestsError):
    slug = "github-refresh-limit"
    title = "Too many refreshes pending"


class TooManyRefreshStreamsError(TooManyRequestsError):
    slug = "github-refresh-streams"
    title = "Too many live refresh streams"


class NotStoredError(NotFoundError):
    slug = "github-not-stored"
    title = "Nothing stored for this GitHub user"


class TrackingLimitError(ConflictError):
    slug = "github-tracking-limit"
    title = "Tracking limit reached"


class NotTrackedError(NotFoundError):
    slug = "github-not-tracked"
    title = "Not tracked"


class RefreshNotFoundError(NotFoundError):
    slug = "github-refresh-not-found"
    title = "No such refresh"


class InvalidRangeError(AppError):
    slug = "invalid-range"
    title = "Invalid date range"


class InvalidUsernameError(AppError):
    slug = "invalid-github-username"
    title = "Not a GitHub username"


def problem_for(exc: GitHubError) -> AppError:
    """The API's problem for a failed fetch with nothing stored to fall back to."""
    if isinstance(exc, GitHubNotFoundError):
        return UnknownGithubUserError("GitHub has no user with this name.")
    retry_after = str(max(1, math.ceil(exc.retry_after or 30)))
    if isinstance(exc, GitHubBusyError):
        return GithubBusyError(
            "Requests to GitHub are sent one at a time, and this one waited longer than a request may "
            "(GITHUB_INTERACTIVE_WAIT_S) behind others, or behind fetches of this user by other accounts "
            "or addresses that their own limits refused; GitHub's rate limit was not the cause. Nothing "
            "is stored for this user yet.",
            headers={"Retry-After": retry_after},
        )
    if isinstance(exc, GitHubRateLimitError):
        return GithubQuotaExhaustedError(
            "GitHub's rate limit is exhausted and nothing is stored for this user yet.",
            headers={"Retry-After": retry_after},
        )
    return GithubUnavailableError(
        "GitHub did not answer and nothing is stored for this user yet.", headers={"Retry-After": retry_after}
    )
