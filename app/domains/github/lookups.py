"""How a login's profile is looked up: stored answers, fetch chains, their cost and their failures.

Private to the GitHub domain (``GithubService`` holds one ``ProfileLookups`` as ``lookups``; the
refreshes, the tracking and the snapshot cron use it too). It holds the machinery the service's
docstring describes under "How an answer is made":

- the stored profile (``load``) and its age;
- who pays for a fetch chain, its account's and its client address's shares of GitHub's quota
  (``shares``, ``app/domains/github/shares.py``), checked when the chain is about to ask GitHub;
- the fetch chain shared by this process's callers (one flight per login) and across processes (a
  Valkey lock renewed while held; the others poll the stored profile): ``fetch_shared``;
- the memory of failures: briefly for every caller (``github:failed``, per token: ``failed_key``),
  a week as the answer's
  ``last_error``, and ``GITHUB_NOT_FOUND_TTL_S`` for a login GitHub does not know.

Kept apart from ``services.py`` so that a reader of the service's rules (``services.py``), of the
refresh state machine (``refreshes.py``) or of the snapshots (``snapshots.py``) can take this part
on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from functools import partial

import msgspec
import structlog
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import Database
from app.core.pool import awaited_as_a_borrower, shared_load_context
from app.core.repeating import repeating
from app.db import github as queries
from app.domains.github.analysis import repos_to_measure
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
    pages_to_list,
)
from app.domains.github.errors import PayerRefusedError, problem_for, upstream_error
from app.domains.github.governor import Priority, RateLimitGovernor
from app.domains.github.schemas import ProfileData, UpstreamError
from app.domains.github.shares import Payer, Shares

log = structlog.get_logger("app.github")

LAST_ERROR_TTL_S = 7 * 24 * 3600
FETCH_LOCK_TTL_S = 30.0
FAILURE_MEMORY_S = 10.0
POLL_S = 0.05
REFUSED_JOINS = 4
"""How many flights refused by other payers' limits a caller joins before it is told to ask again (503
``github-busy``). Of the callers a refused flight leaves, one starts the next, on its own payer: a
caller behind N refused payers of other accounts and addresses asks N times."""
REFUSED_JOINS_RETRY_S = 2

# KEYS[1] = a key held with a token (a fetch lock, a pending refresh); ARGV = the token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

Clock = Callable[[], datetime]


def _taking_too_long() -> GitHubDownError:
    """A request's answer when its wait (``GITHUB_COLD_WAIT_S``) ends before a flight's."""
    return GitHubDownError("the fetch under way is taking too long", retry_after=5)


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


class ProfileLookups:
    """A login's stored profile, and its fetch chain: shared, charged to an account, its failures
    remembered (this module's docstring)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        valkey: Valkey,
        client: GitHubClient,
        governor: RateLimitGovernor,
        *,
        clock: Clock,
    ) -> None:
        self.db = db
        self.settings = settings
        self.valkey = valkey
        self.client = client
        self.governor = governor
        self.clock = clock
        self.shares = Shares(settings, valkey, governor)
        self._flights: dict[str, asyncio.Future[StoredProfile]] = {}
        self._release = valkey.register_script(RELEASE)
        self._renew = valkey.register_script(_RENEW)

    def age_s(self, stored: StoredProfile) -> float:
        return max(0.0, (self.clock() - stored.fetched_at).total_seconds())

    async def load(self, login: str) -> StoredProfile | None:
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
        stored = await self.load(login)
        if stored is None or (newer_than is not None and stored.fetched_at <= newer_than):
            return None
        return stored

    # -- fetching ----------------------------------------------------------------------------

    async def cold_lookup(self, user_id: int, login: str, address: str | None) -> StoredProfile:
        """A login with nothing stored, fetched for account ``user_id`` asking from ``address``
        (``app.core.ratelimit.ClientAddress``) within both their shares of the quota (``fetch_paid``).
        A login remembered as missing is a 404 first: no share is needed to say so."""
        if await self.valkey.exists(f"github:missing:{login}"):
            raise problem_for(GitHubNotFoundError("no such GitHub user (remembered)", remembered=True))
        try:
            return await self.fetch_paid(
                login, Priority.INTERACTIVE, newer_than=None, account=user_id, address=address, holds=True
            )
        except GitHubError as exc:  # a payer's refusal is this account's or address's own limit
            raise problem_for(exc) from None

    async def fetch_paid(
        self,
        login: str,
        priority: Priority,
        *,
        newer_than: datetime | None,
        account: int,
        address: str | None,
        holds: bool,
    ) -> StoredProfile:
        """``fetch_shared`` for a chain ``account`` pays for, asked from ``address``: joining this
        process's flight of the login, or waiting for another process's chain of it, is free; a
        chain is admitted when it is about to ask GitHub (``Shares.admit``: 429 past a share or a
        cap on chains under way). ``holds``: the account holds one of its cold lookups in flight (a
        request's; a refresh job's holds none)."""
        return await self._fetch(
            login,
            priority,
            newer_than=newer_than,
            user_id=account if holds else None,
            asker=Payer(account, address),
            pay=partial(self.shares.admit, account, address),
        )

    async def fetch_shared(
        self,
        login: str,
        priority: Priority,
        *,
        newer_than: datetime | None,
        payer: Payer | None = None,
    ) -> StoredProfile:
        """One fetch chain per login: this process's callers share a flight, processes a lock.

        ``newer_than`` is what the caller already knows: a profile fetched after it (any profile, if
        ``None``) that another process stores meanwhile is the answer, not a reason to fetch again.
        ``payer``: who a flight this call starts is charged to (the snapshot cron's account; a chain
        an account pays for is ``fetch_paid``'s); a flight already under way was charged to whoever
        started it."""

        async def pay() -> Payer | None:
            return payer

        return await self._fetch(login, priority, newer_than=newer_than, user_id=None, asker=payer, pay=pay)

    async def _fetch(
        self,
        login: str,
        priority: Priority,
        *,
        newer_than: datetime | None,
        user_id: int | None,
        asker: Payer | None,
        pay: Callable[[], Awaitable[Payer | None]],
    ) -> StoredProfile:
        """The login's flight in this process joined, or started, then waited for; ``asker`` is who
        would pay for a flight it starts (not admitted yet; None: nobody), ``pay`` admits it.

        A flight is admitted (``pay``) only once it holds the login's fetch lock, when it is about to
        ask GitHub: a flight that waits for another process's chain costs nothing and holds no slot
        (with two web workers about half the joins of a chain land on the other process, and each
        such join, admitted up front, got a 429 on a spent share or held one of the address's four
        slots while it polled). So the payer's refusal (``PayerRefusedError``) comes from the flight.
        A caller that joined it hears it when the limit that refused is among its own
        (``asker.limits``: the same account's or address's; ten requests of one account for one
        user each get the account's 429); any other asks again, on its own payer (a refresh failed,
        and the snapshot cron paused its run, on another account's share), unless its own share is
        spent too (``Shares.refusal``: it would start a flight certain to be refused, and lengthen
        the others' wait). No await between the look for a flight and its start: twenty requests
        for one user join one flight. A request's whole wait, across its asks, is at most
        ``GITHUB_COLD_WAIT_S``."""
        deadline = (
            None if priority is Priority.BACKGROUND else time.monotonic() + self.settings.github_cold_wait_s
        )
        for attempt in range(REFUSED_JOINS + 1):
            if attempt and asker and (own := await self.shares.refusal(asker.account, asker.address)):
                raise own  # its own share spent too: a flight it started would be refused
            if deadline is not None and time.monotonic() >= deadline:  # no flight nobody would wait for
                raise _taking_too_long()
            flight = self._flights.get(login)
            started = flight is None
            if user_id is not None:
                self.shares.hold_lookup(user_id, login)
            if flight is None:
                flight = self._start_flight(login, priority, newer_than, pay)
            if user_id is not None:  # held until the flight ends, not merely until it stops waiting
                flight.add_done_callback(partial(self._release_lookup, user_id, login))
            # A job the flight refused as a request (``shared_load_context``) fetches on its own. The
            # flight's first read of PostgreSQL comes before GitHub is asked, so an outage refused it
            # there, bar one that began between fetch and store.
            alone = partial(self._fetch_across_processes, login, priority, newer_than, pay)
            try:
                return await awaited_as_a_borrower(self._wait(flight, deadline), alone)
            except PayerRefusedError as refused:
                if started or (asker is not None and refused.whose in asker.limits):
                    raise
        raise GitHubBusyError(
            "the fetches of this user under way were refused by their payers' limits",
            retry_after=REFUSED_JOINS_RETRY_S,
        )

    def _start_flight(
        self,
        login: str,
        priority: Priority,
        newer_than: datetime | None,
        pay: Callable[[], Awaitable[Payer | None]],
    ) -> asyncio.Future[StoredProfile]:
        """The login's flight in this process, charged to whoever ``pay`` admits (None: nobody). It
        borrows connections as a request does, whoever starts it (``shared_load_context``): a request
        that joined a job's waited the whole ``DATABASE_TIMEOUT_S`` during an outage (diffreview8)."""
        fetch = self._fetch_across_processes(login, priority, newer_than, pay)
        flight = asyncio.get_running_loop().create_task(fetch, context=shared_load_context())
        self._flights[login] = flight
        flight.add_done_callback(lambda done: self._end_flight(login, done))
        return flight

    def _release_lookup(self, user_id: int, login: str, _: asyncio.Future[StoredProfile]) -> None:
        self.shares.release_lookup(user_id, login)

    async def _wait(self, flight: asyncio.Future[StoredProfile], deadline: float | None) -> StoredProfile:
        """The flight's answer by ``deadline`` (``time.monotonic``; None: a job's, without one). A
        caller that stops waiting leaves it running for the others."""
        if deadline is None:
            return await asyncio.shield(flight)
        try:  # a request never waits longer than GITHUB_COLD_WAIT_S, even behind a background flight
            return await asyncio.wait_for(
                asyncio.shield(flight), timeout=max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            raise _taking_too_long() from None

    def _end_flight(self, login: str, done: asyncio.Future[StoredProfile]) -> None:
        if self._flights.get(login) is done:
            del self._flights[login]
        if not done.cancelled():
            done.exception()  # retrieved: a flight whose callers all left logs no warning

    async def _fetch_across_processes(
        self,
        login: str,
        priority: Priority,
        newer_than: datetime | None,
        pay: Callable[[], Awaitable[Payer | None]],
    ) -> StoredProfile:
        """The login's profile fetched by this process (holding its fetch lock, charged to whoever
        ``pay`` then admits) or by the process that holds the lock, waited for at most
        ``GITHUB_COLD_WAIT_S`` (a request) or ``GITHUB_CHAIN_TIMEOUT_S`` (a job: the longest the
        holder's chain may take). Waiting, it polls every ``POLL_S`` the stored profile's
        ``fetched_at`` only (not its ``data``: a large document read 20 times a second); the whole
        profile is read once that has changed to something newer than ``newer_than``."""
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
                    fresh = await self._fetched_after(login, newer_than) is not None
                    stored = await self._load_newer(login, newer_than) if fresh else None
                    return stored or await self._paid_fetch(login, priority, newer_than, await pay())
            await asyncio.sleep(POLL_S)
            fetched_at = await self._fetched_after(login, newer_than)
            if fetched_at is not None and fetched_at != read_at:
                read_at = fetched_at
                stored = await self._load_newer(login, newer_than)
                if stored is not None:
                    return stored
            failure = await self._recent_failure(login, since=started)
            if failure is not None:
                raise failure
            if time.monotonic() > deadline:
                raise GitHubDownError("another process's fetch is taking too long", retry_after=5)

    async def _fetched_after(self, login: str, newer_than: datetime | None) -> datetime | None:
        """When the stored profile was fetched, if after ``newer_than``: its ``fetched_at`` only (a
        refresh job waiting for a slot takes the lock four times a second, and the document may
        hold a thousand repositories)."""
        async with self.db.read() as uow:
            fetched_at = await queries.get_github_profile_fetched_at(uow.conn, login=login)
        if fetched_at is None or (newer_than is not None and fetched_at <= newer_than):
            return None
        return fetched_at

    async def _paid_fetch(
        self, login: str, priority: Priority, newer_than: datetime | None, payer: Payer | None
    ) -> StoredProfile:
        work = self._fetch_and_store(login, priority, profile_stored=newer_than is not None)
        return await (work if payer is None else self.shares.charging(payer, work))

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
                partial(self._renew, keys=[key], args=[token, ttl_ms]),
                FETCH_LOCK_TTL_S / 3,
                name="github_fetch_lock_renewal",
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
                max_repos = self.settings.github_max_repos
                await self.shares.afford(pages_to_list(user.public_repos, max_repos))
                repos, truncated = await self.client.list_repos(
                    login, priority, max_repos=max_repos, expected=user.public_repos
                )
            except (GitHubBusyError, PayerRefusedError):
                raise  # our queue or the payer's share, not GitHub: nothing to remember about the login
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
        await self.valkey.delete(self.failed_key(login), f"github:last-error:{login}")
        return StoredProfile(data=data, fetched_at=fetched_at)

    async def _measure(
        self, login: str, repos: list[GithubRepo], priority: Priority
    ) -> dict[str, dict[str, int]]:
        """``/languages`` of the largest repositories. A failure part-way keeps what the previous
        fetch measured for the rest (the answer's coverage says what is missing), never fails the chain."""
        measured: dict[str, dict[str, int]] = {}
        chosen = repos_to_measure(repos, self.settings.github_language_repos)
        for index, repo in enumerate(chosen):
            if not await self.shares.within_share():
                log.info("github_languages_incomplete", login=login, kind="share-spent", measured=index)
                _keep_previous(chosen[index:], measured, await self.load(login))
                break
            try:
                languages = await self.client.get_languages(repo, priority)
            except GitHubError as exc:
                log.warning("github_languages_incomplete", login=login, kind=exc.kind, measured=index)
                _keep_previous(chosen[index:], measured, await self.load(login))
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
        error = upstream_error(exc, self.clock())
        async with self.valkey.pipeline(transaction=False) as pipe:
            pipe.set(self.failed_key(login), msgspec.msgpack.encode(failure), px=int(remember_s * 1000))
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

    def failed_key(self, login: str) -> str:
        """Where a failed fetch of ``login`` is remembered briefly (``_record_failure``), under this
        process's token (``failed_key``)."""
        return failed_key(self.client.token_id, login)

    async def remembers_failure(self, login: str) -> bool:
        """Whether a fetch of ``login`` with this token failed moments ago (a reader's stale answer
        then starts no refresh: no refresh storm while GitHub is down)."""
        return bool(await self.valkey.exists(self.failed_key(login)))

    async def _recent_failure(self, login: str, *, since: float) -> GitHubError | None:
        raw = await self.valkey.get(self.failed_key(login))
        if raw is None:
            return None
        failure = msgspec.msgpack.decode(raw, type=_Failure)
        return _error_of(failure) if failure.at >= since else None

    async def last_error(self, login: str, *, after: datetime) -> UpstreamError | None:
        raw = await self.valkey.get(f"github:last-error:{login}")
        if raw is None:
            return None
        error = msgspec.msgpack.decode(raw, type=UpstreamError)
        return error if error.at >= after else None


def failed_key(token_id: str, login: str) -> str:
    """The brief memory of a failed fetch of ``login`` with the token ``token_id``
    (``token_fingerprint``). Per token: after ``GITHUB_TOKEN`` was set, refreshes failed for up to a
    minute on a rate limit remembered from the anonymous window, with its ``Retry-After`` of an hour,
    while nothing had been asked with the new token (upstream review)."""
    return f"github:failed:{token_id}:{login}"


def _keep_previous(
    rest: list[GithubRepo], measured: dict[str, dict[str, int]], previous: StoredProfile | None
) -> None:
    """The languages the previous fetch measured for the repositories this one did not reach."""
    if previous is None:
        return
    for repo in rest:
        if repo.full_name in previous.data.languages:
            measured[repo.full_name] = previous.data.languages[repo.full_name]
