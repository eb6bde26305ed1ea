"""Sessions: beginning them (a login, the dashboard's sign-in), rotating their refresh tokens, ending
and revoking them, and purging the tokens of ended ones.

A session is a refresh-token family; its access tokens are refused once it is revoked
(``authentication.py``: ``revoke``, ``family_revoked``). Every flow here follows the one lock order
described below (the user's row, then the session's lock, then its tokens). A dashboard session is a
session family of its own (its token format in ``dashboard_tokens.py``).

Held by ``AccountService``, whose public methods of the same names delegate here; split out of
``services.py`` as the topic that owns the sessions' lock order, read in one place.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import structlog

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, ForbiddenError, TooManyRequestsError, UnauthorizedError
from app.core.security import (
    AccessTokens,
    InvalidTokenError,
    new_refresh_token,
    refresh_token_digest,
)
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.domains.accounts.authentication import Authentication
from app.domains.accounts.dashboard_tokens import (
    ADMINS_ONLY,
    DashboardSession,
    DashboardTokens,
    sign_in_required,
)
from app.domains.accounts.passwords import BAD_CREDENTIALS, Credentials
from app.domains.accounts.schemas import TokenPair, UserOut

log = structlog.get_logger("app.accounts")

NO_FAMILY = uuid.UUID(int=0)
PURGE_FAMILIES = 1_000
"""Ended sessions found per pass of the session purge (one read of the token index per pass)."""
PURGE_CHUNK_TOKENS = 10_000
"""Tokens of ended sessions deleted per transaction."""


class RefreshSupersededError(ConflictError):
    """The token was rotated moments ago by another request of the same client (two tabs): its answer
    holds the session's tokens. Nothing is revoked (``AccountService.refresh``)."""

    slug = "refresh-superseded"
    title = "Refresh token already rotated"


class RefreshRateLimitedError(TooManyRequestsError):
    """The session rotated REFRESH_ROTATIONS_PER_HOUR times within the last hour; the presented token
    is neither spent nor revoked and rotates after ``Retry-After`` (``AccountService.refresh``)."""

    slug = "refresh-rate-limited"
    title = "Too many refresh token rotations"


class Sessions:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        tokens: AccessTokens,
        dashboard_tokens: DashboardTokens,
        credentials: Credentials,
        authentication: Authentication,
    ) -> None:
        self.settings = settings
        self.db = db
        self.tokens = tokens
        self.dashboard_tokens = dashboard_tokens
        self.credentials = credentials
        self.authentication = authentication

    async def login(self, email: str, password: str, client_ip: str | None) -> TokenPair:
        """Tokens for the account as it is when they are issued: the row is read again under
        ``GetUserForNewSession``, so a demotion, deactivation or password change that committed since
        the password was checked is seen (a changed password: 401), and one still to commit waits and
        then revokes this session with the others. The new session may end the account's least
        recently used ones (``make_room``)."""
        checked = await self.credentials.check_credentials(email, password, client_ip)
        async with self.db.transaction() as uow:
            user = await self.user_for_new_session(uow, checked)
            await self.make_room(uow, user.id)
            pair = await self._issue(uow, user, uuid.uuid4())
        log.info("login_succeeded", user_id=user.id)
        return pair

    async def _issue(
        self, uow: UnitOfWork, user: User, family: uuid.UUID, started: datetime | None = None
    ) -> TokenPair:
        """A new access token and refresh token of ``family``. The refresh token expires after
        REFRESH_TOKEN_TTL_S, but never past SESSION_MAX_AGE_S from the session's login (``started``):
        rotation cannot keep a session alive for ever."""
        refresh_token, digest = new_refresh_token()
        now = datetime.now(UTC)
        ends = (started or now) + timedelta(seconds=self.settings.session_max_age_s)
        expires_at = min(now + timedelta(seconds=self.settings.refresh_token_ttl_s), ends)
        await queries.insert_refresh_token(
            uow.conn, user_id=user.id, family_id=family, token_hash=digest, expires_at=expires_at
        )
        access_token, _ = self.tokens.issue(user.id, user.role.value, family)
        return TokenPair(
            access_token=access_token,
            expires_in=self.tokens.ttl_s,
            refresh_token=refresh_token,
            refresh_expires_in=max(int((expires_at - now).total_seconds()), 0),
            user=UserOut.from_row(user),
        )

    async def user_for_new_session(self, uow: UnitOfWork, checked: User) -> User:
        """The user whose credentials were checked, read again and held (``GetUserForNewSession``) for
        a session to begin: 401 when a deactivation or a password change committed since the check."""
        user = await queries.get_user_for_new_session(uow.conn, id=checked.id)
        if user is None or not user.is_active or user.password_hash != checked.password_hash:
            log.info("login_failed", known_account=True, user_id=checked.id, changed_meanwhile=True)
            raise UnauthorizedError(BAD_CREDENTIALS)
        return user

    async def make_room(self, uow: UnitOfWork, user_id: int) -> None:
        """End the user's sessions beyond ``SESSIONS_PER_USER_MAX`` - 1, the least recently used first
        (the latest token issued: a login or a rotation), as a logout would (their access tokens
        refused from the commit on, in every process), so that the session about to begin is within
        the limit. The caller holds the user's row (``GetUserForNewSession``):
        none of the user's sessions changes meanwhile, so they need no lock of their own (see below),
        and two sign-ins of the user count each other's session. Usually one session ends, or none;
        sessions begun before the limit existed (or was lowered) all end at the next sign-in."""
        beyond = await queries.list_sessions_beyond(
            uow.conn, user_id=user_id, kept=self.settings.sessions_per_user_max - 1
        )
        if beyond:
            await queries.revoke_refresh_families(uow.conn, family_ids=beyond)
            await self.authentication.revoke(uow, beyond)
            log.info("sessions_ended_over_limit", user_id=user_id, sessions_ended=len(beyond))

    # -- refresh rotation, logout, revocation --------------------------------------------------
    #
    # One lock order for everything that touches a session (a refresh-token family): the user's row,
    # then the family's lock (``LockRefreshFamilies``: a transaction-scoped advisory lock), then the
    # family's token rows. A rotation, a reuse's revocation and a logout hold the user's row FOR SHARE
    # (``GetRefreshTokenOwnerForShare``, ``LockSessionOwner``) and the family's lock: they run one after
    # the other per family, and side by side for different sessions of one user. What changes many of
    # a user's sessions holds the user's row exclusively instead: revoking them all (``revoke_all``:
    # its callers hold it FOR UPDATE) and a sign-in ending the least recently used ones
    # (``GetUserForNewSession``, FOR NO KEY UPDATE). Each waits for every rotation and logout of the
    # user in progress, and none begins until it commits, so it takes no lock per session: one per
    # session in one transaction exhausted the server's shared lock table (max_locks_per_transaction x
    # max_connections) for a user with some ten thousand sessions, and the revocation failed. The
    # advisory lock was chosen over a ``refresh_families`` table whose row would stand for the family:
    # it needs no migration, no backfill and no row for sessions that a release without the table
    # begins during a rolling deploy, and it does the same job.

    async def _lock_session(self, uow: UnitOfWork, family: uuid.UUID) -> None:
        """Hold this session until ``uow`` ends, before any of its token rows and after its user's row
        (held ``FOR SHARE`` by the caller; see above)."""
        await queries.lock_refresh_families(uow.conn, family_ids=[family])

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent and a new one of the same family is issued.

        Presenting a spent token means it leaked: the whole family and every access token issued from
        it are revoked (whether or not the spent token has expired since), and the caller must log in
        again. One exception, for a client racing itself (two tabs refreshing with one token): the
        family's immediate predecessor presented less than REFRESH_REUSE_GRACE_S after its rotation,
        while the token that rotation issued is unused, is answered 409 ``refresh-superseded`` and
        revokes nothing; the other request's answer holds the session's tokens. An older token, or one
        whose successor was used, still revokes.

        A session rotates at most REFRESH_ROTATIONS_PER_HOUR times within an hour (each rotation adds a
        row it keeps until it is over): past them a valid token is answered 429 ``refresh-rate-limited``
        with ``Retry-After`` (until the oldest of those rotations is an hour old) and is neither spent
        nor revoked, so the client rotates it after that wait.
        """
        reused: uuid.UUID | None = None
        digest = refresh_token_digest(refresh_token)
        async with self.db.transaction() as uow:
            # The user's row before the family's lock before the token's (see above): a demotion or
            # deactivation waits for this rotation, or is seen by it.
            user = await queries.get_refresh_token_owner_for_share(uow.conn, token_hash=digest)
            family_id = await queries.get_refresh_token_family(uow.conn, token_hash=digest)
            if family_id is not None:
                await self._lock_session(uow, family_id)
            stored = await queries.get_refresh_token_for_update(uow.conn, token_hash=digest)
            if stored is None or stored.revoked_at is not None:
                raise UnauthorizedError("The refresh token is invalid or expired.")
            family = await queries.get_family_state(uow.conn, family_id=stored.family_id)
            if family is None or family.revoked:
                raise UnauthorizedError("The refresh token is invalid or expired.")
            # Reuse before expiry: a spent token outlived by its successor (REFRESH_TOKEN_TTL_S shorter
            # than SESSION_MAX_AGE_S) still revokes the session when presented after its own expiry.
            if stored.used_at is not None:
                # REFRESH_REUSE_GRACE_S=0: no grace at all, every reuse revokes (not even a rotation
                # committed while this request waited for the family's lock is forgiven).
                grace = self.settings.refresh_reuse_grace_s
                if grace > 0 and await queries.is_refresh_token_recently_superseded(
                    uow.conn,
                    grace_s=grace,
                    family_id=stored.family_id,
                    id=stored.id,
                ):
                    log.info(
                        "refresh_token_superseded", user_id=stored.user_id, family_id=str(stored.family_id)
                    )
                    raise RefreshSupersededError(
                        "This refresh token was rotated a moment ago by another request; use the tokens "
                        "that request received."
                    )
                await queries.revoke_refresh_families(uow.conn, family_ids=[stored.family_id])
                await self.authentication.revoke(uow, [stored.family_id])
                reused = stored.family_id
            else:
                if user is None or not user.is_active or stored.expires_at <= datetime.now(UTC):
                    raise UnauthorizedError("The refresh token is invalid or expired.")
                max_age = timedelta(seconds=self.settings.session_max_age_s)
                if family.started_at + max_age <= datetime.now(UTC):
                    raise UnauthorizedError("The session has ended; sign in again.")
                await self._limit_rotations(uow, stored.user_id, stored.family_id)
                await queries.mark_refresh_token_used(uow.conn, id=stored.id)
                pair = await self._issue(uow, user, stored.family_id, family.started_at)
        if reused is not None:
            log.warning("refresh_token_reuse", user_id=stored.user_id, family_id=str(reused))
            raise UnauthorizedError("The refresh token was already used; the session has been revoked.")
        return pair

    async def _limit_rotations(self, uow: UnitOfWork, user_id: int, family: uuid.UUID) -> None:
        """429 when ``family`` (locked) rotated REFRESH_ROTATIONS_PER_HOUR times within the last hour:
        the session's rows would otherwise grow with every rotation the route's per-address limit lets
        through. Reads that many of the family's newest tokens (``RefreshRotationWait``)."""
        per_hour = self.settings.refresh_rotations_per_hour
        wait_s = await queries.refresh_rotation_wait(uow.conn, family_id=family, per_hour=per_hour)
        if wait_s:
            retry_after = max(1, math.ceil(wait_s))
            log.warning(
                "refresh_rotation_limited", user_id=user_id, family_id=str(family), retry_after_s=retry_after
            )
            raise RefreshRateLimitedError(
                f"This session rotated its refresh token {per_hour} times within the hour; use the "
                f"same refresh token again in {retry_after} s.",
                headers={"Retry-After": str(retry_after)},
            )

    async def purge_expired_sessions(
        self, *, families_per_pass: int = PURGE_FAMILIES, chunk_size: int = PURGE_CHUNK_TOKENS
    ) -> int:
        """Delete the refresh tokens of sessions that have ended (cron); returns how many. Ended
        sessions are found ``families_per_pass`` at a time in family order, each pass resuming after
        the last, and their tokens deleted ``chunk_size`` per transaction."""
        purged = 0
        after = NO_FAMILY
        while True:
            async with self.db.transaction() as uow:
                families = await queries.ended_refresh_families(
                    uow.conn, after_family=after, grace_s=self.tokens.ttl_s, family_limit=families_per_pass
                )
            if not families:
                break

            async def chunk(uow: UnitOfWork, families: list[uuid.UUID] = families) -> int:
                return await queries.purge_ended_family_tokens(
                    uow.conn, family_ids=families, chunk_size=chunk_size
                )

            purged += await self.db.delete_in_chunks(chunk)
            if len(families) < families_per_pass:
                break
            after = families[-1]
        if purged:
            log.info("refresh_tokens_purged", count=purged)
        return purged

    async def logout(self, user: CurrentUser) -> None:
        await self.end_session(user.family_id)

    async def end_session(self, family: uuid.UUID) -> None:
        """Revoke one session (a logout, a dashboard sign-out): its user's row ``FOR SHARE`` first, then
        the session's lock, then its tokens (see above), so that a revocation of all the user's
        sessions or a sign-in ending some waits for it, or it for them. A session with no token left
        (purged) has no row to lock; its access tokens are refused all the same."""
        async with self.db.transaction() as uow:
            await queries.lock_session_owner(uow.conn, family_id=family)
            await self._lock_session(uow, family)
            await queries.revoke_refresh_families(uow.conn, family_ids=[family])
            await self.authentication.revoke(uow, [family])

    async def revoke_all(self, uow: UnitOfWork, user_id: int, keep: uuid.UUID = NO_FAMILY) -> int:
        """Revoke every session of a user (except ``keep``) in the caller's transaction: their refresh
        tokens at once, their access tokens in every process from the commit on.

        The caller holds the user's row ``FOR UPDATE``: every rotation, logout and sign-in of the user
        holds it too (``FOR SHARE`` or ``FOR NO KEY UPDATE``), so this waited for those in progress and
        no session of the user begins, rotates or ends until the commit (``keep``'s neither: the caller
        may rely on its state). No session needs a lock of its own (see above)."""
        live = await queries.list_live_user_families(uow.conn, user_id=user_id)
        families = [family for family in live if family != keep]
        if families:
            await queries.revoke_refresh_families(uow.conn, family_ids=families)
        await self.authentication.revoke(uow, families)
        return len(families)

    # -- the SAQ dashboard's sign-in (``dashboard_tokens``) -----------------------------------------
    #
    # A dashboard session is a session family of its own, recorded as one refresh-token row whose
    # secret is never handed out (so it can never be rotated) and which expires with the session: the
    # user's sessions are then found and revoked with the others (``revoke_all``: a password change, a
    # deactivation, a demotion), signing out revokes it like a logout, and the revocation check is
    # the one bearer tokens get (``Authentication.family_revoked``). No table, no migration; the
    # expired-sessions purge deletes the row after it expired.

    async def start_dashboard_session(
        self, email: str, password: str, client_ip: str | None
    ) -> DashboardSession:
        """A dashboard session for an active administrator with these credentials: 401 (the login's
        message, throttled like it) for wrong credentials, 403 for a member. Issued like ``login``'s
        tokens, under the user's row: a change that committed since the check is seen. The new session
        may end the account's least recently used ones (``make_room``)."""
        checked = await self.credentials.check_credentials(email, password, client_ip, purpose="dashboard")
        family = uuid.uuid4()
        async with self.db.transaction() as uow:
            user = await self.user_for_new_session(uow, checked)
            if user.role != UserRole.ADMIN:
                log.info("dashboard_sign_in_refused", user_id=user.id, reason="not_an_administrator")
                raise ForbiddenError(ADMINS_ONLY)
            await self.make_room(uow, user.id)
            token, claims = self.dashboard_tokens.issue(user.id, family, user.password_hash)
            _, unusable_digest = new_refresh_token()
            await queries.insert_refresh_token(
                uow.conn,
                user_id=user.id,
                family_id=family,
                token_hash=unusable_digest,
                expires_at=datetime.fromtimestamp(claims.exp, UTC),
            )
        log.info("dashboard_session_started", user_id=user.id, family_id=str(family))
        return DashboardSession(token=token, max_age_s=claims.exp - claims.iat)

    async def dashboard_admin(self, token: str) -> User:
        """The administrator of a live dashboard session: its signature, audience and expiry, its
        session not revoked, the account active and its password the one signed in with (401
        otherwise), its role read now (a member: 403)."""
        try:
            claims = self.dashboard_tokens.verify(token)
            family = uuid.UUID(claims.fam)
        except (InvalidTokenError, ValueError) as exc:
            log.info("dashboard_session_rejected", reason=str(exc))
            raise sign_in_required() from exc
        if await self.authentication.family_revoked(family):
            raise sign_in_required("The dashboard session has ended; sign in again.")
        async with self.db.read() as uow:
            user = await queries.get_user_by_id(uow.conn, id=int(claims.sub))
        if (
            user is None
            or not user.is_active
            or not self.dashboard_tokens.password_unchanged(claims, user.password_hash)
        ):
            raise sign_in_required("The dashboard session has ended; sign in again.")
        if user.role != UserRole.ADMIN:
            raise ForbiddenError(ADMINS_ONLY)
        return user

    async def end_dashboard_session(self, token: str) -> None:
        """Sign out: the session is revoked (a copy of the cookie is refused too). A token that is
        not a live one of ours ends nothing."""
        try:
            family = uuid.UUID(self.dashboard_tokens.verify(token).fam)
        except (InvalidTokenError, ValueError):
            return
        await self.end_session(family)
        log.info("dashboard_session_ended", family_id=str(family))
