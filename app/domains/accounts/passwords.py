"""Passwords: the policy every new one must meet, and the check of one (throttled, rehashed).

``check_new_password`` is the one policy for every password set (registration, a password change,
``create-admin``); ``Credentials.check_credentials`` is the one check of an email and password
(a login, the dashboard's sign-in, a password change's current password), through the login throttle
(``throttle.py``), storing a hash made with outdated parameters again (``_rehash``).

Held by ``AccountService`` (``check_credentials`` delegates here) and given to the parts that check a
password (``sessions.py``, ``profile.py``); split out of ``services.py`` as a topic of its own.
"""

from __future__ import annotations

import structlog

from app.config import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD
from app.core.db import Database
from app.core.errors import UnauthorizedError, UnprocessableError
from app.core.security import Passwords, normal_password
from app.db import accounts as queries
from app.db.models import User
from app.domains.accounts.throttle import LoginThrottle

log = structlog.get_logger("app.accounts")

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
    sets them, so they stay usable there). Checked on the NFKC form that is hashed (``Passwords``):
    ten mathematical-alphabet a's are 'aaaaaaaaaa', a full-width default is the default."""
    typed, password = password, normal_password(password)  # what is hashed (NFKC may fold or grow it)
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(
            f"The password needs {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters."
        )
    if any(ord(character) < 0x20 or character == "\x7f" for character in typed + password):
        raise WeakPasswordError("The password must not contain control characters (U+0000 to U+001F, DEL).")
    public = {DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD} if production else set()
    if len(set(password)) < MIN_PASSWORD_DISTINCT or password in public:
        raise WeakPasswordError("The password is too easy to guess (a public default or too little variety).")


class Credentials:
    def __init__(self, db: Database, passwords: Passwords, throttle: LoginThrottle) -> None:
        self.db = db
        self.passwords = passwords
        self.throttle = throttle

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
            matched = await self.passwords.matched_form(user.password_hash if user else None, password)
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
        if self.passwords.needs_rehash(user.password_hash) or matched == "typed":
            return await self._rehash(user, password)  # (a hash of the password as typed: normalized)
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
