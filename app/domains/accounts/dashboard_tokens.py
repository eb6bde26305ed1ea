"""The SAQ dashboard's sign-in session: a signed token in an ``HttpOnly`` cookie.

The token is a JWT signed like the API's access tokens (``app.core.security.AccessTokens``: the
app's ``SECRET_KEY``, ``JWT_ALGORITHM`` and ``JWT_ISSUER``, the algorithm pinned, every claim
required) but of its own audience and type (``saq-dashboard``, ``dashboard``): an API bearer token
put in the cookie is refused, and so is the cookie's value sent as a bearer token. Its claims:

- ``sub``: the user; ``fam``: the session's id, a session family of its own (revoked like any
  session: signing out, and ``AccountService.revoke_all`` on a password change, a deactivation or a
  demotion);
- ``exp``: absolute, ``DASHBOARD_SESSION_S`` after the sign-in (the session is never extended);
- ``pwd``: a keyed fingerprint of the user's password hash at the sign-in, so a password changed by
  any path (even one that revoked nothing) ends the session.

The browser holds only this token: never the password (HTTP Basic made it re-send the password with
every request until it quit, with no expiry and no way to sign out).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

import jwt
import msgspec
from litestar.datastructures import Cookie

from app.config import Settings
from app.core.errors import UnauthorizedError
from app.core.security import verify_jwt

DASHBOARD_ROOT = "/saq"
"""Where the dashboard is (``app.core.queues.build_saq_config``'s ``web_path``): the sign-in routes
and the cookie's ``Path`` live under it."""
SESSION_COOKIE = "saq_session"
DASHBOARD_AUDIENCE = "saq-dashboard"
DASHBOARD_TOKEN_TYPE = "dashboard"  # noqa: S105 - a claim value, not a secret
_FINGERPRINT_CONTEXT = b"saq-dashboard-password\x00"
SIGN_IN = (
    f"Sign in at {DASHBOARD_ROOT}/login, or send an administrator's access token as "
    "`Authorization: Bearer <token>`."
)
ADMINS_ONLY = "The job dashboard is for administrators."


def sign_in_required(detail: str = SIGN_IN) -> UnauthorizedError:
    """401 for the dashboard: no Basic challenge (a browser would prompt for the password)."""
    return UnauthorizedError(detail, headers={"WWW-Authenticate": 'Bearer realm="api"'})


class DashboardClaims(msgspec.Struct, frozen=True):
    sub: str
    exp: int
    iat: int
    jti: str
    iss: str
    aud: str
    typ: str
    fam: str
    pwd: str


class DashboardSession(msgspec.Struct, frozen=True):
    """A new sign-in: the cookie's value and how long it lasts."""

    token: str
    max_age_s: int


class DashboardTokens:
    def __init__(self, settings: Settings) -> None:
        self._key = settings.secret_key
        self._algorithm = settings.jwt_algorithm
        self._issuer = settings.jwt_issuer
        self.ttl_s = settings.dashboard_session_s

    def issue(self, user_id: int, family_id: uuid.UUID, password_hash: str) -> tuple[str, DashboardClaims]:
        now = int(time.time())
        claims = DashboardClaims(
            sub=str(user_id),
            exp=now + self.ttl_s,
            iat=now,
            jti=uuid.uuid4().hex,
            iss=self._issuer,
            aud=DASHBOARD_AUDIENCE,
            typ=DASHBOARD_TOKEN_TYPE,
            fam=str(family_id),
            pwd=self.password_fingerprint(password_hash),
        )
        token = jwt.encode(msgspec.structs.asdict(claims), self._key, algorithm=self._algorithm)
        return token, claims

    def verify(self, token: str) -> DashboardClaims:
        """The claims of a live dashboard token of ours; ``InvalidTokenError`` for anything else."""
        return verify_jwt(
            token,
            DashboardClaims,
            key=self._key,
            algorithm=self._algorithm,
            audience=DASHBOARD_AUDIENCE,
            issuer=self._issuer,
            token_type=DASHBOARD_TOKEN_TYPE,
        )

    def password_fingerprint(self, password_hash: str) -> str:
        """Keyed (the token's claims are readable): names the hash without revealing anything of it."""
        digest = hmac.new(
            self._key.encode(), _FINGERPRINT_CONTEXT + password_hash.encode(), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")

    def password_unchanged(self, claims: DashboardClaims, password_hash: str) -> bool:
        return hmac.compare_digest(claims.pwd, self.password_fingerprint(password_hash))


def session_cookie(settings: Settings, session: DashboardSession) -> Cookie:
    """``HttpOnly``, ``SameSite=Strict``, only under the dashboard, ``Secure`` but in development
    (served over plain HTTP on a developer's machine)."""
    return Cookie(
        key=SESSION_COOKIE,
        value=session.token,
        max_age=session.max_age_s,
        path=DASHBOARD_ROOT,
        secure=settings.app_env != "development",
        httponly=True,
        samesite="strict",
    )


def cleared_session_cookie(settings: Settings) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value="",
        max_age=0,
        expires=0,
        path=DASHBOARD_ROOT,
        secure=settings.app_env != "development",
        httponly=True,
        samesite="strict",
    )
