"""Refreshes of stored profiles: their jobs, their state machine and its live stream.

Private to the GitHub domain (``GithubService`` holds one ``Refreshes`` as ``refreshes`` and
delegates its refresh methods to it). A refresh is asked for (``request_refresh``, or a stale read's
``join_or_enqueue``), admitted one per login and up to ``GITHUB_USER_PENDING_REFRESHES`` per account,
run as a SAQ job on the domain's queue (``run_refresh``: its fetch chain is the lookups',
``lookups.py``), and its state (queued, running, succeeded or failed) kept in Valkey for a day,
published on ``github:refresh:<id>`` and streamed as Server-Sent Events (``refresh_events``). A
refresh whose job is gone is judged failed (``_job_gone``, ``_abandoned``). The service's docstring
says why each rule is there (its "Refreshes" paragraph).

It owns the domain's SAQ queue client (``start``/``close``), which only the refreshes enqueue on and
look jobs up in.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
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
from app.core.db import Database
from app.core.errors import (
    ending_on_outage,
)
from app.core.kept import KeptTasks
from app.core.modules import QueueName
from app.core.responses import KEEP_ALIVE
from app.core.slots import LeasedSlots, Slot
from app.core.stops import StreamStops
from app.db import github as queries
from app.domains.github.client import GitHubDownError, GitHubError
from app.domains.github.errors import (
    LookupBudgetError,
    NotStoredError,
    PayerRefusedError,
    RefreshLimitError,
    RefreshNotFoundError,
    TooManyRefreshStreamsError,
    UnknownGithubUserError,
    upstream_error,
)
from app.domains.github.governor import Priority
from app.domains.github.lookups import RELEASE, Clock, ProfileLookups, StoredProfile
from app.domains.github.schemas import RefreshOut, RefreshStatus

if TYPE_CHECKING:
    from app.domains.accounts.services import AccountService

log = structlog.get_logger("app.github")

REFRESH_TASK = "refresh_github_profile"
"""The SAQ task name of ``jobs.refresh_github_profile`` (SAQ registers functions by name)."""
QUEUE: QueueName = "github"
"""The domain's SAQ queue: its jobs never wait in (or hold up) the platform's ``default`` queue."""
REFRESH_LIMIT_RETRY_S = 10
REFRESH_STATE_TTL_S = 24 * 3600
SLOT_POLL_S = 0.25
"""How often a refresh job at its address's cap on chains under way asks for a slot again."""
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

_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return false
"""
# KEYS[1] = a login's pending marker, KEYS[2] = an account's pending refreshes (refresh id scored by
# the time it is given up on); ARGV = refresh id, the marker's TTL (s), now, cap, the refresh's
# deadline (epoch seconds), a marker value judged ended ('' for none). A new refresh is counted and
# becomes the login's pending one in one step, unless the marker names another (returned) or the
# account is at its cap (0); 1: claimed.
_CLAIM_REFRESH = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[6] then return current end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def _pending_key(login: str) -> str:
    """The login's pending marker: the id of the refresh anyone asking now joins."""
    return f"github:refresh-pending:{login}"


def _job_key(login: str) -> str:
    """The SAQ key of the login's refresh job (one at a time per login)."""
    return f"github-refresh:{login}"


def _address_key(refresh_id: uuid.UUID) -> str:
    """The client address (``app.core.ratelimit.ClientAddress``: a digest) a refresh was asked from,
    which its job's fetch chain is charged to beside the account (kept as long as its state)."""
    return f"github:refresh-address:{refresh_id}"


def _account_key(user_id: int) -> str:
    """An account's pending refreshes (``_CLAIM_REFRESH``)."""
    return f"github:user-refreshes:{user_id}"


class Refreshes:
    """The refreshes of stored profiles: asked for, run as jobs, their states stored and streamed
    (this module's docstring)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        valkey: Valkey,
        broadcaster: Broadcaster,
        lookups: ProfileLookups,
        *,
        clock: Clock,
        accounts: AccountService | None = None,
        stops: StreamStops | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.valkey = valkey
        self.broadcaster = broadcaster
        self.lookups = lookups
        self.clock = clock
        self.accounts = accounts
        """Asked at each keep-alive of a refresh stream whether its caller's session is still valid."""
        self.stops = stops or StreamStops()
        """Ends the refresh streams when the process stops (``Services.stream_stops``)."""
        self.refresh_streams = LeasedSlots(
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
        self._queue: RedisQueue | None = None
        self._release = valkey.register_script(RELEASE)
        self._replace = valkey.register_script(_REPLACE)
        self._claim_refresh = valkey.register_script(_CLAIM_REFRESH)
        self._beginning = KeptTasks()
        self._stopping = False

    async def start(self) -> None:
        """One queue client per process."""
        assert self.settings.valkey_url is not None
        self._stopping = False
        self._queue = RedisQueue(
            redis.from_url(self.settings.valkey_url, socket_timeout=5, socket_connect_timeout=2),
            name=QUEUE,
        )

    def stopping(self) -> None:
        """The process begins to stop: a refresh job cancelled from now on is handed back
        (``run_refresh``)."""
        self._stopping = True

    async def close(self) -> None:
        await self._beginning.close(timeout_s=5)  # refreshes whose requests were cancelled: their jobs first
        if self._queue is not None:
            await self._queue.redis.aclose()
            self._queue = None

    async def request_refresh(self, login: str, *, user_id: int, address: str | None = None) -> RefreshOut:
        """A refresh job for a stored login (or the one already pending), for account ``user_id``
        asking from ``address`` (``app.core.ratelimit.ClientAddress``).

        A login with nothing stored is a 404: its first fetch is a lookup (``profile``). A profile
        fetched less than ``refresh_min_age_s`` ago is not fetched again: the answer is the stored
        state, a refresh already ``succeeded`` (final, nothing enqueued). Otherwise the refresh is
        charged to the account (``join_or_enqueue``: 429 past its share or its pending cap)."""
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
        refresh = await self.join_or_enqueue(login, user_id, address)
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

    async def join_or_enqueue(
        self, login: str, user_id: int, address: str | None = None
    ) -> RefreshOut | None:
        """The login's pending refresh, whoever asked for it (it costs ``user_id`` nothing), or a new
        one counted among ``user_id``'s pending refreshes (None: at its cap) whose job's fetch chain
        is charged to ``user_id`` and ``address``: ``LookupBudgetError`` (429) when the account's
        share or the address's is spent.

        An id is handed out only once it is the login's pending refresh (its marker): a new refresh's
        state is saved first, then counted and made the pending one in one step (``_CLAIM_REFRESH``),
        so a request that joins never takes a slot of its account, a joiner always finds a state,
        and the refresh it finds is the one whose job is enqueued next. Before, the marker was
        claimed before the state existed: a second request read it as ended, took it over, and,
        its enqueue refused by the first one's job, handed out its own id, which no job finished."""
        assert self._queue is not None, "GithubService.start() was not called"
        pending_key, job_key = _pending_key(login), _job_key(login)
        if (live := await self._unfinished(await self.valkey.get(pending_key))) is not None:
            return live
        if (queued := await self._queued(job_key)) is not None:  # its marker expired while it waited
            await self.valkey.set(pending_key, str(queued.id), nx=True, ex=self._pending_ttl_s)
            return queued
        try:
            await self.lookups.shares.check(user_id, address)
        except LookupBudgetError:  # joining costs nothing: one begun meanwhile is still given
            if (live := await self._unfinished(await self.valkey.get(pending_key))) is not None:
                return live
            raise
        # Not left half done by this request's cancellation (a shutdown): a refresh claimed but never
        # enqueued would be given to others and hold its account's slot, and never run.
        return await self._beginning.run(self._begin(login, user_id, address))

    async def _begin(self, login: str, user_id: int, address: str | None) -> RefreshOut | None:
        """A new refresh, saved, then claimed (``_claim``) and enqueued; or the one claimed meanwhile,
        or None (the account's cap). One that cannot be enqueued fails at once (whoever was given it
        reads that), its marker and its account's slot freed."""
        assert self._queue is not None, "GithubService.start() was not called"
        pending_key, job_key = _pending_key(login), _job_key(login)
        state = _new_refresh(uuid.uuid4(), login, self.clock())
        await self._save_refresh(state)
        if address is not None:  # for its job: not a job argument, which the previous release refuses
            await self.valkey.set(_address_key(state.id), address, ex=REFRESH_STATE_TTL_S)
        if (claimed := await self._claim(state.id, pending_key, user_id)) is not True:
            await self.valkey.delete(f"github:refresh:{state.id}", _address_key(state.id))  # handed to nobody
            return claimed if isinstance(claimed, RefreshOut) else None
        try:
            job = await self._queue.enqueue(
                Job(
                    function=REFRESH_TASK,
                    kwargs={"login": login, "refresh_id": str(state.id), "user_id": user_id},
                    key=job_key,
                    timeout=self.settings.github_refresh_timeout_s,
                    heartbeat=REFRESH_HEARTBEAT_S,
                    retries=1,
                    ttl=3600,
                )
            )
        except Exception:
            log.exception("github_refresh_enqueue_failed", refresh_id=str(state.id), login=state.username)
            with contextlib.suppress(Exception):  # else judged lost after the grace (``_job_gone``)
                failed = self._final(state, GitHubDownError("the refresh could not be queued"))
                await self._save_refresh(failed, replacing=msgspec.json.encode(state))
                await self._release(keys=[pending_key], args=[str(state.id)])
                await self.valkey.zrem(_account_key(user_id), str(state.id))
            raise
        if job is None and (queued := await self._queued(job_key)) is not None:
            # A job enqueued without the marker (before this release's claim): that one runs. This
            # one, handed out from the marker meanwhile, has no job: judged lost after the grace.
            await self.valkey.set(pending_key, str(queued.id), ex=self._pending_ttl_s)
            await self.valkey.zrem(_account_key(user_id), str(state.id))
            return queued
        # job None and no refresh of it to run: it ended but SAQ has not let go of the job (the moment
        # before it finishes, a killed worker until the sweep, an abort's few seconds). This refresh
        # has no job, so it is reported failed once REFRESH_JOB_GRACE_S has passed (``_job_gone``);
        # never the old, final one, which would read as this one's result.
        return state

    @property
    def _pending_ttl_s(self) -> int:
        return self.settings.github_refresh_timeout_s + 300

    async def _claim(self, refresh_id: uuid.UUID, pending_key: str, user_id: int) -> RefreshOut | bool:
        """True: ``refresh_id`` is counted among the account's pending refreshes and is the login's
        pending one. Else the login's unfinished pending refresh, or False: the account is at its cap.
        A marker naming an ended (or lost) refresh is replaced only if it still names that one."""
        account_key = _account_key(user_id)
        for member in await self.valkey.zrange(account_key, 0, -1):  # the ended leave the count first
            ended = await self._refresh_state(uuid.UUID(member.decode()))
            if ended is None or ended.is_final:
                await self.valkey.zrem(account_key, member)
        cap = self.settings.github_user_pending_refreshes
        judged_ended: bytes = b""
        while True:
            # A slot ends with its refresh (the loop above), its score is only a backstop: a job may
            # wait in a backlog far longer than the marker lives. Valkey's time, as its EXPIREAT's (a
            # service on another clock, a test's, had the key expire at once: no cap at all).
            now = int(time.time())
            claimed = await self._claim_refresh(
                keys=[pending_key, account_key],
                args=[
                    str(refresh_id),
                    self._pending_ttl_s,
                    now,
                    cap,
                    now + REFRESH_STATE_TTL_S,
                    judged_ended,
                ],
            )
            if not isinstance(claimed, bytes):
                return bool(claimed)
            if (live := await self._unfinished(claimed)) is not None:
                return live
            judged_ended = claimed

    async def _queued(self, job_key: str) -> RefreshOut | None:
        """The unfinished refresh SAQ holds a job of under ``job_key``, if any."""
        assert self._queue is not None, "GithubService.start() was not called"
        job = await self._queue.job(job_key)
        return await self._unfinished((job.kwargs or {}).get("refresh_id")) if job is not None else None

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
        job = await self._queue.job(_job_key(state.username))
        if job is None or (job.kwargs or {}).get("refresh_id") != str(state.id):
            return True
        return job.status in _GONE

    async def _abandoned(self, state: RefreshOut, raw: bytes) -> RefreshOut:
        """The refresh failed, unless its state changed since ``raw`` was read (its job finished
        meanwhile): then the state as it is now."""
        failed = self._final(state, GitHubDownError("the refresh's job was lost"))
        if await self._save_refresh(failed, replacing=raw):
            log.warning("github_refresh_abandoned", refresh_id=str(state.id), login=state.username)
            await self._release(keys=[_pending_key(state.username)], args=[str(state.id)])
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
        for a job enqueued by a release that did not name it), and to the address it asked from
        (``_address_key``), admitted as a lookup is (``Shares.admit``). A job its worker's stop cuts hands
        the refresh back, "queued" with the login still its own: SAQ queues that job again whatever
        its retries, and a refresh asked meanwhile joins it (reported failed, it left the new one a
        job that never runs: the login's job key was still taken)."""
        state = await self._refresh_state(refresh_id) or _new_refresh(refresh_id, login, self.clock())
        if state.is_final:  # judged lost while it waited (``_abandoned``): clients were told
            return state.status
        waiting = state
        state = msgspec.structs.replace(state, status="running", started_at=self.clock())
        await self._save_refresh(state)
        running = msgspec.json.encode(state)
        try:
            stored = await self._fetch(login, refresh_id, state.requested_at, user_id)
        except GitHubError as exc:  # a payer's refusal (no chain past a share or cap) is rate-limited
            await self._finish_refresh(state, exc, replacing=running)
            return "failed"
        except asyncio.CancelledError:
            if self._stopping:  # SAQ queues a job its worker's stop cut again: that run finishes it
                await self._save_refresh(waiting, replacing=running)
            else:  # a timeout or an abort: SAQ runs it no more
                await self._finish_refresh(state, GitHubDownError("the refresh failed"), replacing=running)
            raise
        except BaseException:
            await self._finish_refresh(state, GitHubDownError("the refresh failed"), replacing=running)
            raise
        await self._finish_refresh(state, None, fetched_at=stored.fetched_at, replacing=running)
        return "succeeded"

    async def _fetch(
        self, login: str, refresh_id: uuid.UUID, requested_at: datetime, user_id: int | None
    ) -> StoredProfile:
        """The refresh's fetch, paid by ``user_id`` and the address it asked from (``_address_key``);
        a job that names no account (an earlier release's) is nobody's. At its address's cap on chains
        under way, one job of the address at a time waits for a slot, up to ``GITHUB_COLD_WAIT_S`` (as
        long as a lookup waits; ``Shares.waiting_turn``); the others fail at once: one account's
        five stale reads started five refreshes, and the fifth failed while the other four ran."""
        if user_id is None:
            return await self.lookups.fetch_shared(login, Priority.BACKGROUND, newer_than=requested_at)
        raw = await self.valkey.get(_address_key(refresh_id))
        address = raw.decode() if raw is not None else None
        fetch = partial(
            self.lookups.fetch_paid,
            login,
            Priority.BACKGROUND,
            newer_than=requested_at,
            account=user_id,
            address=address,
            holds=False,
        )
        try:
            return await fetch()
        except PayerRefusedError as refused:
            if not refused.at_cap:
                raise
            at_cap = refused
        async with self.lookups.shares.waiting_turn(address) as waiting:
            if not waiting:
                raise at_cap
            deadline = time.monotonic() + self.settings.github_cold_wait_s
            while True:
                await asyncio.sleep(SLOT_POLL_S)
                try:
                    return await fetch()
                except PayerRefusedError as refused:
                    if not refused.at_cap or time.monotonic() >= deadline:
                        raise

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
        await self._release(keys=[_pending_key(state.username)], args=[str(state.id)])
        await self.valkey.delete(_address_key(state.id))

    def _final(
        self, state: RefreshOut, exc: GitHubError | None, *, fetched_at: datetime | None = None
    ) -> RefreshOut:
        if exc is None:
            return msgspec.structs.replace(
                state, status="succeeded", finished_at=self.clock(), fetched_at=fetched_at
            )
        error = upstream_error(exc, self.clock())
        return msgspec.structs.replace(state, status="failed", finished_at=self.clock(), error=error)

    async def open_refresh_events(
        self, refresh_id: uuid.UUID, channels: ChannelsPlugin, caller: CurrentUser
    ) -> AsyncIterator[ServerSentEventMessage]:
        """The refresh's live stream, after its checks: 404 when there is no such refresh, 429
        (``TooManyRefreshStreamsError``) when the account's other refresh streams hold every one of
        its ``GITHUB_STREAM_MAX_PER_USER`` slots (each stream polls Valkey every second for up to
        ``SSE_MAX_S``). The slot is taken by the stream's body and given back when it ends
        (``LeasedSlots.reserve``)."""
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
        wake = asyncio.Event()
        ended = ending_on_outage("github-stream", "github_refresh_stream_ended", user_id=caller.id)
        try:
            if not await slot.take():  # inside the try: a client leaving during the take frees it too
                return
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
                        yield KEEP_ALIVE
            finally:
                pending.cancel()
                stop.cancel()


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


def refresh_channel(refresh_id: uuid.UUID) -> str:
    return f"github:refresh:{refresh_id}"


def _event(state: RefreshOut) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        data=msgspec.json.encode(state).decode(), event="refresh", id=f"{state.id}:{state.status}"
    )
