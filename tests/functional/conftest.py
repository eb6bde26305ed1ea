"""Fixtures shared by the accounts tests: the app with auth rate limits out of the way, a clean
client per test, and a member whose password is ``tests.factories.PASSWORD``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.security import Passwords
from app.db.models import User
from tests.factories import PASSWORD, Client, create_user, generous_client


@pytest.fixture(scope="module")
async def module_client(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings):
        yield client


@pytest.fixture(scope="module")
async def password_hash(settings: Settings) -> str:
    return await Passwords(settings).hash(PASSWORD)


@pytest.fixture
async def api(module_client: Client, db: AsyncConnection[Any], valkey: Valkey) -> Client:
    module_client.headers.clear()
    module_client.cookies.clear()
    return module_client


@pytest.fixture
async def member(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash)
