"""Accounts: registration, login with throttling, rotating refresh tokens, revocation, admin.

The service opens its own transactions (instead of the request's unit of work) because some flows
must commit before they fail: a reused refresh token revokes its family *and then* answers 401.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any

import msgspec
import structlog
from cachetools import LRUCache
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD, Settings
from app.core.auth import CurrentUser
from app.core.db import Database, UnitOfWork
from app.core.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
    UnprocessableError,
)
from app.core.revocations import Revocations
from app.core.security import (
    TOKEN_LEEWAY_S,
    AccessTokens,
    InvalidTokenError,
    Passwords,
    new_refresh_token,
    refresh_token_digest,
)
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.domains.accounts.dashboard_tokens import (
    ADMINS_ONLY,
    DashboardSession,
    DashboardTokens,
    sign_in_required,
)
from app.domains.accounts.schemas import (
    AdminUserPatch,
    Email,
    RegisterIn,
    TokenPair,
    UpdateMeIn,
    UserOut,
)
from app.domains.accounts.throttle import LoginThrottle

log = structlog.get_logger("app.accounts")

NO_FAMILY = uuid.UUID(int=0)
VERIFIED_TOKENS_KEPT = 4096
"""Verified access tokens remembered per process (least recently used forgotten first)."""
REVOKED_FAMILY_RETENTION_S = 24 * 3600
"""``revoked_families`` rows older than this are purged (far beyond any access token's lifetime), or
older than the revocation horizon when that is longer (a dashboard session may last up to a week)."""
PURGE_FAMILIES = 1_000
"""Ended sessions found per pass of the session purge (one read of the token index per pass)."""
PURGE_CHUNK_TOKENS = 10_000
"""Tokens of ended sessions deleted per transaction."""
BAD_CREDENTIALS = "Invalid email or password."


MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH, MIN_PASSWORD_DISTINCT = 10, 256, 5


class WeakPasswordError(UnprocessableError):
    """Not a ValueError on purpose: ``create-admin`` must not fall back to prompting for it."""

    slug = "weak-password"
    title = "Weak password"


def check_new_password(password: str, *, production: bool) -> None:
    """The one policy for every password set: by the API (registration, a password change) and by
    ``create-admin`` (ADMIN_PASSWORD): 10 to 256 characters, no control character (C0, U+0000 to
    U+001F, and DEL: a NUL or a newline is a client's bug, never a secret anyone can type again), some
    variety (``MIN_PASSWORD_DISTINCT`` different characters: not ten spaces), and in production never a
    public default (the demo seed's ADMIN_PASSWORD and DEMO_PASSWORD; outside production the seed
    sets them, so they stay usable there)."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(
            f"The password needs {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters."
        )
    if any(ord(character) < 0x20 or character == "\x7f" for character in password):
        raise WeakPasswordError("The password must not contain control characters (U+0000 to U+001F, DEL).")
    public = {DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD} if production else set()
    if len(set(password)) < MIN_PASSWORD_DISTINCT or password in public:
        raise WeakPasswordError("The password is too easy to guess (a public default or too little variety).")


class UnusableEmailError(UnprocessableError):
    """An address set outside the API (``create-admin``, the seed's ADMIN_EMAIL) that the login's
    ``Email`` refuses: its account could never sign in."""

    slug = "unusable-email"
    title = "Unusable email address"


def sign_in_address(email: str) -> str:
    """``email`` as accounts store it (trimmed, lower-case), if the login would accept it: checked with
    the login's own ``Email`` type, else ``UnusableEmailError``."""
    address = email.strip()
    try:
        msgspec.convert(address, Email)
    except msgspec.ValidationError:
        raise UnusableEmailError(
            f"{address} is not an address the login accepts (ASCII, a domain ending in a dot and two or "
            "more letters, as ops@example.com): its account could never sign in"
        ) from None
    return address.lower()


class AccountExistsError(ConflictError):
    """``create-admin`` for an address that has an account already, without ``--promote-existing``."""

    slug = "account-exists"
    title = "Account exists"

    def __init__(self, existing: User) -> None:
        super().__init__(f"{existing.email} already has an account (id {existing.id}).")
        self.existing = existing


class AdminGrant(StrEnum):
    """What ``create_admin`` did."""

    CREATED = "created"
    PROMOTED = "promoted"
    ALREADY_ADMIN = "already_admin"


@dataclass(frozen=True, slots=True)
class AdminAccount:
    user: User
    grant: AdminGrant
    reactivated: bool = False


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


class PasswordChangedError(ConflictError):
    """The password verified for a change is no longer the account's: another change committed first."""

    slug = "password-changed"
    title = "Password changed meanwhile"


class AccountService:
    def __init__(self, db: Database, settings: Settings, valkey: Valkey) -> None:
        self.settings = settings
        self.db = db
        self.valkey = valkey
        self.passwords = Passwords(settings)
        self.tokens = AccessTokens(settings)
        self.dashboard_tokens = DashboardTokens(settings)
        self.throttle = LoginThrottle(settings, valkey)
        self._callers: LRUCache[str, CurrentUser] = LRUCache(maxsize=VERIFIED_TOKENS_KEPT)
        self._on_access_change: list[Callable[[int], Awaitable[None]]] = []
        self._on_rename: list[Callable[[int], Awaitable[None]]] = []
        conninfo, connect_kwargs = db.pool.conninfo, db.pool.kwargs
        assert isinstance(conninfo, str) and isinstance(connect_kwargs, dict), "a static pool configuration"
        self.revocations: Revocations[uuid.UUID] = Revocations(
            conninfo,
            connect_kwargs={**connect_kwargs, "application_name": f"{settings.app_name}:revocations"},
            connect_timeout_s=settings.database_timeout_s,
            listen=queries.listen_for_revoked_families,
            load=self._recently_revoked,
            parse=uuid.UUID,
            keep_s=self._revocation_horizon_s,
            name="revoked-families",
        )

    def after_access_change(self, callback: Callable[[int], Awaitable[None]]) -> None:
        """Run ``callback(user_id)`` after a user's role or active flag changed (committed)."""
        self._on_access_change.append(callback)

    def after_rename(self, callback: Callable[[int], Awaitable[None]]) -> None:
        """Run ``callback(user_id)`` after a user's display name changed (committed)."""
        self._on_rename.append(callback)

    def _access_changed(self, uow: UnitOfWork, user_id: int) -> None:
        for callback in self._on_access_change:
            uow.after_commit(partial(callback, user_id))

    async def start(self) -> None:
        await self.revocations.start()

    async def close(self) -> None:
        """The password checks' threads end first (requests waiting for one are cancelled, and end
        their sign-in attempts), then the throttle waits for the attempts' ends."""
        try:
            await self.revocations.close()
            await self.passwords.close()
        finally:
            await self.throttle.close()

    # -- authentication of requests ------------------------------------------------------------

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
        if await self._family_revoked(caller.family_id):
            raise UnauthorizedError.token_refused("The access token has been revoked.")
        return caller

    async def still_authenticated(self, caller: CurrentUser) -> bool:
        """Whether a request authenticated as ``caller`` earlier would be now: its token not expired,
        its session not revoked (a logout, the account deactivated or demoted, its password
        changed). What outlives its request (a live feed stream) asks this instead of keeping the
        token to authenticate again."""
        if caller.expires_at <= time.time() - TOKEN_LEEWAY_S:
            return False
        return not await self._family_revoked(caller.family_id)

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

    async def _family_revoked(self, family: uuid.UUID) -> bool:
        """The in-memory mirror of ``revoked_families`` while it is current, else PostgreSQL."""
        if self.revocations.live:
            return family in self.revocations
        async with self.db.transaction() as uow:
            return bool(await queries.is_family_revoked(uow.conn, family_id=family))

    @property
    def _revocation_horizon_s(self) -> float:
        """How long a revoked family must be remembered: the longest a token of it can live (an access
        token, or a dashboard session's, ``DASHBOARD_SESSION_S``)."""
        longest = max(self.settings.access_token_ttl_s, self.settings.dashboard_session_s)
        return longest + TOKEN_LEEWAY_S + 60

    async def _recently_revoked(self, conn: AsyncConnection[Any]) -> list[uuid.UUID]:
        return await queries.recently_revoked_families(conn, within_s=self._revocation_horizon_s)

    async def _revoke(self, uow: UnitOfWork, families: list[uuid.UUID]) -> None:
        """Refuse the families' access tokens from the commit of ``uow`` on, in every process.

        The row's trigger NOTIFYs every listening process when the transaction commits; this process
        adds them itself right after its commit. Rows no token can need any more are purged on the way.
        """
        if not families:
            return
        await queries.record_revoked_families(uow.conn, family_ids=sorted(families))
        await queries.purge_revoked_families(
            uow.conn, older_than_s=max(REVOKED_FAMILY_RETENTION_S, self._revocation_horizon_s)
        )
        revocations = self.revocations

        async def remember() -> None:
            revocations.add(families)

        uow.after_commit(remember)

    # -- registration and login ----------------------------------------------------------------

    async def register(self, data: RegisterIn) -> User | None:
        """Create the account if the email is free; the caller's answer must not say which happened
        (review L1): the new user, or None when the email already had an account (nothing changed).
        Both paths hash the password and try one insert, so they cost the same. A weak password is
        refused (422 ``weak-password``) before the email is looked at, so that answer reveals nothing
        either."""
        check_new_password(data.password, production=self.settings.is_production)
        user = await self._insert_account(
            data.email.strip().lower(), data.password, data.display_name.strip(), UserRole.MEMBER
        )
        if user is None:
            log.info("registration_for_existing_email")
            return None
        log.info("user_registered", user_id=user.id)
        return user

    async def check_credentials(
        self, email: str, password: str, client_ip: str | None, *, purpose: str = "login"
    ) -> User:
        """The active user with these credentials, or 401 — with the same message, status and
        hashing cost whether the email exists or not. Every attempt goes through the login throttle
        (``throttle.py``): refused (429) per address and per (account, address) pair, paced per
        account (refused when its schedule has no turn within ``LOGIN_MAX_DELAY_S``). An attempt that
        ends before its password is checked (503, the database down, cancelled) is taken back; one
        whose client went after it took a turn stays counted for its network (``throttle.py``)."""
        email = email.strip().lower()
        attempt = await self.throttle.attempt(email, client_ip, purpose=purpose)
        try:
            async with self.db.transaction() as uow:
                user = await queries.get_user_by_email(uow.conn, email=email)
            matched = await self.passwords.verify(user.password_hash if user else None, password)
        except BaseException as exc:
            await self.throttle.abandoned(attempt, exc)
            raise
        if user is None or not matched or not user.is_active:
            log.info(
                "login_failed",
                known_account=user is not None,
                user_id=user.id if user else None,
                client_ip=client_ip,
                purpose=purpose,
            )
            await self.throttle.failed(attempt)
            raise UnauthorizedError(BAD_CREDENTIALS)
        await self.throttle.succeeded(attempt)
        if self.passwords.needs_rehash(user.password_hash):
            return await self._rehash(user, password)
        return user

    async def _rehash(self, user: User, password: str) -> User:
        """The account with ``password`` (verified against ``user``'s hash) hashed again with the
        current argon2 parameters, stored only over the hash that was verified.

        When that hash is gone, another request replaced it first: a login of the same account at the
        same moment (two devices right after a parameter change), or a password change. The row is read
        again and ``password`` verified against its hash: a match (the other login's rehash) is
        returned as the checked account, so the callers' "still the password checked" comparison
        (``login``, the dashboard's sign-in, ``update_me``) holds; a real change is left for that
        comparison to refuse."""
        new_hash = await self.passwords.hash(password)
        async with self.db.transaction() as uow:
            rehashed = await queries.rehash_user_password(
                uow.conn, password_hash=new_hash, id=user.id, verified_hash=user.password_hash
            )
        if rehashed is not None:
            log.info("password_rehashed", user_id=user.id)
            return rehashed
        async with self.db.read() as uow:
            current = await queries.get_user_by_id(uow.conn, id=user.id)
        if (
            current is not None
            and current.password_hash != user.password_hash
            and await self.passwords.verify(current.password_hash, password)
        ):
            log.info("password_rehashed_meanwhile", user_id=user.id)
            return current
        return user

    async def login(self, email: str, password: str, client_ip: str | None) -> TokenPair:
        """Tokens for the account as it is when they are issued: the row is read again under
        ``GetUserForNewSession``, so a demotion, deactivation or password change that committed since
        the password was checked is seen (a changed password: 401), and one still to commit waits and
        then revokes this session with the others. The new session may end the account's least
        recently used ones (``_make_room``)."""
        checked = await self.check_credentials(email, password, client_ip)
        async with self.db.transaction() as uow:
            user = await self._user_for_new_session(uow, checked)
            await self._make_room(uow, user.id)
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

    async def _user_for_new_session(self, uow: UnitOfWork, checked: User) -> User:
        """The user whose credentials were checked, read again and held (``GetUserForNewSession``) for
        a session to begin: 401 when a deactivation or a password change committed since the check."""
        user = await queries.get_user_for_new_session(uow.conn, id=checked.id)
        if user is None or not user.is_active or user.password_hash != checked.password_hash:
            log.info("login_failed", known_account=True, user_id=checked.id, changed_meanwhile=True)
            raise UnauthorizedError(BAD_CREDENTIALS)
        return user

    async def _make_room(self, uow: UnitOfWork, user_id: int) -> None:
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
            await self._revoke(uow, beyond)
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
                await self._revoke(uow, [stored.family_id])
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
        await self._end_session(user.family_id)

    async def _end_session(self, family: uuid.UUID) -> None:
        """Revoke one session (a logout, a dashboard sign-out): its user's row ``FOR SHARE`` first, then
        the session's lock, then its tokens (see above), so that a revocation of all the user's
        sessions or a sign-in ending some waits for it, or it for them. A session with no token left
        (purged) has no row to lock; its access tokens are refused all the same."""
        async with self.db.transaction() as uow:
            await queries.lock_session_owner(uow.conn, family_id=family)
            await self._lock_session(uow, family)
            await queries.revoke_refresh_families(uow.conn, family_ids=[family])
            await self._revoke(uow, [family])

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
        await self._revoke(uow, families)
        return len(families)

    # -- the SAQ dashboard's sign-in (``dashboard_tokens``) -----------------------------------------
    #
    # A dashboard session is a session family of its own, recorded as one refresh-token row whose
    # secret is never handed out (so it can never be rotated) and which expires with the session: the
    # user's sessions are then found and revoked with the others (``revoke_all``: a password change, a
    # deactivation, a demotion), signing out revokes it like a logout, and the revocation check is
    # the one bearer tokens get (``_family_revoked``). No table, no migration; the expired-sessions
    # purge deletes the row after it expired.

    async def start_dashboard_session(
        self, email: str, password: str, client_ip: str | None
    ) -> DashboardSession:
        """A dashboard session for an active administrator with these credentials: 401 (the login's
        message, throttled like it) for wrong credentials, 403 for a member. Issued like ``login``'s
        tokens, under the user's row: a change that committed since the check is seen. The new session
        may end the account's least recently used ones (``_make_room``)."""
        checked = await self.check_credentials(email, password, client_ip, purpose="dashboard")
        family = uuid.uuid4()
        async with self.db.transaction() as uow:
            user = await self._user_for_new_session(uow, checked)
            if user.role != UserRole.ADMIN:
                log.info("dashboard_sign_in_refused", user_id=user.id, reason="not_an_administrator")
                raise ForbiddenError(ADMINS_ONLY)
            await self._make_room(uow, user.id)
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
        if await self._family_revoked(family):
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
        await self._end_session(family)
        log.info("dashboard_session_ended", family_id=str(family))

    # -- for other domains, inside their transaction -----------------------------------------------

    async def require_admin_now(self, user_id: int) -> None:
        """``ForbiddenError`` unless ``user_id``'s row is an active administrator's now: a bearer
        token's role is a claim made when it was issued (the SAQ dashboard's retry and abort write
        no row an administrator's lock could guard, so they read it)."""
        async with self.db.read() as uow:
            user = await self.active_user(uow, user_id)
        if user is None or user.role != UserRole.ADMIN:
            raise ForbiddenError(ADMINS_ONLY)

    async def active_user(self, uow: UnitOfWork, user_id: int) -> User | None:
        """The account if it exists and is active (e.g. someone who may join a project)."""
        user = await queries.get_user_by_id(uow.conn, id=user_id)
        return user if user is not None and user.is_active else None

    async def holds_admin(self, uow: UnitOfWork, user_id: int) -> bool:
        """Whether ``user_id``'s row is an active administrator's, held (``FOR SHARE``) until the
        caller's commit if so. An administrator's write asks first: the token's role is a claim, the
        row decides, and a demotion or deactivation (which locks the row ``FOR UPDATE``,
        ``admin_update``) waits for the write to commit or is seen by it."""
        return await queries.lock_active_admin(uow.conn, id=user_id) is not None

    async def lock_admin(self, uow: UnitOfWork, user_id: int) -> None:
        """``holds_admin``, or ``ForbiddenError`` (a route for administrators only)."""
        if not await self.holds_admin(uow, user_id):
            raise ForbiddenError("Administrators only.")

    # -- for other domains ----------------------------------------------------------------------

    async def count_signups(self, uow: UnitOfWork, since: datetime, until: datetime) -> int:
        """Accounts created in [since, until), in the caller's transaction (the daily report)."""
        return await queries.count_signups_between(uow.conn, since=since, until=until) or 0

    # -- the caller's own account -------------------------------------------------------------

    async def get_user(self, user_id: int) -> User:
        async with self.db.transaction() as uow:
            user = await queries.get_user_by_id(uow.conn, id=user_id)
        if user is None:
            raise NotFoundError("No such user.")
        return user

    async def update_me(self, caller: CurrentUser, data: UpdateMeIn, client_ip: str | None = None) -> User:
        """A new password needs the current one, checked under the login throttle: a stolen access
        token does not buy unthrottled password guesses.

        The check holds until the commit: the change locks the user's row ``FOR UPDATE`` (no session of
        the user begins, rotates or ends until the commit) and revokes the other sessions
        (``revoke_all``), and is refused if the password it verified is no longer the account's
        (409 ``password-changed``: another change committed first, and this one would overwrite it)
        or the caller's own session was revoked meanwhile (401: a logout, a deactivation, or that other
        change).

        A patch that changes nothing (no field, or each as it is) is no change: the account as it is,
        its ``updated_at`` kept, and no rename for the feed's names (nor with a new password and the
        name as it was)."""
        new_hash, verified_hash, revoked, name_before = None, None, 0, None
        if data.new_password is not None:
            # Before the current password is checked: a weak one costs no guess and tells nothing.
            check_new_password(data.new_password, production=self.settings.is_production)
            current = await self.get_user(caller.id)
            if data.current_password is None:
                raise ForbiddenError("The current password is required and must be correct.")
            try:
                verified = await self.check_credentials(
                    current.email, data.current_password, client_ip, purpose="password_change"
                )
                verified_hash = verified.password_hash
            except UnauthorizedError:
                raise ForbiddenError("The current password is required and must be correct.") from None
            new_hash = await self.passwords.hash(data.new_password)
        async with self.db.transaction() as uow:
            if new_hash is not None:
                locked = await queries.get_users_for_update(uow.conn, ids=[caller.id])
                if not locked:
                    raise NotFoundError("No such user.")
                if locked[0].password_hash != verified_hash:
                    log.info("password_change_refused", user_id=caller.id, reason="changed_meanwhile")
                    raise PasswordChangedError(
                        "The password was changed meanwhile; the current password given is no longer current."
                    )
                name_before = locked[0].display_name
                revoked = await self.revoke_all(uow, caller.id, keep=caller.family_id)
                if not locked[0].is_active or await queries.is_family_revoked(
                    uow.conn, family_id=caller.family_id
                ):
                    log.info("password_change_refused", user_id=caller.id, reason="session_revoked")
                    raise UnauthorizedError.token_refused("The access token has been revoked.")
            user = await queries.update_user_profile(
                uow.conn,
                display_name=data.display_name.strip() if data.display_name else None,
                password_hash=new_hash,
                id=caller.id,
            )
            if user is None:  # nothing to change (or no such user)
                user = await queries.get_user_by_id(uow.conn, id=caller.id)
                if user is None:
                    raise NotFoundError("No such user.")
            elif data.display_name is not None and (new_hash is None or user.display_name != name_before):
                # without a new password, a row means the name changed; with one, it is compared
                for callback in self._on_rename:
                    uow.after_commit(partial(callback, caller.id))
        if new_hash is not None:
            log.info("password_changed", user_id=caller.id, sessions_revoked=revoked)
        return user

    # -- administration ------------------------------------------------------------------------

    async def list_users(
        self, *, role: UserRole | None, is_active: bool | None, after_id: int, row_limit: int
    ) -> list[User]:
        async with self.db.transaction() as uow:
            # a statement per shape: a generic plan serving an optional role read every user (accounts.sql)
            if role is None:
                return await queries.list_users(
                    uow.conn, is_active=is_active, after_id=after_id, row_limit=row_limit
                )
            if is_active is None:
                return await queries.list_users_with_role(
                    uow.conn, role=role, after_id=after_id, row_limit=row_limit
                )
            return await queries.list_users_with_role_and_state(
                uow.conn, role=role, is_active=is_active, after_id=after_id, row_limit=row_limit
            )

    async def admin_update(self, actor: CurrentUser, user_id: int, patch: AdminUserPatch) -> User:
        """Deactivation and role changes revoke the user's sessions at once (tokens carry the role)."""
        if user_id == actor.id and (patch.is_active is False or patch.role == UserRole.MEMBER):
            raise ConflictError("Administrators cannot demote or deactivate themselves.")
        async with self.db.transaction() as uow:
            # The token says admin; the row decides, under lock: of two administrators demoting each
            # other at once, the second finds itself demoted (and no change leaves none).
            locked = {
                user.id: user
                for user in await queries.get_users_for_update(uow.conn, ids=[actor.id, user_id])
            }
            acting = locked.get(actor.id)
            if acting is None or acting.role != UserRole.ADMIN or not acting.is_active:
                raise ForbiddenError("Administrators only.")
            before = locked.get(user_id)
            if before is None:
                raise NotFoundError("No such user.")
            user = (
                await queries.admin_update_user(
                    uow.conn, role=patch.role, is_active=patch.is_active, id=user_id
                )
                or before  # nothing to change
            )
            if user.role != before.role or user.is_active != before.is_active:
                self._access_changed(uow, user_id)
                revoked = await self.revoke_all(uow, user_id)
                log.info(
                    "user_access_changed",
                    user_id=user_id,
                    by=actor.id,
                    role=user.role.value,
                    is_active=user.is_active,
                    was_role=before.role.value,
                    was_active=before.is_active,
                    sessions_revoked=revoked,
                )
        return user

    async def create_admin(
        self,
        email: str,
        password: str | None,
        display_name: str = "Administrator",
        *,
        promote_existing: bool = False,
    ) -> AdminAccount:
        """``create-admin``: a new administrator with ``password`` (ValueError when it is None: the CLI
        then prompts for one).

        An address that already has an account is refused (``AccountExistsError``, nothing changed):
        registration proves no control of an address, so whoever registered the address the operator
        names would otherwise become the administrator with their own password, or a deactivated
        account would come back. With ``promote_existing`` that account becomes an active
        administrator instead, its own password unchanged (``password`` is not used), and its sessions
        are revoked like any change of role (tokens carry the role). An address the login refuses is
        refused (``UnusableEmailError``): that administrator could never sign in."""
        email = sign_in_address(email)
        if await self.find_by_email(email) is None:
            if password is None:
                raise ValueError("a password is required to create a new administrator")
            check_new_password(password, production=self.settings.is_production)
            created = await self._insert_account(email, password, display_name, UserRole.ADMIN)
            if created is not None:
                log.info("administrator_created", user_id=created.id)
                return AdminAccount(created, AdminGrant.CREATED)
            # registered meanwhile: an existing account like any other
        return await self._promote(email, promote_existing=promote_existing)

    async def _promote(self, email: str, *, promote_existing: bool) -> AdminAccount:
        async with self.db.transaction() as uow:
            found = await queries.get_user_by_email(uow.conn, email=email)
            assert found is not None, "accounts are never deleted nor their address changed"
            before = (await queries.get_users_for_update(uow.conn, ids=[found.id]))[0]
            if before.role == UserRole.ADMIN and before.is_active:
                return AdminAccount(before, AdminGrant.ALREADY_ADMIN)  # running it again changes nothing
            if not promote_existing:
                raise AccountExistsError(before)
            user = await queries.admin_update_user(
                uow.conn, role=UserRole.ADMIN, is_active=True, id=before.id
            )
            assert user is not None
            self._access_changed(uow, user.id)
            revoked = await self.revoke_all(uow, user.id)
        log.info(
            "administrator_promoted",
            user_id=user.id,
            was_role=before.role.value,
            was_active=before.is_active,
            sessions_revoked=revoked,
        )
        return AdminAccount(user, AdminGrant.PROMOTED, reactivated=not before.is_active)

    async def ensure_user(self, email: str, password: str, display_name: str, role: UserRole) -> User:
        """The account with this email, created with these details if it does not exist (seed); an
        existing account is returned unchanged, whatever its role, activity or password."""
        email = email.strip().lower()
        async with self.db.transaction() as uow:
            existing = await queries.get_user_by_email(uow.conn, email=email)
        if existing is not None:
            return existing
        user = await self._insert_account(email, password, display_name, role)
        if user is not None:
            return user
        async with self.db.read() as uow:  # created meanwhile
            return await self._by_email(uow, email)

    async def _insert_account(
        self, email: str, password: str, display_name: str, role: UserRole
    ) -> User | None:
        """Hash ``password`` and insert the account (``email`` as stored: trimmed, lower-case); None
        when the address has an account already (nothing changed)."""
        password_hash = await self.passwords.hash(password)
        async with self.db.transaction() as uow:
            return await queries.create_user(
                uow.conn, email=email, display_name=display_name, password_hash=password_hash, role=role
            )

    async def opens_with(self, email: str, password: str) -> bool:
        """Whether ``password`` is the stored password of the account ``email``, whatever its role or
        activity (an administrator may give both back): the seed's question about its public
        defaults, never a sign-in (no throttle, no session)."""
        user = await self.find_by_email(email)
        return user is not None and await self.passwords.verify(user.password_hash, password)

    async def find_by_email(self, email: str) -> User | None:
        async with self.db.transaction() as uow:
            return await queries.get_user_by_email(uow.conn, email=email.strip().lower())

    async def _by_email(self, uow: UnitOfWork, email: str) -> User:
        user = await queries.get_user_by_email(uow.conn, email=email)
        assert user is not None
        return user
