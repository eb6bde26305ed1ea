"""Guards and the ``current_user`` dependency."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time

from litestar.handlers import BaseRouteHandler

from app.core.auth import Caller, Connection, caller_of, provide_current_user, requires_admin, requires_user
from app.core.errors import ForbiddenError, NotFoundError, UnauthorizedError
from app.db.models import UserRole
from app.domains.accounts.services import AccountService

__all__ = ["Caller", "provide_current_user", "requires_admin", "requires_dashboard_admin", "requires_user"]


# Browsers re-send Basic credentials with every request the dashboard makes; a verified header is
# remembered briefly (as the user's id) so the dashboard's polling does not cost an argon2 hash per
# request. The account's current role and active flag are still read on every request.
_BASIC_CACHE_S = 300.0
_basic_verified: dict[str, tuple[float, int, str]] = {}


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
    scheme, _, credentials = header.partition(" ")
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
    cached = _basic_verified.get(fingerprint)
    now = time.monotonic()
    accounts: AccountService = connection.app.state.accounts
    if cached is not None and cached[0] > now:
        try:
            user = await accounts.get_user(cached[1])
        except NotFoundError:  # the account was deleted since
            del _basic_verified[fingerprint]
            return None
        if user.password_hash == cached[2]:  # a changed password invalidates the remembered header
            return user.role if user.is_active else None
        del _basic_verified[fingerprint]
    try:
        email, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_ip = connection.scope.get("state", {}).get("client_ip")
    try:
        user = await accounts.check_credentials(email, password, client_ip)
    except UnauthorizedError:
        return None
    if len(_basic_verified) > 1000:
        _basic_verified.clear()
    _basic_verified[fingerprint] = (now + _BASIC_CACHE_S, user.id, user.password_hash)
    return user.role
