"""Password-guess throttling (ASVS 2.2.1): refusals per client network, and one paced schedule per
account that bounds how often its password is checked however many networks guess.

Three counters per window (``LOGIN_FAILURE_WINDOW_S``, from each counter's first attempt) and one
schedule, in Valkey, keyed by hashes (no email or address is stored):

- ``pair`` — one account from one client network (an IPv4 address, an IPv6 /64): a hard limit of
  ``LOGIN_MAX_FAILURES``. Only that network is refused (429) for that account; this limit never
  refuses the owner elsewhere.
- ``addr`` — one client network, whatever the account: a hard limit of ``LOGIN_ADDRESS_MAX_FAILURES``
  (higher, so one NAT's users are not refused for one another's typos).
- ``acct`` and ``next`` — one account, from anywhere: its attempts in the window, and the time (Valkey's
  clock, so every process agrees) of the last slot handed out. The first ``LOGIN_MAX_FAILURES``
  attempts are not slowed. Each later one has the delay ``2^(attempts - LOGIN_MAX_FAILURES)`` seconds,
  at most ``LOGIN_MAX_DELAY_S``, and reserves the slot ``max(now, next) + delay``, which becomes
  ``next``; its request waits until that slot before its password is checked. Attempts sent at once,
  from any number of networks and processes, thus get distinct slots, each at least its delay after
  the one before: past the threshold the account's password is checked at most once per delay (one
  per ``LOGIN_MAX_DELAY_S`` at the cap). An attempt whose slot would be more than
  ``LOGIN_MAX_DELAY_S`` away is refused instead (429; ``Retry-After``: when a slot within that wait
  would be free, if no one takes it first); it is not counted and checks no password. The owner's
  attempts take slots like anyone's, except from a network the account signed in from before
  (below): while a guesser keeps the schedule full (at the price of one checked guess per delay), an
  owner on a new network is refused too; attempts one after another with no one else guessing are
  never refused by the schedule, each waits its own delay.
- ``known`` — one account from one client network that signed in with the right password in the last
  ``KNOWN_NETWORK_S`` (30 days): its attempts skip the account's schedule (the pair and address limits
  still apply), so a guesser filling the schedule from elsewhere does not lock the owner out of the
  networks they use (lockout abuse, ASVS 2.2.1). A guesser gains nothing from it
  without being on the owner's network, where the pair's limit holds them.

An attempt is counted, and its slot reserved, *before* its password is checked, in one Lua script that
also checks the hard limits (so a burst of concurrent attempts cannot slip past a limit between a read
and a write). The pair and the address also count their attempts still in progress (``pair-busy``,
``addr-busy``; each attempt takes itself back when it ends, and the counters expire
``LOGIN_MAX_DELAY_S`` + ``BUSY_MARGIN_S`` after the last attempt, should a process die mid-check): a
limit reached only with attempts in progress is refused with ``Retry-After: 1`` and is not a lockout
(no ``login_locked_out``), since those attempts may yet succeed and clear it. Otherwise a browser and
a phone signing in at once, six correct attempts from one network, were told to wait the whole
window, and the security log recorded a lockout that never happened. The end of an attempt that
leaves its pair's or address's limit of finished attempts logs ``login_lockout_began`` (recorded in
``pair-began`` / ``addr-began`` for the counter's lifetime: once a window, however the attempts ended);
ends run shielded from the request's cancellation, and ``close`` waits for them. A correct password
takes its attempt back from ``addr`` and clears ``pair``, ``acct`` and the account's schedule (slots
already handed out keep their wait), and marks the network known.
An attempt that checked no password is taken back: its check refused because ``PASSWORD_CHECKS_MAX``
were busy (503), the database unreachable, or the request cancelled before its answer. Otherwise an
owner retrying through a busy spell with the right password was refused (429) for the rest of the
window, as if they had guessed. It is taken back from ``pair``, ``addr`` and ``acct``, except one
that took a slot and whose client went (cancelled while it waited or was checked): that one only
from ``acct``; its slot stays spent, so its network keeps it counted. Else a client could fill the
account's schedule for free, each attempt cancelled while it waits, and refuse the owner on every
new network without one checked guess or one counted attempt. A refusal of the server's (503, the
database down) is taken back in full, slot or not: the owner retrying through it is not refused.
With Valkey unreachable, attempts are neither counted nor slowed (``RATE_LIMIT_AUTH_FAIL_CLOSED``
unset) or refused with 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import ServiceUnavailableError, TooManyRequestsError, report_dependency_down
from app.core.kept import KeptTasks
from app.core.middleware import client_network
from app.core.security import keyed_digest
from app.core.valkey import VALKEY_DOWN

security_log = structlog.get_logger("security")

VALKEY_ERRORS = (*VALKEY_DOWN, OSError)
"""Valkey unreachable or unable to serve now (``app.core.valkey``), or a socket error under it."""

_LOCKOUT_BEGAN = """
local function lockout_began(counter, began)
  local pttl = redis.call('PTTL', counter)
  local recorded = 0
  if pttl > 0 and redis.call('SET', began, 1, 'NX', 'PX', pttl) then recorded = 1 end
  return recorded, math.ceil(math.max(pttl, 0) / 1000)
end
"""
"""Lua: record that a counter's lockout began (once for the counter's lifetime, to the millisecond,
so the record never outlives it): whether this call recorded it, and the seconds the lockout lasts."""

# KEYS: pair, addr, acct, next, known, pair-busy, addr-busy, pair-began, addr-began. ARGV:
# LOGIN_MAX_FAILURES (the pair's limit and the account's threshold), address limit, window (s),
# LOGIN_MAX_DELAY_S in ms, the busy counters' lifetime (s). Returns {refused_by (0 none, 1 pair,
# 2 address, 3 account's schedule, 4 a limit reached only with attempts in progress), retry_after_s,
# account attempts before this one, delay_ms, slot_ms (Valkey's clock), wait_ms, the lockout began
# unrecorded till now (0/1: an attempt in progress never ended, and its busy count expired)}.
_ATTEMPT = (
    _LOCKOUT_BEGAN
    + """
local pair = tonumber(redis.call('GET', KEYS[1]) or '0')
local addr = tonumber(redis.call('GET', KEYS[2]) or '0')
if pair >= tonumber(ARGV[1]) then
  if pair - tonumber(redis.call('GET', KEYS[6]) or '0') < tonumber(ARGV[1]) then
    return {4, 1, 0, 0, 0, 0, 0}
  end
  local began, seconds = lockout_began(KEYS[1], KEYS[8])
  return {1, seconds, 0, 0, 0, 0, began}
end
if addr >= tonumber(ARGV[2]) then
  if addr - tonumber(redis.call('GET', KEYS[7]) or '0') < tonumber(ARGV[2]) then
    return {4, 1, 0, 0, 0, 0, 0}
  end
  local began, seconds = lockout_began(KEYS[2], KEYS[9])
  return {2, seconds, 0, 0, 0, 0, began}
end
local acct = tonumber(redis.call('GET', KEYS[3]) or '0')
local over = acct - tonumber(ARGV[1])
local delay_ms, slot_ms, wait_ms = 0, 0, 0
if over >= 0 and redis.call('EXISTS', KEYS[5]) == 0 then
  local max_delay_ms = tonumber(ARGV[4])
  delay_ms = math.min(2 ^ math.min(over, 16) * 1000, max_delay_ms)
  local time = redis.call('TIME')
  local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local next_ms = tonumber(redis.call('GET', KEYS[4]) or '0')
  slot_ms = math.max(now_ms, next_ms) + delay_ms
  wait_ms = slot_ms - now_ms
  if wait_ms > max_delay_ms then
    return {3, math.ceil((wait_ms - max_delay_ms) / 1000), acct, delay_ms, slot_ms, wait_ms, 0}
  end
  if wait_ms > 0 then redis.call('SET', KEYS[4], slot_ms, 'PX', wait_ms) end
end
local window = tonumber(ARGV[3])
for i = 1, 3 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], window) end
end
for i = 6, 7 do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
return {0, 0, acct, delay_ms, slot_ms, wait_ms, 0}
"""
)

# KEYS: pair, addr, acct, next, known, pair-busy, addr-busy, pair-began, addr-began. ARGV:
# KNOWN_NETWORK_S, address limit. A correct password: the attempt is no longer in progress, the
# address's attempt is taken back, the pair's and the account's counters and the account's schedule
# end (and the pair's lockout record with them), and the network is known to the account.
_SUCCEEDED = """
for _, i in ipairs({2, 6, 7}) do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[8])
local addr_done = tonumber(redis.call('GET', KEYS[2]) or '0') - tonumber(redis.call('GET', KEYS[7]) or '0')
if addr_done < tonumber(ARGV[2]) then redis.call('DEL', KEYS[9]) end
redis.call('SET', KEYS[5], 1, 'EX', ARGV[1])
return 0
"""
# KEYS: pair, addr, pair-busy, addr-busy, pair-began, addr-began, then the counters the attempt is
# taken back from (none for a wrong password; an attempt that checked no password: its counted
# attempts, as ``abandoned`` says). ARGV: LOGIN_MAX_FAILURES, address limit. The attempt is no longer
# in progress. Returns {the pair's lockout begins now (0/1), its TTL, the address's (0/1), its TTL}:
# its finished attempts (counted, not in progress) have reached the limit, recorded once a window in
# the `began` key (as long as the counter), however the attempts ended and whatever a lost busy count.
_ENDED = (
    _LOCKOUT_BEGAN
    + """
for i = 7, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
for i = 3, 4 do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
local answer = {0, 0, 0, 0}
for i = 1, 2 do
  local counted = tonumber(redis.call('GET', KEYS[i]) or '0')
  if counted - tonumber(redis.call('GET', KEYS[i + 2]) or '0') >= tonumber(ARGV[i]) then
    answer[2 * i - 1], answer[2 * i] = lockout_began(KEYS[i], KEYS[i + 4])
  end
end
return answer
"""
)
KNOWN_NETWORK_S = 30 * 86_400
"""How long a network the account signed in from skips the account's schedule."""

BUSY_MARGIN_S = 60
"""How long past ``LOGIN_MAX_DELAY_S`` (the longest wait for a turn) an attempt's check may last before
its busy count expires: the password check (``PASSWORD_CHECKS_MAX`` queued) and a database round
trip take seconds at most."""

ENDS_AT_CLOSE_S = 2.0
"""How long closing waits for attempts' ends still under way (a Valkey script each: milliseconds)."""

_REFUSED_BY = {1: "pair", 2: "address", 3: "account"}
_LOCKED_OUT = {
    "pair": "Too many sign-in attempts for this account from this address (failed or in progress); "
    "try again later.",
    "address": "Too many sign-in attempts from this address (failed or in progress); try again later.",
    "account": "Too many recent sign-in attempts for this account; try again shortly.",
}
"""A lockout's detail by its scope: the pair's named the address alone, as if it were shut out for
every account (the new-user pass)."""
_IN_PROGRESS = 4


Keys = tuple[str, str, str, str, str, str, str, str, str]
"""An attempt's keys: pair, addr, acct, next, known, pair-busy, addr-busy, pair-began, addr-began."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One counted password attempt; pass it back to ``succeeded`` when the password was right, to
    ``abandoned`` when no password was checked."""

    keys: Keys
    counted: bool
    took_slot: bool = False
    """It reserved a slot in the account's schedule (it waited for its turn)."""
    purpose: str = "login"
    network: str = "unknown"


class LoginThrottle:
    def __init__(self, settings: Settings, valkey: Valkey) -> None:
        self.settings = settings
        self.valkey = valkey
        self._attempt = valkey.register_script(_ATTEMPT)
        self._succeeded = valkey.register_script(_SUCCEEDED)
        self._ended = valkey.register_script(_ENDED)
        self._in_flight = KeptTasks()

    async def attempt(self, email: str, client_ip: str | None, *, purpose: str = "login") -> Attempt:
        """Count a password attempt, or refuse it (429) when its pair or address is over its limit or
        the account's schedule has no slot within ``LOGIN_MAX_DELAY_S``; past the account's threshold,
        waits until the slot it reserved before returning."""
        network = client_network(client_ip) if client_ip else "unknown"
        _key = partial(throttle_key, self.settings.secret_key)
        keys = (
            _key("pair", f"{email}\n{network}"),
            _key("addr", network),
            _key("acct", email),
            _key("next", email),
            _key("known", f"{email}\n{network}"),
            _key("pair-busy", f"{email}\n{network}"),
            _key("addr-busy", network),
            _key("pair-began", f"{email}\n{network}"),
            _key("addr-began", network),
        )
        settings = self.settings
        counting = self._in_flight.keep(
            self._attempt(
                keys=list(keys),
                args=[
                    settings.login_max_failures,
                    settings.login_address_max_failures,
                    settings.login_failure_window_s,
                    settings.login_max_delay_s * 1000,
                    settings.login_max_delay_s + BUSY_MARGIN_S,
                ],
            )
        )
        try:
            refused, retry_after, failures, delay_ms, slot_ms, wait_ms, began = await asyncio.shield(counting)
        except asyncio.CancelledError:
            counting.add_done_callback(partial(self._end_if_counted, keys, purpose, network))
            raise
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
        account = _account_tag(keys)
        if int(refused) == _IN_PROGRESS:
            security_log.warning(
                "login_attempts_in_progress", purpose=purpose, client_network=network, account=account
            )
            raise TooManyRequestsError(
                "Other sign-in attempts for this account from this address are still being checked; "
                "try again in a moment.",
                headers={"Retry-After": "1"},
            )
        if refused:
            scope = _REFUSED_BY[int(refused)]
            if int(began):
                _log_lockout("login_lockout_began", scope, purpose, network, account, int(retry_after))
            _log_lockout("login_locked_out", scope, purpose, network, account, int(retry_after))
            detail = _LOCKED_OUT[scope]
            raise TooManyRequestsError(detail, headers={"Retry-After": str(max(int(retry_after), 1))})
        if int(delay_ms) > 0:
            security_log.warning(
                "login_slowed",
                purpose=purpose,
                client_network=network,
                account=account,
                failures=int(failures),
                delay_s=int(delay_ms) / 1000,
                wait_s=int(wait_ms) / 1000,
                slot_ms=int(slot_ms),
            )
        attempt = Attempt(keys, counted=True, took_slot=int(wait_ms) > 0, purpose=purpose, network=network)
        if attempt.took_slot:
            try:
                await asyncio.sleep(int(wait_ms) / 1000)
            except BaseException as exc:
                await self.abandoned(attempt, exc)
                raise
        return attempt

    async def succeeded(self, attempt: Attempt) -> None:
        if attempt.counted:
            args = [KNOWN_NETWORK_S, self.settings.login_address_max_failures]
            await self._end("succeeded", attempt, self._succeeded(keys=list(attempt.keys), args=args))

    async def failed(self, attempt: Attempt) -> None:
        """A wrong password: the attempt stays counted, and is no longer in progress."""
        if attempt.counted:
            await self._end("failed", attempt, self._ended_script(attempt, []))

    async def abandoned(self, attempt: Attempt, ended_by: BaseException) -> None:
        """Take back an attempt that ``ended_by`` ended before its password was checked; from its
        network's counters too unless it took a slot and its client went (a cancellation: the module's
        docstring)."""
        if not attempt.counted:
            return
        pair, addr, acct, *_ = attempt.keys
        client_gone = isinstance(ended_by, asyncio.CancelledError)
        counted = [acct] if attempt.took_slot and client_gone else [pair, addr, acct]
        await self._end("abandoned", attempt, self._ended_script(attempt, counted))

    def _ended_script(self, attempt: Attempt, taken_back: list[str]) -> Awaitable[list[int]]:
        pair, addr, _, _, _, pair_busy, addr_busy, pair_began, addr_began = attempt.keys
        return self._ended(
            keys=[pair, addr, pair_busy, addr_busy, pair_began, addr_began, *taken_back],
            args=[self.settings.login_max_failures, self.settings.login_address_max_failures],
        )

    async def _end(self, operation: str, attempt: Attempt, script: Awaitable[Any]) -> None:
        """An attempt's end, run to completion even when the request is cancelled meanwhile (a
        shutdown; ``close`` waits for it): a lost end would leave the attempt in progress until its
        busy count expires. The end that leaves a pair's or an address's limit of finished attempts
        logs ``login_lockout_began``, once a window: a burst of guesses refused while in progress
        (``login_attempts_in_progress``) that stops has its lockout logged though no attempt is
        refused after it (the diff reviewers)."""

        async def run() -> None:
            try:
                answer = await script
            except VALKEY_ERRORS as exc:
                report_dependency_down(
                    exc, "login_throttle", "login_throttle_unavailable", operation=operation
                )
                return
            except Exception:  # Valkey refused the script (a key of the wrong type): the answer stands
                security_log.exception("login_throttle_end_failed", operation=operation)
                return
            if not isinstance(answer, list):  # succeeded's: nothing to report
                return
            pair_began, pair_ttl, address_began, address_ttl = (int(value) for value in answer)
            for scope, began, ttl in (
                ("pair", pair_began, pair_ttl),
                ("address", address_began, address_ttl),
            ):
                if began:
                    account = _account_tag(attempt.keys)
                    _log_lockout("login_lockout_began", scope, attempt.purpose, attempt.network, account, ttl)

        await self._in_flight.run(run())

    def _end_if_counted(self, keys: Keys, purpose: str, network: str, counting: asyncio.Future[Any]) -> None:
        """The request was cancelled (a shutdown) while Valkey counted its attempt: once the count
        lands, an attempt it admitted checked no password and is ended as one whose client went
        (else it stayed counted and in progress until its busy count expired)."""
        if counting.cancelled():
            return
        if (error := counting.exception()) is not None:
            if not isinstance(error, VALKEY_ERRORS):
                security_log.error("login_throttle_count_failed", exc_info=error)
            return
        refused, retry_after, *_, wait_ms, began = counting.result()
        if int(refused) in _REFUSED_BY and int(began):  # the lockout it recorded: no one else says so
            scope, account = _REFUSED_BY[int(refused)], _account_tag(keys)
            _log_lockout("login_lockout_began", scope, purpose, network, account, int(retry_after))
        if not int(refused):
            attempt = Attempt(
                keys, counted=True, took_slot=int(wait_ms) > 0, purpose=purpose, network=network
            )
            self._in_flight.keep(self.abandoned(attempt, asyncio.CancelledError()))

    @property
    def in_flight(self) -> int:
        """Counts and ends of attempts under way in Valkey (``close`` waits for them)."""
        return len(self._in_flight)

    async def close(self, timeout_s: float = ENDS_AT_CLOSE_S) -> None:
        """Let the counts and ends of cancelled requests reach Valkey before the process closes its
        client, those that start meanwhile too (requests cancelled as the process stops), for
        ``timeout_s`` in all."""
        await self._in_flight.close(timeout_s)


def _account_tag(keys: Keys) -> str:
    """A digest prefix of the account's key: correlates security events without naming the account."""
    return keys[2][-12:]


def _log_lockout(
    event: str, scope: str, purpose: str, network: str, account: str, retry_after_s: int
) -> None:
    security_log.warning(
        event,
        scope=scope,
        purpose=purpose,
        client_network=network,
        account=account,
        retry_after_s=retry_after_s,
    )


def throttle_key(secret_key: str, kind: str, value: str) -> str:
    """The Valkey key of a counter of ``value`` (an email, an address, or both), which holds neither
    (``keyed_digest``)."""
    return f"auth:login-attempts:{kind}:{keyed_digest(secret_key, kind, value)}"
