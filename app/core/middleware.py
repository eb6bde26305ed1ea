"""Request context: request id, client address, one access-log line per request.

A plain ASGI middleware (not a Litestar ``AbstractMiddleware``) because it wraps every request,
the page-view ingest hot path included.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

access_log = structlog.get_logger("app.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str | None:
    """The client's address: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is read from the right and the first address that is
    not itself a trusted proxy is the client. From anyone else the header is ignored (a client could
    otherwise choose its own rate-limit key, CVE-2025-59152).
    """
    if peer is None or not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop if _is_ip(hop) else peer
    return hops[0] if hops and _is_ip(hops[0]) else peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class RequestContextMiddleware:
    """Binds ``request_id`` and ``client_ip`` for the request and logs it once it is answered."""

    def __init__(
        self,
        app: ASGIApp,
        trusted_proxies: Iterable[str] = (),
        observers: Sequence[Callable[[Scope, int, float], None]] = (),
    ) -> None:
        self.app = app
        self.trusted = parse_networks(trusted_proxies)
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        forwarded_for = None
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _REQUEST_ID.match(candidate) else None
            elif name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
        request_id = request_id or uuid.uuid4().hex
        peer = scope["client"][0] if scope.get("client") else None
        client_ip = client_address(peer, forwarded_for, self.trusted)
        state = scope.setdefault("state", {})  # type: ignore[typeddict-item]
        state["request_id"] = request_id
        state["client_ip"] = client_ip
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        started = time.perf_counter()
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            for observe in self.observers:
                observe(scope, status, duration)
            access_log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(duration * 1000, 2),
                client_ip=client_ip,
            )
