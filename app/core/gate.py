"""The route layer of the request pipeline: what a request needs depends on its route, decided once.

Litestar builds one ``RouteGate`` per route handler when the application starts. On the handler's
first request the gate resolves its ``RoutePlan`` (``GateConfig.plan``; ``GateConfig.prepare``
resolves them all at start-up, so a misconfigured route fails then): whether to authenticate, which
rate-limit policy, whether the dashboard's same-origin rule applies, whether to compress, whether to
count the request in ``app_requests_in_progress``. A route that needs none of it (``/health/live``)
costs one attribute test per request.

- Authentication: the bearer token is verified (``GateConfig.authenticate``, given by the accounts
  domain) and the caller, or None, goes to ``scope["user"]``; a bad token is a 401 on every route
  that authenticates. Routes that do not: the operational ones (``/health``, ``/metrics``,
  ``/schema``), routes with ``opt={"authenticate": False}``, and routes that opted out of rate limits
  (``opt={"rate_limit": None}``, e.g. the page-view ingest, which keys its own limits by site) and
  neither declare guards nor take ``current_user`` (directly or through a dependency).
  ``opt={"authenticate": True}`` forces it. A refused token is charged before its 401, to the client
  address's key (the key of the address's anonymous requests; a valid user's own key is untouched)
  under the route's policy, or ``default`` on a route that authenticates without one (logout, the
  dashboard: a valid caller is never limited there, a refused token is; ``refused_token_policy``):
  each check costs a signature, and while the revocation listener is disconnected a query for a
  validly signed token, and bad tokens were checked without limit. Over that quota the answer is the
  429, not the 401: a 429 can hide a 401 for a bad token. The token was checked all the same (the
  refusal is known only then), but the address has spent its quota and is answered as its anonymous
  requests are, with a ``Retry-After`` to wait rather than a 401 to act on at once; the usual answer
  to a 401, a refresh, is limited under that same address key. No 400 is hidden so: the token is
  checked before the request is validated, so a bad token is a 401 whatever its parameters. With
  Valkey down the 401 is answered (it lets nothing through: neither fail-open nor a 503 applies).
- Rate limits (``app.core.ratelimit``): by the route's ``opt["rate_limit"]`` policy (``default``
  when absent, none for ``None``), per caller (or per client address). Under ``EXEMPT_PATHS`` only
  the default is dropped: a route there that names its policy keeps it (the dashboard's sign-in,
  ``POST /saq/login``, an argon2 check and a new session each, is ``auth`` like the API's), while the
  dashboard's pages, assets and polling API, which name none, are never limited.
  The token is taken before the body is read. Over quota, a request is still validated before its
  429 (the contract: a 429 never hides a 400, so a client is not sent to wait for a retry that must
  fail), but only as far as is cheap: its guards and parameters (bounded by the header limits), and
  its body by msgspec's one pass to its first fault (``FIRST_BODY_FAULT_ONLY``), never by the walk
  that names every bad field. Under quota, a request refused for its parameters (or headers) before
  any database work is refunded: a typo in a query string should not cost the quota, and such a
  refusal costs no more than a 429. One refused after database work is charged: Litestar resolves a
  route's dependencies before it validates the handler's own parameters (a site report's
  ``provide_window`` looks the site up before a bad ``interval`` is refused), and services refuse
  input they can only judge from the database (a report period's ``to`` before its ``from``, past the
  retention); refunded, such refusals were free database work without end. The gate hands the state
  of every request under a policy to ``app.core.db.watch_database_use`` (before the token is checked,
  which may read the database too), and every unit of work sets ``DATABASE_USED`` in it when it
  borrows its connection. A request refused for its body is charged too (``BODY_REFUSED``): a body
  is the client's to make as large as the route admits, its decoding and the naming of its faults
  cost in proportion, and the refund let a client be refused without end (each refusal walked in
  full: 12 s of CPU for a 460 KB batch of bad views). So is a body refused for its declared type or
  coding (415, ``app.core.routing``); like a 400, it is answered before an over-quota 429.
- Same origin: unsafe requests to the SAQ dashboard (``/saq``: its actions, its sign-in and
  sign-out), which accepts a session cookie that browsers send on their own (also ``SameSite=Strict``),
  must come from the dashboard's own origin (``Sec-Fetch-Site``, else ``Origin`` against ``Host``); a
  cross-site one is a 403 problem (CSRF).
- Conditions without versions: a request carrying ``If-Match`` to an authenticated route that takes
  none (its resource has no entity-tag: a comment, a membership, a collection, a list) is a 412
  ``precondition-failed`` in place of the route, once authenticated and counted by the rate limit,
  unless the value is ``*`` (RFC 9110 13.1.1: no tag can match a resource without one); so is an
  unsafe one carrying ``If-None-Match: *`` (13.1.2: the resource exists). A malformed value is a 400
  naming its header, as on a versioned route, but answered before the rate limit (uncharged, as the
  limiter refunds a refused header; without its headers). The conditions were ignored and the change
  applied unconditionally. The 412 comes before the route's own 403/404 (which RFC 9110 13.2.1 would
  put first): it is the same for every target, so it tells nothing about one. Left out: the anonymous
  routes (the page-view ingest, the payment webhook: nothing a client holds a version of, and the
  ingest's plan stays empty) and the routes without a rate limit (logout: ending a session must
  always be possible).
- Compression (``app.core.compression.ResponseCompression``) except under the ``compression.exclude``
  prefixes; always through ``EncodedResponsePassThrough`` (never re-encoding an encoded answer, e.g.
  the dashboard's ``*.js.gz``), whatever ``compression.middleware_class`` says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from litestar import Litestar, Request
from litestar.config.compression import CompressionConfig
from litestar.enums import ScopeType
from litestar.handlers import BaseRouteHandler
from litestar.params import ParameterKwarg
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_429_TOO_MANY_REQUESTS
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.core.auth import CurrentUser
from app.core.compression import ResponseCompression
from app.core.db import DATABASE_USED, unwatch_database_use, watch_database_use
from app.core.errors import (
    BODY_REFUSED,
    FIRST_BODY_FAULT_ONLY,
    VALIDATION_FAILED,
    ForbiddenError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
    app_error_response,
)
from app.core.metrics import RequestMetrics
from app.core.openapi import finish_documentation
from app.core.preconditions import PreconditionFailedError, parse_preconditions
from app.core.ratelimit import (
    DEFAULT_POLICY,
    EXEMPT_PATHS,
    FAIL_CLOSED_RETRY_AFTER_S,
    OPT_KEY,
    PER_SESSION_OPT_KEY,
    RATE_LIMIT_FAIL_OPEN,
    VALKEY_DOWN,
    Decision,
    FailOpenWarnings,
    Policy,
    RateLimiter,
    RouteValidator,
    address_key,
    policy_header,
    rate_limit_headers,
    rate_limit_key,
)
from app.core.routing import reads_body, reads_json_data

AUTHENTICATE_OPT = "authenticate"
ANONYMOUS_PATHS = ("/health", "/metrics", "/schema")
"""Operational routes: never authenticated (a token sent there is ignored)."""
SAME_ORIGIN_PATHS = ("/saq",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CALLER = "current_user"

Authenticate = Callable[[str], Awaitable[CurrentUser]]


@dataclass(frozen=True, slots=True)
class RoutePlan:
    authenticate: bool = False
    policy: Policy | None = None
    token_policy: Policy | None = None
    """What a refused bearer token is charged under (``refused_token_policy``)."""
    policy_header: tuple[bytes, bytes] | None = None
    per_session: bool = False
    """The policy counts a signed-in caller per session (``PER_SESSION_OPT_KEY``), not per user."""
    same_origin: bool = False
    judges_conditions: bool = False
    """An authenticated, rate-limited route that takes no ``If-Match`` (``takes_if_match``): its
    resource has no versions, and its conditions are judged here (``_unmet_condition``)."""
    compress: bool = False
    measure: bool = False

    @property
    def passes(self) -> bool:
        """Nothing to do: the request goes straight to the handler."""
        return not (
            self.authenticate
            or self.policy
            or self.same_origin
            or self.judges_conditions
            or self.compress
            or self.measure
        )


def _under(paths: Iterable[str], prefixes: Iterable[str]) -> bool:
    """Every path is one of the prefixes or below one."""
    prefixes = tuple(prefixes)
    return all(any(path == p or path.startswith(f"{p}/") for p in prefixes) for path in paths)


def _uses_caller(handler: BaseRouteHandler) -> bool:
    """The handler takes ``current_user``, itself or through one of its dependencies."""
    dependencies = handler.resolve_dependencies()
    seen: set[str] = set()
    names = list(handler.parsed_fn_signature.parameters)
    while names:
        name = names.pop()
        if name == CALLER:
            return True
        if name in seen or name not in dependencies:
            continue
        seen.add(name)
        names.extend(dependencies[name].parsed_fn_signature.parameters)
    return False


def authenticates(handler: BaseRouteHandler, path: str) -> bool:
    """Whether the gate verifies a bearer token for ``handler`` serving ``path`` (see the module's
    docstring): the one decision behind both the requests' 401 and the documented one."""
    opt: Mapping[str, Any] = handler.opt or {}
    forced = opt.get(AUTHENTICATE_OPT)
    if forced is not None:
        return bool(forced)
    if _under((path,), ANONYMOUS_PATHS):
        return False
    return not (
        opt.get(OPT_KEY, DEFAULT_POLICY) is None
        and not handler.resolve_guards()
        and not _uses_caller(handler)
    )


def takes_if_match(handler: BaseRouteHandler) -> bool:
    """Whether ``handler`` reads an ``If-Match`` header (``app.core.preconditions.IfMatchHeader``)."""
    return any(
        isinstance(kwarg, ParameterKwarg)
        and "if-match" in (str(kwarg.header).lower(), str(getattr(kwarg, "name", "")).lower())
        for kwarg in (field.kwarg_definition for field in handler.parsed_fn_signature.parameters.values())
    )


def _unmet_condition(scope: Scope, method: str) -> str | None:
    """Why a condition of the request is false on a route whose resource has no versions, None when
    none is: an ``If-Match`` that lists entity-tags (none can match; ``*`` holds, it exists: 13.1.1),
    or on an unsafe method ``If-None-Match: *`` (it exists: 13.1.2; a list of tags holds, none can name
    it; a read ignores it, its whole answer is always right). A malformed one is the 400 a versioned
    route answers (``parse_preconditions``). Several lines of a header are one list."""
    if_match: list[str] = []
    if_none_match: list[str] = []
    for name, value in scope["headers"]:
        if name == b"if-match":
            if_match.append(value.decode("latin-1"))
        elif name == b"if-none-match":
            if_none_match.append(value.decode("latin-1"))
    unsafe = method not in SAFE_METHODS
    if not if_match and not (unsafe and if_none_match):
        return None
    conditions = parse_preconditions(
        ", ".join(if_match) if if_match else None,
        ", ".join(if_none_match) if unsafe and if_none_match else None,
    )
    if conditions is None:
        return None
    if conditions.if_match is not None and not conditions.if_match.any:
        return "This resource has no versions (no ETag): If-Match can only be `*` here."
    if conditions.if_none_match is not None and conditions.if_none_match.any:
        # Not looked up: a change here acts only on what exists (a POST on its collection), so it
        # could only be this 412 or the route's 404.
        return "If-None-Match is `*`, and this route changes only what exists."
    return None


async def _refuse_unmet(reason: str, scope: Scope, receive: Receive, send: Send) -> None:
    """In place of the route: its condition is false (``_unmet_condition``). Answered here, not
    raised: its answer passes the rate limit's ``send`` (its ``RateLimit`` headers), as the route's
    own would."""
    refusal = PreconditionFailedError(f"{reason} Nothing was done.")
    request: Request[Any, Any, Any] = Request(scope, receive, send)
    await app_error_response(request, refusal).to_asgi_response(app=None, request=request)(
        scope, receive, send
    )


def rate_limit_policy(handler: BaseRouteHandler, path: str) -> str | None:
    """The name of the rate-limit policy of ``handler`` serving ``path`` (see the module's docstring),
    rate limits enabled: the one decision behind both the requests' 429 and the documented one."""
    opt: Mapping[str, Any] = handler.opt or {}
    if OPT_KEY in opt:  # the route's own choice, wherever it is
        name: str | None = opt[OPT_KEY]
        return name
    return None if _under((path,), EXEMPT_PATHS) else DEFAULT_POLICY


def refused_token_policy(handler: BaseRouteHandler, path: str) -> str | None:
    """The name of the policy a bearer token refused on ``handler`` serving ``path`` is charged under,
    rate limits enabled (see the module's docstring): the route's own, else ``default``, since every
    token checked costs the same wherever it is read; None where the gate reads no token."""
    if not authenticates(handler, path):
        return None
    return rate_limit_policy(handler, path) or DEFAULT_POLICY


@dataclass
class GateConfig:
    """Everything the route layer needs, built once by ``create_app``."""

    authenticate: Authenticate
    limiter: RateLimiter
    policies: Mapping[str, Policy]
    rate_limits_enabled: bool
    warn_interval_s: float
    compression: CompressionConfig | None = None
    metrics: RequestMetrics | None = None
    validator: RouteValidator = field(default_factory=RouteValidator)
    _plans: dict[tuple[int, str], tuple[BaseRouteHandler, RoutePlan]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.warnings = FailOpenWarnings(self.warn_interval_s)
        self.compression_exclude: tuple[str, ...] = ()
        self.compressor: ResponseCompression | None = None
        if self.compression is not None:
            exclude = self.compression.exclude
            self.compression_exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
            # The gate decides per route; the middleware itself then never matches paths per request.
            self.compression = dataclasses.replace(self.compression, exclude=None)
            self.compressor = ResponseCompression(self.compression)

    def plan(self, handler: BaseRouteHandler, path: str) -> RoutePlan:
        """The plan of ``handler`` serving the route ``path`` (its template)."""
        known = self._plans.get((id(handler), path))
        if known is None or known[0] is not handler:
            known = self._plans[(id(handler), path)] = (handler, self._decide(handler, path))
        return known[1]

    def prepare(self, app: Litestar) -> None:
        """Decide every route's plan now (an unknown rate-limit policy fails the start-up) and finish
        each route's documentation from it (``finish_documentation``)."""
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                for handler, _ in route.route_handler_map.values():
                    plan = self.plan(handler, route.path_format)
                    finish_documentation(
                        handler,
                        reads_token=plan.authenticate,
                        rate_limited=plan.policy is not None,
                        judges_conditions=plan.judges_conditions,
                        reads_body=reads_body(handler),
                        reads_json_data=reads_json_data(handler),
                    )

    def _decide(self, handler: BaseRouteHandler, path: str) -> RoutePlan:
        paths = (path,)
        policy_name = rate_limit_policy(handler, path)
        policy = self._policy(policy_name, handler)
        methods: set[str] = set(getattr(handler, "http_methods", ()))
        return RoutePlan(
            authenticate=authenticates(handler, path),
            policy=policy,
            token_policy=self._policy(refused_token_policy(handler, path), handler),
            policy_header=(b"ratelimit-policy", policy_header(policy).encode()) if policy else None,
            per_session=bool((handler.opt or {}).get(PER_SESSION_OPT_KEY)),
            same_origin=_under(paths, SAME_ORIGIN_PATHS) and bool(methods - SAFE_METHODS),
            judges_conditions=authenticates(handler, path)
            and policy_name is not None  # logout: ending a session always works
            and not takes_if_match(handler),
            compress=self.compression is not None and not _under(paths, self.compression_exclude),
            measure=self.metrics is not None and all(self.metrics.measures(path) for path in paths),
        )

    def _policy(self, name: str | None, handler: BaseRouteHandler) -> Policy | None:
        if name is None or not self.rate_limits_enabled:
            return None
        policy = self.policies.get(name)
        if policy is None:
            raise ValueError(f"unknown rate-limit policy {name!r} in the opt of {handler}")
        return policy


class RouteGate:
    """Litestar middleware (``DefineMiddleware(RouteGate, config=...)``): one instance per route."""

    __slots__ = ("_gauges", "_handler", "_plan", "app", "config")

    def __init__(self, app: ASGIApp, config: GateConfig) -> None:
        self.app = app
        self.config = config
        self._handler: BaseRouteHandler | None = None
        self._plan = RoutePlan()
        self._gauges: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        handler = scope["route_handler"]
        if handler is not self._handler:  # the first request of this route
            self._plan = self.config.plan(handler, scope["path_template"])
            self._handler = handler
        plan = self._plan
        if plan.passes:
            await self.app(scope, receive, send)
            return
        gauge = self._gauge(scope) if plan.measure else None
        if gauge is not None:
            gauge.inc()
        watch = watch_database_use(scope["state"]) if plan.policy is not None else None
        try:
            if plan.authenticate:
                try:
                    scope["user"] = await self._caller(scope)
                except UnauthorizedError as refused:
                    if plan.token_policy is not None:
                        await self._charge_refused_token(plan.token_policy, scope, refused)
                    raise
            app = self.app
            # anonymous: the guards' 401; counted by the rate limit as the route would be
            if (
                plan.judges_conditions
                and scope.get("user") is not None
                and (reason := _unmet_condition(scope, scope["method"])) is not None
            ):
                app = partial(_refuse_unmet, reason)
            if plan.same_origin and scope["method"] not in SAFE_METHODS:
                _require_same_origin(scope)
            if plan.compress and self.config.compressor is not None:
                send = self.config.compressor.send_for(scope, send)
            if plan.policy is not None:
                await self._limited(plan, scope, receive, send, app)
            else:
                await app(scope, receive, send)
        finally:
            if watch is not None:
                unwatch_database_use(watch)
            if gauge is not None:
                gauge.dec()

    def _gauge(self, scope: Scope) -> Any:
        key = (scope["method"], scope["path_template"])  # type: ignore[typeddict-item]
        gauge = self._gauges.get(key)
        if gauge is None and self.config.metrics is not None:
            gauge = self._gauges[key] = self.config.metrics.in_progress(*key)
        return gauge

    async def _caller(self, scope: Scope) -> CurrentUser | None:
        """The bearer token's caller; None without one. ``Authorization`` is a singleton field (RFC
        9110 11.6.2): two are refused as a bad token is, as a proxy in front might have read the other
        one (the first was taken, the rest ignored)."""
        credentials: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if credentials is not None:
                    invalid = {"WWW-Authenticate": 'Bearer error="invalid_request"'}
                    raise UnauthorizedError("Send one Authorization header.", headers=invalid)
                credentials = value
        if credentials is None:
            return None
        scheme, _, token = credentials.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return await self.config.authenticate(token)
        return None

    async def _charge_refused_token(self, policy: Policy, scope: Scope, refused: UnauthorizedError) -> None:
        """Spend a token of the client address's quota for a request whose bearer token was refused:
        its 401 then shows what is left, and over quota it is a 429 (see the module's docstring)."""
        config = self.config
        try:
            decision = await config.limiter.hit(policy, address_key(scope))
        except VALKEY_DOWN as exc:  # the 401 lets nothing through: neither passed open nor a 503
            config.warnings.warn(policy, exc)
            return
        if not decision.allowed:
            raise _over_quota(policy, decision)
        refused.headers = {**refused.headers, **rate_limit_headers(policy, decision)}

    async def _limited(
        self, plan: RoutePlan, scope: Scope, receive: Receive, send: Send, app: ASGIApp
    ) -> None:
        config = self.config
        policy = plan.policy
        assert policy is not None and plan.policy_header is not None
        key = rate_limit_key(scope, per_session=plan.per_session)
        try:
            decision = await config.limiter.hit(policy, key)
        except VALKEY_DOWN as exc:
            config.warnings.warn(policy, exc)
            if policy.fail_closed:
                raise ServiceUnavailableError(
                    "Rate limiting is unavailable; retry shortly.",
                    headers={"Retry-After": str(FAIL_CLOSED_RETRY_AFTER_S)},
                ) from exc
            RATE_LIMIT_FAIL_OPEN.labels(policy=policy.name).inc()
            await app(scope, receive, send)
            return
        if not decision.allowed:
            scope["state"][FIRST_BODY_FAULT_ONLY] = True
            await config.validator.validate(scope, receive, send)
            raise _over_quota(policy, decision)
        state = scope["state"]
        policy_field = plan.policy_header

        def refunded() -> bool:
            """Refused for its parameters, not its body, before any database work (see the module's
            docstring)."""
            failed = state.get(VALIDATION_FAILED)
            return bool(failed) and not state.get(BODY_REFUSED) and not state.get(DATABASE_USED)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), policy_field]
                # A 429 of the route's own (the login throttle) says when to retry in Retry-After; the
                # quota this policy leaves beside it told the client to retry at once.
                if message["status"] != HTTP_429_TOO_MANY_REQUESTS:
                    # A request refused by validation (no body, no database) is refunded below: show
                    # the quota it leaves.
                    remaining = decision.remaining + 1 if refunded() else decision.remaining
                    field = f'"{policy.name}-{decision.window}";r={remaining};t={decision.reset_s}'
                    headers.append((b"ratelimit", field.encode()))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_headers)
        if refunded():
            config.limiter.refund(policy, key, decision)


def _over_quota(policy: Policy, decision: Decision) -> TooManyRequestsError:
    return TooManyRequestsError(
        f"Rate limit {policy.name}-{decision.window} exceeded; retry in {decision.retry_after_s} s.",
        headers=rate_limit_headers(policy, decision),
    )


def _require_same_origin(scope: Scope) -> None:
    """Refuse an unsafe request a browser sent from another site (CSRF); see the module docstring.

    ``Sec-Fetch-Site`` (every current browser) decides when present; else ``Origin`` must name this
    host. A request with neither did not come from a browser page (browsers send ``Origin`` with
    every POST), so nothing can have forged it.
    """
    site = origin = host = None
    for name, value in scope["headers"]:
        if name == b"sec-fetch-site":
            site = value
        elif name == b"origin":
            origin = value
        elif name == b"host":
            host = value
    if site is not None:
        allowed = site in (b"same-origin", b"none")
    elif origin is None:
        allowed = True
    else:  # a serialised origin, compared as bytes: parsing it raised on ``http://[`` (a 500)
        ours = host.lower() if host is not None else None
        allowed = ours is not None and origin.lower() in (b"http://" + ours, b"https://" + ours)
    if not allowed:
        raise ForbiddenError("Changes from the job dashboard must come from the dashboard's own page.")


__all__ = [
    "AUTHENTICATE_OPT",
    "GateConfig",
    "RouteGate",
    "RoutePlan",
    "authenticates",
    "rate_limit_policy",
    "refused_token_policy",
]
