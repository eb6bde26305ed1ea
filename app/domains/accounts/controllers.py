"""HTTP for accounts: /api/auth (public + the caller's own account) and /api/admin/users."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, delete, get, patch, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from app.core.auth import Caller, requires_admin, requires_user
from app.core.errors import Problem
from app.core.gate import AUTHENTICATE_OPT
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.ratelimit import PER_SESSION_OPT_KEY
from app.core.routing import Controller
from app.core.types import IdPath
from app.db.models import UserRole
from app.domains.accounts.schemas import (
    AdminUserPatch,
    EraseMeIn,
    LoginIn,
    RefreshIn,
    RegisterIn,
    RegistrationAccepted,
    TokenPair,
    UpdateMeIn,
    UserCursor,
    UserOut,
)
from app.domains.accounts.services import AccountService

Accounts = NamedDependency[AccountService]

TOKENS_NOT_STORED = CacheControlHeader(no_store=True)
"""Answers carrying tokens must not be kept by any cache (RFC 6749 section 5.1)."""
ANONYMOUS = {AUTHENTICATE_OPT: False}
SIGNING_IN = {**ANONYMOUS, "rate_limit": "auth"}
"""Signing up and in, under the password-guessing limit: a bearer token sent along is ignored, so the
``auth`` limit stays keyed by the client's address (keyed by the token's user, every new account
bought another quota)."""
ROTATION = {**ANONYMOUS, "rate_limit": "default"}
"""A rotation guesses nothing (a refresh token is 256 random bits): it needs no password-guessing
limit, and under the ``auth`` one every session behind one address (an office's NAT) shared 20 a
minute and 200 an hour."""
OWN_ACCOUNT = {"rate_limit": "default", PER_SESSION_OPT_KEY: True}
"""The caller's own account (GET and PATCH /me) guesses nothing either, and its quota is each
session's own: under a quota keyed by the user, shared by all their sessions (``auth``, then
``default``), a thief's token spent it on GET /me and the owner's password change, which would sign
the thief out, answered 429 every minute. PATCH /me's check of the current password stays under the
login throttle (``AccountService.update_me``)."""
SIGNING_OUT = {"rate_limit": None}
"""Logging out is never refused for a quota: ending a session must always be possible. A refused token
is charged all the same (``app.core.gate.refused_token_policy``: ``default``, to the address)."""


WEAK_PASSWORD = ResponseSpec(
    Problem,
    description="`weak-password`: the new password is refused (its NFKC form under 10 or over 256 "
    "characters, fewer than 5 different characters, a control character, or in production a public "
    "default; a password sent outside 10-256 characters is a 400 naming the field)",
    media_type="application/problem+json",
)


ERASURE = (
    "Erasing an account removes its personal data and frees its email address for a new registration: "
    'the address, the name ("Deleted user") and the password are replaced, every session ends, the '
    "account leaves its projects (every invitation to its address is withdrawn) and forgets the GitHub "
    'users it tracked. Tasks, comments, files and orders stay, under "Deleted user". An account that owns '
    "a site is a 409 `account-still-owns` that changes nothing (delete the sites first). It cannot be "
    "undone."
)


class AuthController(Controller):
    path = "/api/auth"
    tags = ["accounts"]

    @post(
        "/register",
        status_code=HTTP_202_ACCEPTED,
        summary="Create an account",
        description="Always 202 with the same body, whether or not the email already had an account "
        "(registration does not reveal who has one; an existing account is left unchanged). The account "
        "is created only if the email was free: sign in with the chosen password to use it. Finding out "
        "by signing in is throttled like any login.",
        responses={
            **problems(400, 429, 503),
            202: ResponseSpec(RegistrationAccepted, description="Accepted (the same either way)"),
            422: WEAK_PASSWORD,
        },
        opt=SIGNING_IN,
    )
    async def register(self, data: JSONBody[RegisterIn], accounts: Accounts) -> RegistrationAccepted:
        await accounts.register(data)
        return RegistrationAccepted()

    @post(
        "/login",
        status_code=HTTP_200_OK,
        cache_control=TOKENS_NOT_STORED,
        summary="Exchange email and password for an access and a refresh token",
        description="The same 401 whether or not the email exists. Past LOGIN_MAX_FAILURES attempts "
        "for the account, from anywhere, each attempt waits its own turn (at least 1, 2, 4... seconds "
        "after the previous one, at most LOGIN_MAX_DELAY_S) before its password is checked, except from "
        "a network the account signed in from in the last 30 days. 429 with Retry-After for an address "
        "that failed too often for this account (LOGIN_MAX_FAILURES) or for any account "
        "(LOGIN_ADDRESS_MAX_FAILURES), or when the account's next turn is further away than "
        "LOGIN_MAX_DELAY_S (guesses arriving faster than the turns); 429 with Retry-After: 1 when such a "
        "limit is reached only with attempts still being checked (they may yet succeed). Each login "
        "begins a session; an account keeps at most SESSIONS_PER_USER_MAX live ones, so a login past it "
        "ends the least recently used (its refresh and access tokens are refused from then on, as after "
        "a logout).",
        responses=problems(400, 401, 429, 503),
        opt=SIGNING_IN,
    )
    async def login(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[LoginIn],
        accounts: Accounts,
    ) -> TokenPair:
        return await accounts.login(data.email, data.password, request.scope["state"].get("client_ip"))

    @post(
        "/refresh",
        status_code=HTTP_200_OK,
        cache_control=TOKENS_NOT_STORED,
        summary="Rotate a refresh token",
        description="Spends the refresh token and returns a new pair. Re-using a spent token (even once "
        "it has expired) revokes the whole session (its family and every access token issued from it): 401, "
        "as does any revocation of the session (logout, a password change, a change of role or "
        "activity) that the rotation raced. One exception, for a client racing itself (two tabs "
        "refreshing with one token): the token rotated less than REFRESH_REUSE_GRACE_S seconds ago, "
        "whose successor has not been used yet, is answered 409 `refresh-superseded` and the session "
        "is kept; the client should use the tokens its other request received (or sign in again if "
        "it has none). Reusing an older token, or one whose successor was used, revokes the session. "
        "A session rotates at most REFRESH_ROTATIONS_PER_HOUR times within an hour: past them 429 "
        "`refresh-rate-limited` with Retry-After (until the oldest of those rotations is an hour old); the "
        "token is neither spent nor revoked, so present the same one again after that wait.",
        responses={
            **problems(400, 401, 429, 503),
            409: ResponseSpec(
                Problem,
                description="`refresh-superseded`: rotated a moment ago by another request of this client; "
                "use the tokens that request received (nothing was revoked)",
                media_type="application/problem+json",
            ),
            429: ResponseSpec(
                Problem,
                description="Rate limit exceeded, or `refresh-rate-limited`: the session rotated "
                "REFRESH_ROTATIONS_PER_HOUR times within the hour (the token is kept: present it again); "
                "see Retry-After",
                media_type="application/problem+json",
            ),
        },
        opt=ROTATION,
    )
    async def refresh_tokens(self, data: JSONBody[RefreshIn], accounts: Accounts) -> TokenPair:
        return await accounts.refresh(data.refresh_token)

    @post(
        "/logout",
        status_code=HTTP_204_NO_CONTENT,
        guards=[requires_user],
        summary="Revoke the current session",
        description="Never refused for a rate limit with a valid token. A refused token (401) spends "
        "the client address's `default` quota, as on every route that reads one; past it, 429 instead.",
        security=BEARER,
        responses={
            **problems(401, 503),
            429: ResponseSpec(
                Problem,
                description="Only for a refused token: its address spent its `default` quota on refused "
                "tokens and anonymous requests; see Retry-After",
                media_type="application/problem+json",
            ),
        },
        opt=SIGNING_OUT,
    )
    async def logout(self, current_user: Caller, accounts: Accounts) -> None:
        await accounts.logout(current_user)

    @get(
        "/me",
        guards=[requires_user],
        summary="The caller's account",
        security=BEARER,
        responses=problems(401, 429),
        opt=OWN_ACCOUNT,
    )
    async def get_me(self, current_user: Caller, accounts: Accounts) -> UserOut:
        return UserOut.from_row(await accounts.get_user(current_user.id))

    @patch(
        "/me",
        guards=[requires_user],
        summary="Change the caller's name or password",
        description="A new password needs `current_password`; it revokes the caller's other sessions. "
        "A wrong `current_password` counts as a failed sign-in (same throttle as login: 429 when "
        "this address failed too often for the account). A change whose `current_password` was right "
        "when checked but was replaced by another change before this one could commit (two tabs, or "
        "someone else who knows it) is refused with 409 `password-changed` and changes nothing; a "
        "change by a session revoked meanwhile is refused with 401.",
        security=BEARER,
        responses={
            **problems(400, 401, 403, 429),
            409: ResponseSpec(
                Problem,
                description="`password-changed`: the password was changed meanwhile; nothing was changed",
                media_type="application/problem+json",
            ),
            422: WEAK_PASSWORD,
        },
        opt=OWN_ACCOUNT,
    )
    async def update_me(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[UpdateMeIn],
        current_user: Caller,
        accounts: Accounts,
    ) -> UserOut:
        client_ip = request.scope["state"].get("client_ip")
        return UserOut.from_row(await accounts.update_me(current_user, data, client_ip))

    @post(
        "/me/erase",
        status_code=HTTP_204_NO_CONTENT,
        guards=[requires_user],
        summary="Erase the caller's account",
        description=ERASURE
        + " The last active owner of a project is a 409 `account-still-owns` too: make another member an "
        "owner, or delete the project, first. Send `current_password`: a wrong one is a 403 and counts as a "
        "failed sign-in (same throttle as login). An administrator's account is erased by another "
        "administrator (409).",
        security=BEARER,
        responses=problems(400, 401, 403, 409, 429),
        opt=OWN_ACCOUNT,
    )
    async def erase_me(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[EraseMeIn],
        current_user: Caller,
        accounts: Accounts,
    ) -> None:
        client_ip = request.scope["state"].get("client_ip")
        await accounts.erase_me(current_user, data.current_password, client_ip)


class AdminUsersController(Controller):
    path = "/api/admin/users"
    tags = ["admin"]
    guards = [requires_admin]
    security = BEARER

    @get("/", summary="List users", responses=problems(400, 401, 403, 429))
    async def list_users(
        self,
        accounts: Accounts,
        role: Annotated[UserRole | None, QueryParameter(description="Only this role")] = None,
        active: Annotated[bool | None, QueryParameter(description="Only active (true) or inactive")] = None,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[UserOut]:
        after_id = decode_cursor(cursor, UserCursor).after_id if cursor else 0
        users = await accounts.list_users(role=role, is_active=active, after_id=after_id, row_limit=limit + 1)
        return paginate(users, limit, lambda user: UserCursor(after_id=user.id), UserOut.from_row)

    @patch(
        "/{user_id:int}",
        summary="Change a user's role or active flag",
        description="Deactivation or a role change revokes the user's sessions at once.",
        responses=problems(400, 401, 403, 404, 409, 429),
    )
    async def update_user(
        self,
        user_id: IdPath,
        data: JSONBody[AdminUserPatch],
        current_user: Caller,
        accounts: Accounts,
    ) -> UserOut:
        return UserOut.from_row(await accounts.admin_update(current_user, user_id, data))

    @delete(
        "/{user_id:int}",
        summary="Erase a user's account",
        description=ERASURE
        + " A project whose last active owner it is goes to an active member (editors first, then the "
        "longest a member), or is deleted when nobody active is left: an address registered by someone who "
        "does not hold it is reclaimed this way. Erasing an account erased already changes nothing (204); "
        "an erased account cannot be changed (409 on PATCH). Administrators do not erase their own "
        "account (409).",
        responses=problems(400, 401, 403, 404, 409, 429),
    )
    async def erase_user(self, user_id: IdPath, current_user: Caller, accounts: Accounts) -> None:
        await accounts.erase_user(current_user, user_id)
