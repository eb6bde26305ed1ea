"""``JSONBytesResponse`` is an ``ASGIResponse`` in every respect the framework can see."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import MediaType
from litestar.response.base import ASGIResponse

from app.core.responses import KEEP_ALIVE, JSONBytesResponse

CASES = [(b'{"accepted":1}', 202), (b"[]", 200), (b"", 200), ('{"name":"café"}'.encode(), 200)]


def _state(response: ASGIResponse) -> dict[str, Any]:
    slots = {name for kind in type(response).__mro__ for name in getattr(kind, "__slots__", ())}
    assert slots and not hasattr(response, "__dict__")
    state = {name: getattr(response, name) for name in slots}
    state["headers"] = list(response.headers.headers)
    return state


async def _sent(response: ASGIResponse) -> list[Any]:
    events: list[Any] = []

    async def send(message: Any) -> None:
        events.append(message)

    async def receive() -> Any:  # pragma: no cover - never called for a plain body
        raise AssertionError

    await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
    return events


@pytest.mark.parametrize(("body", "status"), CASES)
def test_it_holds_what_the_framework_response_holds(body: bytes, status: int) -> None:
    framework = ASGIResponse(body=body, status_code=status, media_type=MediaType.JSON)
    assert _state(JSONBytesResponse(body, status_code=status)) == _state(framework)


@pytest.mark.parametrize(("body", "status"), CASES)
async def test_it_sends_what_the_framework_response_sends(body: bytes, status: int) -> None:
    framework = ASGIResponse(body=body, status_code=status, media_type=MediaType.JSON)
    assert await _sent(JSONBytesResponse(body, status_code=status)) == await _sent(framework)


def test_the_streams_keep_alive_is_a_comment_alone() -> None:
    """Upstream review: the refresh stream's keep-alive also sent ``data:`` (Litestar's default,
    an empty string), which a browser's EventSource delivers as an empty message every 15 s."""
    assert KEEP_ALIVE.encode() == b": keep-alive\r\n\r\n"
