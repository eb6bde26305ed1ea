"""Response compression that never re-encodes a response which is already encoded.

Litestar's ``CompressionMiddleware`` picks the encoding from the request alone and then compresses
whatever the handler sends, overwriting ``Content-Encoding``. A response that is already encoded
(litestar-saq's dashboard serves ``*.js.gz`` with ``Content-Encoding: gzip``) was compressed a second
time and labelled ``br``: a browser decoded the brotli layer and ran gzip bytes as JavaScript.
Here the decision waits for the response's own headers, as other servers' compression layers do
(nginx, Express' ``compression``, ASP.NET): already encoded means passed through untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from litestar.enums import CompressionEncoding
from litestar.middleware.compression import CompressionMiddleware

if TYPE_CHECKING:
    from litestar.types import HTTPResponseStartEvent, Message, Scope, Send

__all__ = ("EncodedResponsePassThrough", "is_encoded")


def is_encoded(start: HTTPResponseStartEvent) -> bool:
    """Whether the response started by ``start`` already carries a content coding (``identity`` is none)."""
    return any(
        name.lower() == b"content-encoding" and value.strip().lower() not in {b"", b"identity"}
        for name, value in start.get("headers", ())
    )


class EncodedResponsePassThrough(CompressionMiddleware):
    """``CompressionMiddleware`` for every response except those that already have a Content-Encoding.

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

        async def send_wrapper(message: Message) -> None:
            nonlocal forward
            if message["type"] == "http.response.start":
                # Decided per response: the compressor (and its buffers) exists only when it is used.
                forward = send if is_encoded(message) else compress(send, compression_encoding, scope)
            await (forward or send)(message)

        return send_wrapper
