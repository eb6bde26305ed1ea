"""The GitHub REST client: one connection pool per process, conditional requests, governed and retried.

- The base URL is ``GITHUB_API_URL`` and nothing else: a username only ever becomes one path segment,
  after ``is_valid_username``; every other URL followed (``link: rel="next"``, ``languages_url``,
  a redirect's ``location``) must start with the base URL, or it is refused. The token is sent only
  there, and only through ``_BearerAuth``, whose ``repr`` is masked.
- Conditional requests: a 200's ``etag`` is kept verbatim (quotes, ``W/``) in Valkey with the decoded
  body (only the fields we use) and the next-page link, keyed by the token's fingerprint and the URL
  (GitHub's ETags differ per token: github/docs #34689). The next request sends ``if-none-match``; a
  304 is answered from that entry (the body is not sent again). It is free of the primary limit only
  with a token: GitHub counts a 304 as free only "if the request was made while correctly authorized
  with an Authorization header", so without ``GITHUB_TOKEN`` it costs a request like a 200. Anyone
  may look up any login, so what one lookup leaves in Valkey (``noeviction``) is bounded: an entry is stored
  compressed (zlib: a page of 100 repositories, ~28 KB of msgpack, becomes ~4 KB) and only if it is
  at most ``GITHUB_ETAG_MAX_BYTES``; a larger answer is not kept and is fetched in full next time.
  A lookup reads at most ``1 + GITHUB_MAX_REPOS / 100 + GITHUB_LANGUAGE_REPOS`` URLs, give or take
  a page (``chain_budget``, below), so it keeps at most that many entries of at most
  ``GITHUB_ETAG_MAX_BYTES``, each for ``GITHUB_ETAG_TTL_S``.
- Bounded work, whatever GitHub sends. A fetch chain (``FetchChain``: one lookup's profile, pages of
  repositories and ``/languages``) asks for at most ``chain_budget()`` resources and gives up at
  ``GITHUB_CHAIN_TIMEOUT_S``, both as ``GitHubDownError``. The listing stops at an empty page, reads at
  most ``ceil(max_repos / 100) + 1`` pages and refuses a next link it has already followed. Each
  request has a total deadline, ``GITHUB_TIMEOUT_S``, for sending it and reading its whole body (a
  body trickling in byte by byte would otherwise hold the token's one lane, ``governor.turn``, for
  as long as it trickles), and a body larger than ``GITHUB_MAX_BODY_BYTES`` once decoded (gzip is
  inflated here, in bounded steps: a gzip bomb never inflates past the limit) is refused.
- Only ``GitHubError`` leaves the client: a transport failure or timeout (httpx counts an unparsable
  redirect among them) is retried and then a ``GitHubDownError``; an answer that cannot be decoded
  (a broken gzip, a 204 or a body of another shape where a document is due) is a
  ``GitHubDownError`` at once, so the service records the failure like any other.
- Whatever an answer holds, what is decoded from it can be stored: every string is made storable
  where every answer is decoded (``decode_answer``: a NUL becomes U+FFFD; PostgreSQL's ``text`` and
  ``jsonb`` refuse it) and every count is bounded (``MAX_COUNT``), so nothing of GitHub's fails the
  write of a profile or a snapshot (one that failed was a 400 blaming the caller, remembered nowhere).
- Every request passes the ``RateLimitGovernor`` (one in flight per token, waits for resets and
  retry-after). Transient failures (timeouts, connection errors, 5xx) are retried by ``stamina``
  with exponential backoff and jitter (``GITHUB_RETRY_ATTEMPTS``, ``GITHUB_RETRY_WAIT_S``).
- Redirects are followed by hand (301/302/307/308, at most 3, same base only), per GitHub's advice.
- A 404 or a 410 (gone: a deleted or suspended account, a removed repository) is
  ``GitHubNotFoundError``. A 451 or a 403 that is not a rate limit refuses one resource (a blocked
  repository), not the token: ``GitHubRefusedError``, and ``get_languages`` skips that repository as
  if it were gone.
- A caller that waits its budget out behind this token's other requests gets ``GitHubBusyError``,
  not a rate-limit error: GitHub refused nothing.
- ``metered()`` counts the requests GitHub charges (every answer, but a 304 to an authorized request)
  made in the current context (a task and what it awaits): the cost of a fetch chain, charged to the
  account that asked for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
import zlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Generic, TypeVar

import httpx
import msgspec
import stamina
import structlog
from prometheus_client import Counter
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.logging import error_message
from app.core.types import MAX_ID, MAX_INT4, storable, whole
from app.domains.github.governor import Priority, RateLimitGovernor, WaitBudgetExceededError

log = structlog.get_logger("app.github.client")

T = TypeVar("T")

USERNAME_PATTERN = whole(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")
"""GitHub's rule: alphanumerics or single hyphens, no hyphen first or last (the sign-up form's
messages; the length is checked separately: at most ``MAX_USERNAME`` characters); ``whole``: not
``"octocat\\n"``."""
MAX_USERNAME = 39
MAX_LANGUAGES = 100
"""Languages kept per repository, the largest: Linguist knows about 700 and a repository has a
handful, but an answer's number of entries is bounded only by its body size (``GITHUB_MAX_BODY_BYTES``)."""
MAX_LANGUAGE_NAME = 100
"""Characters of a language name (Linguist's longest is under 40)."""
_USERNAME = re.compile(USERNAME_PATTERN)
_REPO_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")

PER_PAGE = 100
MAX_REDIRECTS = 3
RETRY_AFTER_UNKNOWN_S = 30.0
RATE_LIMIT_ATTEMPTS = 3
API_VERSION = "2022-11-28"

REQUESTS = Counter("github_requests", "Requests sent to GitHub, by answer status", ["status"])
CONDITIONAL_HITS = Counter(
    "github_conditional_hits",
    "Conditional requests answered 304 Not Modified (free of the primary rate limit with a token)",
)
ETAG_ENTRIES_TOO_LARGE = Counter(
    "github_etag_entries_too_large",
    "Answers not kept for conditional requests: larger than GITHUB_ETAG_MAX_BYTES once compressed",
)
RETRIES = Counter("github_retries", "Requests to GitHub sent again, by reason", ["reason"])
REFUSED_ANSWERS = Counter(
    "github_refused_answers",
    "Answers from GitHub refused as malformed or unbounded, by reason",
    ["reason"],
)


def max_pages(max_repos: int) -> int:
    """Pages of repositories one listing may read: enough for ``max_repos`` at ``PER_PAGE``, plus one
    for a short page GitHub may answer before the last."""
    return math.ceil(max_repos / PER_PAGE) + 1


def pages_to_list(public_repos: int, max_repos: int) -> int:
    """The pages a listing of a user with ``public_repos`` repositories is expected to read (at least
    one, which an empty listing reads too; at most ``max_pages``)."""
    return min(max_pages(max_repos), max(1, math.ceil(public_repos / PER_PAGE)))


def is_valid_username(name: str) -> bool:
    return 0 < len(name) <= MAX_USERNAME and _USERNAME.fullmatch(name) is not None


def largest_languages(languages: dict[str, int]) -> dict[str, int]:
    """A ``/languages`` answer as stored: the ``MAX_LANGUAGES`` largest entries with a plausible name
    and a byte count (an entry with a negative count or an overlong name is dropped)."""
    plausible = [
        (name, size) for name, size in languages.items() if size >= 0 and 0 < len(name) <= MAX_LANGUAGE_NAME
    ]
    if len(plausible) == len(languages) and len(plausible) <= MAX_LANGUAGES:
        return languages
    plausible.sort(key=lambda entry: (-entry[1], entry[0]))
    return dict(plausible[:MAX_LANGUAGES])


_NUL_ESCAPE = b"\\u0000"
"""How JSON carries a NUL: escaped (a raw control character in a string is not JSON, and msgspec
refuses a lone surrogate, the other text PostgreSQL refuses)."""


def decode_answer(body: bytes, kind: type[T]) -> T:
    """GitHub's JSON answer as ``kind``, every string in it (dictionary keys too) made storable
    (``storable``: a NUL becomes U+FFFD). The one place GitHub's text enters: PostgreSQL's ``text``
    and ``jsonb`` refuse a NUL, and a profile holding one could not be stored. An answer without the
    escape (all of them, but for a NUL's) is decoded straight to ``kind``."""
    if _NUL_ESCAPE not in body:
        return msgspec.json.decode(body, type=kind)
    return msgspec.convert(_storable_tree(msgspec.json.decode(body)), kind)


def _decode_entry(payload: bytes, kind: type[T]) -> T:
    """A stored answer (``_CacheEntry.payload``, msgpack) as ``kind``, made storable like an answer:
    an entry stored by an earlier release may hold a NUL (msgpack keeps it as a raw byte)."""
    if b"\x00" not in payload:
        return msgspec.msgpack.decode(payload, type=kind)
    return msgspec.convert(_storable_tree(msgspec.msgpack.decode(payload)), kind)


def _storable_tree(value: object) -> object:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable_tree(item) for item in value]
    if isinstance(value, dict):
        return {_storable_tree(key): _storable_tree(item) for key, item in value.items()}
    return value


def token_fingerprint(token: str | None) -> str:
    """The token's identity in keys and metrics: a hash prefix, never the token."""
    if not token:
        return "anonymous"
    return hashlib.sha256(b"github-token:" + token.encode()).hexdigest()[:16]


class GitHubError(Exception):
    kind = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        cause: str | None = None,
        remembered: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.remembered = remembered
        """Answered from the service's memory of an earlier failure, not by a request just made."""
        self.cause = cause
        """What the last attempt met (``ConnectError: [Errno -2] Name or service not known``), for the
        log only: a client's answer does not describe our network."""


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


class GitHubAnswerRefusedError(GitHubDownError):
    """Our client refuses GitHub's answer for one resource: a shape, size, count, link or redirect no
    answer of GitHub's has (counted in ``github_refused_answers_total``). A fault of that answer,
    not a sign that GitHub is down; where nothing else is known it still reads as unavailable."""


class GitHubRefusedError(GitHubDownError):
    """GitHub refuses this one resource: 451 (blocked for legal reasons, a DMCA takedown) or a 403
    that is not a rate limit ("Repository access blocked"; rate-limit 403s are told apart by the
    governor from their headers and message, and never get here). Other resources are unaffected,
    so it is no sign that GitHub is down; where nothing else is known it still reads as unavailable."""


class RequestMeter:
    """Requests GitHub charged (every answer, but a 304 to an authorized request) while the meter
    was current."""

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


class FetchChain:
    """One lookup's requests: the profile, the pages of repositories, ``/languages`` of the largest.

    It may ask GitHub for at most ``urls_left`` resources (a retry or a redirect of one is the same
    resource; every try of one is bounded by ``GITHUB_RETRY_ATTEMPTS``, ``RATE_LIMIT_ATTEMPTS`` and
    ``MAX_REDIRECTS``) and nothing after ``deadline`` (the event loop's clock): past either, the
    chain fails with ``GitHubDownError``. A chain runs in one task (the service runs each lookup in
    a flight of its own): ``GitHubClient.fetch_chain`` starts one explicitly; otherwise ``get_user``
    starts one and the ``list_repos`` (one listing per lookup) and ``get_languages`` that follow in
    the task join it."""

    __slots__ = ("deadline", "explicit", "listed", "login", "urls_left")

    def __init__(self, login: str, *, urls: int, deadline: float, explicit: bool) -> None:
        self.login = login.lower()
        self.urls_left = urls
        self.deadline = deadline
        self.explicit = explicit
        self.listed = False

    def take_url(self) -> None:
        if self.urls_left <= 0:
            REFUSED_ANSWERS.labels(reason="chain-budget").inc()
            raise GitHubAnswerRefusedError("the lookup asked GitHub for more resources than a lookup may")
        self.urls_left -= 1


_CHAIN: ContextVar[FetchChain | None] = ContextVar("github_fetch_chain", default=None)


class _TransientError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


LONGEST_BIO = 160
"""GitHub's own limit for a profile's bio (the profile form refuses more)."""
LONGEST_PROFILE_TEXT = 255
"""The other free-text profile fields (name, company, location, blog): GitHub documents no limit for
them; 255 characters is what its profile form accepts and bounds what one profile stores."""
LONGEST_URL = 2048
LONGEST_NAME = 100
"""Logins (GitHub: 39), repository names (GitHub: 100), language and account-type names."""

MAX_COUNT = MAX_INT4
"""The largest count GitHub's answers may hold (followers, stars, forks, repositories, a size in
kilobytes): GitHub's largest are below a million, and a repository's size far below 2^31 KB. A larger
(or negative) count is not GitHub's answer and the answer is refused, like an overlong URL: counts
past bigint crashed the snapshot cron, and ``GITHUB_MAX_REPOS`` (at most 10,000) repositories' sums
of counts this large stay far below bigint's range and JSON's exact integers (2^53)."""

Url = Annotated[str, msgspec.Meta(max_length=LONGEST_URL)]
Name = Annotated[str, msgspec.Meta(max_length=LONGEST_NAME)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
GithubId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
"""An account's or a repository's id: GitHub's are far below ``MAX_ID`` (JSON's exact integers, and
within bigint, which stores them). A larger one is not GitHub's answer: refused like a count (upstream
review: an id of 2^63 was stored and served, then failed the snapshot cron every hour)."""


class GithubUser(msgspec.Struct, frozen=True):
    """The fields of ``GET /users/{username}`` we use (stored in ``github_profiles`` and served).

    Identifiers and URLs carry a hard ``max_length`` and counts a bound (``MAX_COUNT``), far above
    anything GitHub produces: past it is not GitHub's answer, and the answer is refused. Free text
    longer than GitHub's own limits (``LONGEST_BIO``, ``LONGEST_PROFILE_TEXT``) is truncated on
    decode instead: one odd field must not cost the whole profile. Stored profiles are clipped the
    same way when read. Every string is made storable on decode (``decode_answer``)."""

    login: Name
    id: GithubId
    html_url: Url
    avatar_url: Url
    public_repos: Count
    followers: Count
    following: Count
    created_at: datetime
    type: Name = "User"
    name: str | None = None
    bio: str | None = None
    company: str | None = None
    location: str | None = None
    blog: str | None = None

    def __post_init__(self) -> None:
        for field, limit in (
            ("name", LONGEST_PROFILE_TEXT),
            ("bio", LONGEST_BIO),
            ("company", LONGEST_PROFILE_TEXT),
            ("location", LONGEST_PROFILE_TEXT),
            ("blog", LONGEST_PROFILE_TEXT),
        ):
            value = getattr(self, field)
            if value is not None and len(value) > limit:
                msgspec.structs.force_setattr(self, field, value[:limit])


class GithubRepo(msgspec.Struct, frozen=True):
    """The fields of a repository in ``GET /users/{username}/repos`` we use: no free text, every
    string bounded (``max_length``) and every count (``MAX_COUNT``): past either is not GitHub's
    answer and the page is refused. Every string is made storable on decode (``decode_answer``)."""

    name: Name
    full_name: Annotated[str, msgspec.Meta(max_length=2 * LONGEST_NAME + 1)]
    html_url: Url
    fork: bool
    stargazers_count: Count
    forks_count: Count
    size: Count
    """In kilobytes, rounded: a repository of a few hundred bytes of code reports 0."""
    languages_url: Url
    archived: bool = False
    language: Name | None = None
    pushed_at: datetime | None = None
    id: GithubId | None = None
    """GitHub's id of the repository (which its answers always carry): what tells one listed twice
    (``list_repos``). None only in profiles stored before it was kept, and those are listed afresh."""


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


class _AnswerRefusedError(Exception):
    """An answer that arrived but cannot be used: too large, or its encoding cannot be decoded."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Answer:
    """A response read whole (its stream closed): status and headers, and the decoded body."""

    response: httpx.Response
    body: bytes
    refused: _AnswerRefusedError | None = None

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers


class GitHubClient:
    def __init__(self, settings: Settings, valkey: Valkey, governor: RateLimitGovernor) -> None:
        self.base_url = settings.github_api_url.rstrip("/")
        self.token_id = token_fingerprint(settings.github_token)
        self.governor = governor
        self.valkey = valkey
        self._token = settings.github_token
        self._timeout_s = settings.github_timeout_s
        self._chain_timeout_s = settings.github_chain_timeout_s
        self._max_body_bytes = settings.github_max_body_bytes
        self._max_repos = settings.github_max_repos
        self._language_repos = settings.github_language_repos
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
                "Accept-Encoding": "gzip",  # inflated by ``_read_body``, within GITHUB_MAX_BODY_BYTES
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "monolith-github-analytics",
            },
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- fetch chains ------------------------------------------------------------------------

    def chain_budget(self) -> int:
        """Resources one lookup may ask for: its profile, ``max_pages(GITHUB_MAX_REPOS)`` pages and
        one more ask of the last (a full page answered 304, see ``list_repos``), and
        ``GITHUB_LANGUAGE_REPOS`` ``/languages``."""
        return 1 + max_pages(self._max_repos) + 1 + self._language_repos

    @contextmanager
    def fetch_chain(self, login: str) -> Iterator[FetchChain]:
        """Run the requests of the block as one lookup of ``login`` (``FetchChain``)."""
        token = _CHAIN.set(self._new_chain(login, explicit=True))
        try:
            chain = _CHAIN.get()
            assert chain is not None
            yield chain
        finally:
            _CHAIN.reset(token)

    def _new_chain(self, login: str, *, explicit: bool = False) -> FetchChain:
        deadline = asyncio.get_running_loop().time() + self._chain_timeout_s
        return FetchChain(login, urls=self.chain_budget(), deadline=deadline, explicit=explicit)

    def _chain_of(self, login: str | None, *, starts: bool, lists: bool = False) -> FetchChain:
        """The current task's chain; a new one when there is none, when it is of another login, or,
        unless it was started explicitly, for a profile (``starts``: it begins a lookup) or for a
        second listing (``lists``)."""
        chain = _CHAIN.get()
        same_login = chain is not None and (login is None or chain.login == login.lower())
        if chain is not None and same_login and (chain.explicit or not (starts or (lists and chain.listed))):
            chain.listed = chain.listed or lists
            return chain
        chain = self._new_chain(login or "")
        chain.listed = lists
        _CHAIN.set(chain)
        return chain

    # -- endpoints ---------------------------------------------------------------------------

    async def get_user(self, username: str, priority: Priority) -> GithubUser:
        if not is_valid_username(username):
            raise ValueError("not a GitHub username")
        self._chain_of(username, starts=True)
        fetched = await self.get(f"{self.base_url}/users/{username}", GithubUser, priority)
        return fetched.value

    async def list_repos(
        self, username: str, priority: Priority, *, max_repos: int, expected: int = 0
    ) -> tuple[list[GithubRepo], bool]:
        """Every repository the user owns (``type=owner``), following ``link: rel="next"`` until it is
        absent or ``max_repos`` are in; returns them and whether the cap cut the list.

        Whatever the links say, the listing ends: at an empty page (GitHub's answer past the last
        page; a next link beside it is not followed), after ``max_pages(max_repos)`` pages (then
        reported as cut), and a next link already followed is refused (``GitHubDownError``).

        A page's ETag covers its body, not its ``link`` header: a last page answered 304 may have
        gained a next page since its "no next page" was stored (repositories added after it). So it
        is asked for again unconditionally (one request) when it is full, or when the listing would
        end short of ``expected`` (the profile's ``public_repos``): GitHub may answer pages shorter
        than asked, and a short last page that was full for its size hid every repository added
        after it for as long as its ETag was kept (upstream review).

        Pages are numbered, not anchored: a repository created (or renamed) while the pages are read,
        sorted before the page being read, shifts the rest a place, and the next page starts with the
        previous page's last. Each repository is kept once, by its ``id`` (its ``full_name`` if GitHub
        left the id out), so none is counted twice; one created meanwhile may be missed, as may one
        shifted back by a deletion, until the next fetch (there is no cursor to ask GitHub for)."""
        if not is_valid_username(username):
            raise ValueError("not a GitHub username")
        self._chain_of(username, starts=False, lists=True)
        url: str | None = (
            f"{self.base_url}/users/{username}/repos?type=owner&sort=full_name&per_page={PER_PAGE}"
        )
        repos: list[GithubRepo] = []
        seen: set[int | str] = set()
        visited: set[str] = set()
        while url is not None:
            if url in visited:
                REFUSED_ANSWERS.labels(reason="next-link-loop").inc()
                raise GitHubAnswerRefusedError("GitHub's next-page links lead back to a page already read")
            if len(visited) >= max_pages(max_repos):
                REFUSED_ANSWERS.labels(reason="too-many-pages").inc()
                log.warning("github_listing_cut", login=username, pages=len(visited), repos=len(repos))
                return repos[:max_repos], True
            visited.add(url)
            page = await self.get(url, list[GithubRepo], priority)
            if (
                page.not_modified
                and page.next_url is None
                and (len(page.value) >= PER_PAGE or len(seen) + len(page.value) < expected)
            ):
                page = await self.get(url, list[GithubRepo], priority, conditional=False)
            if not page.value:
                return repos, False
            for repo in page.value:
                key = repo.id if repo.id is not None else repo.full_name
                if key not in seen:
                    seen.add(key)
                    repos.append(repo)
            url = page.next_url
            if len(repos) >= max_repos:
                return repos[:max_repos], url is not None or len(repos) > max_repos
        return repos, False

    async def get_languages(self, repo: GithubRepo, priority: Priority) -> dict[str, int] | None:
        """Bytes per language of one repository (None: the repository is gone, hidden or blocked, so
        it is left unmeasured like a deleted one and the other repositories are still measured).
        A 204 (no content) is a repository without code: no languages."""
        self._chain_of(None, starts=False)
        url = repo.languages_url if self._is_ours(repo.languages_url) else self._languages_url(repo)
        try:
            languages = (await self.get(url, dict[str, int], priority, empty={})).value
        except GitHubNotFoundError:
            return None
        except GitHubRefusedError as exc:
            log.info("github_repository_refused", repository=repo.full_name, reason=str(exc))
            return None
        return largest_languages(languages)

    # -- the request path --------------------------------------------------------------------

    async def get(
        self,
        url: str,
        kind: type[T],
        priority: Priority,
        *,
        conditional: bool = True,
        empty: T | None = None,
    ) -> Fetched[T]:
        """One resource, governed, retried; ``kind`` is its decoded type. ``conditional``: sent with
        the stored ETag (a 304 is answered from the stored entry); otherwise fetched in full and the
        entry replaced. ``empty``: the value of a 204 (None: a 204 is not a valid answer here).

        Counted against the current ``FetchChain`` (one more resource; its deadline bounds every
        try, wait and retry of this one)."""
        if not self._is_ours(url):
            raise GitHubAnswerRefusedError("refused a URL outside GITHUB_API_URL")
        chain = _CHAIN.get()
        if chain is None:
            return await self._get_retried(url, kind, priority, conditional, empty)
        chain.take_url()
        try:
            async with asyncio.timeout_at(chain.deadline):
                return await self._get_retried(url, kind, priority, conditional, empty)
        except TimeoutError:
            REFUSED_ANSWERS.labels(reason="chain-deadline").inc()
            raise GitHubDownError(
                "the lookup took longer than GITHUB_CHAIN_TIMEOUT_S", retry_after=RETRY_AFTER_UNKNOWN_S
            ) from None

    async def _get_retried(
        self, url: str, kind: type[T], priority: Priority, conditional: bool, empty: T | None
    ) -> Fetched[T]:
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
                        return await self._get_once(url, kind, priority, cached, cache_key, empty)
                    except _TransientError as exc:
                        last_reason = exc.reason
                        raise
        except _TransientError as exc:
            met = exc.__cause__
            raise GitHubDownError(
                f"GitHub failed {self._attempts} times ({exc.reason})",
                cause=f"{type(met).__name__}: {error_message(met)}" if met is not None else None,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - stamina re-raises the last error

    async def _get_once(
        self,
        url: str,
        kind: type[T],
        priority: Priority,
        cached: _CacheEntry | None,
        cache_key: str,
        empty: T | None,
    ) -> Fetched[T]:
        answer = await self._send(url, cached, priority)
        status = answer.status
        if status == 304:
            if cached is None:
                raise GitHubAnswerRefusedError("GitHub answered 304 to an unconditional request")
            try:
                value = _decode_entry(cached.payload, kind)
            except msgspec.DecodeError:  # stored by a version with another shape: fetch it afresh
                await self.valkey.delete(cache_key)
                return await self._get_once(url, kind, priority, None, cache_key, empty)
            CONDITIONAL_HITS.inc()
            return Fetched(value=value, next_url=cached.next_url, not_modified=True)
        if status == 204:
            if empty is None:
                REFUSED_ANSWERS.labels(reason="no-content").inc()
                raise GitHubAnswerRefusedError("GitHub answered 204 (no content) where a document was due")
            return Fetched(value=empty, next_url=None, not_modified=False)
        if status == 200:
            try:
                value = decode_answer(answer.body, kind)
            except msgspec.DecodeError as exc:
                REFUSED_ANSWERS.labels(reason="shape").inc()
                raise GitHubAnswerRefusedError("GitHub answered a body of an unexpected shape") from exc
            next_url = self._next_link(answer.response)
            etag = answer.headers.get("etag")
            if etag:
                await self._store(cache_key, _CacheEntry(etag, next_url, msgspec.msgpack.encode(value)))
            return Fetched(value=value, next_url=next_url, not_modified=False)
        if status in (404, 410):
            raise GitHubNotFoundError("no such GitHub resource" if status == 404 else "gone from GitHub")
        if status >= 500:
            raise _TransientError(f"status-{status}")
        if status == 401:
            log.warning("github_bad_credentials", token_fingerprint=self.token_id)
            raise GitHubDownError("GitHub refused the configured token (401)")
        if status in (403, 451):
            raise GitHubRefusedError(f"GitHub refused this resource ({status})")
        raise GitHubDownError(f"GitHub answered {status}")

    async def _send(self, url: str, cached: _CacheEntry | None, priority: Priority) -> _Answer:
        """Send under the governor, following same-base redirects; rate-limit refusals wait and retry
        (within the caller's budget) up to ``RATE_LIMIT_ATTEMPTS`` times."""
        assert self._http is not None, "GitHubClient.start() was not called"
        headers = {"If-None-Match": cached.etag} if cached is not None else {}
        for _ in range(RATE_LIMIT_ATTEMPTS):
            target = url
            for _ in range(MAX_REDIRECTS + 1):
                answer, limited = await self._send_governed(target, headers, priority)
                if answer.status not in (301, 302, 307, 308):
                    break
                try:
                    target = str(httpx.URL(target).join(answer.headers.get("location", "")))
                except httpx.InvalidURL:
                    REFUSED_ANSWERS.labels(reason="redirect").inc()
                    raise GitHubAnswerRefusedError("GitHub redirected to an unparsable location") from None
                if not self._is_ours(target):
                    raise GitHubAnswerRefusedError("GitHub redirected outside GITHUB_API_URL")
            else:
                raise GitHubAnswerRefusedError("too many redirects")
            if not limited:
                return answer
            RETRIES.labels(reason="rate-limit").inc()
        until = await self.governor.blocked_until()
        retry_after = max(1.0, until - time.time()) if until is not None else 60.0
        raise GitHubRateLimitError("GitHub kept refusing for rate limits", retry_after=retry_after)

    async def _send_governed(
        self, url: str, headers: dict[str, str], priority: Priority
    ) -> tuple[_Answer, bool]:
        """One request in the token's turn; True when GitHub refused it for a rate limit."""
        try:
            async with self.governor.turn(priority):
                answer = await self._exchange(url, headers)
                REQUESTS.labels(status=str(answer.status)).inc()
                if self._charged_for(answer.status) and (meter := _METER.get()) is not None:
                    meter.charged += 1
                limited_until = await self.governor.observe(answer.status, answer.headers, answer.body)
        except WaitBudgetExceededError as exc:
            if exc.reason == "busy":
                raise GitHubBusyError(str(exc), retry_after=exc.retry_after) from None
            raise GitHubRateLimitError(str(exc), retry_after=exc.retry_after) from None
        if answer.refused is not None:
            REFUSED_ANSWERS.labels(reason=answer.refused.reason).inc()
            raise GitHubAnswerRefusedError(str(answer.refused))
        return answer, limited_until is not None

    def _charged_for(self, status: int) -> bool:
        """Whether GitHub counts an answer against the primary limit: all do, but a 304 to a request
        sent with the token (an anonymous 304 costs a request like a 200)."""
        return status != 304 or not self._token

    async def _exchange(self, url: str, headers: dict[str, str]) -> _Answer:
        """Send one request and read its whole body, all within ``GITHUB_TIMEOUT_S``."""
        assert self._http is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._http.stream("GET", url, headers=headers) as response:
                    try:
                        body = await self._read_body(response)
                    except _AnswerRefusedError as refused:
                        return _Answer(response, b"", refused)
                    return _Answer(response, body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            REQUESTS.labels(status="timeout").inc()
            raise _TransientError("timeout") from exc
        except httpx.TransportError as exc:
            REQUESTS.labels(status="transport-error").inc()
            raise _TransientError("transport-error") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # e.g. a decoding error: not worth a retry
            REQUESTS.labels(status="undecodable").inc()
            REFUSED_ANSWERS.labels(reason="undecodable").inc()
            raise GitHubAnswerRefusedError(
                f"GitHub's answer could not be read ({type(exc).__name__})"
            ) from None

    async def _read_body(self, response: httpx.Response) -> bytes:
        """The body, decoded (identity or gzip, the encodings we accept), at most
        ``GITHUB_MAX_BODY_BYTES`` of it, raw and inflated alike: gzip is inflated in steps that never
        produce more than what is left of the limit."""
        limit = self._max_body_bytes
        too_large = _AnswerRefusedError("too-large", "GitHub's answer was too large (GITHUB_MAX_BODY_BYTES)")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            inflater: zlib._Decompress | None = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding in ("", "identity"):
            inflater = None
        else:
            raise _AnswerRefusedError(
                "undecodable", f"GitHub answered in an encoding not asked for: {encoding}"
            )
        body = bytearray()
        raw_size = 0
        try:
            async for raw in response.aiter_raw():
                raw_size += len(raw)
                if raw_size > limit:
                    raise too_large
                if inflater is None:
                    body += raw
                else:
                    body += inflater.decompress(raw, limit + 1 - len(body))
                    if inflater.unconsumed_tail:
                        raise too_large
                if len(body) > limit:
                    raise too_large
            if inflater is not None and (not inflater.eof or inflater.unused_data):
                raise _AnswerRefusedError("undecodable", "GitHub's gzip answer was cut short or padded")
        except zlib.error:
            raise _AnswerRefusedError("undecodable", "GitHub's answer was not valid gzip") from None
        return bytes(body)

    # -- helpers -----------------------------------------------------------------------------

    def _is_ours(self, url: str) -> bool:
        return url == self.base_url or url.startswith(self.base_url + "/")

    def _languages_url(self, repo: GithubRepo) -> str:
        owner, _, name = repo.full_name.partition("/")
        if not (is_valid_username(owner) and _REPO_NAME.fullmatch(name) and name not in (".", "..")):
            raise GitHubAnswerRefusedError("GitHub listed a repository with an unexpected name")
        return f"{self.base_url}/repos/{owner}/{name}/languages"

    def _next_link(self, response: httpx.Response) -> str | None:
        next_url = response.links.get("next", {}).get("url")
        if next_url is None:
            return None
        if not self._is_ours(next_url):
            raise GitHubAnswerRefusedError("GitHub's next-page link points outside GITHUB_API_URL")
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
