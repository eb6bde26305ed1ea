"""RFC 9457 problem details for every error the API answers.

Each problem has a stable ``type`` (a relative URI under ``/problems/``), a human ``title``, the
HTTP ``status`` and the ``request_id`` that also appears in the logs. Validation problems list
every bad field in ``errors``. A 5xx never carries internals: the details go to the log only.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, ClassVar

import msgspec
import psycopg
import psycopg_pool
import redis.exceptions
import structlog
import valkey.exceptions
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap
from litestar.utils.scope.state import ScopeState

from app.core.types import NO_NUL, NON_BLANK
from app.core.validation import struct_field_errors

log = structlog.get_logger("app.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


class AppError(Exception):
    """A failure the API reports to the client as a problem; raise subclasses from services."""

    status: ClassVar[int] = HTTP_400_BAD_REQUEST
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers or {}


class NotFoundError(AppError):
    status = 404
    slug = "not-found"
    title = "Not found"


class ConflictError(AppError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class UnprocessableError(AppError):
    status = 422
    slug = "unprocessable"
    title = "Unprocessable request"


class UnauthorizedError(AppError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"


class ForbiddenError(AppError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class TooManyRequestsError(AppError):
    """429; pass ``headers={"Retry-After": ...}`` (and the RateLimit headers where known)."""

    status = 429
    slug = "rate-limited"
    title = "Too many requests"


class ServiceUnavailableError(AppError):
    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"


_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("unprocessable", "Unprocessable request"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal", "Internal server error"),
    503: ("service-unavailable", "Service unavailable"),
}


def problem_type(slug: str) -> str:
    return f"/problems/{slug}"


def request_id_of(request: Request[Any, Any, Any]) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    *,
    slug: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    default_slug, default_title = _HTTP_SLUGS.get(status, ("error", "Error"))
    body = Problem(
        type=problem_type(slug or default_slug),
        title=title or default_title,
        status=status,
        detail=detail,
        instance=request.url.path,
        request_id=request_id_of(request),
        errors=errors,
    )
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


_MISSING_PARAMETER = re.compile(r"Missing required (?P<kind>\w+) parameter '(?P<name>[^']+)'")
_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _field_from_msgspec(message: str) -> tuple[str, str]:
    """``Expected `int`, got `str` - at `$.quantity``` → (``quantity``, ``Expected `int`, got `str```)."""
    match = _MSGSPEC_PATH.search(message)
    if match is None:
        return "body", message
    path = match.group("path").lstrip(".") or "body"
    return path, message[: match.start()]


def _wire_name(request: Request[Any, Any, Any], key: str) -> str:
    """The name a client sends for the handler parameter ``key`` (``idempotency_key`` is the header
    ``Idempotency-Key``): Litestar reports the Python name."""
    handler = request.scope.get("route_handler")
    parameter = getattr(handler, "parsed_fn_signature", None)
    field = parameter.parameters.get(key) if parameter is not None else None
    kwarg = getattr(field, "kwarg_definition", None)
    alias = getattr(kwarg, "name", None)
    return alias if isinstance(alias, str) else key


_PATTERN_MISMATCH = re.compile(r"^Expected `str` matching regex '(?P<pattern>.*)'$", re.DOTALL)
_PATTERN_MEANINGS = {
    NO_NUL: "must not contain NUL characters",
    NON_BLANK: "must contain a visible character and no NUL",
}


def _readable(field: str, message: str) -> str:
    """msgspec's ``Expected `str` matching regex '...'`` in words, for the patterns we know."""
    match = _PATTERN_MISMATCH.match(message)
    if match is None:
        return message
    pattern = match["pattern"].replace("\\\\", "\\")
    if pattern in _PATTERN_MEANINGS:
        return _PATTERN_MEANINGS[pattern]
    if field.endswith("cursor"):
        return f"not a position of this list: pass a page's next_cursor (pattern {pattern})"
    return message


def _validation_errors(request: Request[Any, Any, Any], exc: ValidationException) -> list[FieldError]:
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
    errors: list[FieldError] = []
    for item in extra:
        if not isinstance(item, dict):
            errors.append(FieldError(field="body", message=str(item)))
            continue
        source = getattr(item.get("source"), "value", item.get("source"))
        key = str(item.get("key") or "")
        message = str(item.get("message") or exc.detail)
        if source in (None, "body") or key in ("", "data"):
            path, message = _field_from_msgspec(message)
            key = path if key in ("", "data") else key
        else:
            key = _wire_name(request, key)
        field = f"{source}.{key}" if source and source != "body" else key
        errors.append(FieldError(field=field, message=_readable(field, message)))
    if not errors:
        missing = _MISSING_PARAMETER.match(exc.detail)
        if missing:
            errors.append(FieldError(field=f"{missing['kind']}.{missing['name']}", message="Required"))
        else:
            field, message = _field_from_msgspec(exc.detail)
            errors.append(FieldError(field=field, message=_readable(field, message)))
    return errors


VALIDATION_FAILED = "validation_failed"
"""Scope-state flag set on a request refused by validation (the rate limiter does not count it)."""


def _validation_problem(request: Request[Any, Any, Any], errors: list[FieldError]) -> Response[Problem]:
    request.scope.setdefault("state", {})[VALIDATION_FAILED] = True
    # A bad cursor alone keeps its own type: a client that sees it restarts from the first page.
    only_cursor = bool(errors) and all(error.field == "query.cursor" for error in errors)
    return problem_response(
        request,
        HTTP_400_BAD_REQUEST,
        slug="invalid-cursor" if only_cursor else "validation",
        title="Invalid cursor" if only_cursor else "Invalid request",
        detail="; ".join(f"{e.field}: {e.message}" for e in errors),
        errors=errors,
    )


def _handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    errors = _validation_errors(request, exc)
    if any("." not in error.field for error in errors):
        errors = _all_body_errors(request) or errors
    return _validation_problem(request, errors)


def _all_body_errors(request: Request[Any, Any, Any]) -> list[FieldError]:
    """Every bad body field, when the handler takes a Struct body (msgspec reports only the first)."""
    handler = request.scope.get("route_handler")
    data_field = getattr(handler, "parsed_data_field", None)
    body_type = getattr(data_field, "annotation", None)
    if not (isinstance(body_type, type) and issubclass(body_type, msgspec.Struct)):
        return []
    body = ScopeState.from_scope(request.scope).body  # already read (and size-checked) by Litestar
    if not isinstance(body, bytes):
        return []
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return []
    return [
        FieldError(field=field, message=_readable(field, message))
        for field, message in struct_field_errors(body_type, decoded)
    ]


def _handle_app_error(request: Request[Any, Any, Any], exc: AppError) -> Response[Problem]:
    return problem_response(
        request, exc.status, slug=exc.slug, title=exc.title, detail=exc.detail, headers=exc.headers
    )


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if exc.status_code >= HTTP_500_INTERNAL_SERVER_ERROR:
        return _handle_unexpected(request, exc)
    if isinstance(exc.__cause__, SerializationException):
        # The body could not be decoded at all (malformed JSON): no field to name but the body.
        return _validation_problem(
            request, [FieldError(field="body", message=f"Malformed JSON: {exc.detail}")]
        )
    default_title = _HTTP_SLUGS.get(exc.status_code, ("", ""))[1]
    detail = (
        None
        if exc.detail.lower() in {default_title.lower(), HTTPStatus(exc.status_code).phrase.lower()}
        else exc.detail
    )
    return problem_response(request, exc.status_code, detail=detail, headers=exc.headers)


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.exception("unhandled_error", path=request.url.path, method=request.method, error=type(exc).__name__)
    return problem_response(request, HTTP_500_INTERNAL_SERVER_ERROR)


def _handle_unstorable(request: Request[Any, Any, Any], exc: psycopg.DataError) -> Response[Problem]:
    """A backstop: a value PostgreSQL refuses (out of range, NUL in text) is the client's 400.

    Input types are bounded so that this never happens (a 400 then names the field); reaching it
    means a bound is missing, hence the warning with the SQLSTATE.
    """
    log.warning(
        "unstorable_value",
        path=request.url.path,
        method=request.method,
        error=type(exc).__name__,
        sqlstate=exc.sqlstate,
    )
    return problem_response(
        request,
        HTTP_400_BAD_REQUEST,
        slug="unstorable-value",
        title="Value out of range",
        detail="A value in the request is outside what the API can store; see the documented limits.",
    )


def _handle_dependency_down(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.warning("dependency_unavailable", path=request.url.path, error=type(exc).__name__)
    return problem_response(
        request,
        503,
        detail="A backing service is unavailable; retry shortly.",
        headers={"Retry-After": "5"},
    )


exception_handlers: ExceptionHandlersMap = {
    psycopg.OperationalError: _handle_dependency_down,
    psycopg_pool.PoolTimeout: _handle_dependency_down,
    valkey.exceptions.ConnectionError: _handle_dependency_down,
    valkey.exceptions.TimeoutError: _handle_dependency_down,
    redis.exceptions.ConnectionError: _handle_dependency_down,
    redis.exceptions.TimeoutError: _handle_dependency_down,
    psycopg.DataError: _handle_unstorable,
    ValidationException: _handle_validation,
    AppError: _handle_app_error,
    HTTPException: _handle_http,
    Exception: _handle_unexpected,
}

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "VALIDATION_FAILED",
    "AppError",
    "ConflictError",
    "FieldError",
    "ForbiddenError",
    "NotFoundError",
    "Problem",
    "ServiceUnavailableError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnprocessableError",
    "exception_handlers",
    "problem_response",
]
