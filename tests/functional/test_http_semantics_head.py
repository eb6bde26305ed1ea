"""A probe's ``HEAD`` answers its ``GET``'s headers without the body (RFC 9110 9.3.2 and 8.6: a
``HEAD``'s ``Content-Length`` is the ``GET``'s, or absent).

The HTTP-semantics review found ``Content-Length: 4`` on both probes' ``HEAD``: Litestar serialised
the handlers' ``None`` body as ``null``, while the ``GET``s' bodies are 15 and ~330 bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.config import Settings
from tests.factories import Client, generous_client


@pytest.fixture(scope="module")
async def probed(settings: Settings) -> AsyncIterator[Client]:
    """The app with one readiness answer for a minute: a ``GET`` and the next ``HEAD`` share it (its
    latencies, so its length, change with every check)."""
    async for client in generous_client(settings, health_ready_shared_s=60):
        yield client


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
async def test_a_probe_s_head_is_its_get_without_the_body(probed: Client, path: str) -> None:
    got = await probed.get(path, headers={"Accept-Encoding": "identity"})
    head = await probed.head(path, headers={"Accept-Encoding": "identity"})
    assert (head.status_code, head.content) == (got.status_code, b"")
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    assert head.headers.get_list("content-length") == [head.headers["content-length"]]
    assert head.headers.get_list("content-type") == ["application/json"]
