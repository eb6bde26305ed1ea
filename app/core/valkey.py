"""The Valkey client used for rate limits, cache, error de-duplication and locks, and what its
failures mean.

``VALKEY_DOWN`` is what every caller that can do without Valkey falls back on (the cache reads from
PostgreSQL, the rate limiter fails open or closed as its policy says). It covers an unreachable or
slow server, and the error replies by which a reachable one says it cannot serve now
(``UNAVAILABLE_REPLIES``): those come and go with the server's state (a restart loading its data, a
full disk, a failover), not with the call, so a request must not fail on them any more than on a
refused connection. Every other error reply (a script's error, a wrong type) is a defect of the call
and stays a ``ResponseError``.
"""

from __future__ import annotations

from valkey._parsers import _AsyncLibvalkeyParser
from valkey._parsers.base import BaseParser
from valkey.asyncio import BlockingConnectionPool, Valkey
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError
from valkey.exceptions import ValkeyError

from app.config import Settings

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


def reply_error(message: str) -> ValkeyError:
    """The exception for an error reply: valkey-py's own, or ``ValkeyUnavailableError`` when the
    reply means "not now" and valkey-py would make it an application error."""
    error: ValkeyError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    if isinstance(error, ValkeyConnectionError) or message.partition(" ")[0] not in UNAVAILABLE_REPLIES:
        return error
    return ValkeyUnavailableError(message)


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
    replies that mean "not now" are ``VALKEY_DOWN`` too (``reply_error``)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.valkey_pool_max,
        timeout=settings.valkey_timeout_s,
        socket_timeout=settings.valkey_timeout_s,
        socket_connect_timeout=settings.valkey_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
        parser_class=_ClassifyingParser,
    )
    return Valkey.from_pool(pool)
