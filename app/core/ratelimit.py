"""Rate limits on Valkey: fixed per-minute and per-hour windows, atomic across processes.

One Lua script, not ``limits``: one round trip instead of one per limit plus one per header read.

Windows are aligned on the Valkey server's clock (``TIME`` inside the script), so processes with
skewed clocks agree. Keys: ``{prefix}:{policy}:u:{user id}:m:{window start}`` (``...:h:...`` for the
hour; ``ip:{address}`` for anonymous requests). A request is admitted only if both windows have
room, and a denied request consumes nothing. The script builds its keys from the server time, so
the limiter assumes a single (non-cluster) Valkey.

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

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.exceptions
import structlog
import valkey.exceptions
from litestar.enums import ScopeType
from litestar.exceptions import ImproperlyConfiguredException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import ServiceUnavailableError, TooManyRequestsError

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
# Returns {admitted 0/1, minute count, hour count, minute reset (s), hour reset (s)}; the counts are
# after the increment when admitted, and unchanged when denied.
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
  return {0, cm, ch, rm, rh}
end
cm = redis.call('INCR', km)
if cm == 1 then redis.call('EXPIRE', km, rm + 1) end
ch = redis.call('INCR', kh)
if ch == 1 then redis.call('EXPIRE', kh, rh + 1) end
return {1, cm, ch, rm, rh}
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

    async def hit(self, policy: Policy, key: str) -> Decision:
        """Admit or deny one request of ``key`` (e.g. ``u:42`` or ``ip:10.0.0.1``); raises Valkey errors."""
        result = await self._script(
            keys=[f"{self.prefix}:{policy.name}:{key}"],
            args=[policy.per_minute, policy.per_hour, MINUTE_S, HOUR_S],
        )
        admitted, minute, hour, minute_reset, hour_reset = (int(value) for value in result)
        return decide(policy, bool(admitted), minute, hour, minute_reset, hour_reset)


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
        try:
            decision = await runtime.limiter.hit(policy, rate_limit_key(scope))
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
        headers = rate_limit_headers(policy, decision)
        if not decision.allowed:
            raise TooManyRequestsError(
                f"Rate limit {policy.name}-{decision.window} exceeded; retry in {decision.retry_after_s} s.",
                headers=headers,
            )
        raw = [(header.lower().encode(), value.encode()) for header, value in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *raw]
            await send(message)

        await next_app(scope, receive, send_with_headers)


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
