"""Error replies by which a reachable Valkey says it cannot serve now (``app/core/valkey.py``): both
clients raise them as ``VALKEY_DOWN``, so the cache answers from its loader and the rate limiter
follows its policy instead of a request failing with a 500; every other error reply still raises.

A real Valkey made a replica of nothing gives the failover's ``READONLY`` and ``MASTERDOWN``; the
replies a test cannot provoke on demand (``LOADING`` during a restart, ``MISCONF`` on a full disk,
``BUSY``, the ``maxclients`` greeting) come from a fake server that writes exactly those lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import libvalkey
import msgspec
import pytest
import uvloop
from litestar import Litestar, get
from litestar.middleware import DefineMiddleware
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from valkey.asyncio import Valkey
from valkey.exceptions import ResponseError

from app.config import Settings
from app.core.cache import VALKEY_DOWN
from app.core.errors import exception_handlers
from app.core.gate import GateConfig, RouteGate
from app.core.multiplexed import MultiplexedValkey
from app.core.ratelimit import Policy, RateLimiter
from app.core.valkey import create_valkey
from app.domains.activity.cache import FeedCache
from tests.factories import MakeCache
from tests.valkey_control import ControlledValkey

NOT_NOW = {
    "LOADING": b"-LOADING Valkey is loading the dataset in memory\r\n",
    "MISCONF": b"-MISCONF Valkey is configured to save RDB snapshots, but it's currently unable to "
    b"persist to disk. Commands that may modify the data set are disabled\r\n",
    "READONLY": b"-READONLY You can't write against a read only replica.\r\n",
    "MASTERDOWN": b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
    "BUSY": b"-BUSY Valkey is busy running a script. You can only call SCRIPT KILL or FUNCTION KILL.\r\n",
    "NOREPLICAS": b"-NOREPLICAS Not enough good replicas to write.\r\n",
    "OOM": b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
}
DEFECTS = {
    "script error": b"-ERR user_script:1: Script attempted to access nonexistent global variable 'x'\r\n",
    "wrong type": b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    "not BUSY": b"-BUSYKEY Target key name already exists.\r\n",
}
GREETINGS = {
    "maxclients": b"-ERR max number of clients reached\r\n",
    "protected mode": b"-DENIED Valkey is running in protected mode because protected mode is enabled\r\n",
}
HANG_BOUND_S = 10
"""How long a call may take before the test calls it a hang (its client's timeout is 1 s)."""


class _Replying(socketserver.BaseRequestHandler):
    server: _ReplyingServer

    def handle(self) -> None:
        commands = libvalkey.Reader()
        with contextlib.suppress(ConnectionError):  # a client closing with an abort
            while data := self.request.recv(65536):
                commands.feed(data)
                while (command := commands.gets()) is not False:
                    self.request.sendall(b"+OK\r\n" if command[0].upper() == b"CLIENT" else self.server.reply)


class _ReplyingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, reply: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Replying)
        self.reply = reply


@contextlib.contextmanager
def replying(reply: bytes) -> Iterator[str]:
    """The URL of a server that answers every command with ``reply`` (but ``CLIENT SETINFO``, which
    valkey-py sends on connecting, with ``+OK``). It runs in threads: the in-process HTTP client
    holds the test's event loop while the app answers."""
    server = _ReplyingServer(reply)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def greeting(line: bytes) -> Iterator[str]:
    """The URL of a server that writes ``line`` to each connection as soon as it accepts it and
    closes it, reading nothing, as Valkey does at ``maxclients``: often before the client has sent
    its first command, sometimes before it has even seen the connection made."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener was shut down: the test is over
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.sendall(line)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
        listener.close()
        thread.join()


def shared_client(settings: Settings, url: str) -> Valkey:
    """The app's shared client (``create_valkey``) on ``url``."""
    return create_valkey(msgspec.structs.replace(settings, valkey_timeout_s=1.0), url)


@contextlib.asynccontextmanager
async def valkey_client(settings: Settings, url: str) -> AsyncIterator[Valkey]:
    client = shared_client(settings, url)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def multiplexed(url: str) -> AsyncIterator[MultiplexedValkey]:
    client = MultiplexedValkey.like(Valkey.from_url(url, socket_timeout=1))
    try:
        yield client
    finally:
        await client.aclose()


class Loader:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return f"from PostgreSQL {self.calls}"


@pytest.mark.parametrize("reply", NOT_NOW.values(), ids=NOT_NOW.keys())
async def test_a_reply_meaning_not_now_is_valkey_down_for_the_lookups_client(reply: bytes) -> None:
    with replying(reply) as url:
        async with multiplexed(url) as client:
            with pytest.raises(VALKEY_DOWN):
                await client.register_script("return 1")()
            with pytest.raises(VALKEY_DOWN):
                await client.execute("GET", "k")


@pytest.mark.parametrize("reply", NOT_NOW.values(), ids=NOT_NOW.keys())
async def test_a_reply_meaning_not_now_is_valkey_down_for_the_shared_client(
    settings: Settings, reply: bytes
) -> None:
    with replying(reply) as url:
        async with valkey_client(settings, url) as client:
            with pytest.raises(VALKEY_DOWN):
                await client.set("k", "v")
            with pytest.raises(VALKEY_DOWN):
                await client.register_script("return 1")()


@pytest.mark.parametrize("reply", DEFECTS.values(), ids=DEFECTS.keys())
async def test_a_reply_meaning_a_defect_still_raises(settings: Settings, reply: bytes) -> None:
    """A guard for the classification: these must never be taken for an outage and hidden."""
    with replying(reply) as url:
        async with multiplexed(url) as lookups, valkey_client(settings, url) as client:
            for call in (lookups.execute("GET", "k"), client.get("k")):
                with pytest.raises(ResponseError) as raised:
                    await call
                assert not isinstance(raised.value, VALKEY_DOWN)


async def test_a_cache_read_while_valkey_loads_its_data_answers_from_the_loader(
    make_cache: MakeCache, settings: Settings
) -> None:
    """After a restart with ``appendonly yes`` Valkey answers ``-LOADING`` until it has replayed its
    file: cached reads go to PostgreSQL for that long instead of failing."""
    with replying(NOT_NOW["LOADING"]) as url:
        async with valkey_client(settings, url) as client:
            namespace = make_cache(client).namespace("loading")
            loader = Loader()
            assert await namespace.get_or_load("k", loader, ttl_s=60, type=str) == "from PostgreSQL 1"
            assert await namespace.get_or_load("k", loader, ttl_s=60, type=str) == "from PostgreSQL 2"
            await namespace.invalidate_all()


async def test_a_replica_after_a_failover_serves_cached_reads_from_the_loaders(
    make_cache: MakeCache, controlled_valkey: ControlledValkey, settings: Settings
) -> None:
    """A real Valkey turned replica (of nothing reachable): its ``READONLY`` refuses the cache's lock
    and the feed's version writes, then its ``MASTERDOWN`` refuses even reads; the cache and the
    feed answer from their loaders throughout."""
    async with valkey_client(settings, controlled_valkey.url) as client:
        cache = make_cache(client)
        namespace, feed, loader = cache.namespace("replica"), FeedCache(cache, ttl_s=30), Loader()
        await client.execute_command("REPLICAOF", "127.0.0.1", "1")
        for stale_data in ("yes", "no"):
            await client.config_set("replica-serve-stale-data", stale_data)
            value = await namespace.get_or_load("k", loader, ttl_s=60, type=str)
            assert value == f"from PostgreSQL {loader.calls}"
            answer = await feed.read(7, "unread", _scope, lambda: _encoded(loader))
            assert answer == f"from PostgreSQL {loader.calls}".encode()
            await feed.scope_changed(7)
        assert loader.calls == 4


async def _scope() -> tuple[bool, list[int]]:
    return False, [101]


async def _encoded(loader: Loader) -> bytes:
    return (await loader()).encode()


def fail_open_count() -> float:
    return REGISTRY.get_sample_value("app_rate_limit_fail_open_total", {"policy": "replies"}) or 0.0


@pytest.mark.parametrize("reply", [NOT_NOW["MISCONF"], NOT_NOW["READONLY"]], ids=["MISCONF", "READONLY"])
async def test_the_rate_limiter_follows_its_policy_when_valkey_cannot_count(
    settings: Settings, reply: bytes
) -> None:
    """A full disk (``MISCONF``) or a failover (``READONLY``) refuses the lease script's counting:
    a fail-open policy admits the request, a fail-closed one answers 503, neither a 500."""

    @get("/open", opt={"rate_limit": "replies"})
    async def fail_open() -> str:
        return "admitted"

    @get("/closed", opt={"rate_limit": "strict"})
    async def fail_closed() -> str:
        return "admitted"

    with replying(reply) as url:
        valkey = shared_client(settings, url)
        app = Litestar(
            [fail_open, fail_closed],
            middleware=[
                DefineMiddleware(RouteGate, config=_gate(RateLimiter(valkey, secret_key="test-secret")))
            ],
            exception_handlers=exception_handlers,
            on_shutdown=[valkey.aclose],  # the app's event loop made its connections
        )
        before = fail_open_count()
        async with AsyncTestClient(app=app) as http:
            admitted = await http.get("/open")
            refused = await http.get("/closed")
    assert admitted.status_code == 200, admitted.text
    assert admitted.text == "admitted"
    assert fail_open_count() == before + 1
    assert refused.status_code == 503, refused.text
    assert refused.json()["detail"] == "Rate limiting is unavailable; retry shortly.", "the policy's 503"


def _gate(limiter: RateLimiter) -> GateConfig:
    return GateConfig(
        authenticate=_nobody,
        limiter=limiter,
        policies={
            "replies": Policy("replies", 10, 100),
            "strict": Policy("strict", 10, 100, fail_closed=True),
        },
        rate_limits_enabled=True,
        warn_interval_s=3600,
    )


async def _nobody(_: str) -> Any:
    raise AssertionError("no request sends a token")


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("line", GREETINGS.values(), ids=GREETINGS.keys())
def test_a_server_that_refuses_and_closes_fails_the_calls_instead_of_hanging_them(
    run: Callable[[Awaitable[None]], None], line: bytes
) -> None:
    """At ``maxclients`` (or in protected mode) Valkey writes an error and closes before reading a
    command. Each call fails as ``VALKEY_DOWN`` (its caller then falls back), whether the error came
    as its answer or the connection was gone before it was sent; none waits forever."""

    async def calls(url: str) -> None:
        async with multiplexed(url) as client:
            for _ in range(20):
                with pytest.raises(VALKEY_DOWN):
                    await asyncio.wait_for(client.execute("PING"), HANG_BOUND_S)

    with greeting(line) as url:
        run(calls(url))
