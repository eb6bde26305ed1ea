"""HTTP for the SAQ dashboard's sign-in: ``/saq/login`` (a page and its form) and ``/saq/logout``.

A browser signs in with an administrator's email and password and receives a session cookie
(``dashboard_tokens``); the dashboard (``app.core.dashboard``, guarded by ``requires_dashboard_admin``)
sends an anonymous page request here. Both ``POST`` routes are under ``/saq``, so the route layer
refuses them from another site (``app.core.gate``'s same-origin rule: no login CSRF, no forced
sign-out); the cookie is ``SameSite=Strict`` as well.

The page is ours: SAQ's stylesheet and the dashboard's icon, no script at all, under a strict
Content-Security-Policy, never stored (``no-store``). Like the dashboard, these routes are not in the
API's OpenAPI document.

A sign-in whose body is not the form (another content type, such as JSON, or fields the form does not
have, or values past its limits) is answered 400 and the page, like a wrong password's 401: never the
API's validation problem, whose detail named what it could not read. Litestar reads any body as
URL-encoded here, so a JSON body holding an ``=`` came back as an unknown field named after the body's
text, the password with it.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import Body
from litestar.response import Redirect, Response
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_303_SEE_OTHER,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from app.core.dashboard import FAVICON_NAME
from app.core.errors import (
    DEPENDENCY_FAILURES,
    ForbiddenError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
    handle_dependency_down,
)
from app.core.gate import AUTHENTICATE_OPT
from app.core.routing import Controller
from app.domains.accounts.dashboard_tokens import (
    ADMINS_ONLY,
    DASHBOARD_ROOT,
    SESSION_COOKIE,
    cleared_session_cookie,
    session_cookie,
)
from app.domains.accounts.passwords import BAD_CREDENTIALS
from app.domains.accounts.schemas import DashboardSignInForm
from app.domains.accounts.services import AccountService

Accounts = NamedDependency[AccountService]
SignInForm = Annotated[DashboardSignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)]

SIGN_IN_PATH = f"{DASHBOARD_ROOT}/login"
SIGN_IN_CSP = "; ".join(
    [
        "default-src 'none'",
        "style-src 'self'",
        "img-src 'self' data:",  # Pico's icons are data: URIs
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
"""The dashboard page's policy (``app.core.dashboard``) without any script."""
_NO_STORE = CacheControlHeader(no_store=True)
FORM_MEDIA_TYPE = RequestEncodingType.URL_ENCODED.value
"""What the page's form sends (it declares no ``enctype``); any other body is not a sign-in."""
UNREADABLE_FORM = "The sign-in could not be read; enter your email and password in this form."
UNAVAILABLE = "Sign-in is briefly unavailable; try again shortly."
"""The page's word for any 503 of the sign-in (rate limits or the login throttle failing closed with
Valkey down, the password checks all busy, the database failing): a person needs when, not which
service."""


def sign_in_page(message: str | None = None, email: str = "") -> str:
    alert = f'\n            <p role="alert"><strong>{html.escape(message)}</strong></p>' if message else ""
    return f"""<!DOCTYPE html>
<html lang="en">
    <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <link rel="stylesheet" type="text/css" href="{DASHBOARD_ROOT}/static/pico.min.css.gz">
        <link rel="icon" type="image/svg+xml" href="{DASHBOARD_ROOT}/static/{FAVICON_NAME}">
        <title>Sign in · SAQ</title>
    </head>
    <body>
        <main class="container">
            <h1>Job dashboard</h1>
            <p>Sign in with an administrator's email and password.</p>{alert}
            <form method="post" action="{SIGN_IN_PATH}">
                <label for="email">Email
                    <input id="email" name="email" type="email" autocomplete="username" maxlength="320"
                        required autofocus value="{html.escape(email)}">
                </label>
                <label for="password">Password
                    <input id="password" name="password" type="password" autocomplete="current-password"
                        maxlength="256" required>
                </label>
                <button type="submit">Sign in</button>
            </form>
        </main>
    </body>
</html>
"""


def _page(
    status: int, message: str | None = None, email: str = "", headers: dict[str, str] | None = None
) -> Response[str]:
    return Response(
        sign_in_page(message, email),
        status_code=status,
        media_type="text/html",
        headers={**(headers or {}), "Content-Security-Policy": SIGN_IN_CSP},
    )


def _unreadable_form(request: Request[Any, Any, Any], exc: ValidationException) -> Response[str]:
    """A body Litestar could not read as the form: 400 and the page, empty. Nothing of the body is
    repeated (its fields, named after the body's text when it was not URL-encoded, may hold the
    password), and the answer is never stored (an exception handler's answer does not get the
    handler's ``Cache-Control``)."""
    return _page(
        HTTP_400_BAD_REQUEST,
        UNREADABLE_FORM,
        headers={_NO_STORE.HEADER_NAME: _NO_STORE.to_header()},
    )


def _rate_limited(request: Request[Any, Any, Any], exc: TooManyRequestsError) -> Response[str]:
    """The route layer's ``auth`` rate limit, spent by the address: 429 and the page (as the login
    throttle's 429), with its ``Retry-After`` and ``RateLimit`` headers, never stored."""
    return _page(
        HTTP_429_TOO_MANY_REQUESTS,
        exc.detail,
        headers={**exc.headers, _NO_STORE.HEADER_NAME: _NO_STORE.to_header()},
    )


def _unavailable(request: Request[Any, Any, Any], exc: ServiceUnavailableError) -> Response[str]:
    """A 503 of the sign-in: the route layer's ``auth`` limit failing closed with Valkey down (before
    the handler runs), or the login throttle's, or the password checks' bound. 503 and the page with
    the answer's ``Retry-After``, never stored: the API's problem+json was no page for a browser."""
    return _page(
        HTTP_503_SERVICE_UNAVAILABLE,
        UNAVAILABLE,
        headers={**exc.headers, _NO_STORE.HEADER_NAME: _NO_STORE.to_header()},
    )


def _backing_service_failed(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    """The database or Valkey failing during the sign-in: answered, logged and counted by the app's own
    handler (503 and its ``Retry-After``), and shown to the browser as the page, never stored."""
    answer = handle_dependency_down(request, exc)
    return _page(
        answer.status_code or HTTP_503_SERVICE_UNAVAILABLE,
        UNAVAILABLE,
        headers={**answer.headers, _NO_STORE.HEADER_NAME: _NO_STORE.to_header()},
    )


class DashboardSignInController(Controller):
    """The sign-in page, the sign-in and the sign-out of the SAQ dashboard."""

    path = DASHBOARD_ROOT
    include_in_schema = False
    cache_control = _NO_STORE
    opt = {AUTHENTICATE_OPT: False}
    """A bearer token sent along is ignored: the page and the form are for browsers."""

    @get(
        "/login",
        media_type="text/html",
        sync_to_thread=False,
        summary="The dashboard's sign-in page",
        description="A form for an administrator's email and password (no script; `no-store`).",
    )
    def sign_in_form(self) -> Response[str]:
        return _page(HTTP_200_OK)

    @post(
        "/login",
        media_type="text/html",
        status_code=HTTP_303_SEE_OTHER,
        opt={"rate_limit": "auth"},
        summary="Sign in to the dashboard",
        description="Form-encoded `email` and `password`, from the dashboard's own origin only (403 "
        "problem otherwise). An active administrator: 303 to the dashboard with the session cookie "
        "(`HttpOnly`, `SameSite=Strict`, `Path=/saq`, `Secure` but in development, for "
        "DASHBOARD_SESSION_S). Wrong credentials: 401 and the page (never saying which was wrong; "
        "throttled and rate-limited (`auth`) like `POST /api/auth/login`, 429 and the page with "
        "`Retry-After`); a member: 403 "
        "and the page. A body that is not the form (another content type, unknown fields, values past "
        "the form's limits): 400 and the page, repeating nothing that was sent. Sign-in unavailable "
        "(Valkey down with `RATE_LIMIT_AUTH_FAIL_CLOSED`, every password check busy, the database "
        "failing): 503 and the page with `Retry-After`.",
        exception_handlers={
            **dict.fromkeys(DEPENDENCY_FAILURES, _backing_service_failed),
            ValidationException: _unreadable_form,
            TooManyRequestsError: _rate_limited,
            ServiceUnavailableError: _unavailable,
        },
    )
    async def sign_in(
        self, request: Request[Any, Any, Any], data: SignInForm, accounts: Accounts
    ) -> Response[str] | Redirect:
        if request.content_type[0] != FORM_MEDIA_TYPE:
            return _page(HTTP_400_BAD_REQUEST, UNREADABLE_FORM)
        client_ip = request.scope["state"].get("client_ip")
        try:
            session = await accounts.start_dashboard_session(data.email, data.password, client_ip)
        except UnauthorizedError as refused:
            # Its challenge (RFC 9110 15.5.2) is the dashboard's other credential, an admin's bearer token.
            return _page(HTTP_401_UNAUTHORIZED, BAD_CREDENTIALS, data.email, headers=refused.headers)
        except ForbiddenError:
            return _page(HTTP_403_FORBIDDEN, ADMINS_ONLY, data.email)
        except TooManyRequestsError as exc:
            return _page(HTTP_429_TOO_MANY_REQUESTS, exc.detail, data.email, headers=exc.headers)
        return Redirect(
            f"{DASHBOARD_ROOT}/",
            status_code=HTTP_303_SEE_OTHER,
            cookies=[session_cookie(accounts.settings, session)],
        )

    @post(
        "/logout",
        status_code=HTTP_303_SEE_OTHER,
        summary="Sign out of the dashboard",
        description="Revokes the session of the cookie (a copy of it is refused from now on), clears "
        "the cookie and answers 303 to the sign-in page; from the dashboard's own origin only.",
    )
    async def sign_out(self, request: Request[Any, Any, Any], accounts: Accounts) -> Redirect:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await accounts.end_dashboard_session(token)
        return Redirect(
            SIGN_IN_PATH,
            status_code=HTTP_303_SEE_OTHER,
            cookies=[cleared_session_cookie(accounts.settings)],
        )
