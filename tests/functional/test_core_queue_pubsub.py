"""The queues' job-update listener outlasts the client's socket timeout (``app.core.sweep``).

The sweep waits on it after aborting a job. SAQ's listener blocked on its pub/sub connection until the
client's socket timeout dropped it; a wait that ended in that moment failed (``AttributeError`` on the
dropped connection), and the sweep stopped between the job's abort and its retry.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from saq import Status
from saq.queue.redis import RedisQueue

from app.core import queues


async def test_a_listen_longer_than_the_socket_timeout_keeps_its_connection_and_ends_by_its_own(
    valkey_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A quiet second of listening across a socket timeout of 0.3 s: no read cut, nothing logged
    (each cut logged ``Failed to consume message`` with its traceback), and the wait ends with its
    own ``TimeoutError``."""
    monkeypatch.setattr(queues, "QUEUE_SOCKET_TIMEOUT_S", 0.3)
    built = queues.build_queues(valkey_url)["default"]
    assert isinstance(built, RedisQueue)
    queue = type(built)(built.redis, name=f"pubsub-{uuid.uuid4().hex[:8]}-q")
    job = await queue.enqueue("relay_outbox")
    assert job is not None
    try:
        with caplog.at_level(logging.DEBUG, logger="saq"), pytest.raises(TimeoutError):
            await queue.listen([job.key], lambda key, status: status == Status.COMPLETE, timeout=1.0)
    finally:
        await queue.disconnect()
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
