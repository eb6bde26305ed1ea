"""The base ``Controller`` of every domain: Litestar's, with strict JSON bodies and a truthful ``Allow``.

Strict bodies. Litestar decodes a JSON body to plain values and then converts them to the handler's
Struct in lax mode (``strict=False``, needed for query strings), so ``{"archived": 0}`` was read as
``false`` and ``{"position": "5"}`` as ``5``: values the published schema refuses were accepted.
``StrictJSONRequest`` decodes a body straight into the declared Struct with msgspec's strict decoder
(one pass, no intermediate objects); a type mismatch is the usual 400 naming every bad field. One
exception, JSON Schema's own: an integral float (``2.0``) is an integer. Only a body holding one,
and naming no key twice, is converted again (through plain values); any other refusal stands: the
second conversion keeps a repeated key's last value, so ``{"name": "a\\u0000", "name": "OK"}``
passed it, though the strict decoder refused the first.

OPTIONS. Litestar 2 builds a path's automatic OPTIONS handler when the path's *first* handler is
registered, and that handler lists the methods known at that moment: a controller with ``GET`` and
``POST`` on one path answered ``Allow: OPTIONS, POST`` (litestar issue 4169, fixed only in Litestar
3). Here the stale handler is replaced by one that reads the application's routing table when asked,
so it lists every method of the path, whichever handler or controller declared it.

Dependencies in order. Litestar resolves the dependencies of one level concurrently, in an anyio
task group, even when no provider awaits anything: a handler taking the caller and a service paid a
task group per request (about a tenth of an authenticated read's CPU; litestar issue 4563, open).
Our providers do no I/O, so ``resolve_dependencies_in_order`` makes every batch a single dependency,
in the order Litestar computed (a dependency still comes after those it needs).

Guards without copies. Litestar passes each guard a shallow ``copy()`` of the route handler, per
request and guard (about 5 % of an authenticated read's CPU, measured with py-spy under the task
list). Our guards never touch the handler, so ``guard_without_handler_copies`` passes the handler
itself.

One spelling per id. Litestar parses a ``{x:int}`` path segment with ``int()``, which strips
whitespace and reads a sign, ``_`` and any Unicode digit: ``/api/projects/20001%0A``, ``+20001``,
``2_0001``, ``020001`` and ``٢٠٠٠١`` all named project 20001, so a gateway or cache rule written for one
spelling missed the others. ``parse_path_int`` takes only the canonical decimal (ASCII digits, no sign,
no leading zero; ``0`` itself stays ``0``, which ``IdPath`` refuses with its usual 400); anything else,
``-1`` included (a 400 from ``IdPath``'s bounds before), is the 404 an unparsable segment
(``/api/projects/abc``) already was. ``parse_int_paths_canonically`` replaces Litestar's ``int``
parser; ``create_app`` calls it before the app builds its routes (a route keeps the parser it was
built with). Cost: none on routes without an ``int`` parameter, none when Litestar's cache of
parsed path values (``parse_path_params``, 1024 entries) hits, else about 0.15 µs over ``int()``.

JSON means JSON. A body sent with a ``Content-Type`` other than ``application/json`` (a ``PATCH``'s
may be ``application/merge-patch+json``, ``JSON_BODIES``; no other ``+json`` type), or with a
``charset`` other than UTF-8 (RFC 8259: JSON is UTF-8; ``charset=utf-16`` was decoded as UTF-8 all the
same), is a 415 naming the types to send, not a 400 about JSON syntax or a body read as JSON whatever
it claims to be (``curl -d`` sends a form's type; a JSON Patch's array was answered "Expected
object"). A body without one (or with an empty one) is read as JSON: a client that names no
type means the one the route documents. The 415 comes where the body is decoded: after
authentication and the guards' 401/403, before the service's own refusals; it is charged to the rate
limit like any body refused (a body was read), and over quota it comes before the 429 (a retry
cannot mend it). The ingest checks its own bodies with ``declares_utf8``, taking ``text/plain`` too on
purpose (``navigator.sendBeacon``).

Bodies read in one loop. ``StrictJSONRequest.body`` reads ASGI's ``receive`` itself: Litestar's
parses every header into a multidict to read Content-Length and collects the chunks through an
async generator (together ~10 % of the no-op POST's worker CPU under py-spy, benchmarks/README.md).
Both ``body`` and ``stream`` name a client that leaves before its body's end
(``ClientDisconnectedError``, 400) where Litestar's stream raised a 500.
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import AsyncGenerator
from types import UnionType
from typing import Any, Union

import litestar
import litestar._kwargs.kwargs_model as kwargs_model
import msgspec
from litestar import Request, Response
from litestar._kwargs.dependencies import DependencyContainer, create_dependency_batches
from litestar.connection import ASGIConnection
from litestar.enums import HttpMethod, MediaType, RequestEncodingType
from litestar.exceptions import (
    ClientException,
    HTTPException,
    InternalServerException,
    SerializationException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.router import Router
from litestar.routes import HTTPRoute
from litestar.routes.base import parsers_map
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import Empty

from app.core.errors import ClientDisconnectedError
from app.core.openapi import DocumentsJsonBody, problems
from app.core.validation import MAX_JSON_DEPTH, decode_any, whole_numbers

_AUTOMATIC_OPTIONS = "options_handler"  # the name of the function Litestar generates


def allowed_methods(app: litestar.Litestar, path: str) -> list[str]:
    """Every HTTP method the application routes for ``path`` (a route template)."""
    handlers = app.route_handler_method_map.get(path, {})
    return sorted(method for method in handlers if method.isupper())


def _options_handler(path: str) -> HTTPRouteHandler:
    def options_handler(request: Request[Any, Any, Any]) -> Response[None]:
        return Response(
            content=None,
            status_code=HTTP_204_NO_CONTENT,
            headers={"Allow": ", ".join(allowed_methods(request.app, path))},
            media_type=MediaType.TEXT,
        )

    return HTTPRouteHandler(
        path=path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, sync_to_thread=False
    )(options_handler)


class StrictJSONRequest(Request[Any, Any, Any]):
    """A request whose ``json()`` is the handler's body Struct, decoded strictly, and whose body is
    read in one loop (module docstring); limits and caching as Litestar's."""

    async def body(self) -> bytes:
        if self._body is Empty:
            if (body := self._connection_state.body) is Empty:
                body = self._connection_state.body = await self._read_body()
            self._body = body
            return body
        return self._body

    async def _read_body(self) -> bytes:
        limit = self._body_limit()
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await self.receive()
            chunk = _chunk_of(message, received, limit)
            received += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.is_connected = False  # Litestar's flag for "the body has been read"
        return b"".join(chunks)

    async def stream(self) -> AsyncGenerator[bytes, None]:
        if self._body is not Empty:
            yield self._body
            return
        if not self.is_connected:
            raise InternalServerException("stream consumed")
        limit = self._body_limit()
        received = 0
        while True:
            message = await self.receive()
            if chunk := _chunk_of(message, received, limit):
                received += len(chunk)
                yield chunk
            if not message.get("more_body", False):
                break
        self.is_connected = False

    @property
    def content_length(self) -> int | None:
        """The declared Content-Length, which must be digits (RFC 9110: ``1*DIGIT``): Litestar's
        ``int()`` took ``-5``, ``+5`` and ``1_0``, and an upload sized its quota reservation by it."""
        if self._content_length is Empty:
            for name, value in self.scope["headers"]:
                if name == b"content-length":
                    if not value.isdigit():  # bytes: ASCII digits only
                        raise ClientException(f"Invalid content-length: {value.decode('latin-1')!r}")
                    self._content_length = int(value)
                    break
            else:
                self._content_length = None
        return self._content_length

    def _body_limit(self) -> float:
        """The route's body limit (none: infinite); a declared Content-Length over it is refused
        before a byte is read, as Litestar does."""
        limit = self.route_handler.resolve_request_max_body_size() or math.inf
        declared = self.content_length
        if declared is not None and declared > limit:
            raise RequestEntityTooLarge
        return limit

    async def json(self) -> Any:
        _require_json_media_type(self.scope)
        field = self.route_handler.parsed_data_field
        kind = field.annotation if field is not None else None
        if not _is_struct_body(kind):
            try:
                return await super().json()
            except RecursionError:  # a few KB of brackets
                raise SerializationException(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
        if self._json is Empty:
            self._json = _decode_strictly(await self.body() or b"null", kind)
        return self._json


JSON = b"application/json"
MERGE_PATCH = b"application/merge-patch+json"
JSON_BODIES: dict[str, tuple[bytes, ...]] = {"PATCH": (JSON, MERGE_PATCH)}
"""The media types of a JSON body by method (``application/json`` otherwise). A ``PATCH`` takes RFC
7396's merge patch too: an update names the fields it changes, the others stay, and ``null`` clears a
field that may be empty (``TaskUpdate``'s ``assignee_id``). No other ``+json`` type: a JSON Patch
(``application/json-patch+json``, an array of operations) is not what the route applies (RFC 5789:
415), and a vendor's type (``application/vnd.x+json``) promises a shape of its own."""
_ACCEPTS = {"POST": "Accept-Post", "PATCH": "Accept-Patch"}
"""The header that names the media types a method accepts (W3C LDP's ``Accept-Post``, RFC 5789)."""


_PARAMETER = re.compile(rb'\s*;\s*([!#$%&\'*+.^_`|~0-9a-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)\s*')
"""One ``; name=value`` of a media type (RFC 9110 5.6.6; lower-case), the value a token or a quoted
string (which may hold ``;``)."""
UTF8 = (b"utf-8", b"utf8", b"us-ascii")
"""Charsets whose bytes are UTF-8 (ASCII is a subset)."""


def _charsets(parameters: bytes) -> list[bytes] | None:
    """Every ``charset`` among a media type's ``parameters`` (what follows the type, from its first
    ``;``), unquoted; None when they cannot be read. By hand: Litestar's parser is private
    (``litestar._multipart``) and keeps only the last of two charsets; the standard library's
    (``email.message``) builds a message object per header."""
    found: list[bytes] = []
    parameters = parameters.rstrip(b"; \t")  # a trailing ``;`` names nothing
    at = 0
    while at < len(parameters):
        parameter = _PARAMETER.match(parameters, at)
        if parameter is None:
            return None
        if parameter.group(1) == b"charset":
            found.append(parameter.group(2).strip(b'"'))
        at = parameter.end()
    return found


def declares_utf8(content_type: bytes, media_types: tuple[bytes, ...]) -> bool:
    """Whether a ``Content-Type`` header's value declares one of ``media_types`` (lower-case), or only
    parameters, with a UTF-8 ``charset`` or none. Parsed only when it is not exactly one of them."""
    if content_type in media_types:
        return True
    media_type, semicolon, parameters = content_type.lower().partition(b";")
    media_type = media_type.strip()
    if media_type and media_type not in media_types:
        return False
    charsets = _charsets(semicolon + parameters)
    return charsets is not None and len(charsets) <= 1 and all(c in UTF8 for c in charsets)


def unsupported_media_type(content_type: bytes, method: str, media_types: tuple[bytes, ...]) -> HTTPException:
    """The 415 of a body declared as ``content_type`` where one of ``media_types`` in UTF-8 is taken,
    naming them in its detail and in the method's ``Accept-Post``/``Accept-Patch``."""
    names = [media_type.decode("ascii") for media_type in media_types]
    accepts = _ACCEPTS.get(method)
    sent = content_type.decode("latin-1")[:80]
    return HTTPException(
        status_code=415,
        detail=f"This body must be JSON in UTF-8: send it with Content-Type: {' or '.join(names)} "
        f"(charset=utf-8 or none); it came as {sent!r}.",
        headers={accepts: ", ".join(names)} if accepts else None,
    )


def _require_json_media_type(scope: Any) -> None:
    """A declared media type must be JSON, in UTF-8 (see the module's docstring); 415 otherwise."""
    for name, value in scope["headers"]:
        if name != b"content-type" or value in (JSON, b""):
            continue
        method = scope["method"]
        media_types = JSON_BODIES.get(method, (JSON,))
        if not declares_utf8(value, media_types):
            raise unsupported_media_type(value, method, media_types)


def _chunk_of(message: Any, received: int, limit: float) -> bytes:
    """The body bytes of a ``receive`` message, ``received`` bytes having come before: 413 past the
    route's ``limit``; ``ClientDisconnectedError`` for ``http.disconnect``, which the server sends for
    a closed connection and for a body it could not frame (a bad chunk size) alike."""
    if message["type"] != "http.request":
        raise ClientDisconnectedError(
            "The request's body ended before it was complete: the connection closed, or the body's "
            "framing (chunked encoding) was invalid."
        )
    chunk: bytes = message.get("body", b"")
    if received + len(chunk) > limit:
        raise RequestEntityTooLarge
    return chunk


def _is_struct_body(kind: Any) -> bool:
    """A Struct, or a (tagged) union of Structs: what msgspec decodes strictly in one pass."""
    members = typing.get_args(kind) if typing.get_origin(kind) in (Union, UnionType) else (kind,)
    return bool(members) and all(isinstance(m, type) and issubclass(m, msgspec.Struct) for m in members)


def _decode_strictly(body: bytes, kind: Any) -> Any:
    """The body as ``kind``: strict types, except that an integral float is an integer (as in JSON
    Schema: ``2.0`` is 2); the slow path runs only for bodies the fast strict decode refused."""
    # Invalid UTF-8 comes out of msgspec as UnicodeDecodeError, not DecodeError (msgspec issue 714).
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        first_error = exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SerializationException(str(exc)) from exc
    except RecursionError:  # deep nesting under a field typed Any
        raise SerializationException(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    try:
        decoded = decode_any(body)
        mended = whole_numbers(decoded)
        if mended is decoded or _repeats_a_key(body):  # the fast decode's refusal stands: the
            raise first_error  # plain values keep a repeated key's last value, not the one refused
        return msgspec.convert(mended, kind)
    except msgspec.ValidationError as exc:
        raise ValidationException(detail=str(exc)) from first_error
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # a typed decode may fail before bad syntax
        raise SerializationException(str(exc)) from exc


class _RepeatedKeyError(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _RepeatedKeyError
    return found


def _repeats_a_key(body: bytes) -> bool:
    """Whether an object of the JSON ``body`` names a key twice. The standard library's parser, the
    one that reports pairs: only for a body the strict decode refused that holds an integral float."""
    try:
        json.loads(body, object_pairs_hook=_no_repeats)
    except (_RepeatedKeyError, RecursionError):  # a repeat, or too deep to tell: the refusal stands
        return True
    except ValueError:  # what msgspec read and this parser does not: no repeat found
        return False
    return False


class Controller(litestar.Controller):
    """Use instead of ``litestar.Controller`` (same API)."""

    request_class = StrictJSONRequest

    def as_router(self) -> Router:
        router = super().as_router()
        for route in router.routes:
            if not isinstance(route, HTTPRoute):
                continue
            for index, handler in enumerate(route.route_handlers):
                if reads_body(handler):
                    handler.responses = {**problems(413), **(handler.responses or {})}
                if (
                    handler.http_methods == {HttpMethod.OPTIONS}
                    and handler.handler_name == _AUTOMATIC_OPTIONS
                ):
                    replacement = _options_handler(route.path)
                    replacement.owner = handler.owner
                    route.route_handlers[index] = replacement
        return router


def reads_body(handler: HTTPRouteHandler) -> bool:
    """Whether the route reads a request body: then it can answer 413 (over ``MAX_BODY_BYTES``)."""
    return "data" in handler.parsed_fn_signature.parameters or issubclass(
        handler.operation_class, DocumentsJsonBody
    )


def reads_json_data(handler: HTTPRouteHandler) -> bool:
    """Whether the route's ``data`` is decoded from JSON (``StrictJSONRequest.json``: a 415 for a
    body declared as another media type), not a form or multipart."""
    data = handler.parsed_data_field
    kwarg = data.kwarg_definition if data is not None else None
    media_type = getattr(kwarg, "media_type", RequestEncodingType.JSON)
    return data is not None and media_type == RequestEncodingType.JSON


_batches_of = create_dependency_batches


def _one_per_batch(expected_dependencies: set[DependencyContainer]) -> list[set[DependencyContainer]]:
    return [{dependency} for batch in _batches_of(expected_dependencies) for dependency in batch]


def resolve_dependencies_in_order() -> None:
    """Resolve each handler's dependencies one after another (see the module's docstring).

    Call before the application's routes are registered: the batches are computed then.
    """
    kwargs_model.create_dependency_batches = _one_per_batch  # type: ignore[attr-defined]


async def _authorize_connection(
    self: BaseRouteHandler, connection: ASGIConnection[Any, Any, Any, Any]
) -> None:
    for guard in self.resolve_guards():
        await guard(connection, self)  # type: ignore[misc]


def guard_without_handler_copies() -> None:
    """Run route guards on the handler itself instead of a copy per guard and request (see the
    module's docstring): a guard must not change the handler it is given."""
    BaseRouteHandler.authorize_connection = _authorize_connection  # type: ignore[method-assign]


def parse_path_int(segment: str) -> int:
    """A ``{x:int}`` path segment written the one way: ``0`` or ASCII digits without a leading zero.

    A ``ValueError`` (anything else) is Litestar's 404 for a path that names no resource.
    """
    if segment.isascii() and segment.isdigit() and (segment[0] != "0" or len(segment) == 1):
        return int(segment)
    raise ValueError(f"not a canonical decimal integer: {segment!r}")


def parse_int_paths_canonically() -> None:
    """Make ``parse_path_int`` the parser of every ``{x:int}`` path parameter of routes built from
    now on (see the module's docstring; idempotent)."""
    parsers_map[int] = parse_path_int


__all__ = [
    "JSON",
    "JSON_BODIES",
    "MERGE_PATCH",
    "Controller",
    "StrictJSONRequest",
    "allowed_methods",
    "declares_utf8",
    "guard_without_handler_copies",
    "parse_int_paths_canonically",
    "parse_path_int",
    "resolve_dependencies_in_order",
    "unsupported_media_type",
]
