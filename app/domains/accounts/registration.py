"""Accounts created: registration, the seed's accounts, and the lookups by address they share.

``sign_in_address`` is an address as accounts store it, checked with the login's own ``Email``;
``Registration`` creates accounts (``register`` for the API, ``ensure_user`` for the seed, both
through ``insert_account``, which ``create-admin`` uses too: ``administration.py``), finds them by
address, and answers the seed's question about its public default passwords (``opens_with``).

Held by ``AccountService``, whose public methods of the same names delegate here; split out of
``services.py`` as a topic of its own (none of it begins a session).
"""

from __future__ import annotations

import msgspec
import structlog

from app.config import Settings
from app.core.db import Database, UnitOfWork
from app.core.errors import UnprocessableError
from app.core.security import Passwords
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.domains.accounts.passwords import check_new_password
from app.domains.accounts.schemas import Email, RegisterIn

log = structlog.get_logger("app.accounts")


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


class Registration:
    def __init__(self, db: Database, settings: Settings, passwords: Passwords) -> None:
        self.settings = settings
        self.db = db
        self.passwords = passwords

    async def register(self, data: RegisterIn) -> User | None:
        """Create the account if the email is free; the caller's answer must not say which happened
        (review L1): the new user, or None when the email already had an account (nothing changed).
        Both paths hash the password and try one insert, so they cost the same. A weak password is
        refused (422 ``weak-password``) before the email is looked at, so that answer reveals nothing
        either."""
        check_new_password(data.password, production=self.settings.is_production)
        user = await self.insert_account(
            data.email.strip().lower(), data.password, data.display_name.strip(), UserRole.MEMBER
        )
        if user is None:
            log.info("registration_for_existing_email")
            return None
        log.info("user_registered", user_id=user.id)
        return user

    async def ensure_user(self, email: str, password: str, display_name: str, role: UserRole) -> User:
        """The account with this email, created with these details if it does not exist (seed); an
        existing account is returned unchanged, whatever its role, activity or password."""
        email = email.strip().lower()
        async with self.db.transaction() as uow:
            existing = await queries.get_user_by_email(uow.conn, email=email)
        if existing is not None:
            return existing
        user = await self.insert_account(email, password, display_name, role)
        if user is not None:
            return user
        async with self.db.read() as uow:  # created meanwhile
            return await self._by_email(uow, email)

    async def insert_account(
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
