"""The request pipeline's outer layer: the one ASGI layer around the whole application.

Per HTTP request it does, in one pass and one ``send`` wrapper:

- the request id: a valid incoming ``X-Request-ID`` is kept, else one is made (``next_request_id``),
  put in ``scope["state"]``, in the logs (``app.core.logging.bind_request_id``) and in the answer;
- the client address (``client_address``: ``X-Forwarded-For`` only from trusted proxies);
- the security headers every answer carries unless the route set its own (``SECURITY_HEADERS``,
  ``Cache-Control: no-store`` among them);
- after the answer: the Prometheus request metrics (``app.core.metrics``), the modules' request
  observers, and one access-log line — only built when ``app.access`` logs at INFO, without the
  client's address where the route says so (``LOG_CLIENT_IP_OPT``). They all take
  the server's time: from the request's arrival to its answer's end, less the time spent waiting
  for the client (for the chunks of its body, or to take the answer's), and never the drain below.
  A client sending slowly, leaving mid-body, or reading slowly made its route look slow: twenty
  anonymous requests holding their sockets opened a "slow route" group and its alert. The access
  log adds that wait (``client_wait_ms``) when there was one. (A route awaiting ``receive`` while it
  works, as a streamed answer watching for the disconnect does, would count that work as waiting;
  only GETs stream here, and a GET's ``receive`` is not timed.)

- a body it declared but the application left unread (an answer before the body was read: a 401
  on an upload) is read to its end before the connection is given back, up to ``drain_at_most``
  bytes, the largest body a route accepts (built from the settings by ``app.main``: an upload's
  limit is ``FILE_MAX_BYTES``, a runtime setting): the server would otherwise close the connection
  under a proxy still sending it (nginx, which sends a buffered body whole before reading the
  answer, then answers 502, not the 401). Only bodies over ``DRAIN_FROM`` bytes, which socket
  buffers may not absorb, are watched.

- a body in a content coding (``Content-Encoding`` other than ``identity``) is refused when a route
  reads it: 415 with ``Accept-Encoding: identity`` (RFC 9110 15.5.16), raised by its ``receive``.
  The app decodes no request coding: a gzip body was read as malformed JSON, and a plain one
  labelled ``br`` was accepted as if the label meant nothing. Framing the server let through is
  refused the same way, as a 400 with ``Connection: close``: a ``Transfer-Encoding`` other than
  ``chunked`` (``gzip, chunked``: granian dechunked it and handed on the gzip bytes; RFC 9112 6.1
  says 501, but a 5xx would count as the server's fault in the error metrics), one beside a
  ``Content-Length`` (6.3: the two disagree on where the body ends, the shape of request smuggling),
  and two ``Content-Length`` lines. The lines of each of these headers are read as one list (RFC 9110
  5.3): ``Transfer-Encoding: gzip`` then ``Transfer-Encoding: chunked`` is ``gzip, chunked``.

- an encoded slash (``%2F``) stays in its path segment: the server decodes the path before the
  application sees it, and Litestar, which collapses empty segments, then routed
  ``/api/github/users/%2F/history`` as ``/api/github/users/history`` (a GitHub lookup of ``history``,
  charged to the caller) and ``/api/projects/%2F`` as the project list. No identifier here holds a
  slash, so a segment with one is refused as any bad segment is (``keep_encoded_slashes``: 404 for
  an id, 400 for a name). Cost: one ``in`` test of the raw path per request.

It wraps Litestar's own exception handling, so 404/405 answers (raised before any route exists)
get all of this too. What depends on the route (authentication, rate limits, compression, the
dashboard's same-origin rule) is decided once per route by ``app.core.gate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

import structlog
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from app.core.logging import bind_request_id, unbind_request_id
from app.core.metrics import RequestMetrics

access_log = structlog.get_logger("app.access")
_access_logger = logging.getLogger("app.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RequestObserver = Callable[[Scope, int, float], None]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
"""Sent with every answer unless the response already has the header (the docs pages send a full
Content-Security-Policy of their own, which already forbids framing). ``no-store``: the answers hold
a user's data (emails, a site's ingest key, the admin's user list), which a browser's or a client's own
cache would otherwise keep on disk (shared caches already skip answers to requests with
``Authorization``); what may be kept says so (the docs' and dashboard's files, a task read with its
``ETag``)."""
_SECURITY_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)
DRAIN_FROM = 64 * 1024
DRAIN_TIMEOUT_S = 10.0
MULTIPART_OVERHEAD = 64 * 1024
"""Bytes a multipart body may carry beyond its file (boundaries and part headers): an upload's body
is accepted up to ``FILE_MAX_BYTES`` + this, and drained up to it when answered before it was read."""


_ENCODED_SLASH = re.compile(rb"%2[fF]")


def keep_encoded_slashes(raw_path: bytes, path: str) -> str:
    """``path`` (the server's decoding of ``raw_path``) with each ``%2F`` of ``raw_path`` kept as the
    three characters it is, so that no decoded slash parts a segment. Each piece is decoded as granian
    decodes a path (its escapes and raw bytes alike as UTF-8, a bad sequence replaced); should the
    pieces not join to ``path``, the server's reading stands."""
    pieces = _ENCODED_SLASH.split(raw_path.split(b"?", 1)[0])
    if len(pieces) == 1:
        return path
    decoded = [urllib.parse.unquote_to_bytes(piece).decode("utf-8", "replace") for piece in pieces]
    if "/".join(decoded) != path:
        return path
    return "%2F".join(decoded)


_IDENTITY = (b"", b"identity")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""The methods whose ``receive`` is timed (waiting for a body is the client's time, not the route's)."""


def _refusing(refusal: HTTPException) -> Receive:
    """A ``receive`` that raises ``refusal`` (through the app's exception handling, as a problem) when
    the route reads the body; a route that does not read one never sees it."""

    async def receive() -> ReceiveMessage:
        raise refusal

    return receive


def _coding_refusal(coding: bytes) -> HTTPException:
    """The 415 of a body in ``coding`` (see the module's docstring)."""
    return HTTPException(
        status_code=415,
        detail=f"Content-Encoding {coding.decode('latin-1')[:40]!r} is not accepted: send the body uncoded.",
        headers={"Accept-Encoding": "identity"},
    )


def _framing_refusal(framing: bytes, declared: bytes) -> HTTPException | None:
    """The 400 of a body whose framing the server should have refused (see the module's docstring),
    or None when ``framing`` (the ``Transfer-Encoding``, its lines joined) is plain ``chunked``
    alone. Two ``Content-Length`` lines are refused too, whatever they say."""
    coding = framing.strip().lower()
    if coding == b"chunked" and not declared:
        return None
    if not framing:
        detail = "Content-Length was sent more than once: send it once."
    elif coding != b"chunked":
        detail = (
            f"Transfer-Encoding {framing.decode('latin-1')[:40]!r} is not accepted: send the body chunked."
        )
    else:
        detail = "Transfer-Encoding and Content-Length were both sent: send one."
    return HTTPException(status_code=400, detail=detail, headers={"Connection": "close"})


class _WatchedBody:
    """A request's ``receive`` that notes whether the body was read to its end."""

    __slots__ = ("_receive", "ended")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.ended = False

    async def receive(self) -> ReceiveMessage:
        message = await self._receive()
        if message["type"] == "http.request":
            self.ended = not message.get("more_body", False)
        else:  # http.disconnect: nothing more will come
            self.ended = True
        return message

    async def drain(self) -> None:
        """Read and drop what is left of a body the application did not read."""
        if self.ended:
            return
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while not self.ended:
                    await self.receive()


LOG_CLIENT_IP_OPT = "log_client_ip"
"""A route's ``opt`` key: ``False`` leaves the client's address out of its access-log lines (the
page-view ingest: its clients are a site's visitors, whose address the app promises not to keep)."""


def _logs_client_ip(scope: Scope) -> bool:
    handler = scope.get("route_handler")
    return handler is None or bool((handler.opt or {}).get(LOG_CLIENT_IP_OPT, True))


def _log_access(
    method: str,
    path: str,
    status: int,
    duration: float,
    waited: float,
    client_ip: str | None,
    user_id: int | None,
) -> None:
    """One line per answered request: with the caller's id when signed in, and the worker's pid (a
    granian worker that misbehaves is found among two or more by it)."""
    fields: dict[str, object] = {"client_wait_ms": round(waited * 1000, 2)} if waited >= 0.0005 else {}
    if user_id is not None:
        fields["user_id"] = user_id
    access_log.info(
        "request",
        method=method,
        path=path,
        status=status,
        duration_ms=round(duration * 1000, 2),
        client_ip=client_ip,
        pid=os.getpid(),
        **fields,
    )


def largest_body(app: Litestar, streamed: int) -> int:
    """The largest request body a route of ``app`` accepts, the layer's ``drain_at_most``: each HTTP
    route's Litestar limit (``MAX_BODY_BYTES``, or its own: the page-view batch's), and ``streamed``
    for the routes whose Litestar limit is lifted because they enforce their own while streaming
    (the upload's ``FILE_MAX_BYTES`` + ``MULTIPART_OVERHEAD``, a runtime setting)."""
    limits = [
        streamed if (limit := handler.resolve_request_max_body_size()) is None else limit
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
    ]
    return max(limits, default=streamed)


# -- request ids -----------------------------------------------------------------------------------


class _RequestIds:
    """32 hex characters: 64 random bits chosen once per process, then a 64-bit counter.

    Unique within a process (the counter) and across processes (the prefix is drawn again in a forked
    child), at the cost of a string format instead of ``uuid4``'s system call per request. Request ids
    are correlation handles, not secrets: being sequential within a process is harmless.
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


next_request_id = _RequestIds()


# -- client addresses ------------------------------------------------------------------------------


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``TRUSTED_PROXIES``' entries as networks. Addresses are matched with an IPv4-mapped IPv6
    address read as its IPv4 address (``_parse``), so an entry within ``::ffff:0:0/96`` is read as its
    IPv4 network, and one holding all of it trusts every IPv4 address too."""
    networks: list[IPNetwork] = []
    for entry in entries:
        network = ipaddress.ip_network(entry, strict=False)
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            mapped = network.network_address.ipv4_mapped
            assert mapped is not None
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
        elif isinstance(network, ipaddress.IPv6Network) and network.supernet_of(_MAPPED):
            networks.append(ipaddress.IPv4Network("0.0.0.0/0"))
        networks.append(network)
    return tuple(networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str | None:
    """The client's address: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is read from the right and the first address that is
    not itself a trusted proxy is the client. From anyone else the header is ignored (a client could
    otherwise choose its own rate-limit key, CVE-2025-59152). An IPv4-mapped IPv6 address (how a socket
    bound to ``::`` reports an IPv4 peer) is its IPv4 address, for the trust check and in the answer: one
    client has one spelling in the limiter's keys, the login throttle and the logs.
    """
    if peer is None:
        return None
    if not forwarded_for or not _is_trusted(peer, trusted):
        return _canonical(peer)
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return _canonical(hop if _is_ip(hop) else peer)
    return _canonical(hops[0] if hops and _is_ip(hops[0]) else peer)


_MAX_ADDRESS_LENGTH = 45  # the longest textual IPv6 address (with an embedded IPv4 part)


def _parsed(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, or None when it is none; too long to be one is none without a cache entry."""
    return _parse(address) if len(address) <= _MAX_ADDRESS_LENGTH else None


@lru_cache(maxsize=4096)
def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parsed once per distinct spelling (bounded: the least recently used go first); an IPv4-mapped
    IPv6 address is its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _canonical(address: str) -> str:
    """An IPv6 address in its one normal spelling (a mapped IPv4 one as IPv4); anything else as is."""
    if ":" not in address:
        return address
    ip = _parsed(address)
    return address if ip is None else _spelled(ip)


@lru_cache(maxsize=4096)
def _spelled(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(ip)


def _is_ip(value: str) -> bool:
    return _parsed(value) is not None


def _is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    ip = _parsed(address)
    return ip is not None and any(ip in network for network in trusted)


def client_network(address: str) -> str:
    """The key one client is limited by: an IPv4 address itself, an IPv6 address's /64.

    One IPv6 subscriber usually holds a whole /64 (RFC 6177), so keying by the full address would give
    them 2^64 separate quotas. IPv4-mapped IPv6 addresses count as their IPv4 address; anything that
    is not an address is returned unchanged.
    """
    ip = _parsed(address)
    return _ipv6_network(ip) if isinstance(ip, ipaddress.IPv6Address) else _canonical(address)


@lru_cache(maxsize=4096)
def _ipv6_network(ip: ipaddress.IPv6Address) -> str:
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


# -- the layer -------------------------------------------------------------------------------------


class RequestContextMiddleware:
    """The outer layer (see the module docstring); non-HTTP scopes pass through untouched.

    ``drain_at_most``: the largest body a route accepts; a larger one left unread is not waited for.
    """

    __slots__ = ("app", "drain_at_most", "metrics", "observers", "trusted")

    def __init__(
        self,
        app: ASGIApp,
        trusted_proxies: Iterable[str] = (),
        observers: Sequence[RequestObserver] = (),
        metrics: RequestMetrics | None = None,
        *,
        drain_at_most: int,
    ) -> None:
        self.app = app
        self.drain_at_most = drain_at_most
        self.trusted = parse_networks(trusted_proxies)
        self.observers = tuple(observers)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        raw_path = scope.get("raw_path")
        if raw_path is not None and b"%2" in raw_path:
            scope["path"] = keep_encoded_slashes(raw_path, scope["path"])
        request_id: str | None = None
        forwarded_for: str | None = None
        declared = b""
        coding = b""
        framing = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _REQUEST_ID.fullmatch(candidate) else None
            elif name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
            elif name == b"content-length":  # several lines join, as one list (RFC 9110 5.3)
                declared = declared + b", " + value if declared else value
            elif name == b"content-encoding":
                coding = coding + b", " + value if coding else value
            elif name == b"transfer-encoding":
                framing = framing + b", " + value if framing else value
        if request_id is None:
            request_id = next_request_id()
        client = scope.get("client")
        peer = client[0] if client else None
        client_ip = client_address(peer, forwarded_for, self.trusted)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        state["client_ip"] = client_ip
        token = bind_request_id(request_id)
        status = 500
        added = ((b"x-request-id", request_id.encode()), *SECURITY_HEADERS)
        waited = 0.0  # for the client: its body's chunks, or taking the answer's

        async def send_with_context(message: Message) -> None:
            nonlocal status, waited
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                extra = added
                for header_name, _ in headers:
                    if header_name in _SECURITY_NAMES:  # the route chose its own: keep it
                        present = {name for name, _ in headers}
                        extra = tuple(pair for pair in added if pair[0] not in present)
                        break
                message["headers"] = [*headers, *extra]
                await send(message)
                return
            began = time.perf_counter()
            await send(message)
            waited += time.perf_counter() - began

        length = int(declared) if len(declared) >= 5 and declared.isdigit() else 0
        coded = coding and coding.strip().lower() not in _IDENTITY  # no header: one test
        body = _WatchedBody(receive) if DRAIN_FROM < length <= self.drain_at_most else None
        refusal = _coding_refusal(coding) if coded else None
        if framing or b"," in declared:
            refusal = _framing_refusal(framing, declared) or refusal
        read = _refusing(refusal) if refusal is not None else receive if body is None else body.receive
        if scope["method"] in _BODY_METHODS:
            untimed = read

            async def read_timed() -> ReceiveMessage:
                nonlocal waited
                began = time.perf_counter()
                message = await untimed()
                waited += time.perf_counter() - began
                return message

            read = read_timed
        answered = 0.0
        try:
            await self.app(scope, read, send_with_context)
            answered = time.perf_counter()
            if body is not None:
                await body.drain()
        finally:
            duration = max((answered or time.perf_counter()) - started - waited, 0.0)
            if self.metrics is not None:
                self.metrics.observe(scope, status, duration)
            for observe in self.observers:
                observe(scope, status, duration)
            if _access_logger.isEnabledFor(logging.INFO):
                user_id = getattr(scope.get("user"), "id", None)
                logged_ip = client_ip if _logs_client_ip(scope) else None
                _log_access(scope["method"], scope["path"], status, duration, waited, logged_ip, user_id)
            unbind_request_id(token)
