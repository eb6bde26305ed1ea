"""The administrators' management of accounts: listing users, changing a user's role or activity,
and ``create-admin`` (creating an administrator, or promoting an existing account).

A change of role or activity revokes the user's sessions at once (tokens carry the role:
``Sessions.revoke_all``) and is announced to the listeners registered with ``after_access_change``.

Held by ``AccountService``, whose public methods of the same names delegate here; split out of
``services.py`` as a topic of its own. ``AdminAccount``, ``AdminGrant`` and ``AccountExistsError`` are
the CLI's (re-exported by ``services.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

import structlog

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, ForbiddenError, NotFoundError
from app.core.wire import given
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.domains.accounts.passwords import check_new_password
from app.domains.accounts.registration import Registration, sign_in_address
from app.domains.accounts.schemas import AdminUserPatch
from app.domains.accounts.sessions import Sessions

log = structlog.get_logger("app.accounts")


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


class Administration:
    def __init__(
        self, db: Database, settings: Settings, registration: Registration, sessions: Sessions
    ) -> None:
        self.settings = settings
        self.db = db
        self.registration = registration
        self.sessions = sessions
        self._on_access_change: list[Callable[[int], Awaitable[None]]] = []

    def after_access_change(self, callback: Callable[[int], Awaitable[None]]) -> None:
        """Run ``callback(user_id)`` after a user's role or active flag changed (committed)."""
        self._on_access_change.append(callback)

    def access_changed(self, uow: UnitOfWork, user_id: int) -> None:
        """Tell the ``after_access_change`` listeners about ``user_id``, once ``uow`` commits."""
        for callback in self._on_access_change:
            uow.after_commit(partial(callback, user_id))

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
            if before.erased_at is not None:
                raise ConflictError("An erased account cannot be changed.")
            user = (
                await queries.admin_update_user(
                    uow.conn, role=given(patch.role), is_active=given(patch.is_active), id=user_id
                )
                or before  # nothing to change
            )
            if user.role != before.role or user.is_active != before.is_active:
                self.access_changed(uow, user_id)
                revoked = await self.sessions.revoke_all(uow, user_id)
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
        for _ in range(2):  # an account erased while this ran frees its address: once more
            if await self.registration.find_by_email(email) is None:
                if password is None:
                    raise ValueError("a password is required to create a new administrator")
                check_new_password(password, production=self.settings.is_production)
                created = await self.registration.insert_account(
                    email, password, display_name, UserRole.ADMIN
                )
                if created is not None:
                    log.info("administrator_created", user_id=created.id)
                    return AdminAccount(created, AdminGrant.CREATED)
                # registered meanwhile: an existing account like any other
            promoted = await self._promote(email, promote_existing=promote_existing)
            if promoted is not None:
                return promoted
        raise ConflictError(f"The account of {email} changed while the command ran: run it again.")

    async def _promote(self, email: str, *, promote_existing: bool) -> AdminAccount | None:
        """The account of ``email`` promoted; None when it has none any more (erased meanwhile: an
        erasure changes the address of the row it keeps)."""
        async with self.db.transaction() as uow:
            found = await queries.get_user_by_email(uow.conn, email=email)
            if found is None:
                return None
            before = (await queries.get_users_for_update(uow.conn, ids=[found.id]))[0]
            if before.erased_at is not None or before.email != email:  # erased meanwhile
                return None
            if before.role == UserRole.ADMIN and before.is_active:
                return AdminAccount(before, AdminGrant.ALREADY_ADMIN)  # running it again changes nothing
            if not promote_existing:
                raise AccountExistsError(before)
            user = await queries.admin_update_user(
                uow.conn, role=UserRole.ADMIN, is_active=True, id=before.id
            )
            assert user is not None
            self.access_changed(uow, user.id)
            revoked = await self.sessions.revoke_all(uow, user.id)
        log.info(
            "administrator_promoted",
            user_id=user.id,
            was_role=before.role.value,
            was_active=before.is_active,
            sessions_revoked=revoked,
        )
        return AdminAccount(user, AdminGrant.PROMOTED, reactivated=not before.is_active)
