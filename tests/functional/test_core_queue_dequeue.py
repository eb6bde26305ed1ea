"""An idle worker slot's wait for a job ends before the queues' client gives its connection up.

SAQ's default wait (a blocking ``BLMOVE`` with no timeout) outlasted the client's socket timeout: the
standalone worker's every idle slot raised ``TimeoutError`` after 5 s, silently, and redis-py dropped
its connection (a worker's 40 slots reconnected 8 times a second). ``build_saq_config`` gives every
worker, in process or standalone, ``DEQUEUE_TIMEOUT_S``.
"""

from __future__ import annotations

import pytest
from litestar_saq import SAQPlugin
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.queues import build_saq_config
from app.core.services import Services
from app.modules import MODULES


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "standalone"])
async def test_an_idle_slot_asks_again_on_the_same_connection(
    settings: Settings, valkey: Valkey, in_process: bool
) -> None:
    assert settings.valkey_url
    services = Services(settings, MODULES)
    config = build_saq_config(services, settings.valkey_url, run_workers_in_process=in_process)
    try:
        for worker in SAQPlugin(config).get_workers().values():
            before = (await valkey.info("stats"))["total_connections_received"]
            assert await worker.queue.dequeue(worker.dequeue_timeout) is None  # was: TimeoutError after 5 s
            assert await worker.queue.dequeue(worker.dequeue_timeout) is None
            after = (await valkey.info("stats"))["total_connections_received"]
            assert after - before <= 1, "the slot's connection was given up between two waits"
    finally:
        for queue in config.queue_instances.values():  # type: ignore[union-attr]
            await queue.redis.aclose()  # type: ignore[union-attr]
