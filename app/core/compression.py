"""Response compression that never re-encodes a response which is already encoded.

Litestar's ``CompressionMiddleware`` picks the encoding from the request alone and then compresses
whatever the handler sends, overwriting ``Content-Encoding``. A response that is already encoded
(litestar-saq's dashboard serves ``*.js.gz`` with ``Content-Encoding: gzip``) was compressed a second
time and labelled ``br``: a browser decoded the brotli layer and ran gzip bytes as JavaScript.
Here the decision waits for the response's own headers, as other servers' compression layers do
(nginx, Express' ``compression``, ASP.NET): already encoded means passed through untouched.

A strong ``ETag`` of an answer it encodes is given the coding (``coded_etag``: ``"7"`` sent as brotli
is ``"7-br"``): RFC 9110 8.8.3 wants a strong validator to differ between representations whose
content codings differ (Apache's mod_deflate does the same, ``"…-gzip"``), since their bytes do.
A precondition reads each form as the version it names (``app.core.preconditions.names_version``).
Weak tags are left as they are (a weak validator may be shared by both). An answer this layer does
not encode (under ``minimum_size``, already encoded, or a 304 Not Modified: no body to encode)
keeps its tag: a route answering 304s names the tag itself (a task's GET names the one its request
revalidated, ``app.core.preconditions.held_copy``; file downloads are not compressed).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

from litestar.enums import CompressionEncoding
from litestar.middleware.compression import CompressionMiddleware
from litestar.response import Response

if TYPE_CHECKING:
    from litestar import Request
    from litestar.config.compression import CompressionConfig
    from litestar.types import HTTPResponseStartEvent, Message, Receive, Scope, Send

__all__ = (
    "CODINGS",
    "VARY_ACCEPT_ENCODING",
    "EncodedResponsePassThrough",
    "GzipAsset",
    "ResponseCompression",
    "accepts",
    "coded_etag",
    "is_encoded",
)

VARY_ACCEPT_ENCODING: Final = {"Vary": "Accept-Encoding"}
"""On every answer whose coding depends on the request's ``Accept-Encoding`` (a shared cache must not
hand one client's coding to another)."""


CODINGS: Final = tuple(encoding.value for encoding in CompressionEncoding)
"""The content codings this layer applies (``br``, ``gzip``): the ones ``coded_etag`` may add."""


def coded_etag(etag: str, coding: str) -> str:
    """The strong entity-tag of the representation in ``coding`` of the one whose tag is ``etag``:
    ``"7"`` → ``"7-br"``. The tags the app makes (versions, SHA-256 digests, Litestar's file tags)
    never end in ``-<coding>`` themselves, so each coded tag names exactly one uncoded one."""
    return f'{etag[:-1]}-{coding}"'


def _code_etag(start: HTTPResponseStartEvent) -> None:
    """Give the strong ``ETag`` of a response this layer encoded (its ``Content-Encoding``) the coding."""
    headers = start.get("headers", ())
    coding = b""
    for name, value in headers:
        if name.lower() == b"content-encoding":
            coding = value
    if coding.decode("latin-1") not in CODINGS:  # not encoded here (a handler's ``identity`` is kept)
        return
    start["headers"] = [
        (name, coded_etag(value.decode("latin-1"), coding.decode("latin-1")).encode("latin-1"))
        if name.lower() == b"etag" and value.startswith(b'"')
        else (name, value)
        for name, value in headers
    ]


def _vary_once(start: HTTPResponseStartEvent) -> None:
    """One ``Vary`` line naming each field once. Litestar's compressor appends ``Accept-Encoding`` to
    whatever ``Vary`` the handler sent, so an answer that negotiates its coding itself (``GzipAsset``'s
    plain form, encoded here as brotli) said ``Vary: Accept-Encoding,Accept-Encoding``."""
    headers = start.get("headers", ())
    lines = [value for name, value in headers if name.lower() == b"vary"]
    if not lines:
        return
    fields: dict[bytes, bytes] = {}  # by the lowercase name (field names are case-insensitive), as written
    for line in lines:
        for token in line.split(b","):
            if token := token.strip():
                fields.setdefault(token.lower(), token)
    start["headers"] = [(name, value) for name, value in headers if name.lower() != b"vary"] + [
        (b"vary", b", ".join(fields.values()))
    ]


def is_encoded(start: HTTPResponseStartEvent) -> bool:
    """Whether the response started by ``start`` already carries a content coding (``identity`` is none)."""
    return any(
        name.lower() == b"content-encoding" and value.strip().lower() not in {b"", b"identity"}
        for name, value in start.get("headers", ())
    )


class EncodedResponsePassThrough(CompressionMiddleware):
    """``CompressionMiddleware`` for every response except those that already have a Content-Encoding;
    the strong ``ETag`` of a response it encodes is given the coding (``coded_etag``), and its ``Vary``
    names ``Accept-Encoding`` once (``_vary_once``).

    Use it as ``CompressionConfig(middleware_class=EncodedResponsePassThrough, ...)``.
    """

    def create_compression_send_wrapper(
        self,
        send: Send,
        compression_encoding: Literal[CompressionEncoding.BROTLI, CompressionEncoding.GZIP] | str,
        scope: Scope,
    ) -> Send:
        compress = super().create_compression_send_wrapper
        forward: Send | None = None

        async def send_coded(message: Message) -> None:
            # What the compressor sends: its start carries a Content-Encoding only when it encoded
            # the body (it decides on the first body message), since the handler's carried none.
            if message["type"] == "http.response.start":
                _code_etag(message)
                _vary_once(message)
            await send(message)

        async def send_wrapper(message: Message) -> None:
            nonlocal forward
            if message["type"] == "http.response.start":
                # Decided per response: the compressor (and its buffers) exists only when it is used.
                forward = send if is_encoded(message) else compress(send_coded, compression_encoding, scope)
            await (forward or send)(message)

        return send_wrapper


class ResponseCompression:
    """The route layer's compression (``app.core.gate``): ``send_for`` gives the ``send`` a request's
    answer goes through, compressing or not.

    The encoding is chosen as Litestar's middleware chooses it (the configured backend when
    ``Accept-Encoding`` names it, else gzip when ``gzip_fallback``), from the raw header lines instead
    of a parsed ``Headers`` and without the middleware's two wrapping layers (each matching paths and
    scope types again): a request that accepts no encoding costs one scan of its header names.
    Answers are compressed by ``EncodedResponsePassThrough``'s wrapper.
    """

    __slots__ = ("_compressor", "_fallback", "_preferred")

    def __init__(self, config: CompressionConfig) -> None:
        self._compressor = EncodedResponsePassThrough(app=_no_app, config=config)
        self._preferred: str = config.compression_facade.encoding
        self._fallback = config.gzip_fallback

    def send_for(self, scope: Scope, send: Send) -> Send:
        accepted = b", ".join(value for name, value in scope["headers"] if name == b"accept-encoding")
        if not accepted:
            return send
        offered = accepted.decode("latin-1")
        if accepts(self._preferred, offered):
            encoding: str = self._preferred
        elif self._fallback and accepts(CompressionEncoding.GZIP, offered):
            encoding = CompressionEncoding.GZIP
        else:
            return send
        return self._compressor.create_compression_send_wrapper(send, encoding, scope)


def accepts(encoding: str, accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows ``encoding``, by name or by ``*``; ``q=0`` refuses
    it (RFC 9110 12.5.3: ``gzip, br;q=0`` is no brotli)."""
    offered = accept_encoding.lower()
    if encoding not in offered and "*" not in offered:
        return False
    qualities: dict[str, float] = {}
    for item in offered.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[coding] = quality
    return qualities.get(encoding, qualities.get("*", 0.0)) > 0


class GzipAsset:
    """A static file answered in a coding the request accepts: its gzip form with ``Content-Encoding:
    gzip`` when ``Accept-Encoding`` allows gzip (``accepts``), else its plain bytes without a content
    coding (curl sends no ``Accept-Encoding``: it got gzip bytes it could not read); both with
    ``Vary: Accept-Encoding``. The one negotiation of the Swagger UI assets (``app.core.docs``) and the
    SAQ dashboard's pre-compressed files (``app.core.dashboard``).

    Given one form (``plain`` or ``gzipped``: a function that reads it), the other is made from it on
    its first use, once per process (two concurrent first requests may both make it), off the event
    loop: compressing the 1.5 MB Swagger UI bundle for every request would cost ~150 ms of CPU each
    time. The gzip answer passes through the compression layer untouched (``is_encoded``); the plain
    one it may still encode in another coding the client accepts (brotli alone).
    """

    __slots__ = ("_forms", "_source", "_source_gzipped", "media_type")

    def __init__(
        self,
        media_type: str,
        *,
        plain: Callable[[], bytes] | None = None,
        gzipped: Callable[[], bytes] | None = None,
    ) -> None:
        source = plain or gzipped
        if source is None or (plain is not None and gzipped is not None):
            raise ValueError("a GzipAsset is given exactly one form, plain or gzipped")
        self.media_type = media_type
        self._source = source
        self._source_gzipped = gzipped is not None
        self._forms: dict[bool, bytes] = {}
        """Each form made so far, by whether it is the gzip one."""

    async def answer(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """The answer to ``request`` (its ``Accept-Encoding`` lines are one list, as in ``send_for``)."""
        gzipped = accepts(CompressionEncoding.GZIP, ", ".join(request.headers.getall("accept-encoding", ())))
        headers = {**VARY_ACCEPT_ENCODING, "Content-Encoding": "gzip"} if gzipped else VARY_ACCEPT_ENCODING
        return Response(await self._form(gzipped=gzipped), media_type=self.media_type, headers=headers)

    async def _form(self, *, gzipped: bool) -> bytes:
        form = self._forms.get(gzipped)
        if form is None:
            form = self._forms[gzipped] = await asyncio.to_thread(self._make, gzipped)
        return form

    def _make(self, gzipped: bool) -> bytes:
        source = self._source()
        if gzipped == self._source_gzipped:
            return source
        return gzip.compress(source, 9, mtime=0) if gzipped else gzip.decompress(source)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("ResponseCompression only wraps send; it never calls an app")
