"""OpenAPI helpers: every route documents the problems it can answer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, cast

import msgspec
from litestar.enums import MediaType
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Responses,
    Schema,
)
from litestar.types import Method
from litestar.types.internal_types import PathParameterDefinition

from app.core.errors import Problem

_DESCRIPTIONS = {
    400: "Invalid request: malformed body or bad fields (each listed in `errors`)",
    401: "Missing, invalid or expired credentials",
    403: "Authenticated, but not allowed",
    404: "No such resource (or not visible to the caller)",
    408: "The request's body stopped arriving for too long; send it again",
    409: "Conflicts with the current state",
    413: "Request body over the route's limit (MAX_BODY_BYTES unless the route says otherwise)",
    422: "Well-formed but cannot be processed",
    429: "Rate limit exceeded; see Retry-After",
    500: "Unexpected error; quote the request_id",
    503: "A dependency is unavailable; retry later",
    507: "No room left to store it; nothing was stored, retry later",
}


ALWAYS = (400, 401, 500, 503)
"""Statuses every route can answer (see ``problems``)."""

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
"""``security=`` of routes that need an access token (the scheme is declared in ``create_app``)."""

OPTIONAL_BEARER: list[dict[str, list[str]]] = [{}, *BEARER]
"""``security=`` of public routes that answer more to a token (an administrator's view of the
catalogue): anonymous or bearer. Without it Swagger UI sent such a route no token, even authorized."""


def _problem(status: int, description: str | None = None) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=description or _DESCRIPTIONS.get(status, "Problem"),
        media_type="application/problem+json",
    )


@dataclass
class _BadToken(ResponseSpec):
    """The 401 ``problems`` adds on its own: the route layer's answer to a bad bearer token (a class,
    not an instance to compare with: Litestar deep-copies a controller's handlers)."""


_BAD_TOKEN = _BadToken(
    data_container=Problem,
    description=_DESCRIPTIONS[401],
    media_type="application/problem+json",
)


_UNMATCHABLE = _problem(
    412,
    "`If-Match` named entity-tags, and this resource has none (only `*` can hold), or a change's "
    "`If-None-Match` is `*` (the resource exists): nothing was done",
)
_CODED = _problem(415, "The body's `Content-Encoding` is one the server does not decode (send it uncoded)")
_NOT_JSON = _problem(
    415,
    "The body's `Content-Type` is not JSON (send `application/json`, or for a `PATCH` "
    "`application/merge-patch+json`; `Accept-Post` or `Accept-Patch` says so), or its "
    "`Content-Encoding` is one the server does not decode (send it uncoded)",
)


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route: the given problem statuses plus ``ALWAYS``, as problem+json.

    400 is always listed because Litestar documents its own (plain JSON) 400 on any route with
    parameters unless the route declares one; 401 because a bad bearer token is refused on every
    route that authenticates, public ones included (``app.core.gate.GateConfig.prepare`` takes it out
    of the routes that never read a token, unless the route gives 401 itself: a wrong password); 503
    because checking a token needs Valkey or PostgreSQL; 500 anywhere.
    """
    return {
        status: _BAD_TOKEN if status == 401 and 401 not in statuses else _problem(status)
        for status in sorted({*statuses, *ALWAYS})
    }


def finish_documentation(
    handler: HTTPRouteHandler,
    *,
    reads_token: bool,
    rate_limited: bool,
    judges_conditions: bool = False,
    reads_body: bool = False,
    reads_json_data: bool = False,
) -> None:
    """Finish ``handler``'s documentation once the route layer knows what it does for the route
    (``app.core.gate.GateConfig.prepare``).

    - No generated examples: Litestar's ``ResponseSpec`` fills a response schema with random values
      unless told not to (a problem's status of 2562 shown as a sample answer), and another document
      in every build, so in every granian worker.
    - The 401 ``problems`` added on its own is taken out of a route that never reads a token.
    - What the layers around the route add is declared (``documents_what_surrounds_the_route``): the
      route layer's headers, the server's 414, and the route layer's 412 for a condition on a
      resource without versions (``judges_conditions``); on a route that reads a body, the 415 for a
      body that is not JSON or is in a coding the server does not decode (``reads_body``), unless the
      route documents its own.
    """
    if judges_conditions and 412 not in (handler.responses or {}):
        handler.responses = {**(handler.responses or {}), 412: _UNMATCHABLE}
    if reads_body and 415 not in (handler.responses or {}):
        handler.responses = {**(handler.responses or {}), 415: _NOT_JSON if reads_json_data else _CODED}
    if handler.responses:
        handler.responses = {
            status: replace(spec, generate_examples=False)
            for status, spec in handler.responses.items()
            if reads_token or not isinstance(spec, _BadToken)
        }
    handler.operation_class = documents_what_surrounds_the_route(
        handler.operation_class,
        rate_limited=rate_limited,
        merge_patch=reads_json_data and "PATCH" in handler.http_methods,
    )


MERGE_PATCH_TYPE = "application/merge-patch+json"
"""The other media type a ``PATCH`` takes (``app.core.routing.MERGE_PATCH``, RFC 7396)."""

RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
    description="Seconds to wait before trying again.",
)
RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING),
        description='The route\'s quotas (IETF `RateLimit-Policy`): `"<name>";q=<requests>;w=<seconds>`, '
        "comma-separated.",
    ),
    "RateLimit": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING),
        description='What is left of the nearest quota (IETF `RateLimit`): `"<name>";r=<remaining>;'
        "t=<seconds until it resets>`.",
    ),
}


URI_TOO_LONG = OpenAPIResponse(
    description="Request line (path and query) too long, refused before any route: over 64 KiB by the "
    "server (granian, no body), over 16 KiB by the gateway of `deploy/` (a problem). The longest line "
    "the API issues is a report's next page, about 11 KiB.",
)


def documents_what_surrounds_the_route(
    operation_class: type[Operation], *, rate_limited: bool, merge_patch: bool = False
) -> type[Operation]:
    """``operation_class`` that also declares what the layers around the route add: the route layer's
    headers (``app.core.gate``), ``Retry-After`` on a 429 or 503 and, on a rate-limited route,
    ``RateLimit`` and ``RateLimit-Policy`` on every answer (Litestar's ``ResponseSpec`` takes no
    headers); the server's 414 (``URI_TOO_LONG``), which any operation can meet; and, with
    ``merge_patch``, the body a ``PATCH`` also takes as ``application/merge-patch+json``
    (``app.core.routing.JSON_BODIES``)."""

    @dataclass
    class Surrounded(operation_class):  # type: ignore[valid-type,misc]
        def __post_init__(self) -> None:
            if (documented := getattr(super(), "__post_init__", None)) is not None:
                documented()
            operation = cast("Operation", self)
            body = operation.request_body
            if merge_patch and isinstance(body, RequestBody) and MediaType.JSON in (body.content or {}):
                body.content = {**body.content, MERGE_PATCH_TYPE: body.content[MediaType.JSON]}
            responses: Responses = {**(operation.responses or {}), "414": URI_TOO_LONG}
            operation.responses = dict(sorted(responses.items()))
            for status, response in operation.responses.items():
                if not isinstance(response, OpenAPIResponse) or response is URI_TOO_LONG:
                    continue
                headers = dict(response.headers or {})
                if status in ("429", "503"):
                    headers["Retry-After"] = RETRY_AFTER
                if rate_limited:  # on every answer the limiter passes (not the server's 414)
                    headers.update(RATE_LIMIT_HEADERS)
                response.headers = headers or None

    Surrounded.__name__ = Surrounded.__qualname__ = f"{operation_class.__name__}Surrounded"
    return Surrounded


def _inline_json_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """msgspec's JSON Schema of ``struct`` with every ``$ref`` replaced by its definition, so that it
    needs no entry under ``components`` (the ingest bodies are not recursive)."""
    document = msgspec.json.schema(struct)
    definitions: dict[str, Any] = document.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                return resolve(definitions[ref.rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return cast("dict[str, Any]", resolve(document))


def documents_json_body(struct: type[msgspec.Struct]) -> type[Operation]:
    """An ``operation_class`` that documents a required JSON body of type ``struct``.

    For handlers that decode ``await request.body()`` themselves (the ingest hot path uses a cached
    decoder, measured faster than a ``data`` parameter), so Litestar sees no body to document; this
    declares the one the decoder expects, from the same Struct.
    """
    schema = cast("Schema", _inline_json_schema(struct))  # a JSON Schema dict: serialised as is
    body = RequestBody(content={MediaType.JSON: OpenAPIMediaType(schema=schema)}, required=True)

    @dataclass
    class WithJsonBody(DocumentsJsonBody):
        def __post_init__(self) -> None:
            self.request_body = body

    return WithJsonBody


@dataclass
class DocumentsJsonBody(Operation):
    """The operations of ``documents_json_body``: routes that read their body themselves."""


def operation_id(handler: HTTPRouteHandler, method: Method, path: list[str | PathParameterDefinition]) -> str:
    """An operation's ``operationId``: its handler's name (``create_task``), which a generated client
    makes its method's name. Litestar's default joined the path's words to it
    (``ApiProjectsProjectIdTasksCreateTask``). Unique across the API: each handler serves one method,
    and no two share a name (``tests/functional/test_openapi_document.py``)."""
    return handler.handler_name
