"""Password-guess throttling that slows attackers without locking owners out (ASVS 2.2.1).

Three counters per window (``LOGIN_FAILURE_WINDOW_S``), in Valkey, keyed by hashes (no email or
address is stored):

- ``pair`` — one account from one client network (an IPv4 address, an IPv6 /64): a hard limit of
  ``LOGIN_MAX_FAILURES``. Only the address that keeps failing is refused (429), never the owner
  elsewhere.
- ``addr`` — one client network, whatever the account: a hard limit of ``LOGIN_ADDRESS_MAX_FAILURES``
  (higher, so one NAT's users are not refused for one another's typos).
- ``acct`` — one account, from anywhere: never refused, only slowed. Past ``LOGIN_MAX_FAILURES``
  each attempt waits ``2^(failures - LOGIN_MAX_FAILURES)`` seconds (at most ``LOGIN_MAX_DELAY_S``)
  before its password is checked, so a guesser spread over many addresses gets slower and slower
  while the owner still gets in.

An attempt is counted *before* its password is checked, in one Lua script that also checks the hard
limits (so a burst of concurrent attempts cannot slip past a limit between a read and a write); a
correct password takes its attempt back and clears the account's and the pair's counters.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import structlog
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import ServiceUnavailableError, TooManyRequestsError, report_dependency_down
from app.core.middleware import client_network
from app.core.valkey import VALKEY_DOWN

security_log = structlog.get_logger("security")

VALKEY_ERRORS = (*VALKEY_DOWN, OSError)
"""Valkey unreachable or unable to serve now (``app.core.valkey``), or a socket error under it."""

# KEYS: pair, addr, acct. ARGV: pair limit, address limit, window (s).
# Returns {refused_by (0 none, 1 pair, 2 address), retry_after_s, account failures before this attempt}.
_ATTEMPT = """
local pair = tonumber(redis.call('GET', KEYS[1]) or '0')
local addr = tonumber(redis.call('GET', KEYS[2]) or '0')
if pair >= tonumber(ARGV[1]) then
  return {1, redis.call('TTL', KEYS[1]), 0}
end
if addr >= tonumber(ARGV[2]) then
  return {2, redis.call('TTL', KEYS[2]), 0}
end
local window = tonumber(ARGV[3])
local acct = 0
for i = 1, 3 do
  local n = redis.call('INCR', KEYS[i])
  if n == 1 then redis.call('EXPIRE', KEYS[i], window) end
  if i == 3 then acct = n - 1 end
end
return {0, 0, acct}
"""

# KEYS: pair, addr, acct. A correct password: the address's attempt is taken back, the pair's and the
# account's counters end.
_SUCCEEDED = """
local addr = tonumber(redis.call('GET', KEYS[2]) or '0')
if addr > 0 then redis.call('DECR', KEYS[2]) end
redis.call('DEL', KEYS[1], KEYS[3])
return 0
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One counted password attempt; pass it back to ``succeeded`` when the password was right."""

    keys: tuple[str, str, str]
    counted: bool


class LoginThrottle:
    def __init__(self, settings: Settings, valkey: Valkey) -> None:
        self.settings = settings
        self.valkey = valkey
        self._attempt = valkey.register_script(_ATTEMPT)
        self._succeeded = valkey.register_script(_SUCCEEDED)

    def delay_s(self, failures: int) -> float:
        """How long an attempt waits when the account already has ``failures`` in the window."""
        over = failures - self.settings.login_max_failures
        if over < 0:
            return 0.0
        return float(min(2 ** min(over, 16), self.settings.login_max_delay_s))

    async def attempt(self, email: str, client_ip: str | None, *, purpose: str = "login") -> Attempt:
        """Count a password attempt, or refuse it (429) when its pair or address is over its limit;
        waits the account's progressive delay before returning."""
        network = client_network(client_ip) if client_ip else "unknown"
        keys = (_key("pair", f"{email}\n{network}"), _key("addr", network), _key("acct", email))
        settings = self.settings
        try:
            refused, retry_after, failures = await self._attempt(
                keys=list(keys),
                args=[
                    settings.login_max_failures,
                    settings.login_address_max_failures,
                    settings.login_failure_window_s,
                ],
            )
        except VALKEY_ERRORS as exc:
            report_dependency_down(
                exc,
                "login_throttle",
                "login_throttle_unavailable",
                operation="attempt",
                purpose=purpose,
                fail_closed=settings.rate_limit_auth_fail_closed,
            )
            if settings.rate_limit_auth_fail_closed:
                raise ServiceUnavailableError(
                    "Sign-in is briefly unavailable; try again shortly.", headers={"Retry-After": "5"}
                ) from None
            return Attempt(keys, counted=False)
        if refused:
            scope = "pair" if refused == 1 else "address"
            security_log.warning(
                "login_locked_out",
                scope=scope,
                purpose=purpose,
                client_network=network,
                account=keys[2][-12:],  # a digest prefix: correlates events without naming the account
                retry_after_s=int(retry_after),
            )
            raise TooManyRequestsError(
                "Too many failed sign-in attempts from this address; try again later.",
                headers={"Retry-After": str(max(int(retry_after), 1))},
            )
        delay = self.delay_s(int(failures))
        if delay > 0:
            security_log.warning(
                "login_slowed",
                purpose=purpose,
                client_network=network,
                account=keys[2][-12:],
                failures=int(failures),
                delay_s=delay,
            )
            await asyncio.sleep(delay)
        return Attempt(keys, counted=True)

    async def succeeded(self, attempt: Attempt) -> None:
        if not attempt.counted:
            return
        try:
            await self._succeeded(keys=list(attempt.keys))
        except VALKEY_ERRORS as exc:
            report_dependency_down(exc, "login_throttle", "login_throttle_unavailable", operation="succeeded")


def _key(kind: str, value: str) -> str:
    """The email and address are hashed so the key space holds neither."""
    return f"auth:login-attempts:{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"
