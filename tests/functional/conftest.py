"""Fixtures shared by the functional tests: the app with auth rate limits out of the way (a clean
client per test), a member whose password is ``tests.factories.PASSWORD``, a project team, a
count of the argon2 verifications the app makes, the fake GitHub (one server per test module,
reset for every test), and a clock the test moves (``clock``; ``tests.factories.clocked_github``
puts the GitHub service on it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import argon2
import httpx
import msgspec
import pytest
import redis.asyncio as redis
from litestar import Litestar
from psycopg import AsyncConnection
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import create_pool
from app.core.pool import FailFastPool
from app.core.security import Passwords
from app.core.services import open_services
from app.db.models import User
from app.domains.github.refreshes import QUEUE as GITHUB_QUEUE
from app.domains.reports.services import ReportService
from app.modules import MODULES
from tests.factories import (
    PASSWORD,
    Client,
    OpenPool,
    Team,
    create_user,
    generous_client,
    make_site,
    make_team,
    serve_in_loop,
)
from tests.fakes import payments
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, serve_fake_github


@pytest.fixture(scope="module")
async def module_client(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings):
        yield client


@pytest.fixture(scope="module")
async def password_hash(settings: Settings) -> str:
    """A real argon2 hash of ``PASSWORD``, for users who log in (computed once per module)."""
    return await Passwords(settings).hash(PASSWORD)


@pytest.fixture
async def api(module_client: Client, db: AsyncConnection[Any], valkey: Valkey) -> Client:
    module_client.headers.clear()
    module_client.cookies.clear()
    return module_client


@pytest.fixture
async def member(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash)


@pytest.fixture
async def team(app: Litestar, db: AsyncConnection[Any]) -> Team:
    """A project with an owner, an editor, a viewer, and an outsider; callers of the session app."""
    return await make_team(db, app)


@pytest.fixture
def argon2_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The argon2 hashes verified from now on, by any thread of any app in this process: argon2-cffi's
    own ``PasswordHasher.verify`` is wrapped and called through (nothing of ours is replaced)."""
    verified: list[str] = []
    verify = argon2.PasswordHasher.verify

    def counted(self: argon2.PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        verified.append(hash if isinstance(hash, str) else hash.decode())
        return verify(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counted)
    return verified


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeGitHubServer]:
    with serve_fake_github() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeGitHubServer) -> FakeGitHub:
    fake_server.fake.reset()
    return fake_server.fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def github_queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    """The GitHub refreshes' SAQ queue, for a test that runs or inspects their jobs itself."""
    assert settings.valkey_url is not None
    opened = RedisQueue(redis.from_url(settings.valkey_url), name=GITHUB_QUEUE)
    yield opened
    await opened.redis.aclose()


@pytest.fixture(scope="module")
async def payments_app(settings: Settings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    """The app served with the fake payment provider's webhook secret (and generous limits), once
    per module: the webhook's signature covers the exact bytes a real client sends."""
    async with serve_in_loop(
        settings, rate_limit_default_per_minute=100_000, payment_webhook_secret=payments.TEST_SECRET
    ) as served:
        yield served.app, served.client


@pytest.fixture
async def shop(
    payments_app: tuple[Litestar, httpx.AsyncClient], db: AsyncConnection[Any], valkey: Valkey
) -> tuple[Litestar, httpx.AsyncClient]:
    """``payments_app`` on an empty database and Valkey, its client without a caller's headers."""
    payments_app[1].headers.clear()
    return payments_app


@pytest.fixture
async def reports(settings: Settings) -> AsyncIterator[ReportService]:
    """The report service as the app builds it, on this test's event loop."""
    async with open_services(settings, MODULES) as services:
        yield services[ReportService]


@pytest.fixture
async def site_id(db: AsyncConnection[Any]) -> int:
    """A site of a new member's."""
    owner = await create_user(db)
    return (await make_site(db, owner)).id


@pytest.fixture
def open_pool(settings: Settings) -> OpenPool:
    @asynccontextmanager
    async def open_(database_url: str, *, wait: bool = True, **changes: Any) -> AsyncIterator[FailFastPool]:
        pool = create_pool(msgspec.structs.replace(settings, **changes), database_url)
        await pool.open(wait=wait)
        try:
            yield pool
        finally:
            await pool.close()

    return open_
