"""The outer layer measures the server's time (``app.core.middleware``): from a request's arrival to
its answer's end, less the time spent waiting for the client (its body's chunks, or taking the
answer's), and never the drain of a body left unread. A client sending slowly, leaving mid-body or
reading slowly made its route look slow to the metrics and to error monitoring, whose "slow route"
group and alert twenty anonymous requests could open.

The clock is a fake that moves only when the client is waited for (the ASGI ``receive`` and ``send``
below) or when a route works (``/work``): the durations are exact, whatever the machine's load."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.exceptions import NotAuthorizedException

from app.core.errors import exception_handlers
from app.core.logging import configure_logging
from app.core.middleware import DRAIN_FROM, RequestContextMiddleware
from app.core.routing import StrictJSONRequest
from tests.factories import http_scope
from tests.functional.test_core_request_context import access_log

__all__ = ["access_log"]  # the fixture, used by name

CLIENT_CHUNK_S = 10.0
CLIENT_READ_S = 5.0
WORK_S = 2.0


class FakeClock:
    now = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


CLOCK = FakeClock()


@post("/echo", status_code=200)
async def echo(request: Request[Any, Any, Any]) -> dict[str, int]:
    return {"length": len(await request.body())}


@post("/early", request_max_body_size=10 * DRAIN_FROM)
async def early(request: Request[Any, Any, Any]) -> None:
    raise NotAuthorizedException("No token.")


@get("/work")
async def work() -> dict[str, bool]:
    CLOCK.advance(WORK_S)
    return {"worked": True}


APP = Litestar([echo, early, work], request_class=StrictJSONRequest, exception_handlers=exception_handlers)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    configure_logging()  # as the app does: the access log's lines through the standard library
    monkeypatch.setattr(time, "perf_counter", lambda: CLOCK.now)
    return CLOCK


async def serve(
    method: str, path: str, chunks: list[bytes], *headers: tuple[bytes, bytes], then_leave: bool = False
) -> tuple[int, float, dict[str, Any]]:
    """The status, the duration the layer gave its observers, and the answer's JSON, for a client
    that takes ``CLIENT_CHUNK_S`` to send each chunk of its body (and leaves after them when
    ``then_leave``) and ``CLIENT_READ_S`` to take each chunk of the answer."""
    observed: list[tuple[int, float]] = []
    layer = RequestContextMiddleware(
        APP,
        observers=[lambda scope, status, duration: observed.append((status, duration))],
        drain_at_most=10**9,
    )
    pending = [
        {"type": "http.request", "body": chunk, "more_body": then_leave or i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    answer = bytearray()

    async def receive() -> dict[str, Any]:
        CLOCK.advance(CLIENT_CHUNK_S)
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            CLOCK.advance(CLIENT_READ_S)
            answer.extend(message.get("body", b""))

    scope = http_scope(method, path, "", *headers)
    await layer(scope, receive, send)  # type: ignore[arg-type]
    ((status, duration),) = observed
    return status, duration, json.loads(answer)


def logged(entries: list[dict[str, Any]]) -> dict[str, Any]:
    (line,) = [entry for entry in entries if entry["event"] == "request"]
    return line


async def test_a_slowly_sent_body_and_a_slowly_read_answer_are_the_clients_time(
    clock: FakeClock, access_log: list[dict[str, Any]]
) -> None:
    status, duration, answer = await serve("POST", "/echo", [b"ab", b"cd", b"ef"])
    assert (status, answer) == (200, {"length": 6})
    assert duration == 0.0
    line = logged(access_log)
    assert (line["duration_ms"], line["client_wait_ms"]) == (0.0, (3 * CLIENT_CHUNK_S + CLIENT_READ_S) * 1000)


async def test_the_routes_own_work_is_its_time(clock: FakeClock, access_log: list[dict[str, Any]]) -> None:
    status, duration, _ = await serve("GET", "/work", [])
    assert (status, duration) == (200, WORK_S)
    line = logged(access_log)
    assert (line["duration_ms"], line["client_wait_ms"]) == (WORK_S * 1000, CLIENT_READ_S * 1000)


async def test_draining_an_unread_body_after_the_answer_is_not_counted(
    clock: FakeClock, access_log: list[dict[str, Any]]
) -> None:
    size = 4 * DRAIN_FROM
    chunks = [b"x" * DRAIN_FROM] * 4
    status, duration, answer = await serve("POST", "/early", chunks, (b"content-length", str(size).encode()))
    assert (status, answer["type"]) == (401, "/problems/unauthorized")
    assert duration == 0.0
    assert logged(access_log)["client_wait_ms"] == CLIENT_READ_S * 1000  # the drain's reads are not waits


async def test_a_client_leaving_mid_body_is_counted_without_its_wait(
    clock: FakeClock, access_log: list[dict[str, Any]]
) -> None:
    status, duration, answer = await serve("POST", "/echo", [b'{"a": '], then_leave=True)
    assert (status, answer["type"], duration) == (400, "/problems/client-disconnected", 0.0)
    assert logged(access_log)["status"] == 400
