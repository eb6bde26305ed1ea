"""The SSE notices' subscriber outlives a restart of Valkey (``app.core.channels``): Litestar's one
subscriber task ended at the first ``ConnectionError``, without a word, and no notice reached any
stream again until the app restarted."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import ConnectionError as RedisConnectionError

from app.core.channels import Broadcaster, channels_plugin
from tests.factories import captured_logs, wait_until
from tests.valkey_control import ControlledValkey

CHANNEL = "test-reconnect"
WAIT_S = 30.0
"""Generous: a notice arrives in milliseconds; the subscriber tries again every 5 s at the most."""


async def test_notices_reach_a_subscriber_again_after_valkey_restarts(
    controlled_valkey: ControlledValkey,
) -> None:
    broadcaster = Broadcaster(controlled_valkey.url)
    try:
        with captured_logs(logging.INFO) as logs:
            async with (
                channels_plugin(controlled_valkey.url) as plugin,
                plugin.start_subscription([CHANNEL]) as subscriber,
            ):
                events = subscriber.iter_events()
                await broadcaster.publish(b"before", [CHANNEL])
                assert await asyncio.wait_for(anext(events), WAIT_S) == b"before"

                controlled_valkey.stop()

                async def lost() -> bool:
                    return bool(logs.events("channels_subscriber_lost"))

                await wait_until(lost, WAIT_S, "the subscriber has noticed")
                controlled_valkey.start()
                pending = asyncio.ensure_future(anext(events))
                async with asyncio.timeout(WAIT_S):
                    while not pending.done():  # published until the subscriber is back
                        with contextlib.suppress(RedisConnectionError):
                            await broadcaster.publish(b"after", [CHANNEL])
                        await asyncio.wait([pending], timeout=0.2)
                received = pending.result()
    finally:
        await broadcaster.close()

    assert received == b"after"
    assert len(logs.events("channels_subscriber_lost")) == 1, "once, not once per try"
    assert len(logs.events("channels_subscriber_restored")) == 1
