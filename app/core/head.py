"""``HEAD`` wherever ``GET`` is (RFC 9110 9.1: a general-purpose server supports both; 9.3.2).

Litestar routes a ``HEAD`` only to a handler declared for it (the health probes', the file
downloads', which answer without reading what they would send); on any other route it answered 405.
``answer_head_as_get`` wraps the application: a ``HEAD`` goes in as sent, and when the answer is that
405 and its ``Allow`` names ``GET``, the answer is dropped and the request goes in again as a
``GET``, whose status and headers (``Content-Length``, ``ETag``...) are sent without its body. A
``HEAD`` has no body, so nothing is read twice; the 405 comes from the router, before any route, so
nothing was done or counted for it. Once the body would begin, the application is told that the
client has gone, so a stream (``text/event-stream``) ends there instead of running for nobody.

Only ``HEAD`` requests pay for any of this; every other request passes through one comparison.
``Allow`` and the schema name the documented methods: ``HEAD`` goes with ``GET`` unsaid.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPDisconnectEvent, Message, Receive, ReceiveMessage, Scope, Send

__all__ = ("answer_head_as_get",)

_DISCONNECT: HTTPDisconnectEvent = {"type": "http.disconnect"}
_ROUTED = ("path_template", "route_handler")
"""What Litestar's router puts in the scope that the outer layer reads after the answer: the
request metrics the template, the monitoring's latency recorder the handler too (a stream's
answers are no latency samples)."""


def answer_head_as_get(app: ASGIApp) -> ASGIApp:
    """``app``, answering a ``HEAD`` on a route that has only ``GET`` as that ``GET`` without its body."""

    async def head_as_get(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope.get("method") != "HEAD":
            await app(scope, receive, send)
            return
        refused = False

        async def send_unless_refused(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 405:
                refused = _allows_get(message.get("headers", ()))
            if not refused:
                await send(message)

        await app(scope, receive, send_unless_refused)
        if refused:
            await _as_get(app, scope, receive, send)

    return head_as_get


def _allows_get(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"allow":
            return b"GET" in (method.strip() for method in value.split(b","))
    return False


async def _as_get(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """``scope`` run as a ``GET``: its start sent as it is, its body as one empty end, after which
    every ``receive`` (one already waiting too) is the client gone."""
    ended = asyncio.Event()

    async def receive_until_ended() -> ReceiveMessage:
        if ended.is_set():
            return _DISCONNECT
        received = asyncio.ensure_future(receive())
        ending = asyncio.ensure_future(ended.wait())
        await asyncio.wait((received, ending), return_when=asyncio.FIRST_COMPLETED)
        ending.cancel()
        if received.done():
            return received.result()
        received.cancel()
        return _DISCONNECT

    async def send_without_body(message: Message) -> None:
        if ended.is_set():
            return
        if message["type"] == "http.response.body":
            ended.set()
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    as_get = {**scope, "method": "GET", "state": dict(scope.get("state") or {})}
    try:
        await app(as_get, receive_until_ended, send_without_body)  # type: ignore[arg-type]
    finally:  # what routing found, for the outer layer's metrics and observers (else: unmatched)
        for found in _ROUTED:
            if found in as_get:
                scope[found] = as_get[found]  # type: ignore[literal-required]
