"""Password hashing (argon2id) and access tokens (JWT, RFC 8725 practices).

Hashing runs in worker threads of its own: argon2 is deliberately slow (tens of ms) and releases the
GIL, so the event loop keeps serving other requests meanwhile. Not in the loop's default executor: a
burst of sign-ins queued there delayed whatever else needs it (the loop's ``getaddrinfo``, so every
new database or Valkey connection to a named host). The work waiting is bounded
(``PASSWORD_CHECKS_MAX``): past it a request is refused at once (503) rather than waiting behind a
queue that only grows while the burst lasts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
import unicodedata
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol, TypeVar, cast

import jwt
import msgspec
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.config import Settings
from app.core.errors import ServiceUnavailableError

ACCESS_TOKEN_TYPE = "access"  # noqa: S105 - a claim value, not a secret
R = TypeVar("R")

TOKEN_LEEWAY_S = 5
"""Clock skew tolerated on ``exp`` (seconds): a token is valid while ``exp > now - leeway``."""


MatchedForm = Literal["normal", "typed"]


def normal_password(password: str) -> str:
    """NFKC, as NIST SP 800-63B asks: the same password typed on another keyboard or input method
    (composed é or e and a combining accent, a full-width digit) is the same password."""
    return unicodedata.normalize("NFKC", password)


class Passwords:
    """argon2id with the OWASP parameters from settings; a fixed dummy hash for unknown accounts."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            type=Type.ID,
        )
        # Verifying against this costs the same as against a real hash, so a login for an unknown
        # email takes as long as one with a wrong password.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        # More threads than CPUs would only share them; threads start on first use (after the fork).
        self._threads = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="argon2")
        self._checks_max = settings.password_checks_max
        self._checks = 0

    async def hash(self, password: str) -> str:
        """The hash of ``password`` in its normal form (``normal_password``)."""
        return await self._run(self._hasher.hash, normal_password(password))

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with ``password_hash=None`` spends the same time and fails."""
        return await self.matched_form(password_hash, password) is not None

    async def matched_form(self, password_hash: str | None, password: str) -> MatchedForm | None:
        """Which form of ``password`` matches (``verify``): ``"normal"``, or ``"typed"`` for a hash
        made of the password as typed, before passwords were normalized (to be hashed again).

        A hash made with other parameters than the current ones (they changed since; it is rehashed at
        the next login) is checked together with the dummy hash, in two threads, when a check's place
        is free for it: a wrong password then costs at least what it costs for an unknown email.
        Checked alone, an account that had not signed in since the parameters were raised answered a
        wrong password several times faster than an unknown email did: one request told that the
        email had an account."""
        if password_hash is None:
            await self._check(self._dummy_hash, password)
            return None
        if not self.needs_rehash(password_hash):
            return await self._check(password_hash, password)
        matched, _ = await asyncio.gather(self._check(password_hash, password), self._as_now(password))
        return matched

    async def _as_now(self, password: str) -> None:
        """The cost of a check with the current parameters, when a place is free (never a 503)."""
        if self._has_room():
            await self._check(self._dummy_hash, password)

    async def _check(self, password_hash: str, password: str) -> MatchedForm | None:
        """The form of ``password`` that matches: its normal form or, for a hash made before passwords
        were normalized, the form as typed (checked twice only for a password whose normal form
        differs, the dummy hash's check too, so an unknown email costs what a wrong password costs)."""
        normal = normal_password(password)
        if await self._check_one(password_hash, normal):
            return "normal"
        if normal != password and await self._check_one(password_hash, password):
            return "typed"
        return None

    async def _check_one(self, password_hash: str, password: str) -> bool:
        try:
            return await self._run(self._hasher.verify, password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def _run(self, work: Callable[..., R], *args: str) -> R:
        """``work(*args)`` in a password thread; 503 when ``PASSWORD_CHECKS_MAX`` are running or waiting
        already. A request cancelled meanwhile frees its place only when its work ends: the thread's
        work cannot be taken back, and the bound is on the work."""
        if not self._has_room():
            raise ServiceUnavailableError(
                "Too many passwords are being checked; try again in a moment.", headers={"Retry-After": "1"}
            )
        self._checks += 1
        future = asyncio.get_running_loop().run_in_executor(self._threads, work, *args)
        future.add_done_callback(self._check_done)
        return await asyncio.shield(future)

    def _has_room(self) -> bool:
        return self._checks < self._checks_max

    def _check_done(self, _: object) -> None:
        self._checks -= 1

    async def close(self) -> None:
        """Drop the work still waiting and join the threads (their running work done first): the
        ``serve`` command seeds in its main process before the server forks, and no thread may be
        alive at a fork."""
        await asyncio.to_thread(self._threads.shutdown, wait=True, cancel_futures=True)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the current ones (not for one argon2
        cannot read: it never matches, so it is never rehashed)."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return False


class AccessClaims(msgspec.Struct, frozen=True):
    sub: str
    exp: int
    iat: int
    jti: str
    iss: str
    aud: str
    typ: str
    fam: str
    role: str


class InvalidTokenError(Exception):
    """The bearer token is not a valid access token (the reason is for logs only)."""


class AccessTokens:
    """Short-lived HS256 JWTs. Verification pins the algorithm and checks every claim."""

    def __init__(self, settings: Settings) -> None:
        self._key = settings.secret_key
        self._algorithm = settings.jwt_algorithm
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.ttl_s = settings.access_token_ttl_s

    def issue(self, user_id: int, role: str, family_id: uuid.UUID) -> tuple[str, AccessClaims]:
        now = int(time.time())
        claims = AccessClaims(
            sub=str(user_id),
            exp=now + self.ttl_s,
            iat=now,
            jti=uuid.uuid4().hex,
            iss=self._issuer,
            aud=self._audience,
            typ=ACCESS_TOKEN_TYPE,
            fam=str(family_id),
            role=role,
        )
        token = jwt.encode(msgspec.structs.asdict(claims), self._key, algorithm=self._algorithm)
        return token, claims

    def verify(self, token: str) -> AccessClaims:
        return verify_jwt(
            token,
            AccessClaims,
            key=self._key,
            algorithm=self._algorithm,
            audience=self._audience,
            issuer=self._issuer,
            token_type=ACCESS_TOKEN_TYPE,
        )


class Claims(Protocol):
    """What every token of ours carries besides its own claims (``verify_jwt`` checks them)."""

    @property
    def sub(self) -> str: ...
    @property
    def exp(self) -> int: ...
    @property
    def iat(self) -> int: ...
    @property
    def typ(self) -> str: ...


C = TypeVar("C", bound=Claims)


def verify_jwt(
    token: str, kind: type[C], *, key: str, algorithm: str, audience: str, issuer: str, token_type: str
) -> C:
    """The claims of a token of ours (``InvalidTokenError`` for anything else): the algorithm pinned,
    the signature, audience, issuer and expiry verified, every field of ``kind`` required, then the
    type, the times' order and a decimal ``sub`` checked. One verification for the API's access
    tokens and the dashboard's sessions, which differ by audience, type and claims."""
    required = [field.name for field in msgspec.structs.fields(cast("type[msgspec.Struct]", kind))]
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            leeway=TOKEN_LEEWAY_S,
            options={"require": required, "verify_signature": True},
        )
        claims = msgspec.convert(payload, kind)
    except (jwt.PyJWTError, msgspec.ValidationError) as exc:
        raise InvalidTokenError(type(exc).__name__) from exc
    if (
        claims.typ != token_type
        or claims.iat > claims.exp
        or not (claims.sub.isascii() and claims.sub.isdecimal())
    ):
        raise InvalidTokenError("wrong token type or shape")
    return claims


def new_refresh_token() -> tuple[str, bytes]:
    """An opaque refresh secret for the client and the SHA-256 digest we store instead.

    A fast hash is right here: the secret has 256 bits of entropy, so nothing can be guessed offline.
    """
    token = secrets.token_urlsafe(32)
    return token, refresh_token_digest(token)


def refresh_token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def keyed_digest(secret_key: str, kind: str, value: str) -> str:
    """A name for ``value`` (an email, a client address) in a store others may read (Valkey's keys:
    a dump, a replica, ``MONITOR``): keyed by ``SECRET_KEY``, so the name cannot be matched against
    candidate values. An unkeyed hash could: every IPv4 address is a few hours of hashing."""
    return hmac.new(secret_key.encode(), f"{kind}\n{value}".encode(), hashlib.sha256).hexdigest()[:32]
