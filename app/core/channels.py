"""Push to browsers: Valkey pub/sub channels for Server-Sent Events.

Any process (a request, a SAQ job in the worker process) publishes bytes to named channels with
``Broadcaster.publish`` — usually from ``uow.after_commit``, so nothing is pushed that did not commit.
The web process's ``ChannelsPlugin`` (Litestar's channels, the same pub/sub backend) subscribes SSE
streams to those channels: handlers take the plugin as the ``channels`` dependency and call
``channels.start_subscription([...])``. Pub/sub keeps no history: a reconnecting client is replayed
from PostgreSQL (``Last-Event-ID``), never from the channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import redis.asyncio as redis
import structlog
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger("app.channels")

SUBSCRIBER_BACKLOG = 1000
RETRY_FIRST_S = 0.5
RETRY_MOST_S = 5.0
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a read raises when Valkey is gone (the channels' client is redis-py's, not valkey-py's)."""


class ReconnectingPubSubBackend(RedisChannelsPubSubBackend):
    """Litestar's pub/sub backend, whose stream of events outlives a lost Valkey.

    Litestar's one subscriber task reads ``stream_events`` with no error handling: a Valkey that
    went away (a restart, a failover) raised ``ConnectionError`` there, the task ended without a
    word, and from then on every stream learnt of a change only by its own polling (the feed's at
    its 15 s heartbeat) until the app restarted. This one logs the loss once, tries again (0.5 s,
    doubling to 5 s; redis-py reconnects and subscribes the channels again on the next read) and
    logs the recovery; notices published meanwhile are lost, as pub/sub keeps none, and each stream
    finds those changes at its next poll."""

    async def stream_events(self) -> AsyncGenerator[tuple[str, Any], None]:
        retry_s: float | None = None  # set while Valkey is lost
        while True:
            await self._has_subscribed.wait()
            try:
                message = await self._pub_sub.get_message(
                    ignore_subscribe_messages=True, timeout=self._stream_sleep_no_subscriptions
                )
            except _LOST as exc:
                if retry_s is None:
                    log.warning("channels_subscriber_lost", error=type(exc).__name__, detail=str(exc)[:200])
                    retry_s = RETRY_FIRST_S
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MOST_S)
                continue
            if retry_s is not None:
                log.info("channels_subscriber_restored")
                retry_s = None
            if message is None:
                continue
            channel: str = message["channel"].decode()
            # what Litestar's does: a channel being unsubscribed may still deliver a message
            if channel.encode() in self._pub_sub.channels.keys() - self._pub_sub.pending_unsubscribe_channels:
                yield channel, message["data"]


def _client(valkey_url: str) -> redis.Redis:
    """A lost connection is tried once more at once (a new one): after Valkey restarted, the first
    publish on each pooled connection failed ("Connection closed by server") and its notice was lost."""
    return redis.Redis.from_url(
        valkey_url,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )


def channels_plugin(valkey_url: str) -> ChannelsPlugin:
    """The web process's subscriber side. A subscriber more than ``SUBSCRIBER_BACKLOG`` messages
    behind loses its oldest, so one never blocks the others; a subscriber should take its messages
    as they arrive (the feed's streams do, whatever their client does: ``stream.py``)."""
    return ChannelsPlugin(
        backend=ReconnectingPubSubBackend(redis=_client(valkey_url)),
        arbitrary_channels_allowed=True,
        subscriber_max_backlog=SUBSCRIBER_BACKLOG,
        subscriber_backlog_strategy="dropleft",
    )


class Broadcaster:
    """The publishing side, usable in any process (no Litestar app needed)."""

    def __init__(self, valkey_url: str) -> None:
        self._client = _client(valkey_url)
        self._backend = RedisChannelsPubSubBackend(redis=self._client)

    async def publish(self, data: bytes, channels: Iterable[str]) -> None:
        await self._backend.publish(data, channels)

    async def close(self) -> None:
        await self._client.aclose()
