"""The problems the GitHub routes answer (``app.core.errors``: each its own slug), the one a failed
fetch with nothing stored to fall back to becomes (``problem_for``), and how a failure is reported
where it is not the answer (``upstream_error``: a refresh's outcome, a stale answer's last error)."""

from __future__ import annotations

import math
from datetime import datetime

from app.core.errors import (
    AppError,
    ConflictError,
    NotFoundError,
    ServiceUnavailableError,
    TooManyRequestsError,
    problem_type,
)
from app.domains.github.client import GitHubBusyError, GitHubError, GitHubNotFoundError, GitHubRateLimitError
from app.domains.github.schemas import UpstreamError


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


class PayerRefusedError(GitHubRateLimitError):
    """The chain's payer cannot pay for it: a share spent or the address's cap on chains under way
    reached as the chain is about to ask GitHub (``Shares.admit``), or a share spent before its pages
    (``Shares.afford``). The chain stops, storing nothing and remembered by nobody (the login is not
    at fault). ``problem`` is the payer's 429; ``whose`` the limit that refused (one of
    ``Payer.limits``: the account's or the address's). A caller that joined the chain is refused
    too only when the limit is also its own; any other asks again, on its own payer
    (``ProfileLookups._fetch``)."""

    def __init__(self, problem: LookupBudgetError | TooManyLookupsError, whose: str) -> None:
        super().__init__(str(problem), retry_after=float(problem.headers["Retry-After"]))
        self.problem = problem
        self.whose = whose

    def caller_problem(self) -> LookupBudgetError | TooManyLookupsError:
        """The payer's 429 for one caller to raise, its own object: one raised by ten requests that
        joined a refused flight kept every one's frames in its traceback."""
        problem = self.problem
        return type(problem)(problem.detail, headers=dict(problem.headers))

    @property
    def at_cap(self) -> bool:
        """Refused for the address's chains under way, not for a share: a slot frees within seconds."""
        return isinstance(self.problem, TooManyLookupsError)


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
    """The API's problem for a failed fetch with nothing stored to fall back to: a payer's refusal
    is its own 429."""
    if isinstance(exc, PayerRefusedError):
        return exc.caller_problem()
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


def upstream_error(exc: GitHubError, at: datetime) -> UpstreamError:
    """``exc`` as a refresh's error or a stored profile's ``last_error``: its kind, and the problem
    type the same failure answers where it is the answer (``problem_for``), which tells GitHub's
    rate limit from the caller's own share or cap."""
    return UpstreamError(
        kind=exc.kind,  # type: ignore[arg-type]
        at=at,
        retry_after_s=math.ceil(exc.retry_after) if exc.retry_after is not None else None,
        type=problem_type(problem_for(exc).slug),
    )
