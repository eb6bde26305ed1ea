"""The Valkey client used for rate limits, cache, error de-duplication and locks."""

from __future__ import annotations

from valkey.asyncio import BlockingConnectionPool, Valkey

from app.config import Settings


def create_valkey(settings: Settings, url: str) -> Valkey:
    """A client whose calls fail fast (``VALKEY_TIMEOUT_S``) instead of hanging a request, on at most
    ``VALKEY_POOL_MAX`` connections per process. A call that finds them all busy waits up to
    ``VALKEY_TIMEOUT_S`` for one, then fails like an unreachable Valkey (every caller degrades on
    that). Without the bound each concurrent request held a connection of its own: 64 per worker
    under the harness's 64 connections, as many as a traffic spike brings in production."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.valkey_pool_max,
        timeout=settings.valkey_timeout_s,
        socket_timeout=settings.valkey_timeout_s,
        socket_connect_timeout=settings.valkey_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return Valkey.from_pool(pool)
