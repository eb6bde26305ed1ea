"""The GitHub REST client: one connection pool per process, conditional requests, governed and retried.

- The base URL is ``GITHUB_API_URL`` and nothing else: a username only ever becomes one path segment,
  after ``is_valid_username``; every other URL followed (``link: rel="next"``, ``languages_url``,
  a redirect's ``location``) must start with the base URL, or it is refused. The token is sent only
  there, and only through ``_BearerAuth``, whose ``repr`` is masked.
- Conditional requests: a 200's ``etag`` is kept verbatim (quotes, ``W/``) in Valkey with the decoded
  body (only the fields we use) and the next-page link, keyed by the token's fingerprint and the URL
  (GitHub's ETags differ per token: github/docs #34689). The next request sends ``if-none-match``; a
  304 does not count against the primary limit and is answered from that entry. Anyone may look up
  any login, so what one lookup leaves in Valkey (``noeviction``) is bounded: an entry is stored
  compressed (zlib: a page of 100 repositories, ~28 KB of msgpack, becomes ~4 KB) and only if it is
  at most ``GITHUB_ETAG_MAX_BYTES``; a larger answer is not kept and is fetched in full next time.
  A lookup reads at most ``1 + GITHUB_MAX_REPOS / 100 + GITHUB_LANGUAGE_REPOS`` URLs, so it keeps at
  most that many entries of at most ``GITHUB_ETAG_MAX_BYTES``, each for ``GITHUB_ETAG_TTL_S``.
- Every request passes the ``RateLimitGovernor`` (one in flight per token, waits for resets and
  retry-after). Transient failures (timeouts, connection errors, 5xx) are retried by ``stamina``
  with exponential backoff and jitter (``GITHUB_RETRY_ATTEMPTS``, ``GITHUB_RETRY_WAIT_S``).
- Redirects are followed by hand (301/302/307/308, at most 3, same base only), per GitHub's advice.
- A 451 or a 403 that is not a rate limit refuses one resource (a blocked repository), not the
  token: ``GitHubRefusedError``, and ``get_languages`` skips that repository as if it were gone.
- A caller that waits its budget out behind this token's other requests gets ``GitHubBusyError``,
  not a rate-limit error: GitHub refused nothing.
- ``metered()`` counts the requests GitHub charges (all but 304s) made in the current context (a
  task and what it awaits): the cost of a fetch chain, charged to the account that asked for it.
"""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Generic, TypeVar

import httpx
import msgspec
import stamina
import structlog
from prometheus_client import Counter
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.github.governor import Priority, RateLimitGovernor, WaitBudgetExceededError

log = structlog.get_logger("app.github.client")

T = TypeVar("T")

USERNAME_PATTERN = r"^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*(?![\s\S])"
r"""GitHub's rule: alphanumerics or single hyphens, no hyphen first or last (the sign-up form's
messages; the length is checked separately: at most ``MAX_USERNAME`` characters). It ends with
``(?![\s\S])``, not ``$``: in Python's ``re.search`` (msgspec, Litestar) ``$`` also matches before
a trailing newline, so ``"octocat\n"`` would pass; the lookahead means "end of text" in Python and
in the ECMA dialect of the published schema alike."""
MAX_USERNAME = 39
_USERNAME = re.compile(USERNAME_PATTERN)
_REPO_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")

PER_PAGE = 100
MAX_REDIRECTS = 3
RATE_LIMIT_ATTEMPTS = 3
API_VERSION = "2022-11-28"

REQUESTS = Counter("github_requests", "Requests sent to GitHub, by answer status", ["status"])
CONDITIONAL_HITS = Counter(
    "github_conditional_hits", "Conditional requests answered 304 Not Modified (free of rate limit)"
)
ETAG_ENTRIES_TOO_LARGE = Counter(
    "github_etag_entries_too_large",
    "Answers not kept for conditional requests: larger than GITHUB_ETAG_MAX_BYTES once compressed",
)
RETRIES = Counter("github_retries", "Requests to GitHub sent again, by reason", ["reason"])


def is_valid_username(name: str) -> bool:
    return 0 < len(name) <= MAX_USERNAME and _USERNAME.fullmatch(name) is not None


def token_fingerprint(token: str | None) -> str:
    """The token's identity in keys and metrics: a hash prefix, never the token."""
    if not token:
        return "anonymous"
    return hashlib.sha256(b"github-token:" + token.encode()).hexdigest()[:16]


class GitHubError(Exception):
    kind = "unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GitHubNotFoundError(GitHubError):
    kind = "not-found"


class GitHubRateLimitError(GitHubError):
    kind = "rate-limited"


class GitHubDownError(GitHubError):
    kind = "unavailable"


class GitHubBusyError(GitHubError):
    """The caller's wait budget ran out while this token's other requests went first (they are sent
    one at a time): GitHub refused nothing and its quota may be fine."""

    kind = "unavailable"


class GitHubRefusedError(GitHubDownError):
    """GitHub refuses this one resource: 451 (blocked for legal reasons, a DMCA takedown) or a 403
    that is not a rate limit ("Repository access blocked"; rate-limit 403s are told apart by the
    governor from their headers and message, and never get here). Other resources are unaffected,
    so it is no sign that GitHub is down; where nothing else is known it still reads as unavailable."""


class RequestMeter:
    """Requests GitHub charged (every answer but a 304) while the meter was current."""

    __slots__ = ("charged",)

    def __init__(self) -> None:
        self.charged = 0


_METER: ContextVar[RequestMeter | None] = ContextVar("github_request_meter", default=None)


@contextmanager
def metered() -> Iterator[RequestMeter]:
    """Count the requests of the current context (the task, and coroutines it awaits)."""
    meter = RequestMeter()
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


class _TransientError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GithubUser(msgspec.Struct, frozen=True):
    """The fields of ``GET /users/{username}`` we use."""

    login: str
    id: int
    html_url: str
    avatar_url: str
    public_repos: int
    followers: int
    following: int
    created_at: datetime
    type: str = "User"
    name: str | None = None
    bio: str | None = None
    company: str | None = None
    location: str | None = None
    blog: str | None = None


class GithubRepo(msgspec.Struct, frozen=True):
    """The fields of a repository in ``GET /users/{username}/repos`` we use."""

    name: str
    full_name: str
    html_url: str
    fork: bool
    stargazers_count: int
    forks_count: int
    size: int
    languages_url: str
    archived: bool = False
    language: str | None = None
    pushed_at: datetime | None = None


class Fetched(msgspec.Struct, Generic[T], frozen=True):
    value: T
    next_url: str | None
    not_modified: bool


class _CacheEntry(msgspec.Struct, frozen=True):
    etag: str
    next_url: str | None
    payload: bytes


class _BearerAuth(httpx.Auth):
    """Adds the token to each request; prints as ``***`` wherever it is shown."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


class GitHubClient:
    def __init__(self, settings: Settings, valkey: Valkey, governor: RateLimitGovernor) -> None:
        self.base_url = settings.github_api_url.rstrip("/")
        self.token_id = token_fingerprint(settings.github_token)
        self.governor = governor
        self.valkey = valkey
        self._token = settings.github_token
        self._timeout_s = settings.github_timeout_s
        self._etag_ttl_s = settings.github_etag_ttl_s
        self._etag_max_bytes = settings.github_etag_max_bytes
        self._attempts = settings.github_retry_attempts
        self._retry_wait_s = settings.github_retry_wait_s
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"GitHubClient(base_url={self.base_url!r}, token={self.token_id})"

    async def start(self) -> None:
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout_s),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            follow_redirects=False,
            auth=_BearerAuth(self._token) if self._token else None,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "monolith-github-analytics",
            },
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- endpoints ---------------------------------------------------------------------------

    async def get_user(self, username: str, priority: Priority) -> GithubUser:
        if not is_valid_username(username):
            raise ValueError("not a GitHub username")
        fetched = await self.get(f"{self.base_url}/users/{username}", GithubUser, priority)
        return fetched.value

    async def list_repos(
        self, username: str, priority: Priority, *, max_repos: int
    ) -> tuple[list[GithubRepo], bool]:
        """Every repository the user owns (``type=owner``), following ``link: rel="next"`` until it is
        absent or ``max_repos`` are in; returns them and whether the cap cut the list.

        A page's ETag covers its body, not its ``link`` header: a full page answered 304 may have
        gained a next page since its "no next page" was stored (repositories added after it), so
        such a page is asked for again unconditionally (one request, only for a full last page)."""
        if not is_valid_username(username):
            raise ValueError("not a GitHub username")
        url: str | None = (
            f"{self.base_url}/users/{username}/repos?type=owner&sort=full_name&per_page={PER_PAGE}"
        )
        repos: list[GithubRepo] = []
        while url is not None:
            page = await self.get(url, list[GithubRepo], priority)
            if page.not_modified and page.next_url is None and len(page.value) >= PER_PAGE:
                page = await self.get(url, list[GithubRepo], priority, conditional=False)
            repos.extend(page.value)
            url = page.next_url
            if len(repos) >= max_repos:
                return repos[:max_repos], url is not None or len(repos) > max_repos
        return repos, False

    async def get_languages(self, repo: GithubRepo, priority: Priority) -> dict[str, int] | None:
        """Bytes per language of one repository (None: the repository is gone, hidden or blocked, so
        it is left unmeasured like a deleted one and the other repositories are still measured)."""
        url = repo.languages_url if self._is_ours(repo.languages_url) else self._languages_url(repo)
        try:
            return (await self.get(url, dict[str, int], priority)).value
        except GitHubNotFoundError:
            return None
        except GitHubRefusedError as exc:
            log.info("github_repository_refused", repository=repo.full_name, reason=str(exc))
            return None

    # -- the request path --------------------------------------------------------------------

    async def get(
        self, url: str, kind: type[T], priority: Priority, *, conditional: bool = True
    ) -> Fetched[T]:
        """One resource, governed, retried; ``kind`` is its decoded type. ``conditional``: sent with
        the stored ETag (a 304 is answered from the stored entry); otherwise fetched in full and the
        entry replaced."""
        if not self._is_ours(url):
            raise GitHubDownError("refused a URL outside GITHUB_API_URL")
        cache_key = self._cache_key(url)
        cached = await self._cached(cache_key) if conditional else None
        last_reason = ""
        try:
            async for attempt in stamina.retry_context(
                on=_TransientError,
                attempts=self._attempts,
                timeout=None,
                wait_initial=self._retry_wait_s,
                wait_max=self._retry_wait_s * 8,
                wait_jitter=self._retry_wait_s,
            ):
                with attempt:
                    if attempt.num > 1:
                        RETRIES.labels(reason=last_reason).inc()
                    try:
                        return await self._get_once(url, kind, priority, cached, cache_key)
                    except _TransientError as exc:
                        last_reason = exc.reason
                        raise
        except _TransientError as exc:
            raise GitHubDownError(f"GitHub failed {self._attempts} times ({exc.reason})") from None
        raise AssertionError("unreachable")  # pragma: no cover - stamina re-raises the last error

    async def _get_once(
        self, url: str, kind: type[T], priority: Priority, cached: _CacheEntry | None, cache_key: str
    ) -> Fetched[T]:
        response = await self._send(url, cached, priority)
        status = response.status_code
        if status == 304:
            if cached is None:
                raise GitHubDownError("GitHub answered 304 to an unconditional request")
            try:
                value = msgspec.msgpack.decode(cached.payload, type=kind)
            except msgspec.DecodeError:  # stored by a version with another shape: fetch it afresh
                await self.valkey.delete(cache_key)
                return await self._get_once(url, kind, priority, None, cache_key)
            CONDITIONAL_HITS.inc()
            return Fetched(value=value, next_url=cached.next_url, not_modified=True)
        if status == 204:
            return Fetched(value=msgspec.convert({}, kind), next_url=None, not_modified=False)
        if status == 200:
            try:
                value = msgspec.json.decode(response.content, type=kind)
            except msgspec.DecodeError as exc:
                raise GitHubDownError("GitHub answered a body of an unexpected shape") from exc
            next_url = self._next_link(response)
            etag = response.headers.get("etag")
            if etag:
                await self._store(cache_key, _CacheEntry(etag, next_url, msgspec.msgpack.encode(value)))
            return Fetched(value=value, next_url=next_url, not_modified=False)
        if status == 404:
            raise GitHubNotFoundError("no such GitHub resource")
        if status >= 500:
            raise _TransientError(f"status-{status}")
        if status == 401:
            log.warning("github_bad_credentials", token_fingerprint=self.token_id)
            raise GitHubDownError("GitHub refused the configured token (401)")
        if status in (403, 451):
            raise GitHubRefusedError(f"GitHub refused this resource ({status})")
        raise GitHubDownError(f"GitHub answered {status}")

    async def _send(self, url: str, cached: _CacheEntry | None, priority: Priority) -> httpx.Response:
        """Send under the governor, following same-base redirects; rate-limit refusals wait and retry
        (within the caller's budget) up to ``RATE_LIMIT_ATTEMPTS`` times."""
        assert self._http is not None, "GitHubClient.start() was not called"
        headers = {"If-None-Match": cached.etag} if cached is not None else {}
        for _ in range(RATE_LIMIT_ATTEMPTS):
            target = url
            for _ in range(MAX_REDIRECTS + 1):
                response, limited = await self._send_governed(target, headers, priority)
                if response.status_code not in (301, 302, 307, 308):
                    break
                location = response.headers.get("location", "")
                target = str(httpx.URL(target).join(location))
                if not self._is_ours(target):
                    raise GitHubDownError("GitHub redirected outside GITHUB_API_URL")
            else:
                raise GitHubDownError("too many redirects")
            if not limited:
                return response
            RETRIES.labels(reason="rate-limit").inc()
        until = await self.governor.blocked_until()
        retry_after = max(1.0, until - time.time()) if until is not None else 60.0
        raise GitHubRateLimitError("GitHub kept refusing for rate limits", retry_after=retry_after)

    async def _send_governed(
        self, url: str, headers: dict[str, str], priority: Priority
    ) -> tuple[httpx.Response, bool]:
        """One request in the token's turn; True when GitHub refused it for a rate limit."""
        assert self._http is not None
        try:
            async with self.governor.turn(priority):
                try:
                    response = await self._http.get(url, headers=headers)
                except httpx.TimeoutException as exc:
                    REQUESTS.labels(status="timeout").inc()
                    raise _TransientError("timeout") from exc
                except httpx.TransportError as exc:
                    REQUESTS.labels(status="transport-error").inc()
                    raise _TransientError("transport-error") from exc
                REQUESTS.labels(status=str(response.status_code)).inc()
                if response.status_code != 304 and (meter := _METER.get()) is not None:
                    meter.charged += 1
                limited_until = await self.governor.observe(
                    response.status_code, response.headers, response.content
                )
        except WaitBudgetExceededError as exc:
            if exc.reason == "busy":
                raise GitHubBusyError(str(exc), retry_after=exc.retry_after) from None
            raise GitHubRateLimitError(str(exc), retry_after=exc.retry_after) from None
        return response, limited_until is not None

    # -- helpers -----------------------------------------------------------------------------

    def _is_ours(self, url: str) -> bool:
        return url == self.base_url or url.startswith(self.base_url + "/")

    def _languages_url(self, repo: GithubRepo) -> str:
        owner, _, name = repo.full_name.partition("/")
        if not (is_valid_username(owner) and _REPO_NAME.match(name) and name not in (".", "..")):
            raise GitHubDownError("GitHub listed a repository with an unexpected name")
        return f"{self.base_url}/repos/{owner}/{name}/languages"

    def _next_link(self, response: httpx.Response) -> str | None:
        next_url = response.links.get("next", {}).get("url")
        if next_url is None:
            return None
        if not self._is_ours(next_url):
            raise GitHubDownError("GitHub's next-page link points outside GITHUB_API_URL")
        return str(next_url)

    def _cache_key(self, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        return f"github:etag:{self.token_id}:{digest}"

    async def _store(self, key: str, entry: _CacheEntry) -> None:
        """Keep ``entry`` compressed if it fits ``GITHUB_ETAG_MAX_BYTES``; otherwise drop any older
        entry of the URL (its ETag names a body that is gone, so it would never be answered 304)."""
        stored = zlib.compress(msgspec.msgpack.encode(entry), 6)
        if len(stored) <= self._etag_max_bytes:
            await self.valkey.set(key, stored, ex=self._etag_ttl_s)
        else:
            ETAG_ENTRIES_TOO_LARGE.inc()
            await self.valkey.delete(key)

    async def _cached(self, key: str) -> _CacheEntry | None:
        raw = await self.valkey.get(key)
        if raw is None:
            return None
        try:
            return msgspec.msgpack.decode(zlib.decompress(raw), type=_CacheEntry)
        except (zlib.error, msgspec.DecodeError):  # stored by an older version: fetched in full again
            return None
