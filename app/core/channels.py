"""Push to browsers: Valkey pub/sub channels for Server-Sent Events.

Any process (a request, a SAQ job in the worker process) publishes bytes to named channels with
``Broadcaster.publish`` — usually from ``uow.after_commit``, so nothing is pushed that did not commit.
The web process's ``ChannelsPlugin`` (Litestar's channels, the same pub/sub backend) subscribes SSE
streams to those channels: handlers take the plugin as the ``channels`` dependency and call
``channels.start_subscription([...])``. Pub/sub keeps no history: a reconnecting client is replayed
from PostgreSQL (``Last-Event-ID``), never from the channel.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as redis
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsPubSubBackend

SUBSCRIBER_BACKLOG = 1000


def _client(valkey_url: str) -> redis.Redis:
    return redis.Redis.from_url(valkey_url, socket_connect_timeout=2, health_check_interval=30)


def channels_plugin(valkey_url: str) -> ChannelsPlugin:
    """The web process's subscriber side. A subscriber more than ``SUBSCRIBER_BACKLOG`` messages
    behind loses its oldest, so one never blocks the others; a subscriber should take its messages
    as they arrive (the feed's streams do, whatever their client does: ``stream.py``)."""
    return ChannelsPlugin(
        backend=RedisChannelsPubSubBackend(redis=_client(valkey_url)),
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
