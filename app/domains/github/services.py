"""GitHub profile analytics: cached answers, single-flight fetches, refresh jobs, tracking and history.

How an answer is made (``GithubService.profile``):

- The last good data of a login lives in PostgreSQL (``github_profiles``). Younger than
  ``GITHUB_PROFILE_TTL_S``: answered at once (``source: cache``). Older: answered at once with
  ``stale: true`` and a refresh job enqueued (stale-while-revalidate). None yet: fetched for this
  request (``source: live``).
- A fetch chain (profile, every page of repositories, ``/languages`` of the largest ones) runs at most
  once at a time per login across all processes: within a process concurrent callers share one
  flight; across processes a Valkey lock (renewed while held) admits one, the others wait for its
  result (or its recorded failure) instead of asking GitHub again. Whoever gets the lock reads the
  stored profile first: a caller that looked just before another process's chain ended takes its
  result.
- A cold lookup (``profile`` or ``track`` of a login with nothing stored) and a refresh spend the
  quota every account shares, so each account gets a share: the fetch chains it asks for may cost at
  most ``GITHUB_USER_QUOTA_FRACTION`` of GitHub's limit per GitHub window (the cost of a chain,
  counted by the client, is charged to the account that started it; past the share: 429
  ``github-lookup-budget`` until the window ends, and a stale answer comes without a refresh). A
  chain is charged as it goes and measures repositories' languages only while the share has room,
  so the account's chains under way at once stay within it but for their profiles and pages of
  repositories (``_within_share``). An
  account has at most ``GITHUB_USER_LOOKUPS_IN_FLIGHT`` cold lookups under way at once per process
  (more: 429 ``github-lookups-in-flight``), so one account's burst cannot queue everyone else's
  requests past their wait budget. Answers from storage cost nothing.
- Failures: an unknown login is remembered for ``GITHUB_NOT_FOUND_TTL_S`` (404 without a request);
  GitHub down or rate-limited gives the last good data with ``stale: true`` and ``last_error``, or,
  with nothing stored, a 503 problem with ``Retry-After`` (``github-rate-limited`` when GitHub's
  limit is the cause, ``github-busy`` when the request waited its budget out behind others). Never
  a 500.

Refreshes (``POST …/refresh`` of a stored login, or a stale read) are SAQ jobs on the ``github``
queue, so a burst of them never delays the platform's jobs (alert delivery, monitoring crons); one
per login at a time (the job key ``github-refresh:<login>`` and a pending marker in Valkey: asking
for a refresh already pending joins it, whoever asked first, at no cost), and at most
``GITHUB_USER_PENDING_REFRESHES`` queued or running per account (more: 429, or a stale answer
without a refresh). The job carries the account that asked (the reader of a stale answer, for one
a read started) and its fetch chain is charged to that account's share, checked when it asks and
again when its job starts (a job of an account whose share is spent since fails, fetching nothing). A
refresh of a profile fetched less than ``refresh_min_age_s`` ago fetches nothing: the answer is the
stored state, as a refresh already ``succeeded``. The job keeps a SAQ heartbeat
(``REFRESH_HEARTBEAT_S``), so one whose worker died is swept (aborted) within it, not after its
timeout, and stops holding the account's pending count (``_job_gone``). Each has an id; its state
is kept in Valkey for a day and every change is published on ``github:refresh:<id>`` for the SSE
stream, which also re-reads the stored state so a late subscriber gets the final state. Such a
stream polls Valkey every second for up to two minutes, so an account holds at most
``GITHUB_STREAM_MAX_PER_USER`` of them at once, across every process (leased slots,
``app/core/slots.py``; one more is a 429).

Retention (``purge_expired``, daily): profiles of logins nobody tracks go
``GITHUB_PROFILE_RETENTION_DAYS`` after their last fetch (the next lookup is a cold one again),
snapshots ``GITHUB_SNAPSHOT_RETENTION_DAYS`` after their day, and a login nobody tracks any more
loses its snapshots ``GITHUB_PROFILE_RETENTION_DAYS`` after its last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextvars import ContextVar
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as redis
import structlog
from litestar.channels import ChannelsPlugin
from litestar.response import ServerSentEventMessage
from saq import Job
from saq.job import Status
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.channels import Broadcaster
from app.core.db import Database, UnitOfWork
from app.core.errors import (
    ending_on_outage,
)
from app.core.modules import QueueName
from app.core.pagination import IdCursor, Page, paginate
from app.core.repeating import repeating
from app.core.slots import Slot, StreamSlots
from app.core.stops import StreamStops
from app.db import github as queries
from app.db.models import GithubSnapshot, GithubTracked
from app.domains.github.analysis import DEFAULT_FILTERS, analyze, repos_to_measure
from app.domains.github.client import (
    GitHubAnswerRefusedError,
    GitHubBusyError,
    GitHubClient,
    GitHubDownError,
    GitHubError,
    GitHubNotFoundError,
    GitHubRateLimitError,
    GitHubRefusedError,
    GithubRepo,
    RequestMeter,
    is_valid_username,
    metered,
    token_fingerprint,
)
from app.domains.github.errors import (
    InvalidRangeError,
    InvalidUsernameError,
    LookupBudgetError,
    NotStoredError,
    NotTrackedError,
    RefreshLimitError,
    RefreshNotFoundError,
    TooManyLookupsError,
    TooManyRefreshStreamsError,
    TrackingLimitError,
    UnknownGithubUserError,
    problem_for,
)
from app.domains.github.governor import Priority, governor_for
from app.domains.github.schemas import (
    Change,
    Filters,
    GithubProfileOut,
    HistoryOut,
    HistoryPoint,
    ProfileData,
    RefreshOut,
    RefreshStatus,
    Source,
    TrackedOut,
    UpstreamError,
)

if TYPE_CHECKING:
    from app.domains.accounts.services import AccountService

log = structlog.get_logger("app.github")

REFRESH_TASK = "refresh_github_profile"
"""The SAQ task name of ``jobs.refresh_github_profile`` (SAQ registers functions by name)."""
QUEUE: QueueName = "github"
"""The domain's SAQ queue: its jobs never wait in (or hold up) the platform's ``default`` queue."""
LOOKUPS_IN_FLIGHT_RETRY_S = 2
REFRESH_LIMIT_RETRY_S = 10
REFRESH_STATE_TTL_S = 24 * 3600
LAST_ERROR_TTL_S = 7 * 24 * 3600
FETCH_LOCK_TTL_S = 30.0
FAILURE_MEMORY_S = 10.0
POLL_S = 0.05
SSE_POLL_S = 1.0
SSE_KEEPALIVE_S = 15.0
SSE_MAX_S = 120.0
SSE_LEASE_S = 2 * SSE_KEEPALIVE_S
"""A refresh stream's slot lease (``app/core/slots.py``), renewed every ``SSE_KEEPALIVE_S``: the
slots of a process that died are free again within ``SSE_LEASE_S``."""
REFRESH_MIN_AGE_S = 300
"""A refresh of a profile fetched less than this long ago (or ``GITHUB_PROFILE_TTL_S``, if shorter:
``refresh_min_age_s``) fetches nothing and answers the stored state. A constant, not a setting: any
value from a few seconds to the TTL serves its purpose (a loop of refreshes cannot ask GitHub more
than once per this long per login), and a TTL shorter than it lowers it."""
REFRESH_HEARTBEAT_S = 30
"""The refresh job's SAQ heartbeat: a running job touches it every third of it (``jobs.py``), and the
sweeper aborts a job whose worker stopped touching it this long (instead of after its timeout)."""
_FRESH_REFRESHES = uuid.UUID("6f1d2c1e-9b1a-4f8e-a2c5-3d7b0e4f9a10")
"""Namespace of the ids of refreshes answered from storage: one id per login and stored fetch."""
REFRESH_JOB_GRACE_S = 30.0
"""A refresh still queued or running this long after it was saved (or started) has its job looked up
when its state is read: a job that is gone means the refresh never finishes (see ``_abandoned``)."""
_GONE = (Status.COMPLETE, Status.FAILED, Status.ABORTED)
PURGE_CHUNK = 10_000
"""Rows deleted per transaction by the retention (``purge_expired``): each statement stays far below
the statement timeout, however many rows have piled up."""
REFUSED_ANSWERS_IN_A_ROW = 3
"""Answers the client refused (``GitHubAnswerRefusedError``) in a row that pause a snapshot run: more
likely everyone's (a ``GITHUB_API_URL`` or proxy that answers something else) than three logins' own."""
REFUSED_RETRY_S = 6 * 3600
"""How long a login whose answer the client refused waits before the snapshot cron asks again: a few
tries a snapshot day, not one an hour, and never the whole day (the refusal may be a proxy's, for
every login, mended an hour later)."""
SNAPSHOTS_ACCOUNT = 0
"""The account the snapshot cron's fetch chains are charged to (no user has id 0): its share is
``GITHUB_SNAPSHOT_QUOTA_FRACTION`` of GitHub's limit, so tracked logins, which every account may add
at no cost, cannot take the whole window from the accounts' own lookups."""
DEFAULT_HISTORY_DAYS = 30
"""The history's range when ``from`` is not given: this many days ending ``to``."""

Clock = Callable[[], datetime]

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return false
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS[1] = an account's spent requests; ARGV = cost, end of the window (epoch ms) for a new count.
_SPEND = """
local spent = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
return spent
"""
# KEYS[1] = an account's pending refreshes (refresh id scored by the time it is given up on);
# ARGV = now, cap, refresh id, its deadline (epoch seconds). 1: admitted, 0: at the cap.
_ADMIT_REFRESH = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return 1
"""


_PAUSE_REASONS: dict[type[GitHubError], str] = {GitHubBusyError: "busy", GitHubRateLimitError: "rate-limit"}
"""Why the snapshot cron stops early, as logged (``snapshot_due``); any other: ``unavailable``."""


class _ProfileGoneError(Exception):
    """The profile read before tracking was purged before the tracking locked it."""


class RetentionPurge(msgspec.Struct, frozen=True):
    """What one run of the retention deleted (``GithubService.purge_expired``)."""

    profiles: int
    snapshots: int
    forgotten_logins: int


class StoredProfile(msgspec.Struct, frozen=True):
    data: ProfileData
    fetched_at: datetime


class _Failure(msgspec.Struct, frozen=True):
    kind: str
    message: str
    retry_after: float | None
    at: float
    error: str = ""
    """The failure's class (``_REMEMBERED``): ``kind`` is the answer's, which several share (a blocked
    profile and an outage are both ``unavailable``). Empty in a record of the previous release."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


_REMEMBERED: dict[str, type[GitHubError]] = {
    kind.__name__: kind
    for kind in (
        GitHubNotFoundError,
        GitHubRateLimitError,
        GitHubDownError,
        GitHubRefusedError,
        GitHubAnswerRefusedError,
    )
}


def _error_of(failure: _Failure) -> GitHubError:
    """The failure remembered, as the error it was (a snapshot run skips a blocked login and pauses
    for an outage: both are ``unavailable`` to a reader)."""
    kinds: dict[str, type[GitHubError]] = {
        "not-found": GitHubNotFoundError,
        "rate-limited": GitHubRateLimitError,
    }
    error = _REMEMBERED.get(failure.error) or kinds.get(failure.kind, GitHubDownError)
    return error(failure.message, retry_after=failure.retry_after, remembered=True)


class GithubService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        valkey: Valkey,
        broadcaster: Broadcaster,
        *,
        clock: Clock = _utcnow,
        accounts: AccountService | None = None,
        stops: StreamStops | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.valkey = valkey
        self.broadcaster = broadcaster
        self.clock = clock
        self.accounts = accounts
        """Asked at each keep-alive of a refresh stream whether its caller's session is still valid."""
        self.stops = stops or StreamStops()
        """Ends the refresh streams when the process stops (``Services.stream_stops``)."""
        self.refresh_streams = StreamSlots(
            valkey,
            prefix="github:streams",
            cap=settings.github_stream_max_per_user,
            lease_ms=int(SSE_LEASE_S * 1000),
            too_many=lambda: TooManyRefreshStreamsError(
                f"At most {settings.github_stream_max_per_user} live refresh streams per account are"
                " open at once: close one first.",
                headers={"Retry-After": str(math.ceil(SSE_KEEPALIVE_S))},
            ),
        )
        self.governor = governor_for(settings, valkey, token_fingerprint(settings.github_token))
        self.client = GitHubClient(settings, valkey, self.governor)
        self._queue: RedisQueue | None = None
        self._flights: dict[str, asyncio.Future[StoredProfile]] = {}
        self._lookups: dict[int, Counter[str]] = {}
        """Per account, the logins of its cold lookups in flight in this process (callers per login)."""
        self._release = valkey.register_script(_RELEASE)
        self._renew = valkey.register_script(_RENEW)
        self._replace = valkey.register_script(_REPLACE)
        self._spend = valkey.register_script(_SPEND)
        self._admit_refresh = valkey.register_script(_ADMIT_REFRESH)

    async def start(self) -> None:
        """One connection pool to GitHub and one queue client per process."""
        await self.client.start()
        assert self.settings.valkey_url is not None
        self._queue = RedisQueue(
            redis.from_url(self.settings.valkey_url, socket_timeout=5, socket_connect_timeout=2),
            name=QUEUE,
        )

    async def close(self) -> None:
        await self.client.close()
        if self._queue is not None:
            await self._queue.redis.aclose()
            self._queue = None

    # -- profile -----------------------------------------------------------------------------

    async def profile(
        self, username: str, filters: Filters, *, top_repos: int, top_languages: int, user_id: int
    ) -> GithubProfileOut:
        """The login's analysis for account ``user_id`` (whose share a cold lookup spends)."""
        login = self.login_of(username)
        stored = await self._load(login)
        refresh: RefreshOut | None = None
        source: Source
        if stored is None:
            stored = await self._cold_lookup(user_id, login)
            source = "live"
        elif self._age_s(stored) > self.settings.github_profile_ttl_s:
            source = "stale"
            if not await self.valkey.exists(f"github:failed:{login}"):  # no refresh storm while down
                with contextlib.suppress(LookupBudgetError):  # past the reader's share: no refresh
                    refresh = await self._request_refresh(login, user_id)  # None: the account's cap
        else:
            source = "cache"
        last_error = await self._last_error(login, after=stored.fetched_at)
        analysis = analyze(
            stored.data,
            filters,
            top_repos=top_repos,
            top_languages=top_languages,
            bytes_weight=self.settings.github_blend_bytes_weight,
        )
        return GithubProfileOut(
            username=login,
            profile=analysis.profile,
            repositories=analysis.repositories,
            total_stars=analysis.total_stars,
            total_forks=analysis.total_forks,
            top_repositories=analysis.top_repositories,
            languages=analysis.languages,
            filters=filters,
            fetched_at=stored.fetched_at,
            age_s=round(self._age_s(stored), 3),
            ttl_s=self.settings.github_profile_ttl_s,
            source=source,
            stale=source == "stale",
            truncated=analysis.truncated,
            refresh=refresh,
            last_error=last_error,
        )

    @staticmethod
    def login_of(username: str) -> str:
        """The stored form of a username: validated by GitHub's rule, lower-case."""
        if not is_valid_username(username):
            raise InvalidUsernameError(
                "username: letters, digits and single hyphens, no hyphen first or last, at most 39 characters"
            )
        return username.lower()

    def _age_s(self, stored: StoredProfile) -> float:
        return max(0.0, (self.clock() - stored.fetched_at).total_seconds())

    async def _load(self, login: str) -> StoredProfile | None:
        async with self.db.transaction() as uow:
            row = await queries.get_github_profile(uow.conn, login=login)
        if row is None:
            return None
        try:
            return StoredProfile(data=msgspec.convert(row.data, ProfileData), fetched_at=row.fetched_at)
        except msgspec.ValidationError:
            log.warning("github_stored_profile_unreadable", login=login)
            return None

    async def _load_newer(self, login: str, newer_than: datetime | None) -> StoredProfile | None:
        stored = await self._load(login)
        if stored is None or (newer_than is not None and stored.fetched_at <= newer_than):
            return None
        return stored

    # -- fetching ----------------------------------------------------------------------------

    async def _cold_lookup(self, user_id: int, login: str) -> StoredProfile:
        """A login with nothing stored, fetched for account ``user_id`` within its share of the quota
        (a login remembered as missing is a 404 first: no share is needed to say so)."""
        if await self.valkey.exists(f"github:missing:{login}"):
            raise problem_for(GitHubNotFoundError("no such GitHub user (remembered)", remembered=True))
        await self._check_lookup_budget(user_id)
        try:
            return await self._fetch_shared(login, Priority.INTERACTIVE, newer_than=None, user_id=user_id)
        except GitHubError as exc:
            raise problem_for(exc) from None

    async def lookup_budget(self, account: int | None = None) -> tuple[int, int]:
        """GitHub requests an account's cold lookups and refreshes may cost per GitHub window (the
        snapshot cron's, for ``SNAPSHOTS_ACCOUNT``), and GitHub's limit: a fraction of the limit GitHub
        last reported (before any answer, its documented limit: 60 requests an hour without a token,
        5,000 with one), never less than one request."""
        limit, _ = await self.governor.window()
        fraction = (
            self.settings.github_snapshot_quota_fraction
            if account == SNAPSHOTS_ACCOUNT
            else self.settings.github_user_quota_fraction
        )
        return max(1, math.floor(limit * fraction)), limit

    async def _check_lookup_budget(self, user_id: int) -> None:
        """Refuses (429) an account whose cold lookups and refreshes have cost its share of this
        GitHub window, before anything else is done for a lookup or refresh (its chain then measures
        languages only while the share has room: ``_within_share``)."""
        if not await self._share_left(user_id):
            raise await self._budget_spent(user_id)

    async def _share_left(self, account: int) -> bool:
        """Whether ``account``'s chains (the snapshot cron's, for ``SNAPSHOTS_ACCOUNT``) have cost less
        than its share of this GitHub window."""
        budget, _ = await self.lookup_budget(account)
        return int(await self.valkey.get(_spent_key(account)) or 0) < budget

    async def _budget_spent(self, user_id: int) -> LookupBudgetError:
        budget, limit = await self.lookup_budget()
        key = _spent_key(user_id)
        async with self.valkey.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            spent_raw, ttl_ms = await pipe.execute()
        retry_after = math.ceil(ttl_ms / 1000) if ttl_ms > 0 else 60
        return LookupBudgetError(
            f"Looking up GitHub users that are not stored yet and refreshing stored ones may cost each "
            f"account {budget} GitHub requests per hour ({self.settings.github_user_quota_fraction:.0%} "
            f"of GitHub's limit of {limit}, shared by every account); yours have cost {int(spent_raw or 0)} "
            "in this hour. Users already stored are still answered (once stale, without a refresh).",
            headers={"Retry-After": str(max(1, retry_after))},
        )

    async def _charged(self, user_id: int, work: Coroutine[Any, Any, StoredProfile]) -> StoredProfile:
        """Run a fetch chain (a flight's task), charging what GitHub charged for it to ``user_id``:
        as it goes (``_within_share``), and the rest when it ends."""
        with metered() as meter:
            share = _Share(user_id, meter)
            token = _SHARE.set(share)
            try:
                return await work
            finally:
                _SHARE.reset(token)
                if (cost := meter.charged - share.charged) > 0:
                    try:
                        await self._charge(share)
                    except Exception:  # the answer stands; the account is charged less this once
                        log.warning("github_lookup_not_charged", user_id=user_id, cost=cost)

    async def _within_share(self) -> bool:
        """Whether the chain under way may ask GitHub for one more resource it can do without (a
        repository's languages): it charges its paying account what it has cost so far, and reads
        what the account's chains have cost in all (the snapshot cron pays as an account of its own,
        ``SNAPSHOTS_ACCOUNT``). A chain nobody pays for may.

        Charged only once the chain ended, an account's chains under way at once each cost up to a
        whole chain on top of its share (two of them: 44 requests of an anonymous hour's 60 against a
        share of 12, and the other accounts' lookups then met GitHub's own limit). Charged as they go,
        such chains stay within the share but for what each asks before its first look here (the
        profile and the pages of repositories, without which there is no answer) and one request."""
        share = _SHARE.get()
        if share is None:
            return True
        try:
            spent = await self._charge(share)
            budget, _ = await self.lookup_budget(share.user_id)
        except Exception:  # Valkey: measure no more than what has been measured (the answer stands)
            log.warning("github_share_unknown", user_id=share.user_id)
            return False
        return spent < budget

    async def _charge(self, share: _Share) -> int:
        """Charge the account what its chain cost since the last charge; what its chains cost in all."""
        _, window_end = await self.governor.window()
        cost = share.meter.charged - share.charged
        share.charged += cost  # before the call: a reply lost after the count moved must not count twice
        return int(await self._spend(keys=[_spent_key(share.user_id)], args=[cost, int(window_end * 1000)]))

    def _hold_lookup(self, user_id: int, login: str) -> None:
        """Counts the caller among the account's lookups in flight; a new login past the cap is a 429.
        Joining a lookup of a login the account already has in flight adds no work and is free."""
        held = self._lookups.setdefault(user_id, Counter())
        cap = self.settings.github_user_lookups_in_flight
        if login not in held and len(held) >= cap:
            raise TooManyLookupsError(
                f"An account may have {cap} lookups of GitHub users that are not stored yet under way "
                "at once; wait for one of yours to finish.",
                headers={"Retry-After": str(LOOKUPS_IN_FLIGHT_RETRY_S)},
            )
        held[login] += 1

    def _release_lookup(self, user_id: int, login: str) -> None:
        held = self._lookups.get(user_id)
        if held is None:
            return
        held[login] -= 1
        if held[login] <= 0:
            del held[login]
        if not held:
            del self._lookups[user_id]

    async def _fetch_shared(
        self,
        login: str,
        priority: Priority,
        *,
        newer_than: datetime | None,
        user_id: int | None = None,
        charged_to: int | None = None,
    ) -> StoredProfile:
        """One fetch chain per login: this process's callers share a flight, processes a lock.

        ``newer_than`` is what the caller already knows: a profile fetched after it (any profile, if
        ``None``) that another process stores meanwhile is the answer, not a reason to fetch again.
        ``user_id``: the account asking (a cold lookup): it holds one of its lookups in flight until
        the flight ends (not merely until it stops waiting), and a flight it starts is charged to it.
        ``charged_to``: the account a flight this call starts is charged to, holding nothing (a
        refresh job's); a flight already under way was charged to whoever started it."""
        if user_id is not None:
            self._hold_lookup(user_id, login)
        payer = user_id if user_id is not None else charged_to
        flight = self._flights.get(login)
        if flight is None:
            work = self._fetch_across_processes(login, priority, newer_than)
            flight = asyncio.ensure_future(work if payer is None else self._charged(payer, work))
            self._flights[login] = flight
            flight.add_done_callback(lambda done: self._end_flight(login, done))
        if user_id is not None:
            flight.add_done_callback(lambda _: self._release_lookup(user_id, login))
        if priority is Priority.BACKGROUND:
            return await asyncio.shield(flight)
        try:  # a request never waits longer than GITHUB_COLD_WAIT_S, even behind a background flight
            return await asyncio.wait_for(asyncio.shield(flight), timeout=self.settings.github_cold_wait_s)
        except TimeoutError:
            raise GitHubDownError("the fetch under way is taking too long", retry_after=5) from None

    def _end_flight(self, login: str, done: asyncio.Future[StoredProfile]) -> None:
        if self._flights.get(login) is done:
            del self._flights[login]
        if not done.cancelled():
            done.exception()  # retrieved: a flight whose callers all left logs no warning

    async def _fetch_across_processes(
        self, login: str, priority: Priority, newer_than: datetime | None
    ) -> StoredProfile:
        """The login's profile fetched by this process (holding its fetch lock) or by the process
        that holds the lock, waited for at most ``GITHUB_COLD_WAIT_S`` (a request) or
        ``GITHUB_CHAIN_TIMEOUT_S`` (a job: the longest the holder's chain may take). Waiting, it
        polls every ``POLL_S`` the stored profile's ``fetched_at`` only (not its ``data``: a large
        document read 20 times a second); the whole profile is read once that has changed to
        something newer than ``newer_than``."""
        if await self.valkey.exists(f"github:missing:{login}"):
            raise GitHubNotFoundError("no such GitHub user (remembered)", remembered=True)
        recent = await self._recent_failure(login, since=0.0)
        if recent is not None:  # failed moments ago: answer that instead of asking GitHub again
            raise recent
        started = time.time()
        # A request waits GITHUB_COLD_WAIT_S at most; a job as long as the holder's chain may last (a
        # refresh failed as unavailable while the other process's fetch was about to succeed).
        interactive = priority is Priority.INTERACTIVE
        wait_s = self.settings.github_cold_wait_s if interactive else self.settings.github_chain_timeout_s
        deadline = time.monotonic() + wait_s
        lock_key = f"github:fetch:{login}"
        read_at: datetime | None = None  # the fetched_at of the profile last read whole
        while True:
            async with self._lock(lock_key) as held:
                if held:  # the last holder may have finished after the caller looked: read again first
                    stored = await self._load_newer(login, newer_than)
                    return stored or await self._fetch_and_store(
                        login, priority, profile_stored=newer_than is not None
                    )
            await asyncio.sleep(POLL_S)
            async with self.db.read() as uow:
                fetched_at = await queries.get_github_profile_fetched_at(uow.conn, login=login)
            is_newer = fetched_at is not None and (newer_than is None or fetched_at > newer_than)
            if is_newer and fetched_at != read_at:
                read_at = fetched_at
                stored = await self._load_newer(login, newer_than)
                if stored is not None:
                    return stored
            failure = await self._recent_failure(login, since=started)
            if failure is not None:
                raise failure
            if time.monotonic() > deadline:
                raise GitHubDownError("another process's fetch is taking too long", retry_after=5)

    @contextlib.asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[bool]:
        """A Valkey lock renewed while held (a crashed holder frees it within ``FETCH_LOCK_TTL_S``)."""
        token = secrets.token_hex(8)
        ttl_ms = int(FETCH_LOCK_TTL_S * 1000)
        if not await self.valkey.set(key, token, nx=True, px=ttl_ms):
            yield False
            return

        try:
            async with repeating(
                partial(self._renew, keys=[key], args=[token, ttl_ms]), FETCH_LOCK_TTL_S / 3
            ):
                yield True
        finally:
            await self._release(keys=[key], args=[token])

    async def _fetch_and_store(
        self, login: str, priority: Priority, *, profile_stored: bool
    ) -> StoredProfile:
        with self.client.fetch_chain(login):  # one lookup: its requests and its deadline bounded
            try:
                user = await self.client.get_user(login, priority)
                repos, truncated = await self.client.list_repos(
                    login, priority, max_repos=self.settings.github_max_repos
                )
            except GitHubBusyError:
                raise  # our queue, not GitHub: nothing to remember about the login
            except GitHubError as exc:
                await self._record_failure(login, exc, profile_stored=profile_stored)
                raise
            languages = await self._measure(login, repos, priority)
        data = ProfileData(
            user=user,
            repos=repos,
            repos_truncated=truncated,
            languages=languages,
            measured_limit=self.settings.github_language_repos,
        )
        fetched_at = self.clock()
        async with self.db.transaction() as uow:
            await queries.upsert_github_profile(
                uow.conn, login=login, data=msgspec.to_builtins(data), fetched_at=fetched_at
            )
        await self.valkey.delete(f"github:failed:{login}", f"github:last-error:{login}")
        return StoredProfile(data=data, fetched_at=fetched_at)

    async def _measure(
        self, login: str, repos: list[GithubRepo], priority: Priority
    ) -> dict[str, dict[str, int]]:
        """``/languages`` of the largest repositories. A failure part-way keeps what the previous
        fetch measured for the rest (the answer's coverage says what is missing), never fails the chain."""
        measured: dict[str, dict[str, int]] = {}
        chosen = repos_to_measure(repos, self.settings.github_language_repos)
        for index, repo in enumerate(chosen):
            if not await self._within_share():
                log.info("github_languages_incomplete", login=login, kind="share-spent", measured=index)
                _keep_previous(chosen[index:], measured, await self._load(login))
                break
            try:
                languages = await self.client.get_languages(repo, priority)
            except GitHubError as exc:
                log.warning("github_languages_incomplete", login=login, kind=exc.kind, measured=index)
                _keep_previous(chosen[index:], measured, await self._load(login))
                break
            if languages is not None:
                measured[repo.full_name] = languages
        return measured

    async def _record_failure(self, login: str, exc: GitHubError, *, profile_stored: bool) -> None:
        """Remember a failed fetch: briefly, so that waiting callers and retries hear of it
        (``github:failed``); and, for a login whose profile is stored, as the answer's
        ``last_error`` (``github:last-error``, a week). A login without a stored profile keeps no
        last error: nothing reads it, and any account could leave a week-long key per login it made
        up (the Valkey reviewer: 30 lookups of unknown logins, 30 keys, while GitHub was
        unreachable and nothing was charged to the account)."""
        now = time.time()
        failure = _Failure(
            kind=exc.kind, message=str(exc), retry_after=exc.retry_after, at=now, error=type(exc).__name__
        )
        remember_s = min(60.0, max(FAILURE_MEMORY_S, exc.retry_after or 0.0))
        error = UpstreamError(
            kind=exc.kind,  # type: ignore[arg-type]
            at=self.clock(),
            retry_after_s=math.ceil(exc.retry_after) if exc.retry_after is not None else None,
        )
        async with self.valkey.pipeline(transaction=False) as pipe:
            pipe.set(f"github:failed:{login}", msgspec.msgpack.encode(failure), px=int(remember_s * 1000))
            if profile_stored:
                pipe.set(f"github:last-error:{login}", msgspec.msgpack.encode(error), ex=LAST_ERROR_TTL_S)
            if isinstance(exc, GitHubNotFoundError):
                pipe.set(f"github:missing:{login}", b"1", ex=self.settings.github_not_found_ttl_s)
            await pipe.execute()
        log_failure = log.info if isinstance(exc, GitHubNotFoundError) else log.warning  # a mistyped login
        log_failure(
            "github_fetch_failed",
            login=login,
            kind=exc.kind,
            reason=str(exc),
            retry_after=exc.retry_after,
            **({"cause": exc.cause, "setting": "GITHUB_API_URL"} if exc.cause else {}),
        )

    async def _recent_failure(self, login: str, *, since: float) -> GitHubError | None:
        raw = await self.valkey.get(f"github:failed:{login}")
        if raw is None:
            return None
        failure = msgspec.msgpack.decode(raw, type=_Failure)
        return _error_of(failure) if failure.at >= since else None

    async def _last_error(self, login: str, *, after: datetime) -> UpstreamError | None:
        raw = await self.valkey.get(f"github:last-error:{login}")
        if raw is None:
            return None
        error = msgspec.msgpack.decode(raw, type=UpstreamError)
        return error if error.at >= after else None

    # -- refreshes ---------------------------------------------------------------------------

    async def request_refresh(self, username: str, *, user_id: int) -> RefreshOut:
        """A refresh job for a stored login (or the one already pending), for account ``user_id``.

        A login with nothing stored is a 404: its first fetch is a lookup (``profile``). A profile
        fetched less than ``refresh_min_age_s`` ago is not fetched again: the answer is the stored
        state, a refresh already ``succeeded`` (final, nothing enqueued). Otherwise the refresh is
        charged to the account (``_request_refresh``: 429 past its share or its pending cap)."""
        login = self.login_of(username)
        if await self.valkey.exists(f"github:missing:{login}"):
            raise UnknownGithubUserError("GitHub has no user with this name.")
        async with self.db.read() as uow:
            fetched_at = await queries.get_github_profile_fetched_at(uow.conn, login=login)
        if fetched_at is None:
            raise NotStoredError(
                f"Nothing is stored for this GitHub user to refresh: GET /api/github/users/{login} "
                "looks it up first."
            )
        if (self.clock() - fetched_at).total_seconds() < refresh_min_age_s(self.settings):
            return await self._answered_from_storage(login, fetched_at)
        refresh = await self._request_refresh(login, user_id)
        if refresh is None:
            cap = self.settings.github_user_pending_refreshes
            raise RefreshLimitError(
                f"An account may have {cap} refreshes queued or running at once; follow yours "
                "(their events_url) and ask again when one has finished.",
                headers={"Retry-After": str(REFRESH_LIMIT_RETRY_S)},
            )
        return refresh

    async def _answered_from_storage(self, login: str, fetched_at: datetime) -> RefreshOut:
        """A refresh that fetched nothing, the stored profile being recent: final at once
        (``succeeded``, with the stored ``fetched_at``), its state saved so that ``state_url`` and
        ``events_url`` answer it. One id per login and stored fetch: asking again while the profile is
        this recent answers the same refresh and keeps no more state."""
        refresh_id = uuid.uuid5(_FRESH_REFRESHES, f"{login}@{fetched_at.isoformat()}")
        now = self.clock()
        state = _new_refresh(
            refresh_id, login, now, status="succeeded", finished_at=now, fetched_at=fetched_at
        )
        earlier = await self.valkey.set(
            f"github:refresh:{refresh_id}",
            msgspec.json.encode(state),
            nx=True,
            ex=REFRESH_STATE_TTL_S,
            get=True,
        )
        return msgspec.json.decode(earlier, type=RefreshOut) if earlier is not None else state

    async def _admit(self, user_id: int, refresh_id: uuid.UUID, deadline: float) -> bool:
        """Counts a new refresh among the account's pending ones, unless they are at the cap. Those
        that have ended (or whose job is gone: ``_refresh_state`` judges them) leave the count first."""
        key = f"github:user-refreshes:{user_id}"
        for member in await self.valkey.zrange(key, 0, -1):
            state = await self._refresh_state(uuid.UUID(member.decode()))
            if state is None or state.is_final:
                await self.valkey.zrem(key, member)
        cap = self.settings.github_user_pending_refreshes
        admitted = await self._admit_refresh(
            keys=[key], args=[int(time.time()), cap, str(refresh_id), int(deadline)]
        )
        return bool(admitted)

    async def _request_refresh(self, login: str, user_id: int) -> RefreshOut | None:
        """The login's pending refresh, whoever asked for it (it costs ``user_id`` nothing), or a new
        one counted among ``user_id``'s pending refreshes (None: at its cap) whose job's fetch chain
        is charged to ``user_id``: ``LookupBudgetError`` (429) when the account's share is spent."""
        assert self._queue is not None, "GithubService.start() was not called"
        refresh_id = uuid.uuid4()
        pending_key = f"github:refresh-pending:{login}"
        pending_ttl_s = self.settings.github_refresh_timeout_s + 300
        if (live := await self._unfinished(await self.valkey.get(pending_key))) is not None:
            return live
        await self._check_lookup_budget(user_id)
        current = await self.valkey.set(pending_key, str(refresh_id), nx=True, ex=pending_ttl_s, get=True)
        if current is not None:
            if (live := await self._unfinished(current)) is not None:
                return live
            await self.valkey.set(pending_key, str(refresh_id), ex=pending_ttl_s)
        if not await self._admit(user_id, refresh_id, time.time() + pending_ttl_s):
            await self._release(keys=[pending_key], args=[str(refresh_id)])
            return None
        state = _new_refresh(refresh_id, login, self.clock())
        await self._save_refresh(state)
        job_key = f"github-refresh:{login}"
        job = await self._queue.enqueue(
            Job(
                function=REFRESH_TASK,
                kwargs={"login": login, "refresh_id": str(refresh_id), "user_id": user_id},
                key=job_key,
                timeout=self.settings.github_refresh_timeout_s,
                heartbeat=REFRESH_HEARTBEAT_S,
                retries=1,
                ttl=3600,
            )
        )
        if job is None:  # SAQ still holds a job under this login's key
            existing = await self._queue.job(job_key)
            other = existing.kwargs.get("refresh_id") if existing is not None and existing.kwargs else None
            if (live := await self._unfinished(other)) is not None:  # still to run: report that one
                await self.valkey.zrem(f"github:user-refreshes:{user_id}", str(refresh_id))
                await self.valkey.set(pending_key, str(live.id), ex=pending_ttl_s)
                return live
            # Its refresh ended but SAQ has not let go of the job (the moment before it finishes, a
            # killed worker until the sweep, an abort's few seconds): this refresh has no job, so it
            # is reported failed once REFRESH_JOB_GRACE_S has passed (``_job_gone``); never the old,
            # final one, which would read as this one's result.
        return state

    async def _unfinished(self, refresh_id: bytes | str | None) -> RefreshOut | None:
        """The refresh ``refresh_id`` names (a pending marker's value, a job's argument) if it is still
        to finish."""
        if refresh_id is None:
            return None
        state = await self._refresh_state(
            uuid.UUID(refresh_id.decode() if isinstance(refresh_id, bytes) else refresh_id)
        )
        return state if state is not None and not state.is_final else None

    async def refresh_state(self, refresh_id: uuid.UUID) -> RefreshOut:
        state = await self._refresh_state(refresh_id)
        if state is None:
            raise RefreshNotFoundError("No refresh with this id (they are kept for a day).")
        return state

    async def _refresh_state(self, refresh_id: uuid.UUID) -> RefreshOut | None:
        raw = await self.valkey.get(f"github:refresh:{refresh_id}")
        if raw is None:
            return None
        state = msgspec.json.decode(raw, type=RefreshOut)
        if state.is_final or not await self._job_gone(state):
            return state
        return await self._abandoned(state, raw)

    async def _job_gone(self, state: RefreshOut) -> bool:
        """Whether the refresh's job can no longer finish it: its worker was killed (the sweeper
        aborts the job after its timeout, without a retry), the job failed before writing the final
        state, or the enqueue failed after the state was saved. Looked up only after a grace."""
        since = state.started_at or state.requested_at
        if (self.clock() - since).total_seconds() < REFRESH_JOB_GRACE_S:
            return False
        assert self._queue is not None, "GithubService.start() was not called"
        job = await self._queue.job(f"github-refresh:{state.username}")
        if job is None or (job.kwargs or {}).get("refresh_id") != str(state.id):
            return True
        return job.status in _GONE

    async def _abandoned(self, state: RefreshOut, raw: bytes) -> RefreshOut:
        """The refresh failed, unless its state changed since ``raw`` was read (its job finished
        meanwhile): then the state as it is now."""
        failed = self._final(state, GitHubDownError("the refresh's job was lost"))
        if await self._save_refresh(failed, replacing=raw):
            log.warning("github_refresh_abandoned", refresh_id=str(state.id), login=state.username)
            await self._release(keys=[f"github:refresh-pending:{state.username}"], args=[str(state.id)])
            return failed
        now = await self.valkey.get(f"github:refresh:{state.id}")
        return msgspec.json.decode(now, type=RefreshOut) if now is not None else failed

    async def _save_refresh(self, state: RefreshOut, *, replacing: bytes | None = None) -> bool:
        """Store and publish the state; with ``replacing``, only if the stored state is still that."""
        body = msgspec.json.encode(state)
        key = f"github:refresh:{state.id}"
        if replacing is None:
            await self.valkey.set(key, body, ex=REFRESH_STATE_TTL_S)
        elif not await self._replace(keys=[key], args=[replacing, body, REFRESH_STATE_TTL_S]):
            return False
        await self.broadcaster.publish(body, [refresh_channel(state.id)])
        return True

    async def run_refresh(self, login: str, refresh_id: uuid.UUID, *, user_id: int | None = None) -> str:
        """The refresh job: fetch (sharing any fetch chain under way), record and publish the outcome.
        A fetch chain it starts is charged to ``user_id``, the account that asked (None: nobody's,
        for a job enqueued by a release that did not name it)."""
        login = self.login_of(login)
        state = await self._refresh_state(refresh_id) or _new_refresh(refresh_id, login, self.clock())
        if state.is_final:  # judged lost while it waited (``_abandoned``): clients were told
            return state.status
        state = msgspec.structs.replace(state, status="running", started_at=self.clock())
        await self._save_refresh(state)
        running = msgspec.json.encode(state)
        if user_id is not None and login not in self._flights:  # joining a flight is free
            try:
                await self._check_lookup_budget(user_id)
            except LookupBudgetError as spent:  # since it was asked for: no chain on a spent share
                retry_after = float(spent.headers["Retry-After"])
                await self._finish_refresh(
                    state, GitHubRateLimitError(str(spent), retry_after=retry_after), replacing=running
                )
                return "failed"
        try:
            stored = await self._fetch_shared(
                login, Priority.BACKGROUND, newer_than=state.requested_at, charged_to=user_id
            )
        except GitHubError as exc:
            await self._finish_refresh(state, exc, replacing=running)
            return "failed"
        except BaseException:
            await self._finish_refresh(state, GitHubDownError("the refresh failed"), replacing=running)
            raise
        await self._finish_refresh(state, None, fetched_at=stored.fetched_at, replacing=running)
        return "succeeded"

    async def _finish_refresh(
        self,
        state: RefreshOut,
        exc: GitHubError | None,
        *,
        fetched_at: datetime | None = None,
        replacing: bytes | None = None,
    ) -> None:
        """The final state, saved (with ``replacing``: only over that state, so a refresh already
        judged lost keeps the outcome its clients saw) and the login freed for the next refresh."""
        state = self._final(state, exc, fetched_at=fetched_at)
        await self._save_refresh(state, replacing=replacing)
        await self._release(keys=[f"github:refresh-pending:{state.username}"], args=[str(state.id)])

    def _final(
        self, state: RefreshOut, exc: GitHubError | None, *, fetched_at: datetime | None = None
    ) -> RefreshOut:
        if exc is None:
            return msgspec.structs.replace(
                state, status="succeeded", finished_at=self.clock(), fetched_at=fetched_at
            )
        retry_after = math.ceil(exc.retry_after) if exc.retry_after is not None else None
        error = UpstreamError(kind=exc.kind, at=self.clock(), retry_after_s=retry_after)  # type: ignore[arg-type]
        return msgspec.structs.replace(state, status="failed", finished_at=self.clock(), error=error)

    async def open_refresh_events(
        self, refresh_id: uuid.UUID, channels: ChannelsPlugin, caller: CurrentUser
    ) -> AsyncIterator[ServerSentEventMessage]:
        """The refresh's live stream, after its checks: 404 when there is no such refresh, 429
        (``TooManyRefreshStreamsError``) when the account's other refresh streams hold every one of
        its ``GITHUB_STREAM_MAX_PER_USER`` slots (each stream polls Valkey every second for up to
        ``SSE_MAX_S``). The slot is taken by the stream's body and given back when it ends
        (``StreamSlots.reserve``)."""
        await self.refresh_state(refresh_id)
        slot = await self.refresh_streams.reserve(caller.id)
        return self.refresh_events(refresh_id, channels, slot, caller)

    async def refresh_events(
        self, refresh_id: uuid.UUID, channels: ChannelsPlugin, slot: Slot, caller: CurrentUser
    ) -> AsyncIterator[ServerSentEventMessage]:
        """The refresh's states as Server-Sent Events until it is final (then the stream ends).

        Subscribed before the stored state is read, and the stored state is re-read every second while
        waiting: a completion published before the subscription was live is still delivered. Every
        ``SSE_KEEPALIVE_S`` ``slot`` is renewed (the stream ends if it was lost) and the caller checked
        as the activity stream checks its own (``AccountService.still_authenticated``): the stream ends
        once the request's own check would refuse it (its token expired, a logout, the account
        deactivated or demoted, its password changed). ``slot`` is taken first (the stream ends at once
        if the account's other streams took the last one meanwhile) and released at the end. The
        stream ends when the process stops (``app.core.stops``): open, it kept granian from stopping
        the worker until its kill timeout, which then skipped the application's shutdown.
        """
        if not await slot.take():
            return
        wake = asyncio.Event()
        ended = ending_on_outage("github-stream", "github_refresh_stream_ended", user_id=caller.id)
        try:
            with ended, self.stops.watching(wake):
                async for message in self._refresh_events(refresh_id, channels, slot, caller, wake):
                    yield message
        finally:
            await slot.release()

    async def _session_valid(self, caller: CurrentUser) -> bool:
        return self.accounts is None or await self.accounts.still_authenticated(caller)

    async def _refresh_events(
        self,
        refresh_id: uuid.UUID,
        channels: ChannelsPlugin,
        slot: Slot,
        caller: CurrentUser,
        stopping: asyncio.Event,
    ) -> AsyncIterator[ServerSentEventMessage]:
        async with channels.start_subscription([refresh_channel(refresh_id)]) as subscriber:
            state = await self.refresh_state(refresh_id)
            yield _event(state)
            if state.is_final:
                return
            events = subscriber.iter_events()
            pending: asyncio.Future[bytes] = asyncio.ensure_future(anext(events))
            stop = asyncio.ensure_future(stopping.wait())
            deadline = time.monotonic() + SSE_MAX_S  # clients reconnect and get the current state
            quiet_since = renewed_at = time.monotonic()
            try:
                while time.monotonic() < deadline and not self.stops.stopping:
                    if time.monotonic() - renewed_at >= SSE_KEEPALIVE_S:
                        renewed_at = time.monotonic()
                        if not await slot.renew():  # its lease lapsed and was taken: end it
                            return
                        if not await self._session_valid(caller):
                            log.info("github_refresh_stream_ended", user_id=caller.id, reason="session")
                            return
                    waiting: set[asyncio.Future[Any]] = {pending, stop}
                    done, _ = await asyncio.wait(
                        waiting, timeout=SSE_POLL_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    if stop in done:
                        return
                    if pending in done:
                        latest: RefreshOut | None = msgspec.json.decode(pending.result(), type=RefreshOut)
                        pending = asyncio.ensure_future(anext(events))
                    else:
                        latest = await self._refresh_state(refresh_id)
                    if latest is not None and latest != state:
                        state = latest
                        quiet_since = time.monotonic()
                        yield _event(state)
                        if state.is_final:
                            return
                    elif time.monotonic() - quiet_since >= SSE_KEEPALIVE_S:
                        quiet_since = time.monotonic()
                        yield ServerSentEventMessage(comment="keep-alive")
            finally:
                pending.cancel()
                stop.cancel()

    # -- tracking ----------------------------------------------------------------------------

    async def list_tracked(self, user_id: int, *, after_id: int, limit: int) -> Page[TrackedOut]:
        async with self.db.transaction() as uow:
            rows = await queries.list_github_tracked(
                uow.conn, user_id=user_id, after_id=after_id, row_limit=limit + 1
            )
        return paginate(rows, limit, lambda row: IdCursor(id=row.id), _tracked_out)

    async def track(self, user_id: int, username: str) -> tuple[TrackedOut, bool]:
        """Start tracking (idempotent: True when newly tracked). The login must exist on GitHub: one
        with nothing stored is looked up, on the account's share of the quota.

        The transaction locks the stored profile (and snapshot attempt) before it writes the tracked
        row, as the retention's purge locks them before deleting them: a purge that has the profile
        locked first deletes it, and the tracking then finds it gone and looks the login up again
        (a profile just fetched is far from its retention)."""
        login = self.login_of(username)
        stored = await self._load(login) is not None
        for _ in range(2):
            if not stored:
                await self._check_tracking_room(user_id, login)
                await self._cold_lookup(user_id, login)
            try:
                return await self._track_stored(user_id, login, last_try=not stored)
            except _ProfileGoneError:
                stored = False
        raise AssertionError("unreachable: the second try tracks even without a profile")

    async def _check_tracking_room(self, user_id: int, login: str) -> None:
        """Refuses (409) a new login past the account's tracking limit before its lookup costs the
        account's share of the quota; ``_track_stored`` checks again under its lock (a race)."""
        async with self.db.read() as uow:
            if await queries.get_github_tracked(uow.conn, user_id=user_id, login=login) is not None:
                return
            count = await queries.count_github_tracked(uow.conn, user_id=user_id) or 0
        self._refuse_past_tracking_limit(count)

    def _refuse_past_tracking_limit(self, count: int) -> None:
        limit = self.settings.github_max_tracked_per_user
        if count >= limit:
            raise TrackingLimitError(f"A user tracks at most {limit} GitHub users; untrack one first.")

    async def _track_stored(self, user_id: int, login: str, *, last_try: bool) -> tuple[TrackedOut, bool]:
        async with self.db.transaction() as uow:
            kept = await queries.lock_github_profile_kept(uow.conn, login=login)
            if kept is None and not last_try:
                raise _ProfileGoneError  # purged since it was read: rolled back, looked up again
            await queries.lock_github_snapshot_attempt_kept(uow.conn, login=login)
            await queries.lock_github_tracking(uow.conn, user_id=user_id)
            existing = await queries.get_github_tracked(uow.conn, user_id=user_id, login=login)
            if existing is not None:
                return _tracked_out(existing), False
            count = await queries.count_github_tracked(uow.conn, user_id=user_id) or 0
            self._refuse_past_tracking_limit(count)
            row = await queries.track_github_login(uow.conn, user_id=user_id, login=login)
        assert row is not None
        return _tracked_out(row), True

    async def untrack(self, user_id: int, username: str) -> None:
        login = self.login_of(username)
        async with self.db.transaction() as uow:
            removed = await queries.untrack_github_login(uow.conn, user_id=user_id, login=login)
        if not removed:
            raise NotTrackedError("You do not track this GitHub user.")

    # -- snapshots and history ---------------------------------------------------------------

    async def snapshot_due(self) -> int:
        """The snapshot cron (hourly): snapshot every tracked login that has none for the current
        snapshot day yet, up to ``GITHUB_SNAPSHOTS_PER_RUN`` per run. Snapshot day D runs from
        ``GITHUB_SNAPSHOT_HOUR_UTC`` on D to the same hour on D + 1 (``snapshot_day``), so every
        hourly run of those 24 hours works on D: a missed or failed run is caught up by the next one,
        after midnight too (a snapshot hour of 23 would otherwise leave one run a day, and never
        catch it up); a re-run changes nothing.

        Each login's attempt is recorded before it is fetched and the batch is the longest untried
        first, so logins that fail every time (gone from GitHub, blocked) go behind the others instead
        of filling every batch. They stay tracked: a 404 may be a suspension or a rename taken back,
        and untracking would silently undo the user's choice. Such a failure of the login's own (not
        found, blocked: 451/403) settles it for the snapshot day: it is tried
        again the next day, not in each of the day's hourly runs (24 requests a day for every login
        gone from GitHub, which any account could track before it went). An outage or a spent quota
        settles nothing: the next run takes the login again. An answer the client refuses (a shape,
        size or link no GitHub answer has) holds the login back for ``REFUSED_RETRY_S``, not the day:
        it may be a proxy's for every login, so the day's last hour asks every such login once more;
        three in a row pause the run.

        The runs spend a share of GitHub's limit of their own (``GITHUB_SNAPSHOT_QUOTA_FRACTION``,
        charged as they go like an account's lookups, ``SNAPSHOTS_ACCOUNT``): past it a run stops and
        the next hour's goes on. Without it, the tracked logins of every account (tracking a stored
        login costs nothing) could spend each window down to the reserve, the accounts' own lookups
        left with ``GITHUB_RESERVE_FRACTION`` of it.

        Each snapshot records which GitHub account held the login (its numeric id), so that the
        history tells a login that changed hands from one account's changes (``history``)."""
        day = snapshot_day(self.clock(), self.settings.github_snapshot_hour_utc)
        async with self.db.read() as uow:
            due = await queries.list_github_logins_due(
                uow.conn,
                taken_on=day,
                refused_since=self._refused_since(day),
                batch_size=self.settings.github_snapshots_per_run,
            )
        taken = 0
        refused_in_a_row = 0
        for login in due:
            async with self.db.transaction() as uow:
                await queries.record_github_snapshot_attempt(uow.conn, login=login, attempted_at=self.clock())
            try:
                stored = await self._load(login)
                fetched = False
                if stored is None or self._age_s(stored) > self.settings.github_profile_ttl_s:
                    fetched = True
                    if not await self._share_left(SNAPSHOTS_ACCOUNT):
                        log.warning("github_snapshots_paused", reason="share", login=login, retry_after=None)
                        break
                    stored = await self._fetch_shared(
                        login,
                        Priority.BACKGROUND,
                        newer_than=stored.fetched_at if stored else None,
                        charged_to=SNAPSHOTS_ACCOUNT,
                    )
            except GitHubError as exc:
                refused = isinstance(exc, GitHubAnswerRefusedError)
                if refused:  # the login's fault, or a proxy's for every login: hours, not the day
                    refused_in_a_row += 1
                    async with self.db.transaction() as uow:
                        await queries.record_github_snapshot_refusal(
                            uow.conn, login=login, refused_at=self.clock()
                        )
                elif not exc.remembered:  # an answer of this run (a memory proves nothing of GitHub now)
                    refused_in_a_row = 0
                if _is_outage(exc) or refused_in_a_row >= REFUSED_ANSWERS_IN_A_ROW:
                    # The next hourly run goes on where this one stopped: asking an exhausted quota or a
                    # GitHub that is down for every due login (each with its retries) only adds to the load.
                    reason = "refused-answers" if refused else _PAUSE_REASONS.get(type(exc), "unavailable")
                    log.warning(
                        "github_snapshots_paused", reason=reason, login=login, retry_after=exc.retry_after
                    )
                    break
                log.warning(
                    "github_snapshot_skipped", login=login, kind=exc.kind, snapshot_day=day.isoformat()
                )
                if not refused:
                    async with self.db.transaction() as uow:
                        await queries.record_github_snapshot_failure(uow.conn, login=login, failed_on=day)
                continue
            if fetched:
                refused_in_a_row = 0
            analysis = analyze(
                stored.data,
                DEFAULT_FILTERS,
                top_repos=0,
                top_languages=0,
                bytes_weight=self.settings.github_blend_bytes_weight,
            )
            async with self.db.transaction() as uow:
                taken += await queries.insert_github_snapshot(
                    uow.conn,
                    login=login,
                    taken_on=day,
                    taken_at=self.clock(),
                    github_id=stored.data.user.id,
                    followers=analysis.profile.followers,
                    following=analysis.profile.following,
                    public_repos=analysis.profile.public_repos,
                    repos_counted=analysis.repositories.counted,
                    total_stars=analysis.total_stars,
                    total_forks=analysis.total_forks,
                    language_bytes=analysis.language_bytes,
                )
        return taken

    def _refused_since(self, day: date) -> datetime:
        """Refused answers after this hold their logins back: those of the last ``REFUSED_RETRY_S``,
        none in the snapshot day's last hour (a refusal late in the day would otherwise lose it)."""
        now = self.clock()
        hour = self.settings.github_snapshot_hour_utc
        day_ends = datetime(day.year, day.month, day.day, hour, tzinfo=UTC) + timedelta(days=1)
        return now if now >= day_ends - timedelta(hours=1) else now - timedelta(seconds=REFUSED_RETRY_S)

    # -- retention ---------------------------------------------------------------------------

    async def purge_expired(self, *, chunk_size: int = PURGE_CHUNK) -> RetentionPurge:
        """The retention (a daily cron; idempotent: a re-run finds nothing more to delete).

        - A profile of a login nobody tracks that was not fetched for ``GITHUB_PROFILE_RETENTION_DAYS``
          is deleted. Nothing depends on it being there: a lookup with nothing stored is a cold
          lookup (fetched again, on the asking account's share of the quota); only the stale
          fallback while GitHub is down is lost for such a login (a 503 instead of data that old).
          Tracked logins keep theirs: the snapshot cron and a tracker's reads use it every day.
        - Snapshots older than ``GITHUB_SNAPSHOT_RETENTION_DAYS`` are deleted, tracked or not
          (by default 400, above ``GITHUB_HISTORY_MAX_DAYS``' 366: no full-range answer shrinks).
        - The snapshots and the snapshot attempt of a login nobody tracks any more are deleted
          ``GITHUB_PROFILE_RETENTION_DAYS`` after its last attempt (the cron attempts every tracked
          login daily, so: after it was untracked). Not at once: an untrack by mistake, or a user
          who tracks the login again soon (or another user who starts tracking it), keeps its
          history, which cannot be fetched again from GitHub. The attempt's row is what says when
          the login was last snapshotted, so it is kept exactly as long.

        Each kind is deleted in chunks of at most ``chunk_size`` rows, one transaction each, so no
        statement nears the statement timeout however much has piled up. A chunk locks its rows
        first (its own statement, oldest first), then deletes them with the condition checked again
        in a statement whose snapshot follows the locks: a login fetched while the chunk waits for
        its row gets out by its new ``fetched_at``; one tracked before the chunk got the lock is seen
        as tracked (tracking holds the profile's and attempt's rows ``FOR KEY SHARE`` while it writes
        the tracked row, so it either commits before the chunk's lock or waits for the chunk to end,
        then finds the profile gone and looks it up again: ``track``)."""
        assert chunk_size >= 2, "a chunk holds a login and at least one of its snapshots"
        now = self.clock()
        unused_before = now - timedelta(days=self.settings.github_profile_retention_days)
        taken_before = now.date() - timedelta(days=self.settings.github_snapshot_retention_days)
        forgotten, forgotten_snapshots = await self._purge_forgotten_logins(unused_before, chunk_size)
        old_snapshots = await self._purge_old_snapshots(taken_before, chunk_size)
        profiles = await self._purge_profiles(unused_before, chunk_size)
        purged = RetentionPurge(
            profiles=profiles, snapshots=forgotten_snapshots + old_snapshots, forgotten_logins=forgotten
        )
        log.info(
            "github_retention_purged",
            profiles=profiles,
            snapshots_untracked=forgotten_snapshots,
            snapshots_old=old_snapshots,
            forgotten_logins=forgotten,
        )
        return purged

    async def _purge_profiles(self, fetched_before: datetime, chunk_size: int) -> int:
        purged = 0
        while True:
            async with self.db.transaction() as uow:
                logins = await queries.lock_expired_github_profiles(
                    uow.conn, fetched_before=fetched_before, chunk_size=chunk_size
                )
                if logins:
                    purged += await queries.delete_expired_github_profiles(
                        uow.conn, logins=logins, fetched_before=fetched_before
                    )
            if len(logins) < chunk_size:
                return purged

    async def _purge_old_snapshots(self, taken_before: date, chunk_size: int) -> int:
        async def chunk(uow: UnitOfWork) -> int:
            return await queries.delete_old_github_snapshots(
                uow.conn, taken_before=taken_before, chunk_size=chunk_size
            )

        return await self.db.delete_in_chunks(chunk)

    async def _purge_forgotten_logins(self, attempted_before: datetime, chunk_size: int) -> tuple[int, int]:
        """(logins, snapshots) deleted. A chunk locks up to half its rows' worth of logins and deletes
        their snapshots in the rest; their attempts go (with the chunk's last snapshots) once a
        chunk's snapshots come back short, so a login's row outlives its snapshots, never the reverse."""
        logins_per_chunk = chunk_size // 2
        forgotten = snapshots = 0
        while True:
            async with self.db.transaction() as uow:
                logins = await queries.lock_forgotten_github_logins(
                    uow.conn, attempted_before=attempted_before, chunk_size=logins_per_chunk
                )
                if not logins:
                    return forgotten, snapshots
                room = chunk_size - len(logins)
                deleted = await queries.delete_forgotten_github_snapshots(
                    uow.conn, logins=logins, attempted_before=attempted_before, chunk_size=room
                )
                snapshots += deleted
                if deleted < room:
                    forgotten += await queries.delete_forgotten_github_attempts(
                        uow.conn, logins=logins, attempted_before=attempted_before
                    )
            if deleted < room and len(logins) < logins_per_chunk:
                return forgotten, snapshots

    async def history(self, username: str, first_day: date | None, last_day: date | None) -> HistoryOut:
        login = self.login_of(username)
        last = last_day or self.clock().date()
        first = first_day or _default_first_day(last)
        if first > last:
            raise InvalidRangeError("query.from must not be after query.to.")
        span = (last - first).days + 1
        if span > self.settings.github_history_max_days:
            raise InvalidRangeError(
                f"query.from..query.to spans {span} days; at most {self.settings.github_history_max_days}."
            )
        async with self.db.transaction() as uow:
            rows = await queries.list_github_snapshots(uow.conn, login=login, first_day=first, last_day=last)
        points: list[HistoryPoint] = []
        previous: GithubSnapshot | None = None
        segment_start = 0
        for index, row in enumerate(rows):
            same_account = previous is not None and _same_account(previous, row)
            if previous is not None and not same_account:
                segment_start = index
            points.append(
                HistoryPoint(
                    date=row.taken_on,
                    taken_at=row.taken_at,
                    github_id=row.github_id,
                    followers=row.followers,
                    following=row.following,
                    public_repos=row.public_repos,
                    repos_counted=row.repos_counted,
                    total_stars=row.total_stars,
                    total_forks=row.total_forks,
                    language_bytes=dict(row.language_bytes),
                    change=_change(previous, row) if previous is not None and same_account else None,
                    days_since_previous=(row.taken_on - previous.taken_on).days if previous else None,
                )
            )
            previous = row
        segment = rows[segment_start:]
        deltas = _change(segment[0], segment[-1]) if len(segment) >= 2 else None
        return HistoryOut(
            username=login,
            from_=first,
            to=last,
            points=points,
            deltas=deltas,
            deltas_from=segment[0].taken_on if segment else None,
        )


def snapshot_day(now: datetime, snapshot_hour_utc: int) -> date:
    """The snapshot day ``now`` belongs to: day D runs from ``snapshot_hour_utc`` (UTC) on D to the
    same hour on D + 1, so the hours after midnight still belong to the day before."""
    return (now.astimezone(UTC) - timedelta(hours=snapshot_hour_utc)).date()


def _default_first_day(last: date) -> date:
    """The first day of the default 30-day range ending ``last``. ``to`` is the client's: a day near
    the start of the calendar leaves no room for 29 earlier days, a 400 naming it (not an overflow)."""
    try:
        return last - timedelta(days=DEFAULT_HISTORY_DAYS - 1)
    except OverflowError:
        raise InvalidRangeError(
            f"query.to: the default range is the {DEFAULT_HISTORY_DAYS} days ending query.to, "
            "which starts before the first representable day; give query.from too."
        ) from None


def refresh_min_age_s(settings: Settings) -> int:
    """How recent a stored profile is not fetched again for a refresh: ``REFRESH_MIN_AGE_S``, or the
    profile's TTL if shorter (a stale profile is always refreshed)."""
    return min(settings.github_profile_ttl_s, REFRESH_MIN_AGE_S)


def _new_refresh(
    refresh_id: uuid.UUID,
    login: str,
    requested_at: datetime,
    *,
    status: RefreshStatus = "queued",
    finished_at: datetime | None = None,
    fetched_at: datetime | None = None,
) -> RefreshOut:
    return RefreshOut(
        id=refresh_id,
        username=login,
        status=status,
        requested_at=requested_at,
        events_url=f"/api/github/refreshes/{refresh_id}/events",
        state_url=f"/api/github/refreshes/{refresh_id}",
        finished_at=finished_at,
        fetched_at=fetched_at,
    )


class _Share:
    """The account a chain is charged to, its requests (``meter``) and how many of them it has been
    charged so far."""

    __slots__ = ("charged", "meter", "user_id")

    def __init__(self, user_id: int, meter: RequestMeter) -> None:
        self.user_id = user_id
        self.meter = meter
        self.charged = 0


_SHARE: ContextVar[_Share | None] = ContextVar("github_share", default=None)


def _keep_previous(
    rest: list[GithubRepo], measured: dict[str, dict[str, int]], previous: StoredProfile | None
) -> None:
    """The languages the previous fetch measured for the repositories this one did not reach."""
    if previous is None:
        return
    for repo in rest:
        if repo.full_name in previous.data.languages:
            measured[repo.full_name] = previous.data.languages[repo.full_name]


def _spent_key(user_id: int) -> str:
    """GitHub requests the account's cold lookups and refreshes have cost in the current GitHub
    window (the key keeps its name: a rolling deploy's two releases count in the same one)."""
    return f"github:lookup-spent:{user_id}"


def refresh_channel(refresh_id: uuid.UUID) -> str:
    return f"github:refresh:{refresh_id}"


def _event(state: RefreshOut) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        data=msgspec.json.encode(state).decode(), event="refresh", id=f"{state.id}:{state.status}"
    )


def _tracked_out(row: GithubTracked) -> TrackedOut:
    return TrackedOut(username=row.login, tracked_since=row.created_at)


def _is_outage(exc: GitHubError) -> bool:
    """A failure of GitHub or of its quota for every login (the snapshot cron pauses), not of one
    login (a 404, a blocked profile, an answer that is not GitHub's: that login is skipped)."""
    return isinstance(exc, GitHubRateLimitError | GitHubBusyError | GitHubDownError) and not isinstance(
        exc, GitHubRefusedError | GitHubAnswerRefusedError
    )


def _same_account(before: GithubSnapshot, after: GithubSnapshot) -> bool:
    """Whether two snapshots of a login are of one GitHub account (an unknown id, recorded before
    ids were, is taken as the same: nothing says otherwise)."""
    return before.github_id is None or after.github_id is None or before.github_id == after.github_id


def _change(before: GithubSnapshot, after: GithubSnapshot) -> Change:
    old_bytes: dict[str, int] = dict(before.language_bytes)
    new_bytes: dict[str, int] = dict(after.language_bytes)
    language_delta = {
        name: new_bytes.get(name, 0) - old_bytes.get(name, 0)
        for name in sorted(set(old_bytes) | set(new_bytes))
        if new_bytes.get(name, 0) != old_bytes.get(name, 0)
    }
    return Change(
        followers=after.followers - before.followers,
        following=after.following - before.following,
        public_repos=after.public_repos - before.public_repos,
        repos_counted=after.repos_counted - before.repos_counted,
        total_stars=after.total_stars - before.total_stars,
        total_forks=after.total_forks - before.total_forks,
        language_bytes=language_delta,
    )
