"""A set of recently revoked identifiers (e.g. session families), mirrored in process memory from
PostgreSQL and kept current by LISTEN/NOTIFY.

PostgreSQL is the source of truth: the revoking transaction writes the row, and NOTIFY (sent in that
same transaction, by a trigger) is delivered to every listening process when — and only if — it
commits. Each process listens on a dedicated connection and, whenever that connection is (re)made,
first LISTENs, then loads every identifier revoked within ``keep_s`` — so nothing revoked while it was
disconnected is missed (a notification that races the load is simply applied twice).

While the listener is not connected the in-memory copy may be stale: ``live`` is then false and the
caller must ask PostgreSQL instead (``AccountService.authenticate`` does). The residual window is
the notification's delivery: after the revoking commit returns, another process refuses the token
as soon as its event loop has read the notification from its socket (well under a millisecond on
one host); the revoking process itself adds the identifiers when its transaction commits.

An identifier is kept ``keep_s`` after this process learned of it (at least the longest time a token
naming it can stay valid): the set's size is bounded by the revocations of one such period, never
by an eviction that could forget a revocation too early.

A dead connection is noticed by a liveness query every ``check_interval_s``, which must be answered
within ``answer_timeout_s`` (as must the LISTEN and the load on connecting): a path that went silent
(the primary's host lost in a failover, a partition, a stalled proxy) refuses nothing, and TCP alone
would keep retransmitting for about 15 minutes, ``live`` all the while and every revocation made
elsewhere meanwhile ignored here. At the deadline the connection is severed (``app.core.deadline``),
``live`` turns false and the listener reconnects. ``tcp_user_timeout`` and keepalives bound, in the
kernel, whatever else waits on such a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import psycopg
import structlog
from psycopg import AsyncConnection

from app.core.deadline import answered_within
from app.core.repeating import stopped_within

K = TypeVar("K", bound=Hashable)
Connection = AsyncConnection[Any]

log = structlog.get_logger("app.revocations")

_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


class Revocations(Generic[K]):
    """``key in revocations`` while ``revocations.live``; see the module docstring."""

    def __init__(
        self,
        conninfo: str,
        *,
        listen: Callable[[Connection], Awaitable[None]],
        load: Callable[[Connection], Awaitable[Iterable[K]]],
        parse: Callable[[str], K],
        keep_s: float,
        connect_kwargs: Mapping[str, Any] | None = None,
        connect_timeout_s: float = 5.0,
        check_interval_s: float = 30.0,
        answer_timeout_s: float | None = None,
        retry_s: float = 0.5,
        max_retry_s: float = 10.0,
        name: str = "revocations",
    ) -> None:
        self._conninfo = conninfo
        self._connect_kwargs = {
            **_KEEPALIVES,
            **(connect_kwargs or {}),
            "connect_timeout": max(1, round(connect_timeout_s)),
            "autocommit": True,
        }
        self._listen = listen
        self._load = load
        self._parse = parse
        self.keep_s = keep_s
        self._check_interval_s = check_interval_s
        self._answer_timeout_s = connect_timeout_s if answer_timeout_s is None else answer_timeout_s
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._name = name
        self._revoked: dict[K, float] = {}
        self._live = False
        self._became_live = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    @property
    def live(self) -> bool:
        """True while the listener is connected and the set holds everything revoked recently."""
        return self._live

    def __contains__(self, key: object) -> bool:
        return key in self._revoked

    def __len__(self) -> int:
        return len(self._revoked)

    def add(self, keys: Iterable[K]) -> None:
        """Record revocations this process committed itself (their notifications follow)."""
        expires = time.monotonic() + self.keep_s
        for key in keys:
            self._revoked[key] = expires

    async def start(self, wait_s: float = 5.0) -> None:
        """Start listening; wait up to ``wait_s`` for the first load (then keep trying in the background)."""
        if self._task is None:
            self._became_live = asyncio.Event()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._became_live.wait(), wait_s)

    async def close(self) -> None:
        task, self._task = self._task, None
        self._live = False
        if task is not None:
            # Not cancellation alone: a cancel that arrives in a read can come out as an error (its
            # deadline firing with it), taken for a lost connection, and the listener reconnected on.
            self._stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = self._retry_s
        while not self._stop.is_set():
            try:
                async with await AsyncConnection.connect(self._conninfo, **self._connect_kwargs) as conn:
                    await self._answered(conn, self._catch_up(conn))
                    self._live = True
                    self._became_live.set()
                    delay = self._retry_s
                    log.info("revocations_listening", name=self._name, known=len(self._revoked))
                    await self._follow(conn)
            except (psycopg.Error, OSError) as exc:
                if self._live:
                    log.warning("revocations_listener_lost", name=self._name, error=type(exc).__name__)
                else:
                    log.info("revocations_listener_unavailable", name=self._name, error=type(exc).__name__)
            finally:
                self._live = False
            if self._stop.is_set():
                return
            self.reconnects += 1
            if await stopped_within(self._stop, delay):
                return
            delay = min(delay * 2, self._max_retry_s)

    async def _follow(self, conn: Connection) -> None:
        while not self._stop.is_set():
            async for notification in conn.notifies(timeout=self._check_interval_s):
                self._notified(notification.payload)
            self._prune()
            await self._answered(conn, conn.execute(""))

    async def _catch_up(self, conn: Connection) -> None:
        """LISTEN, then load what was revoked meanwhile: nothing is missed between the two."""
        await self._listen(conn)
        self.add(await self._load(conn))

    async def _answered(self, conn: Connection, work: Awaitable[Any]) -> None:
        """Await ``work`` on ``conn``, severed if the server has not answered in time: a silent path
        neither answers nor fails, and the listener would stay live on it until TCP gave up."""
        await answered_within(conn, work, self._answer_timeout_s, "the listener's connection")

    def _notified(self, payload: str) -> None:
        try:
            key = self._parse(payload)
        except ValueError:
            log.warning("revocations_bad_payload", name=self._name, payload=payload[:80])
            return
        self._revoked[key] = time.monotonic() + self.keep_s

    def _prune(self) -> None:
        now = time.monotonic()
        expired = [key for key, expires in self._revoked.items() if expires <= now]
        for key in expired:
            del self._revoked[key]
