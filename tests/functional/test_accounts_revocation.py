"""Access-token revocation across processes, with PostgreSQL as the source of truth.

Each process mirrors ``revoked_families`` in memory, kept current by the NOTIFY its revoking
transaction sends (``app.core.revocations``). Two apps served in the test's loop stand for two API
processes: each has its own pool, its own listener connection and its own in-memory set. A
revocation committed through one is refused by the other once the notification arrives (polled with
a generous deadline: delivery is asynchronous, though well under a millisecond), and by the revoking
one at once. Valkey plays no part: flushing it or restarting it empty revives nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.revocations import Revocations
from app.db.models import User, UserRole
from app.domains.accounts.services import AccountService
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    Served,
    assert_problem,
    bearer,
    create_user,
    login,
    mint_headers,
    serve_in_loop,
    wait_until,
)
from tests.valkey_control import ControlledValkey

APP_NAME = "revocation-test"
"""The apps' name here: their listener connections are ``revocation-test:revocations`` in PostgreSQL."""
DEADLINE_S = 30.0


async def status_of(served: Served, access_token: str) -> int:
    return (await served.client.get("/api/auth/me", headers=bearer(access_token))).status_code


async def refused_by(served: Served, access_token: str) -> bool:
    return await status_of(served, access_token) == 401


@pytest.fixture
async def two_processes(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> AsyncIterator[tuple[Served, Served]]:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(serve_in_loop(settings, app_name=APP_NAME, **GENEROUS_AUTH))
        second = await stack.enter_async_context(serve_in_loop(settings, app_name=APP_NAME, **GENEROUS_AUTH))
        yield first, second


@pytest.fixture
async def member(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash)


def accounts_of(served: Served) -> AccountService:
    service: AccountService = served.app.state.services[AccountService]
    return service


async def test_both_processes_listen(two_processes: tuple[Served, Served]) -> None:
    for served in two_processes:
        assert accounts_of(served).authentication.revocations.live


async def test_logout_in_one_process_is_refused_by_the_other(
    two_processes: tuple[Served, Served], member: User
) -> None:
    first, second = two_processes
    session = await login(first.client, member.email)
    other = await login(first.client, member.email)
    assert await status_of(second, session["access_token"]) == 200

    response = await first.client.post("/api/auth/logout", headers=bearer(session["access_token"]))
    assert response.status_code == 204, response.text

    assert await refused_by(first, session["access_token"]), "the revoking process refuses it at once"
    await wait_until(
        lambda: refused_by(second, session["access_token"]), DEADLINE_S, "the other process refuses it"
    )
    body = assert_problem(
        await second.client.get("/api/auth/me", headers=bearer(session["access_token"])), 401, "unauthorized"
    )
    assert "revoked" in body["detail"]
    assert await status_of(second, other["access_token"]) == 200, "another session of the user lives on"


async def test_deactivation_and_role_change_revoke_in_every_process(
    two_processes: tuple[Served, Served], db: AsyncConnection[Any], password_hash: str
) -> None:
    first, second = two_processes
    admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    admin_headers = mint_headers(first.app, admin.id, UserRole.ADMIN)
    demoted, deactivated = await create_user(db, password_hash), await create_user(db, password_hash)
    demoted_token = (await login(second.client, demoted.email))["access_token"]
    deactivated_token = (await login(second.client, deactivated.email))["access_token"]

    changes = [(demoted, {"role": "admin"}), (deactivated, {"is_active": False})]
    for user, patch in changes:
        response = await first.client.patch(f"/api/admin/users/{user.id}", json=patch, headers=admin_headers)
        assert response.status_code == 200, response.text

    for token in (demoted_token, deactivated_token):
        assert await refused_by(first, token)
        await wait_until(partial(refused_by, second, token), DEADLINE_S, "the other process refuses it")


async def test_refresh_reuse_revokes_the_family_in_every_process(
    two_processes: tuple[Served, Served], member: User
) -> None:
    first, second = two_processes
    pair = await login(first.client, member.email)
    rotated = await first.client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    new_access = rotated.json()["access_token"]
    assert await status_of(second, new_access) == 200
    # the successor is spent too: the first token's reuse is no tab racing itself
    again = await first.client.post(
        "/api/auth/refresh", json={"refresh_token": rotated.json()["refresh_token"]}
    )
    assert again.status_code == 200, again.text

    reuse = await first.client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_problem(reuse, 401, "unauthorized")

    for token in (pair["access_token"], new_access, again.json()["access_token"]):
        assert await refused_by(first, token)
        await wait_until(partial(refused_by, second, token), DEADLINE_S, "the other process refuses it")


async def test_password_change_revokes_the_other_sessions_in_every_process(
    two_processes: tuple[Served, Served], member: User
) -> None:
    first, second = two_processes
    current = await login(first.client, member.email)
    other = await login(second.client, member.email)
    response = await first.client.patch(
        "/api/auth/me",
        json={"new_password": "a brand new passphrase", "current_password": PASSWORD},
        headers=bearer(current["access_token"]),
    )
    assert response.status_code == 200, response.text
    await wait_until(
        lambda: refused_by(second, other["access_token"]), DEADLINE_S, "the other session is refused"
    )
    assert await status_of(second, current["access_token"]) == 200, "the session that changed it lives on"


async def test_a_revocation_that_rolls_back_revokes_nothing(
    two_processes: tuple[Served, Served], member: User
) -> None:
    first, second = two_processes
    session = await login(first.client, member.email)
    accounts = accounts_of(first)
    with pytest.raises(RuntimeError, match="abandoned"):
        await revoke_then_fail(accounts, member.id)
    # A later revocation's notification proves the listeners are past the moment the first would
    # have arrived; the first session is still accepted everywhere.
    marker = await login(first.client, member.email)
    assert (
        await first.client.post("/api/auth/logout", headers=bearer(marker["access_token"]))
    ).status_code == 204
    await wait_until(lambda: refused_by(second, marker["access_token"]), DEADLINE_S, "the marker is refused")
    for served in two_processes:
        assert await status_of(served, session["access_token"]) == 200


async def test_a_process_that_starts_later_loads_recent_revocations(
    settings: Settings, two_processes: tuple[Served, Served], member: User
) -> None:
    first, _ = two_processes
    session = await login(first.client, member.email)
    assert (
        await first.client.post("/api/auth/logout", headers=bearer(session["access_token"]))
    ).status_code == 204
    async with serve_in_loop(settings, app_name=APP_NAME, **GENEROUS_AUTH) as late:
        assert accounts_of(late).authentication.revocations.live
        assert await refused_by(late, session["access_token"])


async def test_revocations_made_while_a_listener_is_down_are_not_missed(
    two_processes: tuple[Served, Served], db: AsyncConnection[Any], member: User
) -> None:
    """The listener's connection is cut (as by a PostgreSQL restart or a network failure): meanwhile
    the process asks PostgreSQL, and after reconnecting it reloads what was revoked in between.

    The reconnected listener's load waits for the test's signal, so the logout is certainly made
    while it is down (without the gate it reconnects after 0.5 s, and a stalled test would check a
    listener already back, before the logout's notification was read)."""
    first, second = two_processes
    watched = accounts_of(second).authentication.revocations
    reconnects = watched.reconnects
    may_load = asyncio.Event()
    load = watched._load

    async def load_when_allowed(conn: Any) -> Any:
        await may_load.wait()
        return await load(conn)

    watched._load = load_when_allowed
    session = await login(first.client, member.email)
    await db.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s",
        (f"{APP_NAME}:revocations",),
    )
    await wait_until(_async(lambda: watched.reconnects > reconnects), DEADLINE_S, "the listener noticed")
    response = await first.client.post("/api/auth/logout", headers=bearer(session["access_token"]))
    assert response.status_code == 204, response.text
    assert not watched.live
    assert await refused_by(second, session["access_token"]), "refused while the listener is down"
    may_load.set()
    await wait_until(_async(lambda: watched.live), DEADLINE_S, "the listener is back")
    assert await refused_by(second, session["access_token"]), "refused from memory after the reload"


async def test_a_listener_whose_connection_goes_silent_is_no_longer_trusted_and_reconnects(
    settings: Settings, database_url: str, db: AsyncConnection[Any], member: User
) -> None:
    """The listener's path to PostgreSQL goes silent (its host lost in a failover, a partition, a
    stalled proxy): nothing answers and nothing is refused, so only a deadline on its check notices.
    Meanwhile a family revoked in PostgreSQL (its notification lost) is refused, asked of PostgreSQL;
    once the path is back the listener reconnects and has loaded it."""
    async with (
        serve_in_loop(settings, app_name=APP_NAME, **GENEROUS_AUTH) as served,
        SilenceableRelay(database_url) as relay,
    ):
        accounts = accounts_of(served)
        watched = await listen_through(relay.conninfo, accounts)
        session = await login(served.client, member.email)
        family = uuid.UUID(accounts.tokens.verify(session["access_token"]).fam)
        assert await status_of(served, session["access_token"]) == 200

        relay.silent = True
        await wait_until(_async(lambda: not watched.live), DEADLINE_S, "the silent listener is not trusted")
        await db.execute("insert into revoked_families (family_id) values (%s)", (family,))
        assert family not in watched, "its notification never arrived"
        assert await refused_by(served, session["access_token"]), "refused by PostgreSQL"

        relay.silent = False
        await wait_until(_async(lambda: watched.live), DEADLINE_S, "the listener is back")
        assert family in watched, "loaded on reconnecting"
        assert await refused_by(served, session["access_token"]), "refused from memory"


class SilenceableRelay:
    """A TCP relay to PostgreSQL that can go silent: while ``silent`` it drops every byte both ways
    and keeps every socket open, as a partition or a failed-over host looks to a client (its
    keepalives and retransmissions would take many minutes to notice)."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        target = conninfo_to_dict(database_url)
        self._host, self._port = str(target.get("host") or "localhost"), int(target.get("port") or 5432)
        self.silent = False
        self.conninfo = ""
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilenceableRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.conninfo = make_conninfo(self._database_url, host="127.0.0.1", port=port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._host.startswith("/"):
            upstream = await asyncio.open_unix_connection(f"{self._host}/.s.PGSQL.{self._port}")
        else:
            upstream = await asyncio.open_connection(self._host, self._port)
        self._writers.append(upstream[1])
        await asyncio.gather(self._pipe(reader, upstream[1]), self._pipe(upstream[0], writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not self.silent:
                    writer.write(data)
                    await writer.drain()
        writer.close()


async def listen_through(conninfo: str, accounts: AccountService) -> Revocations[uuid.UUID]:
    """Replace the app's listener by one connected at ``conninfo``, checking its connection often."""
    own = accounts.authentication.revocations
    await own.close()
    proxied: Revocations[uuid.UUID] = Revocations(
        conninfo,
        listen=own._listen,
        load=own._load,
        parse=own._parse,
        keep_s=own.keep_s,
        connect_timeout_s=1.0,
        check_interval_s=0.2,
        answer_timeout_s=1.0,
        retry_s=0.1,
        max_retry_s=0.5,
        name="revoked-families-relayed",
    )
    accounts.authentication.revocations = proxied
    await proxied.start()
    assert proxied.live
    return proxied


async def revoke_then_fail(accounts: AccountService, user_id: int) -> None:
    async with accounts.db.transaction() as uow:
        assert await accounts.revoke_all(uow, user_id) == 1
        raise RuntimeError("abandoned")


def _async(condition: Any) -> Any:
    async def check() -> bool:
        return bool(condition())

    return check


async def test_a_revoked_token_stays_revoked_when_valkey_is_flushed_or_restarted_empty(
    settings: Settings, member: User, controlled_valkey: ControlledValkey
) -> None:
    async with serve_in_loop(
        settings, app_name=APP_NAME, valkey_url=controlled_valkey.url, **GENEROUS_AUTH
    ) as served:
        session = await login(served.client, member.email)
        response = await served.client.post("/api/auth/logout", headers=bearer(session["access_token"]))
        assert response.status_code == 204, response.text
        assert await refused_by(served, session["access_token"])

        async with Valkey.from_url(controlled_valkey.url) as direct:
            await direct.flushall()
        assert await refused_by(served, session["access_token"]), "after FLUSHALL"

        controlled_valkey.stop()
        controlled_valkey.start()  # persisted data of a flushed server: empty
        async with Valkey.from_url(controlled_valkey.url) as direct:
            assert await direct.dbsize() == 0
        assert await refused_by(served, session["access_token"]), "after a restart with nothing in it"

    async with serve_in_loop(
        settings, app_name=APP_NAME, valkey_url=controlled_valkey.url, **GENEROUS_AUTH
    ) as fresh:
        assert await refused_by(fresh, session["access_token"]), "in a process started after all that"


async def test_a_revoked_token_stays_revoked_while_valkey_is_down(
    settings: Settings, member: User, controlled_valkey: ControlledValkey
) -> None:
    """Logout no longer needs Valkey, and neither does refusing what it revoked."""
    async with serve_in_loop(
        settings, app_name=APP_NAME, valkey_url=controlled_valkey.url, valkey_timeout_s=0.5, **GENEROUS_AUTH
    ) as served:
        session = await login(served.client, member.email)
        controlled_valkey.stop()
        try:
            response = await served.client.post("/api/auth/logout", headers=bearer(session["access_token"]))
            assert response.status_code == 204, response.text
            assert await refused_by(served, session["access_token"])
        finally:
            controlled_valkey.start()
