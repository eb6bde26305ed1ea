"""The SAQ dashboard's sign-in: a session cookie instead of HTTP Basic.

A browser signs in at ``/saq/login`` with an administrator's email and password and holds a signed
session token (``app.domains.accounts.dashboard_tokens``), never the password: the session ends at
DASHBOARD_SESSION_S, at sign-out (revoked: a copy of the cookie is dead too), and at once on a
password change, a deactivation or a demotion. Scripts keep using an admin's bearer token. An
anonymous page request is redirected to the sign-in page; the JSON API answers a 401 problem with no
Basic challenge (a browser would prompt for the password).

The test client speaks plain HTTP and the cookie is ``Secure`` (``APP_ENV=test``), so the client's
cookie jar never sends it: each request here carries the cookie it means (``with_session``).
"""

from __future__ import annotations

import time
from html.parser import HTMLParser
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.security import Passwords
from app.db.models import User, UserRole
from app.domains.accounts.dashboard_tokens import (
    DASHBOARD_AUDIENCE,
    SESSION_COOKIE,
    DashboardSession,
    session_cookie,
)
from app.domains.accounts.services import AccountService
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    SAME_ORIGIN,
    Client,
    assert_problem,
    basic,
    bearer,
    create_user,
    login,
    mint_headers,
    serve_in_loop,
    session_of,
    sign_in,
    sign_in_to_dashboard,
    with_session,
)

PAGES = ["/saq/", "/saq/queues/default", "/saq/queues/default/jobs/some-job"]
API = "/saq/api/queues"
NEW_PASSWORD = "the admin's brand new passphrase"
CROSS_SITE = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


@pytest.fixture
async def admin(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash, role=UserRole.ADMIN)


@pytest.fixture
async def other_admin(db: AsyncConnection[Any]) -> User:
    return await create_user(db, role=UserRole.ADMIN)


# -- helpers (signing in: ``tests.factories.sign_in_to_dashboard``) ---------------------------------------


def cookie_attributes(response: httpx.Response) -> dict[str, str]:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}=")]
    assert len(headers) == 1, headers
    attributes = {}
    for part in headers[0].split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value
    return attributes


def headers_of(api: Client, user: User) -> dict[str, str]:
    """A minted bearer token for ``user`` (no login: the login is not what is tested here)."""
    app: Litestar = api.app
    return mint_headers(app, user.id, user.role)


async def assert_signed_out(api: Client, headers: dict[str, str]) -> None:
    """The page sends the browser to the sign-in page; the JSON API answers 401 (no Basic prompt)."""
    for page in PAGES:
        response = await api.get(page, headers=headers, follow_redirects=False)
        assert response.status_code == 303, (page, response.status_code, response.text)
        assert response.headers["location"] == "/saq/login"
        assert response.headers["cache-control"] == "no-store"
    refused = await api.get(API, headers=headers)
    assert_problem(refused, 401, "unauthorized")
    assert "basic" not in refused.headers.get("www-authenticate", "").lower()


async def assert_signed_in(api: Client, headers: dict[str, str]) -> None:
    for path in (*PAGES[:2], API):
        response = await api.get(path, headers=headers, follow_redirects=False)
        assert response.status_code == 200, (path, response.status_code, response.text)


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def forged(settings: Settings, claims: dict[str, Any], **changes: Any) -> str:
    """The token with ``changes`` to its claims, signed with the app's key (as the app signs)."""
    return jwt.encode({**claims, **changes}, settings.secret_key, algorithm=settings.jwt_algorithm)


# -- the sign-in page -------------------------------------------------------------------------------------


class _Resources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def test_the_sign_in_page_is_ours_strict_and_never_stored(api: Client) -> None:
    response = await api.get("/saq/login")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    policy = response.headers["content-security-policy"]
    for directive in (
        "default-src 'none'",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in policy, policy
    assert "script-src" not in policy and "unsafe" not in policy
    parser = _Resources()
    parser.feed(response.text)
    tags = dict(parser.tags)
    assert "script" not in tags
    links = [(attrs["rel"], attrs["href"]) for tag, attrs in parser.tags if tag == "link"]
    assert links == [("stylesheet", "/saq/static/pico.min.css.gz"), ("icon", "/saq/static/favicon.svg")]
    assert tags["form"] == {"method": "post", "action": "/saq/login"}
    inputs = {attrs["name"]: attrs["type"] for tag, attrs in parser.tags if tag == "input"}
    assert inputs == {"email": "email", "password": "password"}
    for _, href in links:
        assert (await api.get(href)).status_code == 200, href
    icon = await api.get("/saq/static/favicon.svg")
    assert icon.headers["content-type"] == "image/svg+xml"
    assert b"<script" not in icon.content and b"http" not in icon.content.replace(b"http://www.w3.org", b"")


# -- anonymous ------------------------------------------------------------------------------------------


async def test_an_anonymous_browser_is_sent_to_the_sign_in_page_and_the_api_is_401(api: Client) -> None:
    await assert_signed_out(api, {})
    bare = await api.get("/saq", follow_redirects=False)
    assert (bare.status_code, bare.headers["location"]) == (303, "/saq/login")


async def test_basic_credentials_open_nothing_any_more(api: Client, admin: User) -> None:
    await assert_signed_out(api, basic(admin.email, PASSWORD))


# -- signing in -----------------------------------------------------------------------------------------


async def test_an_admin_signs_in_with_a_strict_session_cookie(
    api: Client, admin: User, settings: Settings
) -> None:
    response = await sign_in(api, admin.email.upper(), PASSWORD)  # the email is case-insensitive
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/saq/"
    assert response.headers["cache-control"] == "no-store"
    attributes = cookie_attributes(response)
    assert {"httponly", "secure"} <= attributes.keys()  # Secure: APP_ENV is not development
    assert attributes["samesite"].lower() == "strict"
    assert attributes["path"] == "/saq"
    assert int(attributes["max-age"]) == settings.dashboard_session_s == 8 * 3600
    token = session_of(response)
    assert PASSWORD not in token and admin.email not in token
    claims = claims_of(token)
    assert claims["aud"] == DASHBOARD_AUDIENCE
    assert claims["exp"] - claims["iat"] == settings.dashboard_session_s
    assert admin.password_hash not in str(claims)
    await assert_signed_in(api, with_session(token))


def test_the_cookie_is_secure_except_in_development(settings: Settings) -> None:
    session = DashboardSession(token="t", max_age_s=60)
    assert session_cookie(settings, session).secure
    production = msgspec.structs.replace(settings, app_env="production")
    assert session_cookie(production, session).secure
    development = msgspec.structs.replace(settings, app_env="development")
    cookie = session_cookie(development, session)
    assert not cookie.secure
    assert (cookie.httponly, cookie.samesite, cookie.path, cookie.max_age) == (True, "strict", "/saq", 60)


async def test_polling_costs_no_password_hash(
    api: Client, admin: User, argon2_verifications: list[str]
) -> None:
    headers = await sign_in_to_dashboard(api, admin.email)
    assert argon2_verifications == [admin.password_hash]
    for _ in range(3):
        await assert_signed_in(api, headers)
    assert argon2_verifications == [admin.password_hash]


async def test_a_member_gets_the_page_again_with_403(api: Client, member: User) -> None:
    response = await sign_in(api, member.email)
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "for administrators" in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


@pytest.mark.parametrize("who", ["wrong password", "unknown email"])
async def test_wrong_credentials_get_the_page_again_with_401(api: Client, admin: User, who: str) -> None:
    email, password = (
        (admin.email, "not the password") if who == "wrong password" else ("nobody@example.com", PASSWORD)
    )
    response = await sign_in(api, email, password)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "Invalid email or password." in response.text  # never which of the two
    assert "set-cookie" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    assert "content-security-policy" in response.headers


async def test_the_login_throttle_applies_to_the_dashboards_sign_in(
    api: Client, admin: User, settings: Settings
) -> None:
    """Wrong passwords from one address refuse that address (429 and the page), even with the right
    password next; the admin signs in from another address."""
    attacker = {"x-test-peer": "203.0.113.66"}
    for _ in range(settings.login_max_failures):
        assert (await sign_in(api, admin.email, "wrong", attacker)).status_code == 401
    refused = await sign_in(api, admin.email, PASSWORD, attacker)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["content-type"].startswith("text/html")
    assert "set-cookie" not in refused.headers
    elsewhere = await sign_in(api, admin.email, PASSWORD, {"x-test-peer": "198.51.100.78"})
    assert elsewhere.status_code == 303, elsewhere.text


@pytest.mark.parametrize(
    "headers",
    [
        CROSS_SITE,
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver.local:8080"},
        {"Origin": "http://["},
        {"Origin": "https://[::1"},
    ],
    ids=["cross-site", "sibling-site", "foreign-origin", "opaque-origin", "other-port", "bad-ipv6", "ipv6"],
)
async def test_a_cross_site_sign_in_is_refused(api: Client, admin: User, headers: dict[str, str]) -> None:
    """Login CSRF: another site must not sign the browser in (to an account of its choosing)."""
    response = await api.post(
        "/saq/login",
        data={"email": admin.email, "password": PASSWORD},
        headers=headers,
        follow_redirects=False,
    )
    assert_problem(response, 403, "forbidden")
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("origin", ["http://testserver.local", "HTTP://TestServer.Local"])
async def test_a_browser_sending_only_its_origin_signs_in(api: Client, admin: User, origin: str) -> None:
    """Without ``Sec-Fetch-Site`` (older browsers), an ``Origin`` naming this host is ours (any case)."""
    response = await api.post(
        "/saq/login",
        data={"email": admin.email, "password": PASSWORD},
        headers={"Origin": origin},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


# -- the session ends ---------------------------------------------------------------------------------


async def test_a_session_past_its_expiry_is_over(api: Client, admin: User, settings: Settings) -> None:
    token = session_of(await sign_in(api, admin.email))
    claims = claims_of(token)
    now = int(time.time())
    # The forgery is accepted while unexpired (the app's key), so it is the expiry that refuses it.
    await assert_signed_in(api, with_session(forged(settings, claims, exp=now + 60)))
    await assert_signed_out(api, with_session(forged(settings, claims, iat=now - 3600, exp=now - 60)))


async def test_signing_out_revokes_the_session(api: Client, admin: User) -> None:
    """The review's finding: the dashboard outlived everything. Now signing out ends it, and a copy of
    the cookie replayed afterwards is refused too."""
    token = session_of(await sign_in(api, admin.email))
    await assert_signed_in(api, with_session(token))
    out = await api.post("/saq/logout", headers=with_session(token, SAME_ORIGIN), follow_redirects=False)
    assert out.status_code == 303, out.text
    assert out.headers["location"] == "/saq/login"
    cleared = cookie_attributes(out)
    assert int(cleared["max-age"]) == 0 and cleared["path"] == "/saq"
    assert session_of(out) in ("", '""')
    await assert_signed_out(api, with_session(token))
    again = await api.post("/saq/logout", headers=with_session(token, SAME_ORIGIN), follow_redirects=False)
    assert again.status_code == 303  # signing out twice (or without a session) is fine


async def test_a_cross_site_sign_out_is_refused(api: Client, admin: User) -> None:
    token = session_of(await sign_in(api, admin.email))
    response = await api.post("/saq/logout", headers=with_session(token, CROSS_SITE), follow_redirects=False)
    assert_problem(response, 403, "forbidden")
    await assert_signed_in(api, with_session(token))


async def test_a_password_change_ends_the_session(api: Client, admin: User) -> None:
    headers = await sign_in_to_dashboard(api, admin.email)
    pair = await login(api, admin.email)
    changed = await api.patch(
        "/api/auth/me",
        json={"new_password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=bearer(pair["access_token"]),
    )
    assert changed.status_code == 200, changed.text
    await assert_signed_out(api, headers)
    await assert_signed_in(api, await sign_in_to_dashboard(api, admin.email, NEW_PASSWORD))


async def test_a_password_hash_changed_behind_the_apps_back_ends_the_session(
    api: Client, db: AsyncConnection[Any], admin: User, settings: Settings
) -> None:
    """The session names the password hash it was signed in with: even a change that revoked no
    session (a restore, a manual reset) ends it."""
    headers = await sign_in_to_dashboard(api, admin.email)
    new_hash = await Passwords(settings).hash(NEW_PASSWORD)
    await db.execute("update users set password_hash = %s where id = %s", (new_hash, admin.id))
    await assert_signed_out(api, headers)


@pytest.mark.parametrize(
    ("change", "undo"),
    [({"role": "member"}, {"role": "admin"}), ({"is_active": False}, {"is_active": True})],
    ids=["demotion", "deactivation"],
)
async def test_a_demotion_or_deactivation_ends_the_session_for_good(
    api: Client, admin: User, other_admin: User, change: dict[str, Any], undo: dict[str, Any]
) -> None:
    headers = await sign_in_to_dashboard(api, admin.email)
    by_admin = headers_of(api, other_admin)
    patched = await api.patch(f"/api/admin/users/{admin.id}", json=change, headers=by_admin)
    assert patched.status_code == 200, patched.text
    await assert_signed_out(api, headers)
    # Revoked, not merely refused while the account is not an active admin: undoing the change
    # does not bring the old session back.
    restored = await api.patch(f"/api/admin/users/{admin.id}", json=undo, headers=by_admin)
    assert restored.status_code == 200, restored.text
    await assert_signed_out(api, headers)
    await assert_signed_in(api, await sign_in_to_dashboard(api, admin.email))


async def test_revoked_sessions_are_remembered_as_long_as_a_session_lasts(
    api: Client, settings: Settings
) -> None:
    """Each process mirrors the revoked sessions for a while; a dashboard session outlives an access
    token by far, so its revocation must be remembered (and kept in PostgreSQL) at least that long."""
    app: Litestar = api.app
    accounts = app.state.services[AccountService]
    assert accounts.authentication.revocation_horizon_s > settings.dashboard_session_s


# -- tokens are not interchangeable ------------------------------------------------------------------------


async def test_a_bearer_token_still_opens_the_dashboard_for_scripts(
    api: Client, admin: User, member: User
) -> None:
    admin_bearer = headers_of(api, admin)
    await assert_signed_in(api, admin_bearer)
    for path in (*PAGES[:1], API):
        assert_problem(await api.get(path, headers=headers_of(api, member)), 403, "forbidden")


async def test_an_api_access_token_in_the_cookie_is_refused(api: Client, admin: User) -> None:
    pair = await login(api, admin.email)
    assert (await api.get("/api/auth/me", headers=bearer(pair["access_token"]))).status_code == 200
    await assert_signed_out(api, with_session(pair["access_token"]))


async def test_the_dashboard_cookie_is_refused_as_a_bearer_token(
    api: Client, admin: User, settings: Settings
) -> None:
    token = session_of(await sign_in(api, admin.email))
    assert_problem(await api.get("/api/auth/me", headers=bearer(token)), 401, "unauthorized")
    # Nor does relabelling it help: its audience is the dashboard's.
    relabelled = forged(settings, claims_of(token), typ="access", role="admin")
    assert_problem(await api.get("/api/auth/me", headers=bearer(relabelled)), 401, "unauthorized")


async def test_a_tampered_or_foreign_cookie_is_refused(api: Client, admin: User, settings: Settings) -> None:
    token = session_of(await sign_in(api, admin.email))
    claims = claims_of(token)
    other_key = jwt.encode(claims, "another key of 32 characters or more!", algorithm=settings.jwt_algorithm)
    for bad in (token[:-2] + "xx", other_key, "not-a-token", forged(settings, claims, aud="monolith-api")):
        await assert_signed_out(api, with_session(bad))


async def test_a_database_failing_during_the_sign_in_gets_the_page_with_503(
    settings: Settings, db: AsyncConnection[Any], admin: User
) -> None:
    """The database does not finish the sign-in's work (the admin's row held meanwhile, past the
    statement timeout): the browser gets the page and when to retry, not the API's problem+json."""
    async with (
        serve_in_loop(settings, statement_timeout_ms=300, **GENEROUS_AUTH) as served,
        db.transaction(),
    ):
        await db.execute("select 1 from users where id = %s for update", (admin.id,))
        response = await sign_in(served.client, admin.email)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "Sign-in is briefly unavailable; try again shortly." in response.text
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
