"""The Valkey client used for rate limits, cache, error de-duplication and locks."""

from __future__ import annotations

from valkey.asyncio import Valkey

from app.config import Settings


def create_valkey(settings: Settings, url: str) -> Valkey:
    """A client whose calls fail fast (``VALKEY_TIMEOUT_S``) instead of hanging a request."""
    client: Valkey = Valkey.from_url(
        url,
        socket_timeout=settings.valkey_timeout_s,
        socket_connect_timeout=settings.valkey_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return client
