"""Lua calls on the hot read paths, pipelined on one Valkey connection per process.

Written by hand because every maintained asyncio client costs several times the work of the call:
under 64 concurrent callers valkey-py's pool spends 70 to 79 µs of CPU per script call, valkey-glide
57, coredis 216, against 16 for commands written at once to one connection and answered in order
(``uv run python -m benchmarks.valkey_clients``). A cached task list or feed page makes one such
call per request, so the client was a quarter of the request.

Only what those paths need: ``EVALSHA`` (``EVAL`` once after a ``NOSCRIPT``), RESP2 replies parsed by
libvalkey's reader, ``AUTH`` and ``SELECT`` from the URL, TCP, TLS (``valkeys://``/``rediss://``)
and Unix sockets. Failures are valkey-py's exception types, so ``VALKEY_DOWN`` covers them: a
connection that cannot be made within the timeout, or is lost, fails every call waiting on it and
every call sent to it after (``ConnectionError``: a server at ``maxclients`` or in protected mode
answers an error and closes before the first command); a call unanswered after ``timeout_s``
closes the connection (its replies are in order: everything behind an unanswered call is stuck
too) and fails with ``TimeoutError``; an error reply is what valkey-py's client would raise, made by
the same ``reply_error`` (``app/core/valkey.py``: ``LOADING``, ``READONLY``... are ``VALKEY_DOWN``).
The next call connects again. Nothing is opened before the first call, so the client may be
built before the server forks.

Built ``like`` the shared client, it shares that client's circuit breaker (``Breaker`` in
``app/core/valkey.py``): a lookup fails at once while the breaker is open, and its own timeouts and
lost connections open it for the client's calls too. Built alone, it has none and tries every call.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
import time
from collections.abc import Sequence
from typing import Any, cast

import libvalkey
from valkey.asyncio import Valkey
from valkey.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import NoScriptError, ResponseError, ValkeyError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from app.core.valkey import Breaker, BreakerPool, never_open, reply_error

Arg = str | bytes | int | float
_running = asyncio.get_running_loop


def encode_command(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One connection of one event loop: commands written in order, replies handed out in order."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = libvalkey.Reader(replyError=reply_error)
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        """The calls sent and not yet answered, oldest first, with when each was sent."""
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.outgoing: list[bytes] = []
        """Commands of this turn of the event loop, written together at its end (one system call
        for the calls of every request the turn ran, instead of one each)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's are not asyncio.Transport

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """The call's answer; failed at once on a lost connection, which nothing answers or watches."""
        answer: asyncio.Future[Any] = self.loop.create_future()
        if self.lost is not None:
            answer.set_exception(self.lost)
            return answer
        self.pending.append((answer, time.monotonic()))
        if not self.outgoing:
            self.loop.call_soon(self.flush)
        self.outgoing.append(command)
        return answer

    def flush(self) -> None:
        if self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except libvalkey.ProtocolError as exc:
                self.abort(ValkeyConnectionError(f"Valkey protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.pending:
                self.abort(ValkeyConnectionError(f"Valkey sent a reply nobody asked for: {reply!r:.200}"))
                return
            answer, _ = self.pending.popleft()
            if answer.done():  # its caller was cancelled: the reply is still consumed, in order
                continue
            if isinstance(reply, ValkeyError):
                answer.set_exception(reply)
            else:
                answer.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(self.lost or ValkeyConnectionError(f"Connection to Valkey lost: {exc or 'closed'}"))

    def abort(self, error: Exception) -> None:
        self.lost = self.lost or error
        if self.transport is not None:
            self.transport.abort()
        self.fail(error)

    def fail(self, error: Exception) -> None:
        self.lost = self.lost or error
        while self.pending:
            answer, _ = self.pending.popleft()
            if not answer.done():
                answer.set_exception(error)

    def overdue(self, deadline: float) -> bool:
        return bool(self.pending) and self.pending[0][1] < deadline


class MultiplexedValkey:
    """Commands from any number of concurrent callers on one connection, answered in order."""

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 1.0,
        breaker: Breaker | None = None,
    ) -> None:
        self.breaker = breaker or never_open()
        self._address = (host, port, path)
        self._handshake = [
            *([encode_command(["AUTH", *([username] if username else []), password])] if password else []),
            *([encode_command(["SELECT", db])] if db else []),
        ]
        self._tls = tls
        self.timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def like(cls, client: Valkey) -> MultiplexedValkey:
        """A client for the server, database and credentials ``client``'s pool connects to, behind
        its pool's breaker."""
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        timeout = kwargs.get("socket_timeout") or 1.0
        unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
        tls = None
        if issubclass(pool.connection_class, SSLConnection):
            tls = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
            if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        return cls(
            host=kwargs.get("host", "localhost"),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path") if unix else None,
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            tls=tls,
            timeout_s=float(timeout),
            breaker=pool.breaker if isinstance(pool, BreakerPool) else None,
        )

    def register_script(self, lua: str) -> Script:
        return Script(self, lua)

    async def execute(self, *args: Arg) -> Any:
        breaker = self.breaker
        probe = breaker.admit() if breaker.opened_at is not None else 0
        try:
            connection = self._connection
            if connection is None or connection.lost is not None or connection.loop is not _running():
                connection = await self._connect()
            reply = await connection.send(encode_command(args))
        except (ValkeyConnectionError, ValkeyTimeoutError) as exc:
            breaker.failed(exc)  # an error reply among them closes it: Valkey answered
            raise
        except ValkeyError:
            if probe:
                breaker.answered()
            raise
        except BaseException:
            breaker.abandoned(probe)
            raise
        if probe:
            breaker.answered()
        return reply

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.abort(ValkeyConnectionError("Client closed"))

    async def _connect(self) -> _Connection:
        """The live connection; one attempt at a time, shared by every caller that needs it."""
        if self._loop is not _running():  # first use, or a new event loop (tests): start afresh
            self._loop = _running()
            self._connection = self._connecting = self._watchdog = None
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, attempt: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._connection = attempt.result()
            self._schedule_watchdog()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, path = self._address
        try:
            async with asyncio.timeout(self.timeout_s):
                if path is not None:
                    _, connection = await loop.create_unix_connection(_Connection, path)
                else:
                    _, connection = await loop.create_connection(_Connection, host, port, ssl=self._tls)
                try:
                    for answer in [connection.send(command) for command in self._handshake]:
                        await answer
                except ResponseError as exc:
                    connection.abort(ValkeyConnectionError(f"Valkey refused the connection: {exc}"))
                    raise ValkeyConnectionError(f"Valkey refused the connection: {exc}") from exc
                except BaseException:
                    connection.abort(ValkeyConnectionError("Valkey handshake interrupted"))
                    raise
        except TimeoutError as exc:
            raise ValkeyTimeoutError(f"Connecting to Valkey took over {self.timeout_s} s") from exc
        except OSError as exc:
            raise ValkeyConnectionError(f"Cannot connect to Valkey: {exc}") from exc
        return connection

    def _schedule_watchdog(self) -> None:
        """Every quarter of the timeout while connected: a connection whose oldest call is older
        than the timeout is closed, failing its calls. One timer per connection instead of one per call."""
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.timeout_s / 4, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        connection = self._connection
        if connection is None or connection.lost is not None:
            return
        if connection.overdue(time.monotonic() - self.timeout_s):
            connection.abort(ValkeyTimeoutError(f"Valkey did not answer within {self.timeout_s} s"))
            return
        self._schedule_watchdog()


class Script:
    """A Lua script called by its SHA1 (``EVALSHA``); sent whole once when the server lacks it."""

    def __init__(self, client: MultiplexedValkey, lua: str) -> None:
        self.client = client
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.execute("EVAL", self.lua, len(keys), *keys, *args)
