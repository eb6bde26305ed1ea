"""Who a bearer token is, and which sessions are revoked: the check every authenticated request makes.

``Authentication`` verifies an access token once per process (the verified callers kept, bounded),
and asks on every request whether its session (family) has been revoked: in memory, from the
``revoked_families`` mirror (``app.core.revocations``) while its listener is connected, else in
PostgreSQL. ``revoke`` is how every session's end reaches that check: a logout, a reuse's revocation,
a sign-in ending the least recently used sessions, revoking them all (``sessions.py``).

Held by ``AccountService`` (``authenticate``, ``still_authenticated`` delegate here); split out of
``services.py`` because it is the per-request path, apart from the flows that begin and end sessions.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from cachetools import LRUCache
from psycopg import AsyncConnection

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.db import Database, UnitOfWork
from app.core.errors import UnauthorizedError
from app.core.revocations import Revocations
from app.core.security import TOKEN_LEEWAY_S, AccessTokens, InvalidTokenError
from app.db import accounts as queries
from app.db.models import UserRole

log = structlog.get_logger("app.accounts")

VERIFIED_TOKENS_KEPT = 4096
"""Verified access tokens remembered per process (least recently used forgotten first)."""
REVOKED_FAMILY_RETENTION_S = 24 * 3600
"""``revoked_families`` rows older than this are purged (far beyond any access token's lifetime), or
older than the revocation horizon when that is longer (a dashboard session may last up to a week)."""


class Authentication:
    def __init__(self, db: Database, settings: Settings, tokens: AccessTokens) -> None:
        self.settings = settings
        self.db = db
        self.tokens = tokens
        self._callers: LRUCache[str, CurrentUser] = LRUCache(maxsize=VERIFIED_TOKENS_KEPT)
        conninfo, connect_kwargs = db.pool.conninfo, db.pool.kwargs
        assert isinstance(conninfo, str) and isinstance(connect_kwargs, dict), "a static pool configuration"
        self.revocations: Revocations[uuid.UUID] = Revocations(
            conninfo,
            connect_kwargs={**connect_kwargs, "application_name": f"{settings.app_name}:revocations"},
            connect_timeout_s=settings.database_timeout_s,
            listen=queries.listen_for_revoked_families,
            load=self._recently_revoked,
            parse=uuid.UUID,
            keep_s=self.revocation_horizon_s,
            name="revoked-families",
        )

    async def authenticate(self, bearer_token: str) -> CurrentUser:
        """The caller of a bearer token; 401 for anything not a live access token of ours.

        A token's signature and claims are verified once per process (RFC 8725 checks in
        ``AccessTokens.verify``) and the result kept (bounded); every request still checks its
        expiry and whether its session family has been revoked — in memory while the revocation
        listener is connected, else in PostgreSQL.
        """
        caller = self._callers.get(bearer_token)
        if caller is None:
            caller = self._callers[bearer_token] = self._verify(bearer_token)
        elif caller.expires_at <= time.time() - TOKEN_LEEWAY_S:
            del self._callers[bearer_token]
            log.info("access_token_rejected", reason="ExpiredSignatureError")
            raise UnauthorizedError.token_refused("The access token is invalid or expired.")
        if await self.family_revoked(caller.family_id):
            raise UnauthorizedError.token_refused("The access token has been revoked.")
        return caller

    async def still_authenticated(self, caller: CurrentUser) -> bool:
        """Whether a request authenticated as ``caller`` earlier would be now: its token not expired,
        its session not revoked (a logout, the account deactivated or demoted, its password
        changed). What outlives its request (a live feed stream) asks this instead of keeping the
        token to authenticate again."""
        if caller.expires_at <= time.time() - TOKEN_LEEWAY_S:
            return False
        return not await self.family_revoked(caller.family_id)

    async def require_session(self, uow: UnitOfWork, caller: CurrentUser) -> None:
        """401 unless ``caller``'s account is active and its session not revoked, as ``uow``'s
        transaction reads them (``SessionStillStands``). For a request that outlives its check and then
        writes (an upload streaming in for minutes): checked in the transaction that commits the write,
        so nothing commits for a session ended before it (a review: a file stored after a sign-out, a
        password change or a deactivation). The access token's own expiry is not checked again: the
        request was authenticated when it began, and a session that stands may outlive a token (a
        slow upload outlasts a 15-minute one)."""
        if not await queries.session_still_stands(uow.conn, user_id=caller.id, family_id=caller.family_id):
            raise UnauthorizedError.token_refused(
                "Your session ended while the request was in progress (a sign-out, a password change or "
                "a change to your account): nothing was kept. Sign in again."
            )

    def _verify(self, bearer_token: str) -> CurrentUser:
        try:
            claims = self.tokens.verify(bearer_token)
            family = uuid.UUID(claims.fam)
            role = UserRole(claims.role)
        except (InvalidTokenError, ValueError) as exc:
            log.info("access_token_rejected", reason=str(exc))
            raise UnauthorizedError.token_refused("The access token is invalid or expired.") from exc
        return CurrentUser(
            id=int(claims.sub), role=role, family_id=family, token_id=claims.jti, expires_at=claims.exp
        )

    async def family_revoked(self, family: uuid.UUID) -> bool:
        """The in-memory mirror of ``revoked_families`` while it is current, else PostgreSQL."""
        if self.revocations.live:
            return family in self.revocations
        async with self.db.transaction() as uow:
            return bool(await queries.is_family_revoked(uow.conn, family_id=family))

    @property
    def revocation_horizon_s(self) -> float:
        """How long a revoked family must be remembered: the longest a token of it can live (an access
        token, or a dashboard session's, ``DASHBOARD_SESSION_S``)."""
        longest = max(self.settings.access_token_ttl_s, self.settings.dashboard_session_s)
        return longest + TOKEN_LEEWAY_S + 60

    async def _recently_revoked(self, conn: AsyncConnection[Any]) -> list[uuid.UUID]:
        return await queries.recently_revoked_families(conn, within_s=self.revocation_horizon_s)

    async def revoke(self, uow: UnitOfWork, families: list[uuid.UUID]) -> None:
        """Refuse the families' access tokens from the commit of ``uow`` on, in every process.

        The row's trigger NOTIFYs every listening process when the transaction commits; this process
        adds them itself right after its commit. Rows no token can need any more are purged on the way.
        """
        if not families:
            return
        await queries.record_revoked_families(uow.conn, family_ids=sorted(families))
        await queries.purge_revoked_families(
            uow.conn, older_than_s=max(REVOKED_FAMILY_RETENTION_S, self.revocation_horizon_s)
        )
        revocations = self.revocations

        async def remember() -> None:
            revocations.add(families)

        uow.after_commit(remember)
