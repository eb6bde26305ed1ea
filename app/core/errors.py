"""RFC 9457 problem details for every error the API answers.

Each problem has a stable ``type`` (a relative URI under ``/problems/``), a human ``title``, the
HTTP ``status`` and the ``request_id`` that also appears in the logs. Validation problems list
every bad field in ``errors``. A 5xx never carries internals: the details go to the log only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any, ClassVar

import msgspec
import psycopg
import psycopg_pool
import redis.exceptions
import structlog
import valkey.exceptions
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    SerializationException,
    ValidationException,
)
from litestar.params import CookieParameter, HeaderParameter
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap
from litestar.utils.scope.state import ScopeState
from prometheus_client import Counter

from app.core.logging import OncePerInterval, error_message
from app.core.validation import (
    MAX_REPORTED_ERRORS,
    BodyErrors,
    body_errors,
    decode_any,
    pattern_meaning,
    walks,
)

log = structlog.get_logger("app.errors")

DEPENDENCY_UNAVAILABLE = Counter(
    "app_dependency_unavailable",
    "Failures to reach a backing service (answered 503, or a login throttle passed over), by dependency",
    ["dependency", "source"],
)
DEPENDENCY_WARN_INTERVAL_S = 60.0
dependency_warnings = OncePerInterval(DEPENDENCY_WARN_INTERVAL_S)
"""An outage is logged once per interval per dependency (and counted every time), not per request."""


STATEMENT_FAILURES = Counter(
    "app_database_statement_failures",
    "Statements PostgreSQL refused for a transient reason of their own (deadlock, serialization "
    "failure, lock or statement timeout), answered 503, by SQLSTATE",
    ["sqlstate"],
)
statement_warnings = OncePerInterval(DEPENDENCY_WARN_INTERVAL_S)

DOWN_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03")
"""SQLSTATEs of a PostgreSQL that cannot serve us: connection exceptions (class 08), insufficient
resources (class 53: too many connections, disk full, out of memory) and the server shutting down or
starting (admin shutdown, crash shutdown, cannot connect now)."""
DRIVER_REFUSALS = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)
"""psycopg errors without a SQLSTATE that psycopg raises itself for a value it cannot send (a NUL
byte in text, a number out of range): PostgreSQL was not even asked, so it is not down."""


def dependency_down(exc: BaseException) -> bool:
    """Whether ``exc`` (one the dependency-down handler answers) says a backing service is gone.

    True for the pool's errors (no connection within its timeout, a closed pool), a PostgreSQL error
    without a SQLSTATE (no server answered: refused, lost, our deadline on an unanswering server)
    other than the driver's own refusal of a value (``DRIVER_REFUSALS``), a SQLSTATE of
    ``DOWN_SQLSTATES`` and Valkey's connection failures and timeouts (``DEPENDENCY_FAILURES``). False
    for an error the server answered about our statement (deadlock, serialization failure, statement
    timeout, lock not available): the statement failed, the database is up — a fault of the code that
    ran it, not an outage; and for any other exception (a bug of ours is no outage, whoever asks: the
    site-key lookup, which catches everything, logged a TypeError as Valkey being down).
    """
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate is None:
            return not isinstance(exc, DRIVER_REFUSALS)
        return exc.sqlstate.startswith(DOWN_SQLSTATES)
    return isinstance(exc, DEPENDENCY_FAILURES)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def database_error(exc: BaseException) -> psycopg.Error | None:
    """The first of ``exc`` and its causes that is psycopg's (or its pool's), if any."""
    return next((cause for cause in causes(exc) if isinstance(cause, psycopg.Error)), None)


def database_down(exc: BaseException) -> bool:
    """Whether a failure says PostgreSQL is unreachable (``exc`` or one of its causes): a connection or
    pool error (``dependency_down``: psycopg's own refusal of a value, a ``DataError`` on a NUL byte
    without a SQLSTATE either, is not one). Work that goes on past a failed unit (a monitoring flush,
    a cron's order) stops on this one: the next unit would fail alike."""
    return any(isinstance(cause, psycopg.Error) and dependency_down(cause) for cause in causes(exc))


def dependency_of(exc: BaseException) -> str:
    """``postgresql`` or ``valkey``: which backing service ``exc`` says is unreachable."""
    return "postgresql" if isinstance(exc, psycopg.Error) else "valkey"


def report_dependency_down(
    exc: BaseException, source: str, event: str = "dependency_unavailable", **fields: Any
) -> None:
    """Count a failure to reach a backing service; log it (cause included, credentials masked) at
    most once per interval per dependency and source, with how many failures were held back since
    the last line (``repeated``): the line a minute into an outage tells how hard it hit."""
    dependency = dependency_of(exc)
    DEPENDENCY_UNAVAILABLE.labels(dependency, source).inc()
    repeated = dependency_warnings.admit(f"{dependency}:{source}")
    if repeated is not None:
        log.warning(
            event,
            dependency=dependency,
            source=source,
            error=type(exc).__name__,
            message=error_message(exc),
            repeated=repeated,
            **fields,
        )


@contextmanager
def ending_on_outage(source: str, event: str, **fields: Any) -> Iterator[None]:
    """Ends the block quietly when PostgreSQL or Valkey stops answering (one ``event`` line, rate
    limited as every dependency report): for a streamed answer, which has started and can only end
    (raised through, it was cut with granian's plain-text "exception caught after response started",
    no request id, no cause). An error the database answered about a statement is raised as ever."""
    try:
        yield
    except DEPENDENCY_FAILURES as exc:
        if not dependency_down(exc):
            raise
        report_dependency_down(exc, source, event=event, **fields)


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

    errors: list[FieldError] | None = None
    """The fields at fault, when the failure is about named input (the problem's ``errors``)."""

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


BEARER_CHALLENGE = 'Bearer realm="api"'
"""The challenge of a 401 whose raiser named none (RFC 9110 15.5.2: a 401 carries one): the API's
bearer tokens, the credentials ``POST /api/auth/login`` issues. Never Basic: a browser would prompt."""


class UnauthorizedError(AppError):
    """401, with ``WWW-Authenticate: Bearer realm="api"`` unless ``headers`` name a challenge of their
    own (``token_refused``'s ``invalid_token``): a wrong password or a bad refresh token too."""

    status = 401
    slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        if not any(name.lower() == "www-authenticate" for name in headers or ()):
            headers = {**(headers or {}), "WWW-Authenticate": BEARER_CHALLENGE}
        super().__init__(detail, headers=headers)

    @classmethod
    def token_refused(cls, detail: str) -> UnauthorizedError:
        """The 401 of a bearer token that no longer stands (its session revoked, its account
        deactivated): RFC 6750's ``invalid_token``, so a client signs in again."""
        return cls(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


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


class ClientDisconnectedError(AppError):
    """The client went away before its body was complete: its own doing, not a server fault, so a
    4xx (not logged as unhandled, not captured by error monitoring); nobody reads the answer."""

    status = 400
    slug = "client-disconnected"
    title = "Client disconnected"


HTTP_PROBLEMS: dict[int, tuple[str, str, str]] = {
    400: ("bad-request", "Bad request", "The request cannot be read as sent (its framing, a header)."),
    401: (
        "unauthorized",
        "Authentication required",
        "No valid credentials: sign in (`POST /api/auth/login`) and send the access token as "
        "`Authorization: Bearer <token>`; `WWW-Authenticate` says what was wrong with the one sent.",
    ),
    403: ("forbidden", "Forbidden", "The caller is known but may not do this (a role it lacks)."),
    404: (
        "not-found",
        "Not found",
        "No such resource, or none the caller may see: another user's object answers this too.",
    ),
    405: ("method-not-allowed", "Method not allowed", "The path takes other methods: `Allow` lists them."),
    409: ("conflict", "Conflict", "The request conflicts with the resource's current state."),
    413: ("payload-too-large", "Request body too large", "The body is larger than the route accepts."),
    414: (
        "uri-too-long",
        "Request line too long",
        "The request line (path and query) is longer than the server accepts.",
    ),
    415: (
        "unsupported-media-type",
        "Unsupported media type",
        "The body's `Content-Type` (or coding) is not one the route takes: `Accept-Post`, "
        "`Accept-Patch` or `Accept-Encoding` says which.",
    ),
    422: ("unprocessable", "Unprocessable request", "Well-formed, but not something the service can do."),
    429: (
        "rate-limited",
        "Too many requests",
        "A rate limit is spent: retry after `Retry-After` seconds (`RateLimit` says what is left).",
    ),
    500: ("internal", "Internal server error", "A fault of the server; the request id finds it in the logs."),
    501: (
        "not-implemented",
        "Not implemented",
        "The gateway does not support this request (its transfer coding).",
    ),
    502: (
        "bad-gateway",
        "Bad gateway",
        "The API did not answer the gateway. The request may have been processed: repeat a change only "
        "with its `Idempotency-Key`, or check first.",
    ),
    503: (
        "service-unavailable",
        "Service unavailable",
        "A backing service does not answer now: retry after `Retry-After` seconds.",
    ),
    504: (
        "gateway-timeout",
        "Gateway timeout",
        "The API did not answer the gateway in time. The request may have been processed: repeat a "
        "change only with its `Idempotency-Key`, or check first.",
    ),
    505: ("http-version-not-supported", "HTTP version not supported", "Use HTTP/1.1 (or HTTP/1.0)."),
}
"""The problem type of each HTTP status the handlers map, and of the gateway's own answers
(``deploy/nginx.conf``): slug, title, and what it means (its page)."""

HANDLER_PROBLEMS: dict[str, tuple[int, str, str]] = {
    "validation": (
        400,
        "Invalid request",
        "Parameters or a body that break the documented rules: `errors` names each field at fault "
        "(`query.limit`, `header.Idempotency-Key`, `views[3].url`) and what it must be.",
    ),
    "invalid-cursor": (
        400,
        "Invalid cursor",
        "The `cursor` is no position of this list: start again from the first page and follow each "
        "page's `next_cursor`.",
    ),
    "unstorable-value": (
        400,
        "Value out of range",
        "A value in the request is outside what the API can store; see the documented limits.",
    ),
}
"""The problem types the handlers below name themselves: status, title, and what it means."""


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
    default_slug, default_title, _ = HTTP_PROBLEMS.get(status, ("error", "Error", ""))
    body = Problem(
        type=problem_type(slug or default_slug),
        title=title or default_title,
        status=status,
        detail=detail,
        instance=request.scope["path"],
        request_id=request_id_of(request),
        errors=errors,
    )
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _parameter(request: Request[Any, Any, Any], key: str) -> Any:
    """The handler's declared parameter (its ``kwarg_definition``) named ``key`` in Python, if any."""
    handler = request.scope.get("route_handler")
    signature = getattr(handler, "parsed_fn_signature", None)
    field = signature.parameters.get(key) if signature is not None else None
    return getattr(field, "kwarg_definition", None)


def _wire_name(request: Request[Any, Any, Any], key: str) -> str:
    """The name a client sends for the handler parameter ``key`` (``idempotency_key`` is the header
    ``Idempotency-Key``): Litestar reports the Python name."""
    alias = getattr(_parameter(request, key), "name", None)
    return alias if isinstance(alias, str) else key


def _parameter_message(request: Request[Any, Any, Any], key: str, message: str) -> str:
    """Litestar's (msgspec's) message about a parameter, unless the parameter broke a declared
    pattern we can word: the rule comes from the declaration, not from the message's text, which
    only tells which constraint failed (msgspec's ``matching regex``; a length is reported as is)."""
    pattern = getattr(_parameter(request, key), "pattern", None)
    if not isinstance(pattern, str) or "matching regex" not in message:
        return message
    meaning = pattern_meaning(pattern)
    if meaning is not None:
        return meaning
    if key.endswith("cursor"):
        return f"not a position of this list: pass a page's next_cursor (pattern {pattern})"
    return message


def _missing_parameter(request: Request[Any, Any, Any], exc: ValidationException) -> FieldError | None:
    """Litestar raises "missing required parameter" from the ``KeyError`` of the alias it looked up."""
    cause = exc.__cause__
    if not isinstance(cause, KeyError) or not cause.args:
        return None
    alias = str(cause.args[0])
    handler = request.scope.get("route_handler")
    signature = getattr(handler, "parsed_fn_signature", None)
    for name, field in signature.parameters.items() if signature is not None else ():
        kwarg = getattr(field, "kwarg_definition", None)
        declared = getattr(kwarg, "name", None) or name
        if isinstance(kwarg, HeaderParameter | CookieParameter):
            source = "header" if isinstance(kwarg, HeaderParameter) else "cookie"
            if declared.lower() == alias.lower():  # header names arrive lower-cased
                return FieldError(field=f"{source}.{declared}", message="Required")
        elif declared == alias:
            return FieldError(field=f"query.{alias}", message="Required")
    return FieldError(field=alias, message="Required")


def _validation_errors(request: Request[Any, Any, Any], exc: ValidationException) -> list[FieldError]:
    """Fields from Litestar's structured ``extra`` (source, key, message); a body error is named
    ``body`` here and replaced by the per-field re-check of the body (``_all_body_errors``)."""
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
    errors: list[FieldError] = []
    for item in extra:
        if not isinstance(item, dict):
            errors.append(FieldError(field="body", message=str(item)))
            continue
        source = getattr(item.get("source"), "value", item.get("source"))
        key = str(item.get("key") or "")
        message = str(item.get("message") or exc.detail)
        if key == "data" and not _body_of(request):
            # Litestar looked the body up as its ``data`` parameter: the message is that KeyError's.
            errors.append(FieldError(field="body", message=NO_BODY))
        elif source in (None, "body") or key in ("", "data"):
            errors.append(FieldError(field="body", message=message))
        else:
            errors.append(
                FieldError(
                    field=f"{source}.{_wire_name(request, key)}",
                    message=_parameter_message(request, key, message),
                )
            )
    if not errors:
        missing = _missing_parameter(request, exc)
        errors.append(missing or FieldError(field="body", message=exc.detail))
    return errors


NO_BODY = "Required: a JSON body"


def _body_of(request: Request[Any, Any, Any]) -> bytes:
    """The body as Litestar read it (and size-checked it); empty when it read none."""
    body = ScopeState.from_scope(request.scope).body
    return body if isinstance(body, bytes) else b""


VALIDATION_FAILED = "validation_failed"
"""Scope-state flag set on a request refused by validation (the rate limiter refunds its token,
unless ``BODY_REFUSED`` is set too or the request did database work first: ``app.core.gate``)."""
BODY_REFUSED = "body_refused"
"""Scope-state flag set on a request refused for its body: the rate limiter charges it (a body costs
its decoding and the naming of its faults, up to the route's size limit: not a free retry)."""
FIRST_BODY_FAULT_ONLY = "first_body_fault_only"
"""Scope-state flag the rate limiter sets on a request over quota: a bad body is refused with the
fault msgspec found in its one pass, without the walk that names every bad field."""


MAX_REPORTED_CHARS = 200
"""Longest field name or message echoed back (a client-chosen key is not repeated in full)."""


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_REPORTED_CHARS else text[: MAX_REPORTED_CHARS - 1] + "…"


def _validation_problem(
    request: Request[Any, Any, Any], errors: list[FieldError], *, unlisted: int = 0, counted: bool = True
) -> Response[Problem]:
    """The 400 naming the bad fields: at most ``MAX_REPORTED_ERRORS`` of them, each bounded, so a
    body of thousands of unknown keys is not echoed back (the answer stays small whatever was sent).
    ``detail`` says how many more there are (``unlisted`` beyond ``errors``), or only that there are
    more when they were not all counted (the walk stops at the first past those listed)."""
    request.scope.setdefault("state", {})[VALIDATION_FAILED] = True
    # A bad cursor alone keeps its own type: a client that sees it restarts from the first page.
    only_cursor = bool(errors) and all(error.field == "query.cursor" for error in errors)
    shown = [
        FieldError(field=_bounded(e.field), message=_bounded(e.message)) for e in errors[:MAX_REPORTED_ERRORS]
    ]
    detail = "; ".join(f"{e.field}: {e.message}" for e in shown)
    more = len(errors) - len(shown) + unlisted
    if more and counted:
        detail += f"; and {more} more errors (the first {len(shown)} are listed)"
    elif more:
        detail += f"; and more errors, not counted (the first {len(shown)} are listed)"
    slug = "invalid-cursor" if only_cursor else "validation"
    return problem_response(
        request, HTTP_400_BAD_REQUEST, slug=slug, title=HANDLER_PROBLEMS[slug][1], detail=detail, errors=shown
    )


class InvalidFieldsError(ValidationException):
    """Raised by code that validates a request itself (the ingest path decodes its own bodies): the
    bad fields are already named (``url``, ``views[3].title``) and answered as the validation 400.
    ``unlisted`` and ``counted`` say what is known of the errors past ``errors`` (``of_body``);
    ``about_body``, that the body is at fault (the rate limiter charges the request, ``BODY_REFUSED``)."""

    def __init__(
        self,
        errors: list[FieldError],
        *,
        unlisted: int = 0,
        counted: bool = True,
        about_body: bool = False,
    ) -> None:
        super().__init__(detail="; ".join(f"{error.field}: {error.message}" for error in errors))
        self.errors = errors
        self.unlisted = unlisted
        self.counted = counted
        self.about_body = about_body

    @classmethod
    def of_body(cls, found: BodyErrors, otherwise: FieldError) -> InvalidFieldsError:
        """The 400 of a body's bad fields as ``body_errors`` found them (``otherwise`` if none)."""
        errors = [FieldError(field=field, message=message) for field, message in found.listed]
        if not errors:
            return cls([otherwise], about_body=True)
        return cls(errors, unlisted=found.unlisted, counted=found.counted, about_body=True)


def _handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    if isinstance(exc, InvalidFieldsError):
        if exc.about_body:
            request.scope.setdefault("state", {})[BODY_REFUSED] = True
        return _validation_problem(request, exc.errors, unlisted=exc.unlisted, counted=exc.counted)
    errors = _validation_errors(request, exc)
    if any(error.field == "body" for error in errors):
        state = request.scope.setdefault("state", {})
        state[BODY_REFUSED] = True
        found = None if state.get(FIRST_BODY_FAULT_ONLY) else _all_body_errors(request)
        if found is not None and found.listed:
            listed = [FieldError(field=field, message=message) for field, message in found.listed]
            return _validation_problem(request, listed, unlisted=found.unlisted, counted=found.counted)
    return _validation_problem(request, errors)


def _all_body_errors(request: Request[Any, Any, Any]) -> BodyErrors | None:
    """The bad body fields, when the handler takes a Struct body or a tagged union of Structs
    (msgspec reports only the first): the first ``MAX_REPORTED_ERRORS`` and how many more
    (``body_errors``, whose work that bounds)."""
    handler = request.scope.get("route_handler")
    data_field = getattr(handler, "parsed_data_field", None)
    body_type = getattr(data_field, "annotation", None)
    if body_type is None or not walks(body_type):
        return None
    try:
        decoded = decode_any(_body_of(request))
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return body_errors(body_type, decoded, limit=MAX_REPORTED_ERRORS)


def app_error_response(request: Request[Any, Any, Any], exc: AppError) -> Response[Problem]:
    """The problem answer of ``exc`` (the exception handler's, and the route layer's answers in a
    route's place)."""
    return problem_response(
        request,
        exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
    )


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if exc.status_code >= HTTP_500_INTERNAL_SERVER_ERROR:
        return _handle_unexpected(request, exc)
    if isinstance(exc.__cause__, SerializationException):
        # The body could not be decoded at all (malformed JSON): no field to name but the body.
        request.scope.setdefault("state", {})[BODY_REFUSED] = True
        return _validation_problem(
            request, [FieldError(field="body", message=f"Malformed JSON: {exc.detail}")]
        )
    default_title = HTTP_PROBLEMS.get(exc.status_code, ("", "", ""))[1]
    detail = (
        None
        if exc.detail.lower() in {default_title.lower(), HTTPStatus(exc.status_code).phrase.lower()}
        else exc.detail
    )
    return problem_response(request, exc.status_code, detail=detail, headers=exc.headers)


def _route(request: Request[Any, Any, Any]) -> str | None:
    """The matched route's template (``/api/projects/{project_id:int}``), None when nothing matched."""
    return request.scope.get("path_template")


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    user_id = getattr(request.scope.get("user"), "id", None)
    log.exception(
        "unhandled_error",
        path=request.scope["path"],
        route=_route(request),
        method=request.method,
        error=type(exc).__name__,
        **({"user_id": user_id} if user_id is not None else {}),
    )
    return problem_response(request, HTTP_500_INTERNAL_SERVER_ERROR)


def _handle_unstorable(request: Request[Any, Any, Any], exc: psycopg.DataError) -> Response[Problem]:
    """A backstop: a value PostgreSQL refuses (out of range, NUL in text) is the client's 400.

    Input types are bounded so that this never happens (a 400 then names the field); reaching it
    means a bound is missing, hence the warning with the SQLSTATE.
    """
    log.warning(
        "unstorable_value",
        path=request.scope["path"],
        method=request.method,
        error=type(exc).__name__,
        sqlstate=exc.sqlstate,
    )
    _, title, detail = HANDLER_PROBLEMS["unstorable-value"]
    return problem_response(
        request, HTTP_400_BAD_REQUEST, slug="unstorable-value", title=title, detail=detail
    )


def handle_dependency_down(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """A backing service's failure (``DEPENDENCY_FAILURES``): 503 with ``Retry-After``, logged and counted
    as an outage of the service, or as a failed statement when the service answered (a deadlock)."""
    if not dependency_down(exc):
        return _handle_statement_failed(request, exc)
    report_dependency_down(exc, "request", method=request.method, route=_route(request))
    return problem_response(
        request,
        503,
        detail="A backing service is unavailable; retry shortly.",
        headers={"Retry-After": "5"},
    )


QUERY_CANCELED = "57014"
"""A statement cut by ``statement_timeout`` (or cancelled): no conflict with another request."""


def _handle_statement_failed(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """A deadlock victim, a serialization failure, a lock or statement timeout: nothing of the request
    was applied, and retrying is right for the client (503). Logged as what it is (once per interval
    per SQLSTATE and route), never as the database being unavailable: a deadlock is a bug of the code
    that ran into it, and the outage's metric and warning must not fire for it."""
    sqlstate = getattr(exc, "sqlstate", None) or "unknown"
    route = _route(request)
    STATEMENT_FAILURES.labels(sqlstate).inc()
    repeated = statement_warnings.admit(f"{sqlstate}:{route}")
    if repeated is not None:
        log.warning(
            "database_statement_failed",
            sqlstate=sqlstate,
            error=type(exc).__name__,
            message=error_message(exc),
            method=request.method,
            route=route,
            repeated=repeated,
        )
    if sqlstate == QUERY_CANCELED:
        detail, retry_after = (
            "The request took longer than the database allows a statement and was not applied; retry "
            "later, or ask for less.",
            "5",
        )
    else:
        detail, retry_after = "The request ran into a concurrent one and was not applied; retry.", "1"
    return problem_response(request, 503, detail=detail, headers={"Retry-After": retry_after})


DEPENDENCY_FAILURES: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    valkey.exceptions.ConnectionError,
    valkey.exceptions.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""What ``handle_dependency_down`` answers: the database's or Valkey's failures."""

exception_handlers: ExceptionHandlersMap = {
    **dict.fromkeys(DEPENDENCY_FAILURES, handle_dependency_down),
    psycopg.DataError: _handle_unstorable,
    ValidationException: _handle_validation,
    AppError: app_error_response,
    HTTPException: _handle_http,
    Exception: _handle_unexpected,
}

__all__ = [
    "BEARER_CHALLENGE",
    "BODY_REFUSED",
    "DEPENDENCY_FAILURES",
    "DRIVER_REFUSALS",
    "FIRST_BODY_FAULT_ONLY",
    "MAX_REPORTED_ERRORS",
    "NO_BODY",
    "PROBLEM_MEDIA_TYPE",
    "VALIDATION_FAILED",
    "AppError",
    "ConflictError",
    "FieldError",
    "ForbiddenError",
    "InvalidFieldsError",
    "NotFoundError",
    "Problem",
    "ServiceUnavailableError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnprocessableError",
    "database_down",
    "dependency_down",
    "exception_handlers",
    "handle_dependency_down",
    "problem_response",
    "report_dependency_down",
]
