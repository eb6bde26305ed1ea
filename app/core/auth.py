"""The authenticated principal and the guards every domain uses.

The accounts domain authenticates a request (the route layer, ``app.core.gate``, puts the verified
caller, or None, in ``scope["user"]``); everything here only reads that result, so no domain needs to import
the accounts domain to know who is calling.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import BaseRouteHandler

from app.core.errors import ForbiddenError, UnauthorizedError
from app.db.models import UserRole

Connection = ASGIConnection[Any, Any, Any, Any]


class CurrentUser(msgspec.Struct, frozen=True):
    """The authenticated caller, from a verified access token."""

    id: int
    role: UserRole
    family_id: uuid.UUID
    token_id: str
    expires_at: int
    """The access token's ``exp`` (epoch seconds): what outlives the request (a live stream) ends then."""

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.ADMIN


Caller = NamedDependency[CurrentUser]
"""A handler parameter ``current_user: Caller`` receives the authenticated caller (401 without one)."""


def login_required() -> UnauthorizedError:
    return UnauthorizedError(
        "Log in and send the access token as `Authorization: Bearer <token>`.",
        headers={"WWW-Authenticate": 'Bearer realm="api"'},
    )


def caller_of(connection: Connection) -> CurrentUser | None:
    """The verified caller of a request, or None for an anonymous one."""
    user: CurrentUser | None = connection.scope.get("user")
    return user


# The guards are coroutines on purpose: Litestar runs a plain-function guard in a worker thread
# (``sync_to_thread``), a thread hop per request for a dictionary lookup.


async def requires_user(connection: Connection, _: BaseRouteHandler) -> None:
    if caller_of(connection) is None:
        raise login_required()


async def requires_admin(connection: Connection, _: BaseRouteHandler) -> None:
    caller = caller_of(connection)
    if caller is None:
        raise login_required()
    if not caller.is_admin:
        raise ForbiddenError("Administrators only.")


def provide_current_user(request: Request[Any, Any, Any]) -> CurrentUser:
    caller = caller_of(request)
    if caller is None:
        raise login_required()
    return caller
