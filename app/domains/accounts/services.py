"""Accounts: registration, login with throttling, rotating refresh tokens, revocation, admin.

The service opens its own transactions (instead of the request's unit of work) because some flows
must commit before they fail: a reused refresh token revokes its family *and then* answers 401.

Where the code is: ``AccountService`` (here) is the domain's one service, its public methods the
ones the handlers, guards, jobs, the CLI, the seed, other domains and the tests call; it keeps its
lifecycle and the questions other domains ask inside their transactions (``lock_admin`` and its
kin), and hands the rest, in one line each, to the parts it holds, each in a module private to the
domain:

- ``authentication.py`` (``Authentication``): bearer tokens verified, and the revoked sessions'
  mirror every request checks (``revoke`` is how a session's end reaches it);
- ``passwords.py`` (``Credentials``): the password policy and the throttled check of a password;
- ``sessions.py`` (``Sessions``): login, refresh-token rotation, logout, revoking every session, the
  purge of ended ones, and the dashboard's sign-in sessions, under one lock order;
- ``profile.py`` (``Profile``): the caller's own account (its name, its password's change);
- ``registration.py`` (``Registration``): registration, the seed's accounts, lookups by address;
- ``administration.py`` (``Administration``): the administrators' user management and
  ``create-admin``;
- ``erasure.py`` (``Erasure``): an account's erasure, by itself or an administrator, with the
  other domains' parts (``before_erasure``);
- and, as before the split, ``throttle.py`` (``LoginThrottle``) and ``dashboard_tokens.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

from valkey.asyncio import Valkey

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, ForbiddenError, UnauthorizedError
from app.core.security import AccessTokens, Passwords
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.domains.accounts.administration import AccountExistsError as AccountExistsError
from app.domains.accounts.administration import AdminAccount as AdminAccount
from app.domains.accounts.administration import AdminGrant as AdminGrant
from app.domains.accounts.administration import Administration
from app.domains.accounts.authentication import Authentication
from app.domains.accounts.dashboard_tokens import ADMINS_ONLY, DashboardSession, DashboardTokens
from app.domains.accounts.erasure import AccountStillOwnsError as AccountStillOwnsError
from app.domains.accounts.erasure import Erasure, ErasureHook, OwnErasure
from app.domains.accounts.passwords import Credentials
from app.domains.accounts.passwords import WeakPasswordError as WeakPasswordError
from app.domains.accounts.profile import Profile
from app.domains.accounts.registration import Registration
from app.domains.accounts.registration import UnusableEmailError as UnusableEmailError
from app.domains.accounts.schemas import AdminUserPatch, RegisterIn, TokenPair, UpdateMeIn
from app.domains.accounts.sessions import NO_FAMILY, PURGE_CHUNK_TOKENS, PURGE_FAMILIES, Sessions
from app.domains.accounts.throttle import LoginThrottle

# re-exported: ``create-admin`` (app.cli) imports AccountExistsError, AdminAccount, AdminGrant,
# UnusableEmailError and WeakPasswordError from here, the accounts domain's public module


class AccountService:
    def __init__(self, db: Database, settings: Settings, valkey: Valkey) -> None:
        self.settings = settings
        self.db = db
        self.valkey = valkey
        self.passwords = Passwords(settings)
        self.tokens = AccessTokens(settings)
        self.dashboard_tokens = DashboardTokens(settings)
        self.throttle = LoginThrottle(settings, valkey)
        self.authentication = Authentication(db, settings, self.tokens)
        self.credentials = Credentials(db, self.passwords, self.throttle)
        self.sessions = Sessions(
            db, settings, self.tokens, self.dashboard_tokens, self.credentials, self.authentication
        )
        self.registration = Registration(db, settings, self.passwords)
        self.profile = Profile(db, settings, self.passwords, self.credentials, self.sessions)
        self.administration = Administration(db, settings, self.registration, self.sessions)
        self.erasure = Erasure(
            db,
            self.passwords,
            self.sessions,
            access_changed=self.administration.access_changed,
            renamed=self.profile.renamed,
        )

    def after_access_change(self, callback: Callable[[int], Awaitable[None]]) -> None:
        """Run ``callback(user_id)`` after a user's role or active flag changed (committed)."""
        self.administration.after_access_change(callback)

    def after_rename(self, callback: Callable[[int], Awaitable[None]]) -> None:
        """Run ``callback(user_id)`` after a user's display name changed (committed)."""
        self.profile.after_rename(callback)

    def before_erasure(self, hook: ErasureHook) -> None:
        """Run ``hook(uow, user_id, actor_id)`` in every erasure's transaction, before the account is
        tombstoned (``erasure.py``): a domain removes what it keeps of the account there, or refuses."""
        self.erasure.before_erasure(hook)

    async def start(self) -> None:
        await self.authentication.revocations.start()

    async def close(self) -> None:
        """The password checks' threads end first (requests waiting for one are cancelled, and end
        their sign-in attempts), then the throttle waits for the attempts' ends."""
        try:
            await self.authentication.revocations.close()
            await self.passwords.close()
        finally:
            await self.throttle.close()

    # -- authentication of requests (``authentication.py``) -------------------------------------

    async def authenticate(self, bearer_token: str) -> CurrentUser:
        """The caller of a bearer token; 401 for anything not a live access token of ours."""
        return await self.authentication.authenticate(bearer_token)

    async def still_authenticated(self, caller: CurrentUser) -> bool:
        """Whether a request authenticated as ``caller`` earlier would be now
        (``Authentication.still_authenticated``)."""
        return await self.authentication.still_authenticated(caller)

    async def require_session(self, uow: UnitOfWork, caller: CurrentUser) -> None:
        """401 unless ``caller``'s session still stands in ``uow``'s transaction
        (``Authentication.require_session``)."""
        await self.authentication.require_session(uow, caller)

    # -- registration and login (``registration.py``, ``passwords.py``, ``sessions.py``) --------

    async def register(self, data: RegisterIn) -> User | None:
        """The new user, or None when the email already had an account (``Registration.register``:
        the caller's answer must not say which)."""
        return await self.registration.register(data)

    async def check_credentials(
        self, email: str, password: str, client_ip: str | None, *, purpose: str = "login"
    ) -> User:
        """The active user with these credentials, or 401 (``Credentials.check_credentials``)."""
        return await self.credentials.check_credentials(email, password, client_ip, purpose=purpose)

    async def login(self, email: str, password: str, client_ip: str | None) -> TokenPair:
        return await self.sessions.login(email, password, client_ip)

    # -- refresh rotation, logout, revocation (``sessions.py``: its lock order) -------------------

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent and a new one of the same family is issued
        (``Sessions.refresh``: a reuse, a racing client, the rotation limit)."""
        return await self.sessions.refresh(refresh_token)

    async def purge_expired_sessions(
        self, *, families_per_pass: int = PURGE_FAMILIES, chunk_size: int = PURGE_CHUNK_TOKENS
    ) -> int:
        return await self.sessions.purge_expired_sessions(
            families_per_pass=families_per_pass, chunk_size=chunk_size
        )

    async def logout(self, user: CurrentUser) -> None:
        await self.sessions.logout(user)

    async def revoke_all(self, uow: UnitOfWork, user_id: int, keep: uuid.UUID = NO_FAMILY) -> int:
        """Revoke every session of a user (except ``keep``) in the caller's transaction, which holds
        the user's row ``FOR UPDATE`` (``Sessions.revoke_all``)."""
        return await self.sessions.revoke_all(uow, user_id, keep)

    # -- the SAQ dashboard's sign-in (``sessions.py``, ``dashboard_tokens``) ----------------------

    async def start_dashboard_session(
        self, email: str, password: str, client_ip: str | None
    ) -> DashboardSession:
        return await self.sessions.start_dashboard_session(email, password, client_ip)

    async def dashboard_admin(self, token: str) -> User:
        return await self.sessions.dashboard_admin(token)

    async def end_dashboard_session(self, token: str) -> None:
        await self.sessions.end_dashboard_session(token)

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

    async def require_active(self, uow: UnitOfWork, user_id: int) -> User:
        """The account, or 401 when it is no longer active (deactivated, or erased): what adds to an
        account's own (a project, a membership, a site, a tracked login) asks under the lock that
        serialises those additions, which an erasure holds until it commits (``erasure.py``), so
        nothing is added to an account erased meanwhile."""
        user = await self.active_user(uow, user_id)
        if user is None:
            raise UnauthorizedError.token_refused(
                "Your account was deactivated or erased while the request was in progress: nothing was kept."
            )
        return user

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

    # -- the caller's own account (``profile.py``) --------------------------------------------------

    async def get_user(self, user_id: int) -> User:
        return await self.profile.get_user(user_id)

    async def update_me(self, caller: CurrentUser, data: UpdateMeIn, client_ip: str | None = None) -> User:
        """A new password needs the current one, checked under the login throttle; the change holds
        its check until the commit (``Profile.update_me``)."""
        return await self.profile.update_me(caller, data, client_ip)

    async def erase_me(
        self, caller: CurrentUser, current_password: str, client_ip: str | None = None
    ) -> None:
        """The caller's own account erased (``erasure.py``), its password checked first under the login
        throttle (403 when wrong, as for a password change). An administrator's account is erased by
        another administrator: one erasing their own could leave the service with none."""
        if caller.role == UserRole.ADMIN:
            raise ConflictError("An administrator's account is erased by another administrator.")
        verified = await self.profile.check_current_password(
            caller.id, current_password, client_ip, purpose="erasure"
        )
        own = OwnErasure(family_id=caller.family_id, verified_hash=verified.password_hash)
        await self.erasure.erase(caller.id, actor=caller.id, own=own)

    # -- administration (``administration.py``) -------------------------------------------------

    async def list_users(
        self, *, role: UserRole | None, is_active: bool | None, after_id: int, row_limit: int
    ) -> list[User]:
        return await self.administration.list_users(
            role=role, is_active=is_active, after_id=after_id, row_limit=row_limit
        )

    async def admin_update(self, actor: CurrentUser, user_id: int, patch: AdminUserPatch) -> User:
        """Deactivation and role changes revoke the user's sessions at once (tokens carry the role)."""
        return await self.administration.admin_update(actor, user_id, patch)

    async def erase_user(self, actor: CurrentUser, user_id: int) -> None:
        """An administrator erases another account (``erasure.py``); their own is not erased here."""
        if user_id == actor.id:
            raise ConflictError("Administrators cannot erase their own account.")
        await self.erasure.erase(user_id, actor=actor.id)

    async def create_admin(
        self,
        email: str,
        password: str | None,
        display_name: str = "Administrator",
        *,
        promote_existing: bool = False,
    ) -> AdminAccount:
        """``create-admin``: a new administrator, or (``promote_existing``) an existing account
        promoted (``Administration.create_admin``)."""
        return await self.administration.create_admin(
            email, password, display_name, promote_existing=promote_existing
        )

    # -- accounts by address, the seed's (``registration.py``) ------------------------------------

    async def ensure_user(self, email: str, password: str, display_name: str, role: UserRole) -> User:
        """The account with this email, created with these details if it does not exist (seed)."""
        return await self.registration.ensure_user(email, password, display_name, role)

    async def opens_with(self, email: str, password: str) -> bool:
        """Whether ``password`` is the stored password of the account ``email`` (the seed's question,
        never a sign-in: ``Registration.opens_with``)."""
        return await self.registration.opens_with(email, password)

    async def find_by_email(self, email: str) -> User | None:
        return await self.registration.find_by_email(email)
