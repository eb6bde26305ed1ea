"""``StrictJSONRequest`` reads a body from ASGI's ``receive`` itself (``app.core.routing``): the same
answers as Litestar's ``Request.body``/``stream`` (chunks joined, the route's limit before and while
reading, a bad Content-Length refused, the body read once), and a client that leaves mid-body is
named (400 ``client-disconnected``) instead of Litestar's 500."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, Request, post

from app.core.errors import exception_handlers
from app.core.routing import StrictJSONRequest
from tests.factories import drive_asgi, http_scope

LIMIT = 10


@post("/body", request_max_body_size=LIMIT, status_code=200)
async def read_twice(request: Request[Any, Any, Any]) -> dict[str, Any]:
    first = await request.body()
    again = await request.body()
    after = [chunk async for chunk in request.stream()]
    return {"body": first.decode(), "same": first is again, "stream_after": b"".join(after).decode()}


@post("/stream", request_max_body_size=LIMIT, status_code=200)
async def read_chunks(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"chunks": [chunk.decode() async for chunk in request.stream()]}


@post("/unlimited", request_max_body_size=None, status_code=200)
async def read_unlimited(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"length": len(await request.body())}


APP = Litestar(
    [read_twice, read_chunks, read_unlimited],
    request_class=StrictJSONRequest,
    exception_handlers=exception_handlers,
)


async def call(
    path: str, chunks: list[bytes], *headers: tuple[bytes, bytes], then_disconnect: bool = False
) -> tuple[int, Any, int]:
    """The answer to ``chunks`` sent as one body (the last without ``more_body`` unless the client
    disconnects after them), and how many ``receive`` calls the app made."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": then_disconnect or i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    return await drive_asgi(APP, http_scope("POST", path, "", *headers), messages)


async def test_chunks_are_joined_and_the_body_is_read_once() -> None:
    status, answer, calls = await call("/body", [b"ab", b"", b"cd"])
    assert (status, answer) == (200, {"body": "abcd", "same": True, "stream_after": "abcd"})
    assert calls == 3


async def test_the_stream_yields_each_chunk_as_it_comes() -> None:
    status, answer, _ = await call("/stream", [b"ab", b"", b"cd"])
    assert (status, answer) == (200, {"chunks": ["ab", "cd"]})


@pytest.mark.parametrize("path", ["/body", "/stream"])
async def test_a_declared_length_over_the_limit_is_refused_before_reading(path: str) -> None:
    status, answer, calls = await call(path, [b"x" * 11], (b"content-length", b"11"))
    assert (status, answer["type"], calls) == (413, "/problems/payload-too-large", 0)


@pytest.mark.parametrize("path", ["/body", "/stream"])
async def test_bytes_over_the_limit_are_refused_while_reading(path: str) -> None:
    status, answer, calls = await call(path, [b"x" * 6, b"x" * 5, b"never read"])
    assert (status, answer["type"], calls) == (413, "/problems/payload-too-large", 2)


async def test_a_body_at_the_limit_is_read() -> None:
    status, answer, _ = await call("/body", [b"x" * 4, b"x" * 6], (b"content-length", b"10"))
    assert (status, answer["body"]) == (200, "x" * 10)


async def test_a_route_without_a_limit_reads_any_length() -> None:
    status, answer, _ = await call("/unlimited", [b"x" * 1000] * 5, (b"content-length", b"5000"))
    assert (status, answer) == (200, {"length": 5000})


async def test_an_unreadable_content_length_is_a_400() -> None:
    status, answer, calls = await call("/body", [b"ab"], (b"content-length", b"two"))
    assert (status, answer["type"], calls) == (400, "/problems/bad-request", 0)


@pytest.mark.parametrize("path", ["/body", "/stream"])
async def test_a_client_that_leaves_mid_body_is_named(path: str) -> None:
    status, answer, _ = await call(path, [b"ab"], then_disconnect=True)
    assert (status, answer["type"]) == (400, "/problems/client-disconnected")
