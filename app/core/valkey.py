"""The Valkey client used for rate limits, cache, error de-duplication and locks, and what its
failures mean.

``VALKEY_DOWN`` is what every caller that can do without Valkey falls back on (the cache reads from
PostgreSQL, the rate limiter fails open or closed as its policy says). It covers an unreachable or
slow server, and the error replies by which a reachable one says it cannot serve now
(``UNAVAILABLE_REPLIES``): those come and go with the server's state (a restart loading its data, a
full disk, a failover), not with the call, so a request must not fail on them any more than on a
refused connection. Every other error reply (a script's error, a wrong type) is a defect of the call
and stays a ``ResponseError``.

A circuit breaker (``Breaker``) sits under every call of the client (commands, pipelines, scripts)
and of the cache's lookups connection built ``like`` it (``app/core/multiplexed.py``): once a call
failed for Valkey not answering (a connect or socket timeout, a refused or reset connection), every
call fails at once for ``min(FAIL_FAST_S, VALKEY_TIMEOUT_S)`` with the same kind of ``VALKEY_DOWN``
error, instead of each waiting ``VALKEY_TIMEOUT_S`` (the rate limiter's lease, then the cache's
lookup, then...: seconds per request, holding its slot); then one call tries Valkey again while
the others still fail fast, and its answer closes the breaker. Error replies are answers, fast
ones: they never open it.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, cast

import structlog
from valkey._parsers import _AsyncLibvalkeyParser
from valkey._parsers.base import BaseParser
from valkey.asyncio import BlockingConnectionPool, Valkey
from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    InvalidResponse,
    NoPermissionError,
    ResponseError,
    ValkeyError,
)
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from app.config import Settings
from app.core.logging import error_message

_log = structlog.get_logger("app.valkey")

UNAVAILABLE_REPLIES = frozenset(
    {"LOADING", "BUSY", "MISCONF", "READONLY", "MASTERDOWN", "NOREPLICAS", "OOM", "DENIED"}
)
"""Error codes that say "not now": loading the dataset after a restart (``LOADING``: valkey-py's
``BusyLoadingError`` already), a script running past its time limit (``BUSY``), writes stopped
after a failed snapshot (``MISCONF``: a full disk), a replica after a failover (``READONLY``) or
cut from its primary (``MASTERDOWN``), too few replicas to write to (``NOREPLICAS``), memory full
under ``noeviction`` (``OOM``), a server in protected mode refusing this client (``DENIED``, its
greeting, like a refused ``AUTH``). The code is the reply's first word: ``BUSYKEY`` is not ``BUSY``."""


class ValkeyUnavailableError(ValkeyConnectionError):
    """An error reply in ``UNAVAILABLE_REPLIES``: a ``ConnectionError``, as valkey-py makes
    ``LOADING`` and a refused ``AUTH``, so that ``VALKEY_DOWN`` covers it and valkey-py drops the
    connection (the next one may reach a recovered or promoted server)."""


VALKEY_DOWN = (ValkeyConnectionError, ValkeyTimeoutError)
"""What a call raises when Valkey cannot serve it now: fall back, never an error of the request."""

_REFUSALS = (AuthenticationError, AuthorizationError, NoPermissionError, AuthenticationWrongNumberOfArgsError)
_FINAL_REPLIES = ("DENIED", "DB index", "unknown command", "SELECT is not allowed")
"""Error replies (their code stripped by valkey-py where it knows it) that no wait changes: protected
mode, a database index Valkey lacks, a proxy or a sentinel that knows no ``PING`` or ``SELECT``, a
cluster node asked for a database other than 0 (diffreview9)."""


def final_refusal(error: BaseException) -> str | None:
    """How a Valkey that answered ``error`` will not serve this client however long one waits: its
    credentials or permissions refused, an error reply no wait changes (``_FINAL_REPLIES``), or a
    reply that is not Valkey's (another service on its port). None for what passes: unreachable,
    starting, loading, busy with a script, a failover (``UNAVAILABLE_REPLIES``). For the start-up
    checks (``app.cli``'s serve, the worker's preflight), which fail at once on it instead of waiting
    (review: ``BUSY`` and ``MASTERDOWN`` failed them at once)."""
    text = str(error)
    if isinstance(error, _REFUSALS) or (isinstance(error, ResponseError) and text.startswith(_FINAL_REPLIES)):
        return "refused the connection"
    if isinstance(error, InvalidResponse):
        return "answered in another protocol"
    return None


_REPLY = "valkey_reply"
"""The attribute ``reply_error`` sets on what it makes: an error reply, so an answer (``is_reply``)."""


def reply_error(message: str) -> ValkeyError:
    """The exception for an error reply: valkey-py's own, or ``ValkeyUnavailableError`` when the
    reply means "not now" and valkey-py would make it an application error."""
    error: ValkeyError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    if not isinstance(error, ValkeyConnectionError) and message.partition(" ")[0] in UNAVAILABLE_REPLIES:
        error = ValkeyUnavailableError(message)
    setattr(error, _REPLY, True)
    return error


def is_reply(error: BaseException) -> bool:
    """Whether ``error`` is an error reply (``reply_error``'s): Valkey answered, so it is reachable,
    even when the answer is a ``ConnectionError`` (``LOADING``, ``READONLY``, ``maxclients``...)."""
    return getattr(error, _REPLY, False) is True


FAIL_FAST_S = 1.0
"""How long, at most, calls fail at once after one found Valkey unreachable or too slow: the
breaker's window is ``min(FAIL_FAST_S, VALKEY_TIMEOUT_S)``, so that it delays a recovery by no more
than one call waiting on a dead Valkey would have cost, while sparing every other call its wait."""

PROBE_TURN_TIMEOUTS = 3
"""A probe that reports nothing (cancelled, say, before any I/O could fail) holds its turn for at
most this many ``VALKEY_TIMEOUT_S`` (a wait for a pooled connection, connecting, its reply): then
another call may probe."""


class Breaker:
    """Whether calls to one Valkey should be tried, shared by every connection to it in a process.

    Closed (``opened_at`` is ``None``), calls go through: the healthy path costs a read of that
    attribute at admission (and of the connection's ``probe`` on its replies and its release).
    A call that fails for Valkey not answering (``failed``) opens it: calls fail at once
    (``admit`` raises) until ``window_s`` after the last such failure; then the next call is let
    through as the probe while the others still fail fast; the probe's answer (``answered``) closes
    it, its failure opens it for another window, and a probe that ends without either
    (``abandoned``: cancelled) hands its turn to the next call. Opening logs a warning and closing an
    info line with how long it was open: one line each per outage, never one per call.

    Calls under way when it opened are not stopped: their failures extend the window."""

    def __init__(self, timeout_s: float) -> None:
        self.opened_at: float | None = None
        """When it opened (``time.monotonic()``), ``None`` while closed."""
        self.window_s = min(FAIL_FAST_S, timeout_s)
        self._probe_turn_s = PROBE_TURN_TIMEOUTS * timeout_s
        self._retry_at = 0.0
        self._probe = 0
        """The probe under way (its number), 0 when none."""
        self._probes = itertools.count(1)
        self._cause: BaseException | None = None

    def admit(self) -> int:
        """While open (the caller checked ``opened_at``): the raised failure, unless this call is
        the probe. Returns the probe's number, which the caller gives back to ``abandoned``."""
        now = time.monotonic()
        if now < self._retry_at:
            raise self.failing_fast()
        self._retry_at = now + self._probe_turn_s
        self._probe = next(self._probes)
        return self._probe

    def failing_fast(self) -> ValkeyError:
        """The error of a call not tried: the kind of the failure that opened the breaker (a
        ``VALKEY_DOWN``, so callers fall back as on that failure), and its message."""
        cause = self._cause
        kind = ValkeyTimeoutError if isinstance(cause, ValkeyTimeoutError) else ValkeyConnectionError
        return kind(f"{cause} (Valkey not tried again for up to {self.window_s:g} s after it)")

    def failed(self, error: BaseException) -> None:
        """A call failed with ``error``: opens the breaker (or keeps it open for another window)
        when Valkey did not answer; an error reply is an answer (``answered``)."""
        if is_reply(error):
            if self.opened_at is not None:
                self.answered()
            return
        now = time.monotonic()
        self._retry_at = now + self.window_s
        self._probe = 0
        self._cause = error
        if self.opened_at is None:
            self.opened_at = now
            _log.warning(
                "valkey_circuit_opened",
                error=type(error).__name__,
                detail=error_message(error),
                fail_fast_s=self.window_s,
            )

    def answered(self) -> None:
        """Valkey answered a call: closes the breaker."""
        opened_at = self.opened_at
        if opened_at is None:
            return
        self.opened_at = None
        self._probe = 0
        self._retry_at = 0.0
        _log.info("valkey_circuit_closed", open_s=round(time.monotonic() - opened_at, 3))

    def abandoned(self, probe: int) -> None:
        """The call that probed as ``probe`` (0: a call that did not) ended without an outcome:
        the next call probes."""
        if probe and probe == self._probe:
            self._probe = 0
            self._retry_at = time.monotonic()


class _NeverOpen(Breaker):
    """The breaker of a client built without one (``MultiplexedValkey`` alone): it tries every call."""

    def failed(self, error: BaseException) -> None:
        pass


def never_open() -> Breaker:
    return _NeverOpen(FAIL_FAST_S)


class _BreakerConnection(AbstractConnection):
    """Mixed into the pool's connection class: reports to the pool's breaker how calls ended.

    Failures are caught where valkey-py raises them: connecting (its handshake included), writing,
    reading a reply. A reply (error replies included) answered by the probe closes the breaker."""

    breaker: Breaker
    probe: int = 0
    """The probe's number while this connection carries it (set on the instance by the pool)."""

    async def connect(self) -> None:
        try:
            await super().connect()  # type: ignore[no-untyped-call]
        except (ValkeyConnectionError, ValkeyTimeoutError) as exc:
            self.breaker.failed(exc)
            raise

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (ValkeyConnectionError, ValkeyTimeoutError) as exc:
            self.breaker.failed(exc)
            raise

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        try:
            response = await super().read_response(
                disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
            )
        except (ValkeyConnectionError, ValkeyTimeoutError) as exc:
            self.breaker.failed(exc)
            raise
        except ResponseError:
            if self.probe:
                self.breaker.answered()
            raise
        if self.probe and (response is not None or timeout is None):  # None: a caller's own timeout
            self.breaker.answered()
        return response


_GUARDED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _guarded(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` (TCP, TLS or Unix socket, as the URL said) reporting to a breaker."""
    guarded = _GUARDED.get(connection_class)
    if guarded is None:
        name = f"Breaker{connection_class.__name__}"
        guarded = _GUARDED[connection_class] = type(name, (_BreakerConnection, connection_class), {})
    return guarded


class BreakerPool(BlockingConnectionPool):
    """valkey-py's blocking pool with a ``Breaker`` in front: every call of a client takes a
    connection from its pool (commands, pipelines, scripts), so every call is admitted here.

    A call that waited for a free connection while the breaker opened fails at once too, instead of
    sending its command to a Valkey just found dead."""

    def __init__(self, *, breaker: Breaker, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.breaker = breaker
        self.connection_class = _guarded(self.connection_class)

    def make_connection(self) -> _BreakerConnection:
        connection = cast("_BreakerConnection", super().make_connection())  # type: ignore[no-untyped-call]
        connection.breaker = self.breaker
        return connection

    async def get_connection(self, command_name: Any, *keys: Any, **options: Any) -> _BreakerConnection:
        breaker = self.breaker
        probe = breaker.admit() if breaker.opened_at is not None else 0
        try:
            connection = cast(
                "_BreakerConnection",
                await super().get_connection(command_name, *keys, **options),  # type: ignore[no-untyped-call]
            )
        except BaseException:
            breaker.abandoned(probe)
            raise
        if probe:
            connection.probe = probe
        elif breaker.opened_at is not None:  # it opened while this call waited for the connection
            await self.release(connection)
            raise breaker.failing_fast()
        return connection

    async def release(self, connection: _BreakerConnection) -> None:  # type: ignore[override]
        probe = connection.probe
        if probe:
            del connection.probe
            self.breaker.abandoned(probe)  # a no-op once the probe answered or failed
        await super().release(connection)


class _ClassifyingParser(_AsyncLibvalkeyParser):
    """valkey-py's parser, with its error replies made by ``reply_error``."""

    @classmethod
    def parse_error(cls, response: str) -> ValkeyError:
        return reply_error(response)


def create_valkey(settings: Settings, url: str) -> Valkey:
    """A client whose calls fail fast (``VALKEY_TIMEOUT_S``) instead of hanging a request, on at most
    ``VALKEY_POOL_MAX`` connections per process. A call that finds them all busy waits up to
    ``VALKEY_TIMEOUT_S`` for one, then fails like an unreachable Valkey (every caller degrades on
    that). Without the bound each concurrent request held a connection of its own: 64 per worker
    under the harness's 64 connections, as many as a traffic spike brings in production. Error
    replies that mean "not now" are ``VALKEY_DOWN`` too (``reply_error``). Valkey not answering
    opens the client's ``Breaker`` (shared with ``MultiplexedValkey.like(client)``)."""
    pool = BreakerPool.from_url(
        url,
        breaker=Breaker(settings.valkey_timeout_s),
        max_connections=settings.valkey_pool_max,
        timeout=settings.valkey_timeout_s,
        socket_timeout=settings.valkey_timeout_s,
        socket_connect_timeout=settings.valkey_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
        parser_class=_ClassifyingParser,
    )
    return Valkey.from_pool(pool)
