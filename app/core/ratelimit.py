"""Rate limits on Valkey: fixed per-minute and per-hour windows, atomic across processes.

One Lua script, not ``limits``: one round trip instead of one per limit plus one per header read.

Windows are aligned on the Valkey server's clock (``TIME`` inside the script), so processes with
skewed clocks agree. Keys: ``{prefix}:{policy}:u:{user id}:m:{window start}`` (``...:h:...`` for the
hour; ``ip:{address}`` for anonymous requests). A request is admitted only if both windows have
room, and a denied request consumes nothing. The script builds its keys from the server time, so
the limiter assumes a single (non-cluster) Valkey.

Order of checks: a request is counted before its parameters are validated (the limiter protects
the work validation costs too), but a malformed request never consumes quota and never hides its
400: a request that validation refuses is refunded, and a request over quota is validated (and its
guards run) before the 429, so the client learns what to fix first.

Route handlers pick a policy with ``opt={"rate_limit": "auth"}`` (``None`` exempts the route; no opt
means ``default``); health, metrics, the OpenAPI document and the SAQ dashboard are always exempt.
Responses carry the draft-ietf-httpapi-ratelimit-headers fields (structured-field form)::

    RateLimit-Policy: "default-minute";q=300;w=60, "default-hour";q=10000;w=3600
    RateLimit: "default-minute";r=299;t=42

Valkey unreachable: the request passes (fail-open), ``app_rate_limit_fail_open`` counts it and a
warning is logged at most once per ``RATE_LIMIT_WARN_INTERVAL_S``; a ``fail_closed`` policy
(``auth`` with ``RATE_LIMIT_AUTH_FAIL_CLOSED``) answers 503 instead.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import redis.exceptions
import structlog
import valkey.exceptions
from litestar.enums import ScopeType
from litestar.exceptions import (
    ClientException,
    ImproperlyConfiguredException,
    InternalServerException,
    SerializationException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Empty, Message, Receive, Scope, Send
from prometheus_client import Counter
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import VALIDATION_FAILED, ServiceUnavailableError, TooManyRequestsError

if TYPE_CHECKING:
    from litestar._kwargs import KwargsModel

OPT_KEY = "rate_limit"
DEFAULT_POLICY = "default"
EXEMPT_PATHS = ("/health", "/metrics", "/schema", "/saq")
MINUTE_S = 60
HOUR_S = 3600
FAIL_CLOSED_RETRY_AFTER_S = 5

_VALKEY_DOWN = (
    valkey.exceptions.ConnectionError,
    valkey.exceptions.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
_log = structlog.get_logger("app.ratelimit")

RATE_LIMIT_FAIL_OPEN = Counter(
    "app_rate_limit_fail_open", "Requests let through unchecked because Valkey was unreachable", ["policy"]
)

# KEYS[1] = the identity's base key; ARGV = minute quota, hour quota, minute window, hour window (s).
# Returns {admitted 0/1, minute count, hour count, minute reset (s), hour reset (s), minute window
# start, hour window start}; the counts are after the increment when admitted, unchanged when denied.
_HIT = """
local now = tonumber(redis.call('TIME')[1])
local qm, qh = tonumber(ARGV[1]), tonumber(ARGV[2])
local wm, wh = tonumber(ARGV[3]), tonumber(ARGV[4])
local sm, sh = now - now % wm, now - now % wh
local km = KEYS[1] .. ':m:' .. sm
local kh = KEYS[1] .. ':h:' .. sh
local rm, rh = sm + wm - now, sh + wh - now
local counts = redis.call('MGET', km, kh)
local cm, ch = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
if cm >= qm or ch >= qh then
  return {0, cm, ch, rm, rh, sm, sh}
end
cm = redis.call('INCR', km)
if cm == 1 then redis.call('EXPIRE', km, rm + 1) end
ch = redis.call('INCR', kh)
if ch == 1 then redis.call('EXPIRE', kh, rh + 1) end
return {1, cm, ch, rm, rh, sm, sh}
"""

# KEYS = the minute and hour keys a hit counted in: take that hit back (never below zero, TTL kept).
_REFUND = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
"""


class Policy(msgspec.Struct, frozen=True):
    name: str
    per_minute: int
    per_hour: int
    fail_closed: bool = False


def policies_from_settings(settings: Settings) -> dict[str, Policy]:
    """The ``default``, ``auth`` (stricter) and ``ingest`` (much looser) policies."""
    return {
        "default": Policy(
            "default", settings.rate_limit_default_per_minute, settings.rate_limit_default_per_hour
        ),
        "auth": Policy(
            "auth",
            settings.rate_limit_auth_per_minute,
            settings.rate_limit_auth_per_hour,
            fail_closed=settings.rate_limit_auth_fail_closed,
        ),
        "ingest": Policy(
            "ingest", settings.rate_limit_ingest_per_minute, settings.rate_limit_ingest_per_hour
        ),
    }


class Decision(msgspec.Struct, frozen=True):
    """The outcome of one hit.

    ``window`` (``"minute"`` or ``"hour"``) is the window closest to exhaustion when admitted and the
    exhausted one when denied; ``remaining`` and ``reset_s`` describe that window. ``retry_after_s``
    is 0 when admitted, else the seconds until every exhausted window has reset.
    """

    allowed: bool
    remaining: int
    reset_s: int
    retry_after_s: int
    window: str
    window_starts: tuple[int, int] = (0, 0)
    """Server time (s) at which the counted minute and hour windows began: where a refund goes."""


def decide(
    policy: Policy, admitted: bool, minute: int, hour: int, minute_reset: int, hour_reset: int
) -> Decision:
    """The decision for the script's answer (counts after the hit, resets in seconds)."""
    # (remaining, -reset, name): the least remaining first; on a tie, the window resetting later.
    windows = sorted(
        [
            (max(policy.per_minute - minute, 0), -minute_reset, "minute"),
            (max(policy.per_hour - hour, 0), -hour_reset, "hour"),
        ]
    )
    remaining, neg_reset, name = windows[0]
    if admitted:
        return Decision(allowed=True, remaining=remaining, reset_s=-neg_reset, retry_after_s=0, window=name)
    exhausted = [(-neg, window) for left, neg, window in windows if left == 0]
    reset, name = max(exhausted)
    return Decision(allowed=False, remaining=0, reset_s=reset, retry_after_s=reset, window=name)


class RateLimiter:
    """Checks and counts one hit against a policy in one round trip to Valkey."""

    def __init__(self, valkey: Valkey, *, prefix: str = "rl") -> None:
        self.prefix = prefix
        self._script = valkey.register_script(_HIT)
        self._refund = valkey.register_script(_REFUND)

    async def hit(self, policy: Policy, key: str) -> Decision:
        """Admit or deny one request of ``key`` (e.g. ``u:42`` or ``ip:10.0.0.1``); raises Valkey errors."""
        result = await self._script(
            keys=[f"{self.prefix}:{policy.name}:{key}"],
            args=[policy.per_minute, policy.per_hour, MINUTE_S, HOUR_S],
        )
        admitted, minute, hour, minute_reset, hour_reset, minute_start, hour_start = (
            int(value) for value in result
        )
        decision = decide(policy, bool(admitted), minute, hour, minute_reset, hour_reset)
        return msgspec.structs.replace(decision, window_starts=(minute_start, hour_start))

    async def refund(self, policy: Policy, key: str, decision: Decision) -> None:
        """Take back an admitted hit (its windows only: a refund after they rolled over is a no-op)."""
        base = f"{self.prefix}:{policy.name}:{key}"
        minute_start, hour_start = decision.window_starts
        await self._refund(keys=[f"{base}:m:{minute_start}", f"{base}:h:{hour_start}"])


def rate_limit_headers(policy: Policy, decision: Decision) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (plus ``Retry-After`` when denied)."""
    headers = {
        "RateLimit-Policy": (
            f'"{policy.name}-minute";q={policy.per_minute};w={MINUTE_S}, '
            f'"{policy.name}-hour";q={policy.per_hour};w={HOUR_S}'
        ),
        "RateLimit": f'"{policy.name}-{decision.window}";r={decision.remaining};t={decision.reset_s}',
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers


def rate_limit_key(scope: Scope) -> str:
    """``u:{id}`` for an authenticated request (``scope["user"].id``), else ``ip:{client address}``."""
    user_id = getattr(scope.get("user"), "id", None)
    if user_id is not None:
        return f"u:{user_id}"
    client_ip = scope.get("state", {}).get("client_ip")
    return f"ip:{client_ip or 'unknown'}"


def is_exempt_path(path: str) -> bool:
    return any(path == exempt or path.startswith(f"{exempt}/") for exempt in EXEMPT_PATHS)


@dataclass
class _Runtime:
    """Per-app limiter, policies and the throttle of the fail-open warning (cached on app state)."""

    limiter: RateLimiter
    policies: dict[str, Policy]
    warn_interval_s: float
    last_warning: float = field(default=float("-inf"))
    kwargs_models: dict[int, KwargsModel] = field(default_factory=dict)

    def kwargs_model(self, handler: HTTPRouteHandler, scope: Scope) -> KwargsModel:
        """The handler's parameter model (built once; Litestar only reads the path parameters' names)."""
        model = self.kwargs_models.get(id(handler))
        if model is None:
            model = handler.create_kwargs_model(path_parameters=dict.fromkeys(scope["path_params"]))  # type: ignore[arg-type]
            self.kwargs_models[id(handler)] = model
        return model

    def warn(self, policy: Policy, exc: Exception) -> None:
        now = time.monotonic()
        if now - self.last_warning >= self.warn_interval_s:
            self.last_warning = now
            _log.warning(
                "rate_limit_unavailable",
                policy=policy.name,
                fail_closed=policy.fail_closed,
                error=type(exc).__name__,
            )


def _runtime(app_state: Any) -> _Runtime:
    runtime: _Runtime | None = app_state.get("rate_limit_runtime")
    if runtime is None:
        settings: Settings = app_state.settings
        limiter = RateLimiter(app_state.valkey)
        runtime = _Runtime(limiter, policies_from_settings(settings), settings.rate_limit_warn_interval_s)
        app_state.rate_limiter = limiter
        app_state.rate_limit_runtime = runtime
    return runtime


def _policy_name(scope: Scope) -> str | None:
    handler = scope.get("route_handler")
    opt = getattr(handler, "opt", None) or {}
    return opt.get(OPT_KEY, DEFAULT_POLICY)


class RateLimitMiddleware(ASGIMiddleware):
    """Limits HTTP requests by the route's policy; configured from ``app.state`` (settings, valkey).

    Must run after the authentication middleware (it reads ``scope["user"]``) and inside the
    request-context middleware (it reads ``scope["state"]["client_ip"]``).
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        app_state = scope["app"].state
        name = _policy_name(scope)
        if name is None or not app_state.settings.rate_limit_enabled or is_exempt_path(scope["path"]):
            await next_app(scope, receive, send)
            return
        runtime = _runtime(app_state)
        policy = runtime.policies.get(name)
        if policy is None:
            raise ImproperlyConfiguredException(f"unknown rate-limit policy {name!r} in a route's opt")
        key = rate_limit_key(scope)
        try:
            decision = await runtime.limiter.hit(policy, key)
        except _VALKEY_DOWN as exc:
            runtime.warn(policy, exc)
            if policy.fail_closed:
                raise ServiceUnavailableError(
                    "Rate limiting is unavailable; retry shortly.",
                    headers={"Retry-After": str(FAIL_CLOSED_RETRY_AFTER_S)},
                ) from exc
            RATE_LIMIT_FAIL_OPEN.labels(policy=policy.name).inc()
            await next_app(scope, receive, send)
            return
        if not decision.allowed:
            await _validate_only(scope, receive, send, runtime)
            raise TooManyRequestsError(
                f"Rate limit {policy.name}-{decision.window} exceeded; retry in {decision.retry_after_s} s.",
                headers=rate_limit_headers(policy, decision),
            )
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A request refused by validation is refunded below: show the quota it leaves.
                shown = (
                    msgspec.structs.replace(decision, remaining=decision.remaining + 1)
                    if state.get(VALIDATION_FAILED)
                    else decision
                )
                headers = rate_limit_headers(policy, shown)
                message["headers"] = [
                    *message.get("headers", ()),
                    *((name.lower().encode(), value.encode()) for name, value in headers.items()),
                ]
            await send(message)

        await next_app(scope, receive, send_with_headers)
        if state.get(VALIDATION_FAILED):
            with contextlib.suppress(*_VALKEY_DOWN):
                await runtime.limiter.refund(policy, key, decision)


async def _validate_only(scope: Scope, receive: Receive, send: Send, runtime: _Runtime) -> None:
    """Run the route's guards and parameter validation without calling the handler.

    Raises what the route would raise for a malformed or unauthorized request (400, 401, 403...);
    returns when the request is well formed. Dependencies are not resolved (they may open a
    transaction): their absence is all the signature model then reports, as an internal error.
    """
    handler = scope.get("route_handler")
    if not isinstance(handler, HTTPRouteHandler):
        return
    request = handler.resolve_request_class()(scope=scope, receive=receive, send=send)
    if handler.resolve_guards():
        await handler.authorize_connection(connection=request)
    model = runtime.kwargs_model(handler, scope)
    if not (model.has_kwargs and handler.signature_model):
        return
    try:
        kwargs = await model.to_kwargs(connection=request)
    except SerializationException as exc:  # as Litestar's own handler call does
        raise ClientException(str(exc)) from exc
    if kwargs.get("data") is Empty:
        del kwargs["data"]
    # The parameters of dependencies (a report's period, say) first, as Litestar resolves them.
    signature_models = [
        dependency.provide.signature_model for batch in model.dependency_batches for dependency in batch
    ]
    for signature_model in [*signature_models, handler.signature_model]:
        if signature_model._fields:
            with contextlib.suppress(InternalServerException):
                signature_model.parse_values_from_connection_kwargs(connection=request, kwargs=kwargs)


__all__ = [
    "Decision",
    "Policy",
    "RateLimitMiddleware",
    "RateLimiter",
    "decide",
    "policies_from_settings",
    "rate_limit_headers",
    "rate_limit_key",
]
