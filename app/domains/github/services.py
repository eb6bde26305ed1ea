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
  quota every account shares, so each has a share (``shares.py``): the fetch chains an account asks
  for may cost at most ``GITHUB_USER_QUOTA_FRACTION`` of GitHub's limit per GitHub window, and,
  accounts being free, those asked from one client address (an IPv4 address, an IPv6 /64), whatever
  accounts ask, ``GITHUB_ADDRESS_QUOTA_FRACTION`` (the cost of a chain, counted by the client, is
  charged to the account that started it and its address; past a share: 429
  ``github-lookup-budget`` until the window ends, and a stale answer comes without a refresh). A
  chain is charged as it goes and measures repositories' languages only while both shares have
  room, so the chains under way at once stay within them but for their profiles and pages of
  repositories. An account has at most ``GITHUB_USER_LOOKUPS_IN_FLIGHT`` cold lookups under way at
  once per process, an address ``GITHUB_ADDRESS_LOOKUPS_IN_FLIGHT`` lookups and refreshes across
  processes (more: 429 ``github-lookups-in-flight``), so one burst cannot queue everyone else's
  requests past their wait budget, nor overshoot a share by more than those chains' first pages.
  Joining a fetch under way, in this process or another, and answers from storage cost nothing: a
  chain is admitted (its shares checked, a slot taken) only once it holds the login's lock; refused
  there, it is refused to whoever joined it from the same account or address, and the others ask
  on their own.
- Failures: an unknown login is remembered for ``GITHUB_NOT_FOUND_TTL_S`` (404 without a request);
  GitHub down or rate-limited gives the last good data with ``stale: true`` and ``last_error``, or,
  with nothing stored, a 503 problem with ``Retry-After`` (``github-rate-limited`` when GitHub's
  limit is the cause, ``github-busy`` when the request waited its budget out behind others, or
  behind fetches of the user by other accounts or addresses that their limits refused). Never a 500.

Refreshes (``POST …/refresh`` of a stored login, or a stale read) are SAQ jobs on the ``github``
queue, so a burst of them never delays the platform's jobs (alert delivery, monitoring crons); one
per login at a time (the job key ``github-refresh:<login>`` and a pending marker in Valkey: asking
for a refresh already pending joins it, whoever asked first, at no cost), and at most
``GITHUB_USER_PENDING_REFRESHES`` queued or running per account (more: 429, or a stale answer
without a refresh). The job carries the account that asked (the reader of a stale answer, for one
a read started), and finds the address it asked from beside its state; its fetch chain is charged
to both shares, checked when it asks and again when its job starts (a job whose share is spent
since, or whose address still has its chains under way after ``GITHUB_COLD_WAIT_S``, fails,
fetching nothing). A
refresh of a profile fetched less than ``refresh_min_age_s`` ago fetches nothing: the answer is the
stored state, as a refresh already ``succeeded``. The job keeps a SAQ heartbeat
(``REFRESH_HEARTBEAT_S``), so one whose worker died is swept (aborted) within it, not after its
timeout, and stops holding the account's pending count (``Refreshes._job_gone``). Each has an id; its state
is kept in Valkey for a day and every change is published on ``github:refresh:<id>`` for the SSE
stream, which also re-reads the stored state so a late subscriber gets the final state. Such a
stream polls Valkey every second for up to two minutes, so an account holds at most
``GITHUB_STREAM_MAX_PER_USER`` of them at once, across every process (leased slots,
``app/core/slots.py``; one more is a 429).

Retention (``purge_expired``, daily): profiles of logins no active account tracks go
``GITHUB_PROFILE_RETENTION_DAYS`` after their last fetch (the next lookup is a cold one again),
snapshots ``GITHUB_SNAPSHOT_RETENTION_DAYS`` after their day, and a login no active account tracks
loses its snapshots ``GITHUB_PROFILE_RETENTION_DAYS`` after its last one.

Where the code is: ``GithubService`` (here) is the domain's one service, its public methods the ones
handlers, jobs and the CLI call; it answers ``profile`` itself and hands the rest, in one line each,
to the parts it holds, each in a module of its own, private to the domain:

- ``lookups.py`` (``ProfileLookups``): the stored profile, the shared fetch chain (flights, the
  cross-process lock) and the memory of failures;
- ``shares.py`` (``Shares``, held by the lookups): the accounts' and addresses' shares of the quota;
- ``refreshes.py`` (``Refreshes``): the refresh jobs, their states and their SSE stream;
- ``tracking.py`` (``Tracking``): who tracks which login;
- ``snapshots.py`` (``Snapshots``): the snapshot cron, the history and the retention.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from litestar.channels import ChannelsPlugin
from litestar.response import ServerSentEventMessage
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.channels import Broadcaster
from app.core.db import Database
from app.core.pagination import Page
from app.core.slots import Slot
from app.core.stops import StreamStops
from app.domains.github.analysis import analyze
from app.domains.github.client import GitHubClient, is_valid_username, token_fingerprint
from app.domains.github.errors import InvalidUsernameError, LookupBudgetError
from app.domains.github.governor import governor_for
from app.domains.github.lookups import Clock, ProfileLookups
from app.domains.github.refreshes import Refreshes
from app.domains.github.schemas import (
    Filters,
    GithubProfileOut,
    HistoryOut,
    RefreshOut,
    Source,
    TrackedOut,
)
from app.domains.github.snapshots import PURGE_CHUNK, RetentionPurge, Snapshots
from app.domains.github.tracking import Tracking

if TYPE_CHECKING:
    from app.domains.accounts.services import AccountService


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
        self.settings = settings
        self.valkey = valkey
        self.governor = governor_for(settings, valkey, token_fingerprint(settings.github_token))
        self.client = GitHubClient(settings, valkey, self.governor)
        self.lookups = ProfileLookups(db, settings, valkey, self.client, self.governor, clock=clock)
        self.refreshes = Refreshes(
            db, settings, valkey, broadcaster, self.lookups, clock=clock, accounts=accounts, stops=stops
        )
        self.tracking = Tracking(db, settings, self.lookups, accounts)
        self.snapshots = Snapshots(db, settings, self.lookups, clock=clock)

    async def start(self) -> None:
        """One connection pool to GitHub and one queue client per process."""
        await self.client.start()
        await self.refreshes.start()

    def stopping(self) -> None:
        self.refreshes.stopping()

    async def close(self) -> None:
        await self.client.close()
        await self.refreshes.close()

    # -- profile -----------------------------------------------------------------------------

    async def profile(
        self,
        username: str,
        filters: Filters,
        *,
        top_repos: int,
        top_languages: int,
        user_id: int,
        address: str | None = None,
    ) -> GithubProfileOut:
        """The login's analysis for account ``user_id`` asking from ``address``
        (``app.core.ratelimit.ClientAddress``; None: a caller that is not a request): the shares a
        cold lookup or a refresh spends."""
        login = self.login_of(username)
        stored = await self.lookups.load(login)
        refresh: RefreshOut | None = None
        source: Source
        if stored is None:
            stored = await self.lookups.cold_lookup(user_id, login, address)
            source = "live"
        elif self.lookups.age_s(stored) > self.settings.github_profile_ttl_s:
            source = "stale"
            if not await self.lookups.remembers_failure(login):
                with contextlib.suppress(LookupBudgetError):  # past the reader's share: no refresh
                    refresh = await self.refreshes.join_or_enqueue(login, user_id, address)  # None: its cap
        else:
            source = "cache"
        last_error = await self.lookups.last_error(login, after=stored.fetched_at)
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
            age_s=round(self.lookups.age_s(stored), 3),
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

    async def lookup_budget(self, account: int | None = None) -> tuple[int, int]:
        """GitHub requests an account's cold lookups and refreshes may cost per GitHub window, and
        GitHub's limit (``Shares.budget``)."""
        return await self.lookups.shares.budget(account)

    # -- refreshes (refreshes.py) ------------------------------------------------------------

    async def request_refresh(self, username: str, *, user_id: int, address: str | None = None) -> RefreshOut:
        """A refresh job for a stored login (or the one already pending), for account ``user_id``
        asking from ``address`` (``Refreshes.request_refresh``)."""
        return await self.refreshes.request_refresh(self.login_of(username), user_id=user_id, address=address)

    async def refresh_state(self, refresh_id: uuid.UUID) -> RefreshOut:
        return await self.refreshes.refresh_state(refresh_id)

    async def run_refresh(self, login: str, refresh_id: uuid.UUID, *, user_id: int | None = None) -> str:
        """The refresh job (``Refreshes.run_refresh``), charged to ``user_id``."""
        return await self.refreshes.run_refresh(self.login_of(login), refresh_id, user_id=user_id)

    async def open_refresh_events(
        self, refresh_id: uuid.UUID, channels: ChannelsPlugin, caller: CurrentUser
    ) -> AsyncIterator[ServerSentEventMessage]:
        """The refresh's live stream, after its checks (``Refreshes.open_refresh_events``)."""
        return await self.refreshes.open_refresh_events(refresh_id, channels, caller)

    def refresh_events(
        self, refresh_id: uuid.UUID, channels: ChannelsPlugin, slot: Slot, caller: CurrentUser
    ) -> AsyncIterator[ServerSentEventMessage]:
        """The refresh's states as Server-Sent Events until it is final (``Refreshes.refresh_events``)."""
        return self.refreshes.refresh_events(refresh_id, channels, slot, caller)

    # -- tracking (tracking.py) --------------------------------------------------------------

    async def list_tracked(self, user_id: int, *, after_id: int, limit: int) -> Page[TrackedOut]:
        return await self.tracking.list_tracked(user_id, after_id=after_id, limit=limit)

    async def track(self, user_id: int, username: str, address: str | None = None) -> tuple[TrackedOut, bool]:
        """Start tracking (idempotent: True when newly tracked; ``Tracking.track``)."""
        return await self.tracking.track(user_id, self.login_of(username), address)

    async def untrack(self, user_id: int, username: str) -> None:
        await self.tracking.untrack(user_id, self.login_of(username))

    forget_tracker = staticmethod(Tracking.forget_tracker)

    # -- snapshots, history and retention (snapshots.py) -------------------------------------

    async def snapshot_due(self) -> int:
        """The snapshot cron (hourly; ``Snapshots.snapshot_due``)."""
        return await self.snapshots.snapshot_due()

    async def purge_expired(self, *, chunk_size: int = PURGE_CHUNK) -> RetentionPurge:
        """The retention (a daily cron; ``Snapshots.purge_expired``)."""
        return await self.snapshots.purge_expired(chunk_size=chunk_size)

    async def history(self, username: str, first_day: date | None, last_day: date | None) -> HistoryOut:
        return await self.snapshots.history(self.login_of(username), first_day, last_day)
