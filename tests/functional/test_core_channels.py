"""Push channels: what any process publishes reaches the web process's subscribers, and nothing else."""

from __future__ import annotations

import asyncio

from litestar import Litestar

from app.core.channels import Broadcaster, channels_plugin


async def test_a_published_message_reaches_a_subscriber_of_that_channel_only(valkey_url: str) -> None:
    channels = channels_plugin(valkey_url)
    app = Litestar(plugins=[channels])  # the plugin's listener runs in this (the test's) event loop
    broadcaster = Broadcaster(valkey_url)
    try:
        async with app.lifespan(), channels.start_subscription(["test:a"]) as subscriber:
            received: list[bytes] = []

            async def first() -> None:
                async for message in subscriber.iter_events():
                    received.append(message)
                    return

            waiter = asyncio.create_task(first())
            # Publish until the subscription is live (pub/sub drops messages sent before it).
            for _ in range(400):
                await broadcaster.publish(b"not for a", ["test:b"])
                await broadcaster.publish(b"hello", ["test:a"])
                done, _ = await asyncio.wait({waiter}, timeout=0.05)
                if done:
                    break
            assert received == [b"hello"]
    finally:
        await broadcaster.close()
