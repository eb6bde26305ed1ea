"""Ingest key → site id, for the hot path: no query per view, none per unknown key either.

- A known key is answered from a bounded in-process cache and re-checked after ``known_ttl_s``, while
  the sites domain's mirror of refused keys is current (``SiteService.refusals_live``); while its
  listener is down every key is looked up (a rotated key's site lives on, so the sink's write-time
  check by site would not refuse it).
- A deleted site is refused from its deleting commit on: every request checks the key against the
  sites domain's mirror of recent deletions (``SiteService.is_deleted``, kept current by
  LISTEN/NOTIFY), and the sink's write checks the sites again in its own snapshot.
- Unknown keys are looked up together: every key that is not cached waits for the next lookup, and
  one lookup (one statement, at most ``lookup_batch`` keys, one at a time per process) answers all
  the keys that arrived while the previous one ran. A flood of random keys therefore costs a
  statement per batch of keys, not per key, and holds at most one pooled connection per process.
  Keys found absent are remembered for ``negative_ttl_s``.

Both caches are bounded (``cachetools``): when full, the least recently used entry makes room,
never everything at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from itertools import islice

import structlog
from cachetools import TTLCache

from app.core.errors import ServiceUnavailableError, dependency_down, report_dependency_down
from app.domains.sites.services import SiteService

log = structlog.get_logger("app.pageviews.keys")


class UnknownKeyError(Exception):
    """The key belongs to no (live) site."""


class SiteKeys:
    def __init__(
        self,
        sites: SiteService,
        *,
        known_ttl_s: float = 60.0,
        negative_ttl_s: float = 30.0,
        max_keys: int = 100_000,
        max_unknown: int = 100_000,
        lookup_batch: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sites = sites
        self._known: TTLCache[str, int] = TTLCache(max_keys, known_ttl_s, timer=clock)
        self._unknown: TTLCache[str, bool] = TTLCache(max_unknown, negative_ttl_s, timer=clock)
        self._pending: dict[str, asyncio.Future[int | None]] = {}
        self._lookup: asyncio.Task[None] | None = None
        self.lookup_batch = lookup_batch
        self.lookups = 0  # statements issued (a metric for tests and the curious)

    async def site_id(self, key: str) -> int:
        """The live site of ``key``; ``UnknownKeyError`` otherwise."""
        if self._sites.is_deleted(key):
            self._known.pop(key, None)
            raise UnknownKeyError(key)
        if self._sites.refusals_live:  # else a key rotated or deleted meanwhile may still be cached
            try:
                return self._known[key]  # indexing: a third of ``get``'s cost, on every ingest request
            except KeyError:
                pass
        return await self._look_up(key)

    def forget_sites(self, site_ids: frozenset[int]) -> None:
        """Drop the cached keys of sites the sink found deleted (rare: a scan of the cache)."""
        for key, site in list(self._known.items()):
            if site in site_ids:
                self._known.pop(key, None)

    async def _look_up(self, key: str) -> int:
        if key in self._unknown:
            raise UnknownKeyError(key)
        future = self._pending.get(key)
        if future is None:
            future = self._pending[key] = asyncio.get_running_loop().create_future()
            if self._lookup is None:
                self._lookup = asyncio.create_task(self._look_up_pending(), name="site-key-lookup")
        site = await asyncio.shield(future)  # a cancelled request must not cancel the others' answer
        if site is None:
            raise UnknownKeyError(key)
        return site

    async def _look_up_pending(self) -> None:
        """Answer every pending key, ``lookup_batch`` keys per statement, until none is left."""
        try:
            while self._pending:
                keys = list(islice(self._pending, self.lookup_batch))
                futures = [self._pending.pop(key) for key in keys]
                self.lookups += 1
                try:
                    found = await self._sites.ids_for_keys(keys)
                except Exception as exc:  # the database is unreachable (or a bug): these requests get a 503
                    if dependency_down(exc):
                        report_dependency_down(exc, "page-view-keys", keys=len(keys))  # both ingest routes
                    else:
                        log.exception("site_key_lookup_failed", keys=len(keys))
                    for future in futures:
                        if not future.done():
                            future.set_exception(_unavailable(exc))
                            future.exception()  # retrieved: its requests may all have gone
                    continue
                for key, future in zip(keys, futures, strict=True):
                    site = found.get(key)
                    if site is None:
                        self._unknown[key] = True
                    else:
                        self._known[key] = site
                    if not future.done():
                        future.set_result(site)
        finally:
            self._lookup = None


def _unavailable(cause: Exception) -> ServiceUnavailableError:
    error = ServiceUnavailableError("The site key could not be checked; retry.", headers={"Retry-After": "1"})
    error.__cause__ = cause
    return error
