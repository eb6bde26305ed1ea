"""The per-site ingest quota: views per minute and per UTC day, counted in Valkey, spent from leases.

One Valkey round trip per view would cap ingest below its HTTP rate (benchmarks/README.md), so each
process *leases* views for a site: one atomic Lua script takes up to ``n`` from both windows'
counters (never more than either has left) and the process spends them locally. Hence:

- never over quota across processes: a view is admitted only with a token Valkey counted in both
  windows;
- a refused request spends nothing; a batch is admitted whole or refused whole (429, Retry-After
  until the exhausted window resets);
- a lease lasts until the end of its minute window; its unspent tokens are then given back to the
  day's counter with the process's next lease of that site (so an idle lease costs the site nothing
  of its daily quota);
- the lease size adapts per site: it starts at ``MIN_LEASE``, doubles while the process spends a
  lease within ``FAST_S``, falls back after ``IDLE_S`` without use, and is at most ``1/LEASE_FRACTION``
  of the minute quota (``MAX_LEASE`` at most). The price of leasing: a site may be refused up to
  (processes x lease) views early in a minute, never admitted late.

Valkey unreachable: the views are admitted (fail-open, counted by ``app_page_view_quota_fail_open``,
a warning at most once per ``warn_interval_s``), and the process does not ask again for that site
for ``FAIL_OPEN_S``: a Valkey that hangs costs one timeout per site per second, not one per request.

Local state is bounded: at most ``max_sites`` leases per process, least recently used first out (an
evicted lease's tokens are lost, which only ever refuses early).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import structlog
from cachetools import LRUCache
from prometheus_client import Counter
from valkey.asyncio import Valkey

from app.core.errors import TooManyRequestsError
from app.core.logging import OncePerInterval

log = structlog.get_logger("app.pageviews.quota")

MIN_LEASE = 16
MAX_LEASE = 8192
LEASE_FRACTION = 16
FAST_S = 1.0
IDLE_S = 5.0
DENIAL_CACHE_S = 1.0
FAIL_OPEN_S = 1.0

FAIL_OPEN = Counter(
    "app_page_view_quota_fail_open",
    "Page views admitted without a quota check because Valkey was unreachable",
)
OVER_QUOTA = Counter("app_page_views_over_quota", "Page views refused by their site's quota")

# KEYS[1] = the site's base key. ARGV = minute quota, day quota, views wanted, unspent views to give
# back to the day counter, the day window (start, s) they were counted in. Returns {granted, minute
# count, day count, ms until the minute window resets, ms until the day window resets, day window}.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local qm, qd, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local back, back_day = tonumber(ARGV[4]), tonumber(ARGV[5])
local sm, sd = now - now % 60, now - now % 86400
local km, kd = KEYS[1] .. ':m:' .. sm, KEYS[1] .. ':d:' .. sd
if back > 0 and back_day == sd and redis.call('EXISTS', kd) == 1 then
  if redis.call('DECRBY', kd, back) < 0 then redis.call('SET', kd, 0, 'KEEPTTL') end
end
local counts = redis.call('MGET', km, kd)
local cm, cd = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
local rm, rd = (sm + 60) * 1000 - now_ms, (sd + 86400) * 1000 - now_ms
local grant = math.min(want, qm - cm, qd - cd)
if grant <= 0 then
  return {0, cm, cd, rm, rd, sd}
end
cm = redis.call('INCRBY', km, grant)
if cm == grant then redis.call('EXPIRE', km, 61) end
cd = redis.call('INCRBY', kd, grant)
if cd == grant then redis.call('EXPIRE', kd, sd + 86400 - now + 1) end
return {grant, cm, cd, rm, rd, sd}
"""


class SiteQuotaExceededError(TooManyRequestsError):
    slug = "site-quota-exceeded"
    title = "The site's page-view quota is used up"


class _Lease:
    __slots__ = (
        "block",
        "day",
        "denied_until",
        "expires_at",
        "leased_at",
        "number",
        "open_until",
        "pending",
        "retry_at",
        "tokens",
        "unspent",
        "unspent_day",
    )

    def __init__(self) -> None:
        self.tokens = 0
        self.number = 0
        self.expires_at = 0.0
        self.day = 0
        self.block = MIN_LEASE
        self.leased_at = float("-inf")
        self.denied_until = 0.0
        self.retry_at = 0.0
        self.open_until = 0.0
        self.unspent = 0
        self.unspent_day = 0
        self.pending: asyncio.Future[None] | None = None


class SiteQuota:
    def __init__(
        self,
        valkey: Valkey,
        per_minute: int,
        per_day: int,
        *,
        prefix: str = "pvq",
        max_sites: int = 100_000,
        warn_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.per_day = per_day
        self.prefix = prefix
        self.max_lease = max(1, min(MAX_LEASE, per_minute // LEASE_FRACTION))
        self._script = valkey.register_script(_LEASE)
        self._leases: LRUCache[int, _Lease] = LRUCache(maxsize=max_sites)
        self._clock = clock
        self._warnings = OncePerInterval(warn_interval_s)

    @property
    def capacity(self) -> int:
        """The most views of one site a ``take`` can ever be granted (a whole minute's quota, or day's)."""
        return min(self.per_minute, self.per_day)

    async def take(self, site_id: int, count: int) -> int:
        """Spend ``count`` views of the site's quota, or raise ``SiteQuotaExceededError`` having
        spent nothing. Returns the lease the views came from (for ``refund``)."""
        lease = self._leases.get(site_id)
        if lease is None:
            lease = self._leases[site_id] = _Lease()
        asked = False
        while True:
            now = self._clock()
            if lease.tokens and now >= lease.expires_at:  # its minute is over: keep for the day count
                lease.unspent, lease.unspent_day, lease.tokens = lease.tokens, lease.day, 0
            if lease.tokens >= count:
                lease.tokens -= count
                return lease.number
            if now < lease.open_until:
                return 0
            if now < lease.denied_until or asked:
                OVER_QUOTA.inc(count)
                retry_after = max(1, math.ceil(lease.retry_at - now))
                raise SiteQuotaExceededError(
                    "This site has used its page-view quota; retry later.",
                    headers={"Retry-After": str(retry_after)},
                )
            if lease.pending is not None:
                await asyncio.shield(lease.pending)  # another request of this process is leasing
                continue
            await self._renew(site_id, lease, count)
            if lease.tokens >= count:  # spent at once: its minute may have ended during the call
                lease.tokens -= count
                return lease.number
            asked = True

    def refund(self, site_id: int, count: int, lease_number: int) -> None:
        """Give back the views of a request that was not stored (to the lease they came from only)."""
        lease = self._leases.get(site_id)
        if (
            lease is not None
            and lease_number
            and lease.number == lease_number
            and self._clock() < lease.expires_at
        ):
            lease.tokens += count

    async def _renew(self, site_id: int, lease: _Lease, count: int) -> None:
        sent = self._clock()
        if sent - lease.leased_at > IDLE_S:
            lease.block = MIN_LEASE
        elif sent - lease.leased_at < FAST_S:
            lease.block = min(lease.block * 2, self.max_lease)
        want = max(lease.block, count - lease.tokens)
        pending = lease.pending = asyncio.get_running_loop().create_future()
        try:
            result = await self._script(
                keys=[f"{self.prefix}:{site_id}"],
                args=[self.per_minute, self.per_day, want, lease.unspent, lease.unspent_day],
            )
        except Exception as exc:  # Valkey unreachable or failing: admit, say so, ask again later
            # From the failure, not the call: a call that timed out took FAIL_OPEN_S itself, and the
            # window dated from its start had closed before ``take`` looked (a 429 "over quota").
            lease.open_until = self._clock() + FAIL_OPEN_S
            FAIL_OPEN.inc(count)
            self._warn(exc)
            return
        finally:
            lease.pending = None
            pending.set_result(None)
        granted, _, day_count, minute_reset_ms, day_reset_ms, day = (int(value) for value in result)
        lease.unspent = 0
        lease.open_until = 0.0
        minute_ends = sent + minute_reset_ms / 1000
        if granted:
            lease.tokens += granted
            lease.number += 1
            lease.expires_at = minute_ends
            lease.day = day
            lease.leased_at = sent
        if lease.tokens < count:
            day_used_up = day_count + count - lease.tokens > self.per_day
            lease.retry_at = sent + day_reset_ms / 1000 if day_used_up else minute_ends
            lease.denied_until = min(sent + DENIAL_CACHE_S, lease.retry_at)

    def _warn(self, exc: Exception) -> None:
        if self._warnings.due():
            log.warning("page_view_quota_unavailable", error=type(exc).__name__)
