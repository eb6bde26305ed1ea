"""Test data and HTTP helpers shared by the domain tests.

Users are inserted straight into the database with a password hash computed once per module
(argon2 is slow on purpose); ``login`` goes through the real API.
"""

from __future__ import annotations

import base64
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar.types import ASGIApp, Receive, Scope, Send
from psycopg import AsyncConnection

from app.config import Settings
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.main import create_app

Client = AsyncTestClient[Litestar]
PASSWORD = "correct horse battery staple"

_counter = itertools.count(1)
_run = uuid.uuid4().hex[:8]


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{_run}-{next(_counter)}@example.com"


async def create_user(
    db: AsyncConnection[Any],
    passwords_hash: str,
    *,
    email: str | None = None,
    role: UserRole | str = UserRole.MEMBER,
    is_active: bool = True,
    display_name: str | None = None,
) -> User:
    """Insert a user (``passwords_hash`` is an argon2 hash, e.g. of ``PASSWORD``)."""
    email = (email or unique_email()).lower()
    user = await queries.create_user(
        db,
        email=email,
        display_name=display_name or email.split("@", 1)[0],
        password_hash=passwords_hash,
        role=UserRole(role),
    )
    assert user is not None, f"{email} already exists"
    if not is_active:
        user = await queries.admin_update_user(db, role=None, is_active=False, id=user.id)
        assert user is not None
    return user


async def login(client: Client, email: str, password: str = PASSWORD) -> dict[str, Any]:
    """A fresh session's token pair (``access_token``, ``refresh_token``, ``user``, ...)."""
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(email: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{email}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


def with_test_peer(app: ASGIApp) -> ASGIApp:
    """Outermost harness: an ``x-test-peer`` header sets the network peer (the client address).

    The test transport's peer is always ``testclient``; a real server puts the TCP peer there.
    """

    async def harness(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = dict(scope["headers"]).get(b"x-test-peer")
            if peer:
                scope["client"] = (peer.decode(), 50000)
        await app(scope, receive, send)

    return harness


async def generous_client(settings: Settings, **changes: Any) -> AsyncIterator[Client]:
    """The real app with auth rate limits out of the way (one test address makes many auth calls)
    and the ``x-test-peer`` harness; use as a module-scoped fixture body."""
    quotas: dict[str, Any] = {"rate_limit_auth_per_minute": 10_000, "rate_limit_auth_per_hour": 100_000}
    app = create_app(msgspec.structs.replace(settings, **{**quotas, **changes}))
    app.asgi_handler = with_test_peer(app.asgi_handler)
    async with AsyncTestClient(app=app) as client:
        yield client
