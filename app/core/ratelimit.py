"""Rate limits: fixed per-minute and per-hour windows counted in Valkey, spent from local leases.

Why leases. Checking every request with Valkey costs a round trip per request (~165 µs here, more
than the framework's own work). Instead each process *leases* tokens for a key: one atomic Lua script
takes up to ``n`` tokens from both windows' counters at once (never more than either window has
left), and the process spends them locally, one per request, without talking to Valkey. So:

- never over quota across processes: a token exists only after Valkey counted it in both windows;
- a denied request consumes nothing: a lease takes only what is left, and a lease that gets nothing
  is a denial (remembered for at most ``DENIAL_CACHE_S``, so a flood of refused requests is not a
  flood of round trips either);
- tokens live only as long as the windows they were counted in (their expiry is computed from the
  server's clock, with the request's departure time as the reference, so it errs early);
- the lease size adapts per key: 1 token, doubled while a process spends its lease within
  ``FAST_S``, back to 1 after ``IDLE_S`` without use, and at most ``1/LEASE_FRACTION`` of the
  smaller quota (``MAX_LEASE`` at most). The price: tokens leased by one process and not spent there
  are unavailable to the others until the window ends — a key may be refused up to that many requests
  early, never admitted late. Small quotas (under ``2 * LEASE_FRACTION``) lease one token at a time
  and count exactly.

A request refused by validation for its parameters before any database work gives its token back
to the local lease (no round trip; ``app.core.gate`` decides which refusals are refunded). Local
state is bounded: at most ``max_keys`` keys per process, least recently used evicted first (an
evicted lease's tokens are simply lost).

Windows are aligned on the Valkey server's clock (``TIME`` inside the script), so processes with
skewed clocks agree; the script builds its keys from the server time, so the limiter assumes a single
(non-cluster) Valkey. Keys: ``{prefix}:{policy}:u:{user id}:m:{window start}`` (``...:h:...`` for the
hour; ``ip:{digest}`` for anonymous requests and those whose token was refused: the client's address,
an IPv6 client's /64, keyed by ``SECRET_KEY`` (``stored_identity``), so that Valkey holds no address).

Responses carry the draft-ietf-httpapi-ratelimit-headers fields (structured-field form)::

    RateLimit-Policy: "default-minute";q=300;w=60, "default-hour";q=10000;w=3600
    RateLimit: "default-minute";r=299;t=42

``r`` counts what this process knows to be left: the windows' counters at its last lease, plus the
tokens it holds.

Valkey down (``VALKEY_DOWN``: unreachable, or answering that it cannot serve now, such as
``MISCONF`` after a failed snapshot or ``READONLY`` from a replica after a failover): the request
passes (fail-open) unless the process still holds tokens, ``app_rate_limit_fail_open`` counts it and
a warning is logged at most once per ``RATE_LIMIT_WARN_INTERVAL_S``; a ``fail_closed`` policy
(``auth`` with ``RATE_LIMIT_AUTH_FAIL_CLOSED``) answers 503 instead.

Which route uses which policy is decided once per route by ``app.core.gate``: ``opt={"rate_limit":
"auth"}`` picks a policy, ``None`` exempts the route, no opt means ``default``, except under
``EXEMPT_PATHS``, where no opt means no limit (a route there that names a policy keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import msgspec
import redis.exceptions
import structlog
from cachetools import LRUCache
from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, InternalServerException, SerializationException
from litestar.handlers import HTTPRouteHandler
from litestar.types import Empty, Receive, Scope, Send
from prometheus_client import Counter
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.logging import OncePerInterval
from app.core.middleware import client_network
from app.core.security import keyed_digest
from app.core.valkey import VALKEY_DOWN as CORE_VALKEY_DOWN

if TYPE_CHECKING:
    from litestar._kwargs import KwargsModel

OPT_KEY = "rate_limit"
PER_SESSION_OPT_KEY = "rate_limit_per_session"
"""A route whose ``opt`` sets this counts a signed-in caller's requests per session (``rate_limit_key``)."""
DEFAULT_POLICY = "default"
EXEMPT_PATHS = ("/health", "/metrics", "/schema", "/saq")
"""Prefixes whose routes are not limited unless they name a policy (``opt={"rate_limit": ...}``)."""
MINUTE_S = 60
HOUR_S = 3600
FAIL_CLOSED_RETRY_AFTER_S = 5

LEASE_FRACTION = 10
MAX_LEASE = 1024
FAST_S = 1.0
IDLE_S = 5.0
DENIAL_CACHE_S = 1.0
MAX_KEYS = 50_000

VALKEY_DOWN = (*CORE_VALKEY_DOWN, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
"""``app.core.valkey.VALKEY_DOWN`` (``MISCONF``, ``READONLY``... included: the policy decides, not a
500), and redis-py's equivalents."""
_log = structlog.get_logger("app.ratelimit")

RATE_LIMIT_FAIL_OPEN = Counter(
    "app_rate_limit_fail_open", "Requests let through unchecked because Valkey was unreachable", ["policy"]
)

# KEYS[1] = the identity's base key; ARGV = minute quota, hour quota, minute window (s), hour window
# (s), tokens wanted. Takes min(wanted, left in the minute window, left in the hour window) tokens
# from both windows. Returns {granted, minute count, hour count, minute reset (ms), hour reset (ms)}:
# the counts after the increment (unchanged when nothing was granted).
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local qm, qh = tonumber(ARGV[1]), tonumber(ARGV[2])
local wm, wh = tonumber(ARGV[3]), tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local sm, sh = now - now % wm, now - now % wh
local km = KEYS[1] .. ':m:' .. sm
local kh = KEYS[1] .. ':h:' .. sh
local rm, rh = (sm + wm) * 1000 - now_ms, (sh + wh) * 1000 - now_ms
local counts = redis.call('MGET', km, kh)
local cm, ch = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
local grant = math.min(want, qm - cm, qh - ch)
if grant <= 0 then
  return {0, cm, ch, rm, rh}
end
cm = redis.call('INCRBY', km, grant)
if cm == grant then redis.call('EXPIRE', km, sm + wm - now + 1) end
ch = redis.call('INCRBY', kh, grant)
if ch == grant then redis.call('EXPIRE', kh, sh + wh - now + 1) end
return {grant, cm, ch, rm, rh}
"""


class Policy(msgspec.Struct, frozen=True):
    name: str
    per_minute: int
    per_hour: int
    fail_closed: bool = False

    @property
    def max_lease(self) -> int:
        return max(1, min(MAX_LEASE, min(self.per_minute, self.per_hour) // LEASE_FRACTION))


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
    lease: int = 0
    """The local lease the admitted hit's token came from (a refund goes back to that lease only)."""


def decide(
    policy: Policy, admitted: bool, minute: int, hour: int, minute_reset: int, hour_reset: int
) -> Decision:
    """The decision for counts (after the hit when admitted) and resets in seconds."""
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


def _seconds_until(deadline: float, now: float) -> int:
    return max(1, math.ceil(deadline - now))


class _Lease:
    """What one process holds for one (policy, key): tokens, the counts behind them, or a denial."""

    __slots__ = (
        "block",
        "denied_until",
        "expires_at",
        "hour_count",
        "hour_reset_at",
        "leased_at",
        "minute_count",
        "minute_reset_at",
        "number",
        "pending",
        "tokens",
    )

    def __init__(self) -> None:
        self.tokens = 0
        self.number = 0
        self.expires_at = 0.0
        self.minute_count = self.hour_count = 0
        self.minute_reset_at = self.hour_reset_at = 0.0
        self.block = 1
        self.leased_at = float("-inf")
        self.denied_until = 0.0
        self.pending: asyncio.Future[None] | None = None

    def spend(self, policy: Policy, now: float) -> Decision:
        self.tokens -= 1
        decision = decide(
            policy,
            True,
            self.minute_count - self.tokens,
            self.hour_count - self.tokens,
            _seconds_until(self.minute_reset_at, now),
            _seconds_until(self.hour_reset_at, now),
        )
        return msgspec.structs.replace(decision, lease=self.number)

    def denial(self, policy: Policy, now: float) -> Decision:
        return decide(
            policy,
            False,
            self.minute_count,
            self.hour_count,
            _seconds_until(self.minute_reset_at, now),
            _seconds_until(self.hour_reset_at, now),
        )


class RateLimiter:
    """Admits or denies hits of a key against a policy, from leases taken from Valkey."""

    def __init__(
        self, valkey: Valkey, *, secret_key: str, prefix: str = "rl", max_keys: int = MAX_KEYS
    ) -> None:
        self.prefix = prefix
        self._secret_key = secret_key
        self._script = valkey.register_script(_LEASE)
        self._leases: LRUCache[tuple[str, str], _Lease] = LRUCache(maxsize=max_keys)

    async def hit(self, policy: Policy, key: str) -> Decision:
        """Admit or deny one request of ``key`` (e.g. ``u:42`` or ``ip:10.0.0.1``); raises Valkey
        errors when a lease is needed and Valkey cannot answer."""
        lease = self._leases.get((policy.name, key))
        if lease is None:
            lease = self._leases[(policy.name, key)] = _Lease()
        while True:
            now = time.monotonic()
            if lease.tokens > 0 and now < lease.expires_at:
                return lease.spend(policy, now)
            if now < lease.denied_until:
                return lease.denial(policy, now)
            if lease.pending is None:
                return await self._renew(policy, key, lease)
            # Another request of this process is leasing for the key: its tokens may serve us too,
            # and if Valkey fails it, it fails us as well (one timeout per key, not one per request).
            # One lease in flight per key: a second one finishing later would overwrite the first's
            # tokens (lost), and adding them up could carry tokens past their window.
            await asyncio.shield(lease.pending)

    async def _renew(self, policy: Policy, key: str, lease: _Lease) -> Decision:
        sent = time.monotonic()
        if lease.tokens > 0 or sent - lease.leased_at > IDLE_S:  # expired unspent, or idle: start small
            lease.block = 1
        elif sent - lease.leased_at < FAST_S:  # the last lease went fast: take more
            lease.block = min(lease.block * 2, policy.max_lease)
        pending = lease.pending = asyncio.get_running_loop().create_future()
        try:
            result = await self._script(
                keys=[f"{self.prefix}:{policy.name}:{stored_identity(self._secret_key, key)}"],
                args=[policy.per_minute, policy.per_hour, MINUTE_S, HOUR_S, lease.block],
            )
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: nobody may be waiting
            raise
        finally:
            if lease.pending is pending:
                lease.pending = None
            if not pending.done():  # cancelled: the waiters lease for themselves
                pending.set_result(None)
        granted, minute, hour, minute_reset_ms, hour_reset_ms = (int(value) for value in result)
        lease.minute_count, lease.hour_count = minute, hour
        lease.minute_reset_at = sent + minute_reset_ms / 1000
        lease.hour_reset_at = sent + hour_reset_ms / 1000
        if granted == 0:
            lease.tokens = 0
            windows = (
                (minute, policy.per_minute, lease.minute_reset_at),
                (hour, policy.per_hour, lease.hour_reset_at),
            )
            resets = [reset_at for count, quota, reset_at in windows if count >= quota]
            lease.denied_until = min(sent + DENIAL_CACHE_S, max(resets, default=sent))
            return lease.denial(policy, time.monotonic())
        lease.number += 1
        lease.tokens = granted
        lease.leased_at = sent
        lease.expires_at = min(lease.minute_reset_at, lease.hour_reset_at)
        lease.denied_until = 0.0
        return lease.spend(policy, time.monotonic())

    def refund(self, policy: Policy, key: str, decision: Decision) -> None:
        """Give an admitted hit's token back to its lease (a no-op once that lease is gone)."""
        lease = self._leases.get((policy.name, key))
        if (
            lease is not None
            and decision.allowed
            and lease.number == decision.lease
            and time.monotonic() < lease.expires_at
        ):
            lease.tokens += 1

    def unspent(self, policy: Policy, key: str) -> int:
        """Tokens this process holds for the key and could still spend."""
        lease = self._leases.get((policy.name, key))
        if lease is None or time.monotonic() >= lease.expires_at:
            return 0
        return lease.tokens

    def keys(self) -> list[tuple[str, str]]:
        """The (policy, key) pairs this process holds state for."""
        return list(self._leases.keys())

    def forget(self) -> None:
        """Drop every local lease and remembered denial (e.g. after the counters were reset)."""
        self._leases.clear()


def rate_limit_headers(policy: Policy, decision: Decision) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (plus ``Retry-After`` when denied)."""
    headers = {
        "RateLimit-Policy": policy_header(policy),
        "RateLimit": f'"{policy.name}-{decision.window}";r={decision.remaining};t={decision.reset_s}',
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers


def policy_header(policy: Policy) -> str:
    return (
        f'"{policy.name}-minute";q={policy.per_minute};w={MINUTE_S}, '
        f'"{policy.name}-hour";q={policy.per_hour};w={HOUR_S}'
    )


def rate_limit_key(scope: Scope, *, per_session: bool = False) -> str:
    """``u:{id}`` for an authenticated request (``scope["user"].id``), else ``address_key``.

    ``per_session``: ``u:{id}:s:{session family}``, one quota per session, on a route where one of the
    user's sessions must not spend another's (PATCH /me: a thief's session answered the owner's
    password change, which would sign it out, with 429)."""
    user = scope.get("user")
    user_id = getattr(user, "id", None)
    if user_id is None:
        return address_key(scope)
    if per_session:
        return f"u:{user_id}:s:{user.family_id}"
    return f"u:{user_id}"


def address_key(scope: Scope) -> str:
    """``ip:{client network}`` (an IPv4 address, or an IPv6 address's /64): the key of an anonymous
    request, and of one whose token was refused."""
    client_ip = scope.get("state", {}).get("client_ip")
    return f"ip:{client_network(client_ip) if client_ip else 'unknown'}"


ClientAddress = NamedDependency[str]
"""A handler parameter ``client_address: ClientAddress`` receives the request's client address (an
IPv4 address, an IPv6 /64) as Valkey keeps it: ``address_key``'s ``stored_identity``, a keyed digest."""


def provide_client_address(request: Request[Any, Any, Any]) -> str:
    settings: Settings = request.app.state.settings
    return stored_identity(settings.secret_key, address_key(request.scope))


def stored_identity(secret_key: str, key: str) -> str:
    """``key`` as Valkey stores it: an address (``ip:...``) by its ``keyed_digest``, computed per
    lease, not per request; a user's id as it is."""
    if key.startswith("ip:"):
        return f"ip:{keyed_digest(secret_key, 'ip', key[3:])}"
    return key


class FailOpenWarnings(OncePerInterval):
    """Logs that Valkey cannot be reached at most once per interval."""

    def warn(self, policy: Policy, exc: Exception) -> None:
        if self.due():
            _log.warning(
                "rate_limit_unavailable",
                policy=policy.name,
                fail_closed=policy.fail_closed,
                error=type(exc).__name__,
            )


class RouteValidator:
    """Runs a route's guards and parameter validation without calling its handler.

    A request over quota still learns what is wrong with it first (400, 401, 403...): the limiter
    calls ``validate`` before answering 429. Dependencies are not resolved (they may open a
    transaction): their absence is all the signature model then reports, as an internal error,
    which is ignored. Parameter models are built once per handler.
    """

    def __init__(self) -> None:
        self._models: dict[int, tuple[HTTPRouteHandler, KwargsModel]] = {}

    def _model(self, handler: HTTPRouteHandler, scope: Scope) -> KwargsModel:
        known = self._models.get(id(handler))
        if known is None:
            model = handler.create_kwargs_model(path_parameters=dict.fromkeys(scope["path_params"]))  # type: ignore[arg-type]
            known = self._models[id(handler)] = (handler, model)
        return known[1]

    async def validate(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        if not isinstance(handler, HTTPRouteHandler):
            return
        request = handler.resolve_request_class()(scope=scope, receive=receive, send=send)
        if handler.resolve_guards():
            await handler.authorize_connection(connection=request)
        model = self._model(handler, scope)
        if not (model.has_kwargs and handler.signature_model):
            return
        try:
            kwargs: dict[str, Any] = await model.to_kwargs(connection=request)
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
    "EXEMPT_PATHS",
    "PER_SESSION_OPT_KEY",
    "VALKEY_DOWN",
    "Decision",
    "FailOpenWarnings",
    "Policy",
    "RateLimiter",
    "RouteValidator",
    "address_key",
    "decide",
    "policies_from_settings",
    "rate_limit_headers",
    "rate_limit_key",
]
