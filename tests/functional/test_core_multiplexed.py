"""The pipelined Lua client of the hot read paths (app/core/multiplexed.py), on a real Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import uvloop
from valkey.asyncio import Valkey
from valkey.exceptions import ResponseError

from app.core.cache import VALKEY_DOWN
from app.core.multiplexed import MultiplexedValkey
from tests.factories import wait_until
from tests.valkey_control import ControlledValkey

ECHO = "return {ARGV[1], redis.call('GET', KEYS[1])}"


@pytest.fixture
async def client(valkey: Valkey) -> AsyncIterator[MultiplexedValkey]:
    client = MultiplexedValkey.like(valkey)
    yield client
    await client.aclose()


async def test_concurrent_callers_each_get_their_own_answer_even_when_some_give_up(
    client: MultiplexedValkey, valkey: Valkey
) -> None:
    """Replies are matched to calls by order: a caller cancelled while waiting still has its reply
    consumed, so everyone behind it gets theirs, not their neighbour's."""
    await valkey.mset({f"k{i}": f"v{i}" for i in range(300)})
    echo = client.register_script(ECHO)
    # Connected and the script loaded first: each call is then queued for writing in its first step
    # (on a cold client they would all still wait for the connection when cancelled, never sent).
    assert await echo(keys=["k0"], args=["warm"]) == [b"warm", b"v0"]
    calls = [asyncio.ensure_future(echo(keys=[f"k{i}"], args=[i])) for i in range(300)]
    await asyncio.sleep(0)  # every call is queued before any is cancelled; they are written together
    for call in calls[::3]:
        call.cancel()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    for i, answer in enumerate(answers):
        if i % 3 == 0:
            assert isinstance(answer, asyncio.CancelledError) or answer == [str(i).encode(), f"v{i}".encode()]
        else:
            assert answer == [str(i).encode(), f"v{i}".encode()]
    assert await echo(keys=["k7"], args=["after"]) == [b"after", b"v7"]


def test_the_same_under_uvloop_as_the_served_app_runs(valkey_url: str) -> None:
    """granian runs the app on uvloop, whose transports differ from asyncio's (the first version of
    the client failed there only)."""

    async def scenario() -> None:
        valkey = Valkey.from_url(valkey_url)
        client = MultiplexedValkey.like(valkey)
        try:
            await test_concurrent_callers_each_get_their_own_answer_even_when_some_give_up(client, valkey)
            await test_a_connection_closed_by_the_server_is_made_again(client, valkey)
        finally:
            await client.aclose()
            await valkey.aclose()

    uvloop.run(scenario())


def test_a_client_used_from_a_new_event_loop_connects_again(valkey_url: str) -> None:
    client = MultiplexedValkey.like(Valkey.from_url(valkey_url))

    async def ping(close: bool) -> bytes:
        answer: bytes = await client.execute("PING")
        if close:
            await client.aclose()
        return answer

    assert asyncio.run(ping(close=False)) == b"PONG"  # its loop ends with the connection open
    assert asyncio.run(ping(close=True)) == b"PONG"


async def test_a_script_the_server_lost_is_sent_again(client: MultiplexedValkey, valkey: Valkey) -> None:
    echo = client.register_script(ECHO)
    await valkey.set("k", "v")
    assert await echo(keys=["k"], args=["one"]) == [b"one", b"v"]
    await valkey.script_flush()
    assert await echo(keys=["k"], args=["two"]) == [b"two", b"v"]
    assert await valkey.script_exists(echo.sha) == [True]


async def test_an_error_reply_fails_only_its_call(client: MultiplexedValkey) -> None:
    failing = client.register_script("return redis.error_reply('NOPE ' .. ARGV[1])")
    echo = client.register_script(ECHO)
    results = await asyncio.gather(
        echo(keys=["missing"], args=[1]), failing(args=["x"]), echo(keys=["missing"], args=[2]),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] == [b"1", None]
    assert isinstance(results[1], ResponseError)
    assert str(results[1]) == "NOPE x"
    assert results[2] == [b"2", None]


async def test_a_connection_closed_by_the_server_is_made_again(
    client: MultiplexedValkey, valkey: Valkey
) -> None:
    own_id = await client.execute("CLIENT", "ID")
    await valkey.client_kill_filter(_id=own_id)
    with contextlib.suppress(VALKEY_DOWN):  # sent before the client saw the connection go
        await client.execute("PING")
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("CLIENT", "ID") != own_id


async def test_the_database_and_credentials_come_from_the_client(valkey: Valkey, valkey_url: str) -> None:
    user, password = f"mux-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await valkey.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    base = valkey_url.removeprefix("redis://").split("/")[0]
    right = Valkey.from_url(f"redis://{user}:{password}@{base}/5")
    wrong = Valkey.from_url(f"redis://{user}:not-{password}@{base}/5")
    try:
        authenticated = MultiplexedValkey.like(right)
        await authenticated.execute("SET", "in-five", "yes")
        assert await right.get("in-five") == b"yes"
        assert await valkey.get("in-five") is None  # the session's database is another
        assert await authenticated.execute("ACL", "WHOAMI") == user.encode()
        await authenticated.aclose()
        refused = MultiplexedValkey.like(wrong)
        with pytest.raises(VALKEY_DOWN):
            await refused.execute("PING")
        await refused.aclose()
    finally:
        await right.delete("in-five")
        await valkey.acl_deluser(user)
        await right.aclose()
        await wrong.aclose()


async def test_nothing_listening_is_valkey_down() -> None:
    unreachable = MultiplexedValkey(host="127.0.0.1", port=1, timeout_s=1)
    with pytest.raises(VALKEY_DOWN):
        await unreachable.execute("PING")
    with pytest.raises(VALKEY_DOWN):
        await unreachable.execute("PING")
    await unreachable.aclose()


async def test_a_frozen_server_fails_the_calls_waiting_on_it_and_the_client_recovers(
    controlled_valkey: ControlledValkey,
) -> None:
    """A paused Valkey accepts nothing and answers nothing: every waiting call fails with a
    timeout (not a hang), and once it is back the next call is answered on a new connection."""
    server = Valkey.from_url(controlled_valkey.url)
    client = MultiplexedValkey.like(Valkey.from_url(controlled_valkey.url, socket_timeout=0.2))
    try:
        assert await client.execute("PING") == b"PONG"
        with controlled_valkey.paused():
            calls = [client.execute("PING") for _ in range(5)]
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, VALKEY_DOWN) for result in results), results

        async def answered() -> bool:  # polled: a loaded machine can miss 0.2 s just after the resume
            try:
                return bool(await client.execute("PING") == b"PONG")
            except VALKEY_DOWN:
                return False

        await wait_until(answered, 10, "the client is answered again")
    finally:
        await client.aclose()
        await server.aclose()


async def test_a_closed_client_fails_what_waits_and_connects_again_when_used(
    client: MultiplexedValkey,
) -> None:
    assert await client.execute("PING") == b"PONG"
    blocked = asyncio.ensure_future(client.execute("BLPOP", f"never-{uuid.uuid4().hex}", 0))
    await asyncio.sleep(0)  # on a live connection the call is written in its first step
    await client.aclose()
    with pytest.raises(VALKEY_DOWN):
        await blocked
    assert await client.execute("PING") == b"PONG"
