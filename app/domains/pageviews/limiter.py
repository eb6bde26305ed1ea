"""The per-address ingest limit: token buckets in process memory, one client per IPv4 address or
IPv6 /64.

Kept off Valkey on purpose: one round trip per view would cap ingest below its HTTP rate. The
buckets are per process, so N workers admit up to N times the configured rates (the per-site quota,
``quota.py``, is the exact cross-process bound).

Two buckets per client: ``per_minute`` tokens refilled over a minute and ``per_hour`` over an hour; a
request takes its tokens (one per view, or per 4 KiB of its body when that is more:
``PageViewService.request_tokens``) from both, or none. A bucket holds its level and when it was last
refilled, so an idle bucket is refilled on its next use, and a missing bucket is a full one:
dropping a bucket never takes tokens from anyone. A refused body is charged after the fact
(``charge``): the levels may go below zero, and the client waits until they are back above. The
buckets live in a bounded LRU cache: past ``max_addresses`` clients the least recently used one is
dropped (it starts full again), never every bucket at once. No TTL: a bucket left alone long enough
is full anyway, and a TTL cache rewritten on every take cost 5 µs a take where this costs well under
one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import LRUCache

from app.core.middleware import client_network


class LocalRateLimiter:
    def __init__(
        self,
        per_minute: int,
        per_hour: int | None = None,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.minute_rate = per_minute / 60.0
        self.minute_capacity = float(per_minute)
        per_hour = per_hour if per_hour is not None else per_minute * 60
        self.hour_rate = per_hour / 3600.0
        self.hour_capacity = float(per_hour)
        # [minute level, hour level, refilled at]
        self._buckets: LRUCache[str, list[float]] = LRUCache(max_addresses)
        self._clock = clock

    @property
    def capacity(self) -> int:
        """The most tokens one ``take`` can ever be granted (a full bucket of each kind)."""
        return int(min(self.minute_capacity, self.hour_capacity))

    def take(self, address: str, tokens: int = 1) -> float:
        """0 if admitted, else the seconds until ``tokens`` are available (nothing taken then)."""
        bucket = self._refilled(address)
        if bucket[0] >= tokens and bucket[1] >= tokens:
            bucket[0] -= tokens
            bucket[1] -= tokens
            return 0.0
        return self._wait(bucket, tokens)

    def wait(self, address: str, tokens: int = 1) -> float:
        """0 if ``tokens`` are available, else the seconds until they are; takes nothing."""
        bucket = self._refilled(address)
        return 0.0 if bucket[0] >= tokens and bucket[1] >= tokens else self._wait(bucket, tokens)

    def charge(self, address: str, tokens: int) -> None:
        """Take ``tokens`` for work already done (a refused body), into debt if fewer are left (down
        to minus a full bucket): the client pays for it by waiting, as it would have for views."""
        bucket = self._refilled(address)
        bucket[0] = max(bucket[0] - tokens, -self.minute_capacity)
        bucket[1] = max(bucket[1] - tokens, -self.hour_capacity)

    def _refilled(self, address: str) -> list[float]:
        now = self._clock()
        key = client_network(address) if ":" in address else address
        try:
            bucket = self._buckets[key]
        except KeyError:
            bucket = self._buckets[key] = [self.minute_capacity, self.hour_capacity, now]
        elapsed = now - bucket[2]
        bucket[0] = min(self.minute_capacity, bucket[0] + elapsed * self.minute_rate)
        bucket[1] = min(self.hour_capacity, bucket[1] + elapsed * self.hour_rate)
        bucket[2] = now
        return bucket

    def _wait(self, bucket: list[float], tokens: int) -> float:
        return max((tokens - bucket[0]) / self.minute_rate, (tokens - bucket[1]) / self.hour_rate)
