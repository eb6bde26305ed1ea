"""Accounts: registration, login with throttling, rotating refresh tokens, revocation, admin.

The service opens its own transactions (instead of the request's unit of work) because some flows
must commit before they fail: a reused refresh token revokes its family *and then* answers 401.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from valkey.asyncio import Valkey
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.db import transaction
from app.core.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
)
from app.core.security import (
    AccessTokens,
    InvalidTokenError,
    Passwords,
    new_refresh_token,
    refresh_token_digest,
)
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.domains.accounts.schemas import AdminUserPatch, RegisterIn, TokenPair, UpdateMeIn, UserOut

log = structlog.get_logger("app.accounts")

VALKEY_ERRORS = (ValkeyConnectionError, ValkeyTimeoutError, OSError)
NO_FAMILY = uuid.UUID(int=0)
BAD_CREDENTIALS = "Invalid email or password."


def _bearer_failure(detail: str) -> UnauthorizedError:
    return UnauthorizedError(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class AccountService:
    def __init__(
        self, settings: Settings, pool: AsyncConnectionPool[AsyncConnection[Any]], valkey: Valkey
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.valkey = valkey
        self.passwords = Passwords(settings)
        self.tokens = AccessTokens(settings)

    # -- authentication of requests ------------------------------------------------------------

    async def authenticate(self, bearer_token: str) -> CurrentUser:
        """The caller of a bearer token; 401 for anything not a live access token of ours."""
        try:
            claims = self.tokens.verify(bearer_token)
            family = uuid.UUID(claims.fam)
            role = UserRole(claims.role)
        except (InvalidTokenError, ValueError) as exc:
            log.info("access_token_rejected", reason=str(exc))
            raise _bearer_failure("The access token is invalid or expired.") from exc
        if await self._family_revoked(family):
            raise _bearer_failure("The access token has been revoked.")
        return CurrentUser(id=int(claims.sub), role=role, family_id=family, token_id=claims.jti)

    async def _family_revoked(self, family: uuid.UUID) -> bool:
        """Valkey's deny-list first; PostgreSQL (the source of truth) when Valkey cannot answer."""
        try:
            return bool(await self.valkey.exists(_deny_key(family)))
        except VALKEY_ERRORS:
            log.warning("deny_list_unavailable_using_database")
        async with transaction(self.pool) as uow:
            return bool(await queries.is_family_revoked(uow.conn, family_id=family))

    async def _deny(self, families: list[uuid.UUID]) -> None:
        """Reject the families' access tokens at once; the entries expire with the last such token."""
        if not families:
            return
        ttl = self.settings.access_token_ttl_s + 60
        async with self.valkey.pipeline(transaction=False) as pipe:
            for family in families:
                pipe.set(_deny_key(family), 1, ex=ttl)
            await pipe.execute()

    # -- registration and login ----------------------------------------------------------------

    async def register(self, data: RegisterIn) -> User:
        password_hash = await self.passwords.hash(data.password)
        async with transaction(self.pool) as uow:
            user = await queries.create_user(
                uow.conn,
                email=data.email.strip().lower(),
                display_name=data.display_name.strip(),
                password_hash=password_hash,
                role=UserRole.MEMBER,
            )
        if user is None:
            raise ConflictError("An account with this email already exists.")
        log.info("user_registered", user_id=user.id)
        return user

    async def check_credentials(self, email: str, password: str, client_ip: str | None) -> User:
        """The active user with these credentials, or 401 — with the same message, status and
        hashing cost whether the email exists or not. Failures are counted per account and per
        client address; past the limit the answer is 429 until the window ends."""
        email = email.strip().lower()
        throttle_keys = [_failure_key("acct", email), _failure_key("ip", client_ip or "unknown")]
        await self._refuse_if_throttled(throttle_keys)
        async with transaction(self.pool) as uow:
            user = await queries.get_user_by_email(uow.conn, email=email)
        matched = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not matched or not user.is_active:
            await self._record_failure(throttle_keys)
            log.info("login_failed", known_account=user is not None, client_ip=client_ip)
            raise UnauthorizedError(BAD_CREDENTIALS)
        await self._clear_failures(throttle_keys[:1])
        if self.passwords.needs_rehash(user.password_hash):
            new_hash = await self.passwords.hash(password)
            async with transaction(self.pool) as uow:
                await queries.update_user_password_hash(uow.conn, password_hash=new_hash, id=user.id)
            log.info("password_rehashed", user_id=user.id)
        return user

    async def login(self, email: str, password: str, client_ip: str | None) -> TokenPair:
        user = await self.check_credentials(email, password, client_ip)
        async with transaction(self.pool) as uow:
            pair = await self._issue(uow.conn, user, uuid.uuid4())
        log.info("login_succeeded", user_id=user.id)
        return pair

    async def _refuse_if_throttled(self, keys: list[str]) -> None:
        try:
            async with self.valkey.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                    pipe.ttl(key)
                results = await pipe.execute()
        except VALKEY_ERRORS:
            log.warning("login_throttle_unavailable")
            return
        for count, ttl in zip(results[::2], results[1::2], strict=True):
            if count is not None and int(count) >= self.settings.login_max_failures:
                retry_after = max(int(ttl), 1)
                raise TooManyRequestsError(
                    "Too many failed logins; try again later.", headers={"Retry-After": str(retry_after)}
                )

    async def _record_failure(self, keys: list[str]) -> None:
        window = self.settings.login_failure_window_s
        try:
            async with self.valkey.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.incr(key)
                    pipe.expire(key, window, nx=True)
                await pipe.execute()
        except VALKEY_ERRORS:
            log.warning("login_throttle_unavailable")

    async def _clear_failures(self, keys: list[str]) -> None:
        try:
            await self.valkey.delete(*keys)
        except VALKEY_ERRORS:
            log.warning("login_throttle_unavailable")

    async def _issue(self, conn: AsyncConnection[Any], user: User, family: uuid.UUID) -> TokenPair:
        refresh_token, digest = new_refresh_token()
        expires_at = datetime.now(UTC) + timedelta(seconds=self.settings.refresh_token_ttl_s)
        await queries.insert_refresh_token(
            conn, user_id=user.id, family_id=family, token_hash=digest, expires_at=expires_at
        )
        access_token, _ = self.tokens.issue(user.id, user.role.value, family)
        return TokenPair(
            access_token=access_token,
            expires_in=self.tokens.ttl_s,
            refresh_token=refresh_token,
            refresh_expires_in=self.settings.refresh_token_ttl_s,
            user=UserOut.from_row(user),
        )

    # -- refresh rotation, logout, revocation --------------------------------------------------

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent and a new one of the same family is issued.

        Presenting a spent token means it leaked (or a client raced itself): the whole family and
        every access token issued from it are revoked, and the caller must log in again.
        """
        reused: uuid.UUID | None = None
        async with transaction(self.pool) as uow:
            stored = await queries.get_refresh_token_for_update(
                uow.conn, token_hash=refresh_token_digest(refresh_token)
            )
            if stored is None or stored.revoked_at is not None or stored.expires_at <= datetime.now(UTC):
                raise UnauthorizedError("The refresh token is invalid or expired.")
            if stored.used_at is not None:
                await queries.revoke_refresh_family(uow.conn, family_id=stored.family_id)
                reused = stored.family_id
            else:
                user = await queries.get_user_by_id(uow.conn, id=stored.user_id)
                if user is None or not user.is_active:
                    raise UnauthorizedError("The refresh token is invalid or expired.")
                await queries.mark_refresh_token_used(uow.conn, id=stored.id)
                pair = await self._issue(uow.conn, user, stored.family_id)
        if reused is not None:
            log.warning("refresh_token_reuse", user_id=stored.user_id, family_id=str(reused))
            await self._deny([reused])
            raise UnauthorizedError("The refresh token was already used; the session has been revoked.")
        return pair

    async def logout(self, user: CurrentUser) -> None:
        async with transaction(self.pool) as uow:
            await queries.revoke_refresh_family(uow.conn, family_id=user.family_id)
            await self._deny([user.family_id])

    async def revoke_all(self, conn: AsyncConnection[Any], user_id: int, keep: uuid.UUID = NO_FAMILY) -> int:
        """Revoke every session of a user (except ``keep``); raises if the deny-list cannot be written,
        so the caller's transaction rolls back rather than leaving access tokens alive."""
        families = list(
            set(await queries.revoke_user_refresh_families(conn, user_id=user_id, keep_family_id=keep))
        )
        await self._deny(families)
        return len(families)

    # -- the caller's own account -------------------------------------------------------------

    async def get_user(self, user_id: int) -> User:
        async with transaction(self.pool) as uow:
            user = await queries.get_user_by_id(uow.conn, id=user_id)
        if user is None:
            raise NotFoundError("No such user.")
        return user

    async def update_me(self, caller: CurrentUser, data: UpdateMeIn) -> User:
        new_hash = None
        if data.new_password is not None:
            current = await self.get_user(caller.id)
            if data.current_password is None or not await self.passwords.verify(
                current.password_hash, data.current_password
            ):
                raise ForbiddenError("The current password is required and must be correct.")
            new_hash = await self.passwords.hash(data.new_password)
        async with transaction(self.pool) as uow:
            user = await queries.update_user_profile(
                uow.conn,
                display_name=data.display_name.strip() if data.display_name else None,
                password_hash=new_hash,
                id=caller.id,
            )
            if user is None:
                raise NotFoundError("No such user.")
            if new_hash is not None:
                await self.revoke_all(uow.conn, caller.id, keep=caller.family_id)
        return user

    # -- administration ------------------------------------------------------------------------

    async def list_users(
        self, *, role: UserRole | None, is_active: bool | None, after_id: int, limit: int
    ) -> list[User]:
        async with transaction(self.pool) as uow:
            return await queries.list_users(
                uow.conn, role=role, is_active=is_active, after_id=after_id, row_limit=limit
            )

    async def admin_update(self, actor: CurrentUser, user_id: int, patch: AdminUserPatch) -> User:
        """Deactivation and role changes revoke the user's sessions at once (tokens carry the role)."""
        if user_id == actor.id and (patch.is_active is False or patch.role == UserRole.MEMBER):
            raise ConflictError("Administrators cannot demote or deactivate themselves.")
        async with transaction(self.pool) as uow:
            before = await queries.get_user_by_id(uow.conn, id=user_id)
            if before is None:
                raise NotFoundError("No such user.")
            user = await queries.admin_update_user(
                uow.conn, role=patch.role, is_active=patch.is_active, id=user_id
            )
            assert user is not None
            if user.role != before.role or user.is_active != before.is_active:
                revoked = await self.revoke_all(uow.conn, user_id)
                log.info(
                    "user_access_changed",
                    user_id=user_id,
                    by=actor.id,
                    role=user.role.value,
                    is_active=user.is_active,
                    sessions_revoked=revoked,
                )
        return user

    async def ensure_admin(
        self, email: str, password: str | None, display_name: str = "Administrator"
    ) -> User:
        """Create an administrator, or promote an existing account (CLI and seed)."""
        email = email.strip().lower()
        async with transaction(self.pool) as uow:
            existing = await queries.get_user_by_email(uow.conn, email=email)
            if existing is not None:
                if existing.role == UserRole.ADMIN and existing.is_active:
                    return existing
                user = await queries.admin_update_user(
                    uow.conn, role=UserRole.ADMIN, is_active=True, id=existing.id
                )
                assert user is not None
                return user
        if password is None:
            raise ValueError("a password is required to create a new administrator")
        password_hash = await self.passwords.hash(password)
        async with transaction(self.pool) as uow:
            user = await queries.create_user(
                uow.conn,
                email=email,
                display_name=display_name,
                password_hash=password_hash,
                role=UserRole.ADMIN,
            )
        if user is None:
            raise ConflictError("An account with this email already exists.")
        return user


def _deny_key(family: uuid.UUID) -> str:
    return f"auth:revoked-family:{family}"


def _failure_key(kind: str, value: str) -> str:
    """Login-failure counter; the email is hashed so the key space does not hold addresses."""
    return f"auth:login-failures:{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"
