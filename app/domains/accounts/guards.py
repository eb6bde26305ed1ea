"""Guards and the ``current_user`` dependency."""

from __future__ import annotations

import base64
import binascii
import hashlib

from cachetools import TTLCache
from litestar.handlers import BaseRouteHandler

from app.core.auth import Caller, Connection, caller_of, provide_current_user, requires_admin, requires_user
from app.core.errors import ForbiddenError, NotFoundError, UnauthorizedError
from app.core.services import Services
from app.db.models import UserRole
from app.domains.accounts.services import AccountService

__all__ = ["Caller", "provide_current_user", "requires_admin", "requires_dashboard_admin", "requires_user"]


# Browsers re-send Basic credentials with every request the dashboard makes; a verified header is
# remembered briefly (as the user's id) so the dashboard's polling does not cost an argon2 hash per
# request. The account's current role and active flag are still read on every request.
_BASIC_CACHE_S = 300.0
_BASIC_CACHE_SIZE = 1000
_basic_verified: TTLCache[str, tuple[int, str]] = TTLCache(maxsize=_BASIC_CACHE_SIZE, ttl=_BASIC_CACHE_S)
"""sha256(header) → (user id, password hash at verification); bounded (least recently used first)."""


async def requires_dashboard_admin(connection: Connection, _: BaseRouteHandler) -> None:
    """The SAQ dashboard: an admin's bearer token, or HTTP Basic with an admin's email and password.

    Anonymous → 401 with a Basic challenge (so a browser asks for credentials); member → 403.
    """
    caller = caller_of(connection)
    if caller is not None:
        if not caller.is_admin:
            raise ForbiddenError("The job dashboard is for administrators.")
        return
    header = connection.headers.get("authorization", "")
    scheme, _sep, credentials = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Basic realm="SAQ dashboard", charset="UTF-8"'}
    if scheme.lower() != "basic" or not credentials:
        raise UnauthorizedError("Sign in with an administrator's email and password.", headers=challenge)
    role = await _verify_basic(connection, credentials.strip())
    if role is None:
        raise UnauthorizedError("Invalid email or password.", headers=challenge)
    if role != UserRole.ADMIN:
        raise ForbiddenError("The job dashboard is for administrators.")


async def _verify_basic(connection: Connection, credentials: str) -> UserRole | None:
    fingerprint = hashlib.sha256(credentials.encode()).hexdigest()
    services: Services = connection.app.state.services
    accounts = services[AccountService]
    cached = _basic_verified.get(fingerprint)
    if cached is not None:
        user_id, password_hash = cached
        try:
            user = await accounts.get_user(user_id)
        except NotFoundError:  # the account was deleted since
            _basic_verified.pop(fingerprint, None)
            return None
        if user.password_hash == password_hash:  # a changed password invalidates the remembered header
            return user.role if user.is_active else None
        _basic_verified.pop(fingerprint, None)
    try:
        email, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_ip = connection.scope.get("state", {}).get("client_ip")
    try:
        user = await accounts.check_credentials(email, password, client_ip)
    except UnauthorizedError:
        return None
    _basic_verified[fingerprint] = (user.id, user.password_hash)
    return user.role
