"""Access-token verification (RFC 8725): every token that is not exactly ours is a 401 problem."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.security import AccessTokens
from app.db.models import User, UserRole
from tests.factories import (
    PASSWORD,
    Client,
    assert_problem,
    bearer,
    create_user,
    login,
    serve_in_loop,
    sign_in_to_dashboard,
    wait_until,
)

OTHER_SECRET = "a-completely-different-secret-of-enough-length"


def claims(settings: Settings, user: User, **overrides: Any) -> dict[str, Any]:
    """Claims exactly like the server's (``AccessTokens.issue``), with overrides."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": str(user.id),
        "exp": now + 600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "typ": "access",
        "fam": str(uuid.uuid4()),
        "role": user.role.value,
    }
    payload.update(overrides)
    return payload


def sign(payload: dict[str, Any], key: str, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def assert_rejected(response: Any, *, bearer_presented: bool = True) -> None:
    body = assert_problem(response, 401, "unauthorized")
    assert "access_token" not in body
    if bearer_presented:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def me(api: Client, token: str) -> Any:
    return await api.get("/api/auth/me", headers=bearer(token))


async def test_server_issued_token_is_accepted(api: Client, settings: Settings, member: User) -> None:
    token, issued = AccessTokens(settings).issue(member.id, member.role.value, uuid.uuid4())
    response = await me(api, token)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == member.id == int(issued.sub)


async def test_handcrafted_token_with_every_claim_is_accepted(
    api: Client, settings: Settings, member: User
) -> None:
    """The control for the negative cases below: the same builder, nothing removed or altered."""
    response = await me(api, sign(claims(settings, member), settings.secret_key))
    assert response.status_code == 200, response.text
    assert response.json()["email"] == member.email


async def test_alg_none_is_rejected(api: Client, settings: Settings, member: User) -> None:
    unsigned = f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims(settings, member))}."
    assert_rejected(await me(api, unsigned))
    # and with the server's own valid signature kept but the header switched to "none"
    signed = sign(claims(settings, member), settings.secret_key)
    _, payload, signature = signed.split(".")
    assert_rejected(await me(api, f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"))


async def test_wrong_key_is_rejected(api: Client, settings: Settings, member: User) -> None:
    assert_rejected(await me(api, sign(claims(settings, member), OTHER_SECRET)))


async def test_expired_token_is_rejected(api: Client, settings: Settings, member: User) -> None:
    now = int(time.time())
    expired = claims(settings, member, iat=now - 1000, exp=now - 30)  # well past the 5 s leeway
    assert_rejected(await me(api, sign(expired, settings.secret_key)))


async def test_token_expired_within_leeway_is_still_accepted(
    api: Client, settings: Settings, member: User
) -> None:
    now = int(time.time())
    just_expired = claims(settings, member, iat=now - 600, exp=now - 1)
    assert (await me(api, sign(just_expired, settings.secret_key))).status_code == 200


async def test_a_token_accepted_once_is_refused_once_it_expires(
    api: Client, settings: Settings, member: User
) -> None:
    """A verified token is remembered per process, but its expiry is checked on every request."""
    now = int(time.time())
    expiring = sign(
        claims(settings, member, iat=now - 600, exp=now - 1),
        settings.secret_key,  # valid 3-4 s more
    )
    assert (await me(api, expiring)).status_code == 200, "accepted (and remembered) while within the leeway"

    async def refused() -> bool:
        response = await me(api, expiring)
        return bool(response.status_code == 401)

    await wait_until(refused, 30.0, "the remembered token is refused after its expiry")
    assert_rejected(await me(api, expiring))


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "jti", "iss", "aud", "typ", "fam", "role"])
async def test_missing_required_claim_is_rejected(
    api: Client, settings: Settings, member: User, claim: str
) -> None:
    payload = claims(settings, member)
    del payload[claim]
    assert_rejected(await me(api, sign(payload, settings.secret_key)))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("aud", "some-other-api"),
        ("iss", "someone-else"),
        ("typ", "refresh"),
        ("role", "superuser"),
        ("fam", "not-a-uuid"),
        ("sub", "not-a-number"),
        ("sub", 1),
    ],
)
async def test_wrong_claim_value_is_rejected(
    api: Client, settings: Settings, member: User, claim: str, value: Any
) -> None:
    assert_rejected(await me(api, sign(claims(settings, member, **{claim: value}), settings.secret_key)))


async def test_audience_list_without_ours_is_rejected(api: Client, settings: Settings, member: User) -> None:
    payload = claims(settings, member, aud=["some-other-api"])
    assert_rejected(await me(api, sign(payload, settings.secret_key)))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_algorithm_confusion_hs512_is_rejected(api: Client, settings: Settings, member: User) -> None:
    assert settings.jwt_algorithm == "HS256"
    assert_rejected(await me(api, sign(claims(settings, member), settings.secret_key, "HS512")))


async def test_refresh_token_is_not_an_access_token(api: Client, member: User) -> None:
    pair = await login(api, member.email)
    assert (await me(api, pair["access_token"])).status_code == 200
    assert_rejected(await me(api, pair["refresh_token"]))


@pytest.mark.parametrize(
    "garbage", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..", "x" * 500, "Bearer nested"]
)
async def test_garbage_token_is_rejected(api: Client, garbage: str) -> None:
    assert_rejected(await me(api, garbage))


async def test_signing_in_ignores_any_bearer_token_sent_along(api: Client, member: User) -> None:
    """A client that attaches its stale token to every request can still sign in again (and the
    ``auth`` limit stays keyed by its address, ``test_core_ratelimit``)."""
    stale = bearer(sign({"sub": "1"}, OTHER_SECRET))
    response = await api.post(
        "/api/auth/login", json={"email": member.email, "password": PASSWORD}, headers=stale
    )
    assert response.status_code == 200, response.text
    refreshed = await api.post(
        "/api/auth/refresh", json={"refresh_token": response.json()["refresh_token"]}, headers=stale
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_basic_header_is_anonymous_and_refused_by_the_guard(api: Client, member: User) -> None:
    credentials = base64.b64encode(f"{member.email}:{PASSWORD}".encode()).decode()
    response = await api.get("/api/auth/me", headers={"Authorization": f"Basic {credentials}"})
    assert_rejected(response, bearer_presented=False)
    assert_problem(await api.get("/api/auth/me"), 401, "unauthorized")


async def test_two_authorization_headers_are_refused(
    settings: Settings, db: AsyncConnection[Any], password_hash: str, member: User
) -> None:
    """``Authorization`` is a singleton field: with two, the first was taken and the rest ignored,
    while a proxy in front may have judged the request by another one. (httpx's own ASGI transport:
    the test client's joins repeated headers into one.)"""
    admin = await create_user(db, password_hash, role="admin")
    async with serve_in_loop(settings) as served:
        own = (await login(served.client, member.email))["access_token"]
        other = (await login(served.client, admin.email))["access_token"]
        for pair in ((own, other), (own, own)):
            headers = [("Authorization", f"Bearer {token}") for token in pair]
            response = await served.client.get("/api/auth/me", headers=headers)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == 'Bearer error="invalid_request"'
        assert (await served.client.get("/api/auth/me", headers=bearer(own))).status_code == 200


async def test_a_new_secret_key_refuses_old_access_tokens_and_the_session_goes_on(
    settings: Settings, member: User
) -> None:
    """README, ``SECRET_KEY``: changing it refuses every access token signed before, and a client's
    session goes on by its refresh token (a random secret kept as a digest, not signed with the key)."""
    async with serve_in_loop(settings) as before:
        pair = await login(before.client, member.email)
    async with serve_in_loop(settings, secret_key=OTHER_SECRET) as after:
        assert_rejected(await me(after.client, pair["access_token"]))
        refreshed = await after.client.post(
            "/api/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
        response = await me(after.client, refreshed.json()["access_token"])
        assert response.status_code == 200, response.text
        assert response.json()["id"] == member.id


async def test_a_new_secret_key_signs_everyone_out_of_the_dashboard(
    api: Client, settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    """README, ``SECRET_KEY``: the dashboard's session is a token signed with the key."""
    admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    session = await sign_in_to_dashboard(api, admin.email)
    assert (await api.get("/saq/api/queues", headers=session)).status_code == 200
    async with serve_in_loop(settings, secret_key=OTHER_SECRET) as after:
        refused = await after.client.get("/saq/api/queues", headers=session)
    assert_problem(refused, 401, "unauthorized")
