"""The rate-limit governor: every process that talks to GitHub with one token obeys one shared state.

GitHub's rules (docs.github.com, "Rate limits for the REST API" and "Best practices"):

- Primary limit: 60 requests/hour without a token, 5,000 with one. Every answer carries
  ``x-ratelimit-limit/-remaining/-used/-reset`` (reset in UTC epoch seconds) and ``-resource``.
  A 403/429 with ``x-ratelimit-remaining: 0`` means: send nothing until ``x-ratelimit-reset``.
- Secondary limits (concurrency, points per minute, "undisclosed reasons"): a 403/429 whose message
  says so. With ``retry-after``: wait that many seconds; else wait at least a minute, then
  exponentially longer while it keeps happening, and give up after a few attempts.
- "Make requests serially instead of concurrently."

What the governor keeps in Valkey, per token identity (a fingerprint, never the token):

- ``…:quota:<resource>`` (hash): the last ``x-ratelimit-*`` seen, read before every request: with
  ``remaining`` 0 and ``reset`` ahead, nothing is sent before ``reset``; background work stops
  while ``remaining`` is at or below the reserve (``GITHUB_RESERVE_FRACTION`` of the limit), so the
  last requests of a window are left for interactive ones.
- ``…:blocked``: epoch seconds before which nothing is sent (set by primary and secondary limits;
  only ever moved later).

What GitHub says is bounded before it is obeyed (one absurd header would otherwise stop every
request of the token for years): a ``retry-after`` counts for at most ``GITHUB_SECONDARY_BACKOFF_MAX_S``,
an ``x-ratelimit-reset`` for at most a window (an hour) and ``RESET_SLACK_S`` ahead; a value out of
range is logged (``github_rate_limit_header_out_of_range``, once a minute per header). A block or a
reset read back is bounded the same way (``max_block_s``), so a value stored before this rule is too.
- ``…:strikes``: consecutive secondary-limit hits (the exponent of the backoff; reset by a success).
- ``…:lock``: the token's mutex. One request at a time per token across all processes; in a process
  an ``asyncio.Lock`` queues the coroutines so only one of them polls Valkey for it. Its lifetime
  (``GITHUB_TIMEOUT_S``, a whole request, plus ``LOCK_MARGIN_S``) is renewed while the turn lasts,
  so a holder that is alive never loses it to another process; a crashed one frees it in that time.

A caller that would have to wait longer than its budget (``GITHUB_INTERACTIVE_WAIT_S`` or
``GITHUB_BACKGROUND_WAIT_S``) gets ``WaitBudgetExceededError`` with the time to wait instead: a request
answers stale data or 503 + Retry-After rather than hanging. Its ``reason`` says whose limit it was:
``limited`` (GitHub's: blocked or no quota left until the reset), ``reserve`` (background work at the
reserve) or ``busy`` (ours: the token's queue of requests was longer than the budget; GitHub refused
nothing).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial

import structlog
from prometheus_client import Counter, Gauge
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.logging import OncePerInterval
from app.core.repeating import repeating

log = structlog.get_logger("app.github.governor")

RATELIMIT_REMAINING = Gauge(
    "github_ratelimit_remaining",
    "GitHub requests left in the current window (last x-ratelimit-remaining seen)",
    ["token", "resource"],
    multiprocess_mode="mostrecent",  # the last answer seen by any process; no series per pid
)
RATELIMIT_LIMIT = Gauge(
    "github_ratelimit_limit",
    "GitHub requests per window (last x-ratelimit-limit seen)",
    ["token", "resource"],
    multiprocess_mode="mostrecent",
)
PRIMARY_LIMIT_HITS = Counter(
    "github_primary_limit_hits", "GitHub answers refusing a request for the primary rate limit"
)
SECONDARY_LIMIT_HITS = Counter(
    "github_secondary_limit_hits", "GitHub answers refusing a request for a secondary rate limit"
)

ANONYMOUS_LIMIT = 60
TOKEN_LIMIT = 5000
"""GitHub's primary limits per hour: the budget assumed until an answer's ``x-ratelimit-limit`` says."""
WINDOW_S = 3600
PRIMARY_MARGIN_S = 1.0
"""Sent after ``x-ratelimit-reset`` plus this: the reset has a one-second resolution and clocks differ."""
RESET_SLACK_S = 300.0
"""How far past a full window an ``x-ratelimit-reset`` may lie (clocks differ); beyond, it is bounded."""
LOCK_MARGIN_S = 10.0
"""The token lock's lifetime beyond one request's deadline (``GITHUB_TIMEOUT_S``)."""
WAKE_MARGIN_S = 0.05
LOCK_POLL_S = (0.005, 0.02)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# KEYS[1] = blocked key; ARGV = until (epoch seconds), key lifetime (ms). Only ever moves later.
_BLOCK_UNTIL = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Priority(enum.StrEnum):
    INTERACTIVE = "interactive"
    """A user is waiting: may use the reserve."""
    BACKGROUND = "background"
    """A refresh or snapshot job: stops at the reserve."""


class WaitBudgetExceededError(Exception):
    """Waiting for GitHub would exceed the caller's budget; ``retry_after`` says how long it would be."""

    def __init__(self, reason: str, retry_after: float) -> None:
        whose = "queued behind other requests" if reason == "busy" else f"rate limit ({reason})"
        super().__init__(f"GitHub wait budget exceeded, {whose}: retry in {retry_after:.0f}s")
        self.reason = reason
        self.retry_after = max(1.0, retry_after)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``retry-after`` header (delta-seconds or an HTTP date), else None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def secondary_backoff(strikes: int, base_s: float, cap_s: float) -> float:
    """Wait after the ``strikes``-th consecutive secondary limit without ``retry-after``:
    ``base``, ``2 * base``, ``4 * base`` … capped at ``cap`` (GitHub: at least one minute)."""
    return min(cap_s, base_s * 2.0 ** max(0, strikes - 1))


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class RateLimitGovernor:
    def __init__(
        self,
        valkey: Valkey,
        token_id: str,
        *,
        reserve_fraction: float,
        interactive_wait_s: float,
        background_wait_s: float,
        secondary_backoff_s: float,
        secondary_backoff_max_s: float,
        lock_ttl_s: float,
        default_limit: int = ANONYMOUS_LIMIT,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.valkey = valkey
        self.token_id = token_id
        self.reserve_fraction = reserve_fraction
        self.budgets = {Priority.INTERACTIVE: interactive_wait_s, Priority.BACKGROUND: background_wait_s}
        self.secondary_backoff_s = secondary_backoff_s
        self.secondary_backoff_max_s = secondary_backoff_max_s
        self.lock_ttl_ms = max(1000, int(lock_ttl_s * 1000))
        self.default_limit = default_limit
        self.clock = clock
        self.sleep = sleep
        base = f"github:gov:{token_id}"
        self.blocked_key = f"{base}:blocked"
        self.strikes_key = f"{base}:strikes"
        self.lock_key = f"{base}:lock"
        self.quota_prefix = f"{base}:quota:"
        self._block_until = valkey.register_script(_BLOCK_UNTIL)
        self._release = valkey.register_script(_RELEASE)
        self._renew = valkey.register_script(_RENEW)
        self._local = asyncio.Lock()
        self._out_of_range = OncePerInterval(60.0)

    @property
    def max_block_s(self) -> float:
        """The longest GitHub may stop this token: a window plus slack, or the longest backoff."""
        return max(WINDOW_S + RESET_SLACK_S, self.secondary_backoff_max_s)

    def _bounded(self, header: str, value: float, most: float) -> float:
        if value <= most:
            return value
        if self._out_of_range.due(header):
            log.warning(
                "github_rate_limit_header_out_of_range",
                token_id=self.token_id,
                header=header,
                value=value,
                bounded_to=most,
            )
        return most

    def reserve(self, limit: int) -> int:
        return math.ceil(limit * self.reserve_fraction)

    async def window(self) -> tuple[int, float]:
        """The token's hourly limit and the end of its current window (epoch seconds), as GitHub last
        reported them. Before any answer: the documented limit of the token's kind; with no window
        under way (none seen, or it has ended): one starting now."""
        async with self.valkey.pipeline(transaction=False) as pipe:
            pipe.hmget(f"{self.quota_prefix}core", ["limit", "reset"])
            ((limit_raw, reset_raw),) = await pipe.execute()
        now = self.clock()
        limit = int(limit_raw) if limit_raw is not None else self.default_limit
        reset = min(int(reset_raw), now + WINDOW_S + RESET_SLACK_S) if reset_raw is not None else 0
        return limit, (reset + PRIMARY_MARGIN_S if reset > now else now + WINDOW_S)

    @asynccontextmanager
    async def turn(self, priority: Priority) -> AsyncIterator[None]:
        """Wait until a request may be sent, holding the token's lock while it is."""
        deadline = self.clock() + self.budgets[priority]
        while True:
            await self._wait_until_allowed(priority, deadline)
            remaining = deadline - self.clock()
            try:
                await asyncio.wait_for(self._local.acquire(), timeout=max(remaining, 0.001))
            except TimeoutError:
                raise WaitBudgetExceededError("busy", 1.0) from None
            try:
                lock = await self._acquire_shared(deadline)
                try:
                    if await self._wait_needed(priority) > 0:
                        continue  # another process was limited while we queued: wait again
                    renew = partial(self._renew, keys=[self.lock_key], args=[lock, self.lock_ttl_ms])
                    # the lock, while the turn lasts
                    async with repeating(renew, self.lock_ttl_ms / 3000, name="github_turn_lock_renewal"):
                        yield
                    return
                finally:
                    await self._release(keys=[self.lock_key], args=[lock])
            finally:
                self._local.release()

    async def _wait_until_allowed(self, priority: Priority, deadline: float) -> None:
        while (wait := await self._wait_needed(priority)) > 0:
            if self.clock() + wait > deadline:
                raise WaitBudgetExceededError("limited", wait)
            await self.sleep(wait + WAKE_MARGIN_S)

    async def _wait_needed(self, priority: Priority) -> float:
        """Seconds until a request of ``priority`` may go (0: now); raises at the reserve."""
        async with self.valkey.pipeline(transaction=False) as pipe:
            pipe.get(self.blocked_key)
            pipe.hmget(f"{self.quota_prefix}core", ["limit", "remaining", "reset"])
            blocked_raw, (limit_raw, remaining_raw, reset_raw) = await pipe.execute()
        now = self.clock()
        wait = min(max(0.0, float(blocked_raw) - now), self.max_block_s) if blocked_raw else 0.0
        if limit_raw is None or remaining_raw is None or reset_raw is None:
            return wait
        limit, remaining = int(limit_raw), int(remaining_raw)
        reset = min(int(reset_raw), now + WINDOW_S + RESET_SLACK_S)
        if reset <= now:
            return wait  # the window has renewed since
        if remaining <= 0:
            return max(wait, reset + PRIMARY_MARGIN_S - now)
        if priority is Priority.BACKGROUND and remaining <= self.reserve(limit):
            raise WaitBudgetExceededError("reserve", reset + PRIMARY_MARGIN_S - now)
        return wait

    async def _acquire_shared(self, deadline: float) -> str:
        token = secrets.token_hex(8)
        while not await self.valkey.set(self.lock_key, token, nx=True, px=self.lock_ttl_ms):
            if self.clock() >= deadline:
                raise WaitBudgetExceededError("busy", 1.0)
            await asyncio.sleep(random.uniform(*LOCK_POLL_S))
        return token

    async def observe(self, status: int, headers: Mapping[str, str], body: bytes) -> float | None:
        """Record an answer's rate-limit headers; for a rate-limit refusal, block the token and return
        the epoch second until which it is blocked (None: the answer was not a rate-limit refusal)."""
        now = self.clock()
        resource = headers.get("x-ratelimit-resource") or "core"
        limit = _int_header(headers, "x-ratelimit-limit")
        remaining = _int_header(headers, "x-ratelimit-remaining")
        reset = _int_header(headers, "x-ratelimit-reset")
        if reset is not None:
            reset = int(self._bounded("x-ratelimit-reset", reset, now + WINDOW_S + RESET_SLACK_S))
        async with self.valkey.pipeline(transaction=False) as pipe:
            if limit is not None and remaining is not None and reset is not None:
                key = f"{self.quota_prefix}{resource}"
                pipe.hset(key, mapping={"limit": limit, "remaining": remaining, "reset": reset})
                pipe.expireat(key, max(reset, int(now)) + 60)
                RATELIMIT_REMAINING.labels(token=self.token_id, resource=resource).set(remaining)
                RATELIMIT_LIMIT.labels(token=self.token_id, resource=resource).set(limit)
            if status < 400:
                pipe.delete(self.strikes_key)
            await pipe.execute()
        if status not in (403, 429):
            return None
        retry_after = parse_retry_after(headers.get("retry-after"), now)
        if retry_after is not None:
            retry_after = self._bounded("retry-after", retry_after, self.secondary_backoff_max_s)
        until: float | None = None
        if remaining == 0:
            PRIMARY_LIMIT_HITS.inc()
            until = (
                max(reset if reset is not None else now + self.secondary_backoff_s, now) + PRIMARY_MARGIN_S
            )
            if retry_after is not None:
                until = max(until, now + retry_after)
        elif retry_after is not None or status == 429 or _mentions_rate_limit(body):
            SECONDARY_LIMIT_HITS.inc()
            strikes = int(await self.valkey.incr(self.strikes_key))
            await self.valkey.expire(self.strikes_key, 3600)
            if retry_after is not None:
                until = now + retry_after
            else:
                until = now + secondary_backoff(
                    strikes, self.secondary_backoff_s, self.secondary_backoff_max_s
                )
        if until is None:
            return None  # a 403 for another reason (permissions, a blocked repository)
        lifetime_ms = max(1000, int((until - now + 60) * 1000))
        await self._block_until(keys=[self.blocked_key], args=[repr(until), lifetime_ms])
        log.warning(
            "github_rate_limited",
            token_id=self.token_id,
            status=status,
            kind="primary" if remaining == 0 else "secondary",
            wait_s=round(until - now, 3),
        )
        return until

    async def blocked_until(self) -> float | None:
        raw = await self.valkey.get(self.blocked_key)
        return min(float(raw), self.clock() + self.max_block_s) if raw else None


def _mentions_rate_limit(body: bytes) -> bool:
    text = body[:4096].decode("utf-8", errors="replace").lower()
    return "rate limit" in text or "abuse" in text


def governor_for(settings: Settings, valkey: Valkey, token_id: str, **overrides: object) -> RateLimitGovernor:
    """The governor of a token as configured by the ``GITHUB_*`` settings."""
    options: dict[str, object] = {
        "reserve_fraction": settings.github_reserve_fraction,
        "interactive_wait_s": settings.github_interactive_wait_s,
        "background_wait_s": settings.github_background_wait_s,
        "secondary_backoff_s": settings.github_secondary_backoff_s,
        "secondary_backoff_max_s": settings.github_secondary_backoff_max_s,
        # Held for one request, whose whole time GITHUB_TIMEOUT_S bounds, and renewed while held.
        "lock_ttl_s": settings.github_timeout_s + LOCK_MARGIN_S,
        "default_limit": TOKEN_LIMIT if settings.github_token else ANONYMOUS_LIMIT,
        **overrides,
    }
    return RateLimitGovernor(valkey, token_id, **options)  # type: ignore[arg-type]
