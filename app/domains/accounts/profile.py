"""The caller's own account: reading it, and changing its display name or its password.

A password change needs the current password (checked like a login: ``passwords.py``) and revokes
the account's other sessions in its transaction (``Sessions.revoke_all``); a rename is announced to
the listeners registered with ``after_rename`` (the feed's names).

Held by ``AccountService`` (``get_user``, ``update_me``, ``after_rename`` delegate here); split out of
``services.py`` as a topic of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import structlog

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, ForbiddenError, NotFoundError, UnauthorizedError
from app.core.security import Passwords
from app.core.wire import given
from app.db import accounts as queries
from app.db.models import User
from app.domains.accounts.passwords import Credentials, check_new_password
from app.domains.accounts.schemas import UpdateMeIn
from app.domains.accounts.sessions import Sessions

log = structlog.get_logger("app.accounts")


class PasswordChangedError(ConflictError):
    """The password verified for a change is no longer the account's: another change committed first."""

    slug = "password-changed"
    title = "Password changed meanwhile"


class Profile:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        passwords: Passwords,
        credentials: Credentials,
        sessions: Sessions,
    ) -> None:
        self.settings = settings
        self.db = db
        self.passwords = passwords
        self.credentials = credentials
        self.sessions = sessions
        self._on_rename: list[Callable[[int], Awaitable[None]]] = []

    def after_rename(self, callback: Callable[[int], Awaitable[None]]) -> None:
        """Run ``callback(user_id)`` after a user's display name changed (committed)."""
        self._on_rename.append(callback)

    def renamed(self, uow: UnitOfWork, user_id: int) -> None:
        """Tell the ``after_rename`` listeners that the user's name changed, once ``uow`` commits."""
        for callback in self._on_rename:
            uow.after_commit(partial(callback, user_id))

    async def check_current_password(
        self, user_id: int, password: str | None, client_ip: str | None, *, purpose: str
    ) -> User:
        """The account, once ``password`` proved to be its own under the login throttle (a wrong one
        counts as a failed sign-in), or 403: what a change of one's own account asks first (a new
        password, an erasure), so that a stolen access token buys no unthrottled guesses."""
        current = await self.get_user(user_id)
        if password is None:
            raise ForbiddenError("The current password is required and must be correct.")
        try:
            return await self.credentials.check_credentials(
                current.email, password, client_ip, purpose=purpose
            )
        except UnauthorizedError:
            raise ForbiddenError("The current password is required and must be correct.") from None

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
        change). A rename alone takes the same lock and is refused the same way: one waiting behind an
        erasure wrote the person's name back onto the account the erasure had just cleared.

        A patch that changes nothing (no field, or each as it is) is no change: the account as it is,
        its ``updated_at`` kept, and no rename for the feed's names (nor with a new password and the
        name as it was)."""
        new_hash, verified_hash, revoked, name_before = None, None, 0, None
        new_password, display_name = given(data.new_password), given(data.display_name)
        if new_password is not None:
            # Before the current password is checked: a weak one costs no guess and tells nothing.
            check_new_password(new_password, production=self.settings.is_production)
            verified = await self.check_current_password(
                caller.id, given(data.current_password), client_ip, purpose="password_change"
            )
            verified_hash = verified.password_hash
            new_hash = await self.passwords.hash(new_password)
        async with self.db.transaction() as uow:
            # Every change under the row's lock, a rename too: one waiting behind a deactivation or an
            # erasure would otherwise write its name onto the account the erasure just cleared.
            locked = await queries.get_users_for_update(uow.conn, ids=[caller.id])
            if not locked:
                raise NotFoundError("No such user.")
            if new_hash is not None and locked[0].password_hash != verified_hash:
                log.info("password_change_refused", user_id=caller.id, reason="changed_meanwhile")
                raise PasswordChangedError(
                    "The password was changed meanwhile; the current password given is no longer current."
                )
            family = caller.family_id
            if not await queries.session_still_stands(uow.conn, user_id=caller.id, family_id=family):
                log.info("profile_change_refused", user_id=caller.id, reason="session_revoked")
                raise UnauthorizedError.token_refused("The access token has been revoked.")
            if new_hash is not None:
                name_before = locked[0].display_name
                revoked = await self.sessions.revoke_all(uow, caller.id, keep=caller.family_id)
            user = await queries.update_user_profile(
                uow.conn,
                display_name=display_name.strip() if display_name else None,
                password_hash=new_hash,
                id=caller.id,
            )
            if user is None:  # nothing to change (or no such user)
                user = await queries.get_user_by_id(uow.conn, id=caller.id)
                if user is None:
                    raise NotFoundError("No such user.")
            elif display_name is not None and (new_hash is None or user.display_name != name_before):
                # without a new password, a row means the name changed; with one, it is compared
                self.renamed(uow, caller.id)
        if new_hash is not None:
            log.info("password_changed", user_id=caller.id, sessions_revoked=revoked)
        return user
