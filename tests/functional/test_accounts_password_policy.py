"""One password policy for every password the API sets (registration, a password change), the one
``create-admin`` applies (``check_new_password``): 10 to 256 characters, at least 5 different ones, no
control character, and in production never a public default. Before, the API checked the length only:
'aaaaaaaaaa', ten NULs, ten spaces and the demo seed's published password were all accepted."""

from __future__ import annotations

import unicodedata
from typing import Any

import argon2
import httpx
import pytest
from psycopg import AsyncConnection

from app.config import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD, Settings
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    Client,
    assert_problem,
    bearer,
    create_user,
    login,
    scalar,
    serve_in_loop,
    unique_email,
)

WEAK = [
    pytest.param("aaaaaaaaaa", id="one-character"),
    pytest.param(  # ten different characters whose NFKC form (what is hashed) is aaaaaaaaaa
        "a\U0001d41a\U0001d44e\U0001d482\U0001d4b6\U0001d4ea\U0001d51e\U0001d552\U0001d586\U0001d5ba",
        id="ten-a-forms",
    ),
    pytest.param(" " * 10, id="spaces"),
    pytest.param("\x00" * 10, id="nuls"),
    pytest.param("abababababab", id="two-characters"),
    pytest.param("a strong passphrase\x00", id="a-nul"),
    pytest.param("a strong\npassphrase", id="a-newline"),
    pytest.param("a strong\x7fpassphrase", id="a-del"),
]


async def register(client: Client | httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/auth/register", json={"email": email, "password": password, "display_name": "New"}
    )


async def account_exists(db: AsyncConnection[Any], email: str) -> bool:
    return bool(await scalar(db, "select count(*) from users where email = %s", email))


async def change_password(
    client: Client | httpx.AsyncClient, session: dict[str, Any], password: str
) -> httpx.Response:
    return await client.patch(
        "/api/auth/me",
        json={"current_password": PASSWORD, "new_password": password},
        headers=bearer(session["access_token"]),
    )


@pytest.mark.parametrize("password", WEAK)
async def test_registration_refuses_a_weak_password(
    api: Client, db: AsyncConnection[Any], password: str
) -> None:
    email = unique_email("weak")
    assert_problem(await register(api, email, password), 422, "weak-password")
    assert not await account_exists(db, email)


@pytest.mark.parametrize("password", WEAK)
async def test_a_password_change_to_a_weak_password_is_refused_and_changes_nothing(
    api: Client, db: AsyncConnection[Any], password_hash: str, password: str
) -> None:
    user = await create_user(db, password_hash)
    session = await login(api, user.email)
    answer = await change_password(api, session, password)
    assert_problem(answer, 422, "weak-password")
    await login(api, user.email)  # the password is unchanged, the session alive
    me = await api.get("/api/auth/me", headers=bearer(session["access_token"]))
    assert me.status_code == 200, me.text


async def test_a_strong_password_is_still_accepted(api: Client, db: AsyncConnection[Any]) -> None:
    email = unique_email("strong")
    answer = await register(api, email, "a passphrase with some variety")
    assert answer.status_code == 202, answer.text
    await login(api, email, "a passphrase with some variety")


async def test_outside_production_the_demo_password_stays_usable(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """The demo seed's members use it outside production: the policy refuses it in production only."""
    email = unique_email("demo")
    answer = await register(api, email, DEFAULT_DEMO_PASSWORD)
    assert answer.status_code == 202, answer.text


def full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize(
    "password",
    [
        DEFAULT_ADMIN_PASSWORD,
        DEFAULT_DEMO_PASSWORD,
        pytest.param(full_width(DEFAULT_ADMIN_PASSWORD), id="full-width-default"),  # its NFKC form is it
    ],
)
async def test_in_production_a_public_default_password_is_refused(
    settings: Settings, db: AsyncConnection[Any], password_hash: str, password: str
) -> None:
    user = await create_user(db, password_hash)
    async with serve_in_loop(settings, app_env="production", **GENEROUS_AUTH) as served:
        client = served.client
        email = unique_email("default")
        assert_problem(await register(client, email, password), 422, "weak-password")
        assert not await account_exists(db, email)
        session = await login(client, user.email)
        answer = await change_password(client, session, password)
        assert_problem(answer, 422, "weak-password")
        await login(client, user.email)


COMPOSED = unicodedata.normalize("NFC", "Grüße aus Köln 2026")
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)
"""One password as two keyboards type it (macOS and some input methods send the decomposed form)."""


async def signs_in(api: Client, email: str, password: str) -> bool:
    answer = await api.post("/api/auth/login", json={"email": email, "password": password})
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


async def test_a_password_is_the_same_whichever_form_of_it_is_typed(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """Registered decomposed, signed in composed (was: 401, the account out of reach from another
    device), and the other way round."""
    assert DECOMPOSED != COMPOSED
    for registered, typed in ((DECOMPOSED, COMPOSED), (COMPOSED, DECOMPOSED)):
        email = unique_email("forms")
        assert (await register(api, email, registered)).status_code == 202
        assert await signs_in(api, email, typed)
        assert await signs_in(api, email, registered)
        assert not await signs_in(api, email, COMPOSED + "!")


async def test_a_hash_of_a_password_as_typed_before_is_kept_usable_and_normalized_at_its_next_sign_in(
    api: Client, db: AsyncConnection[Any], settings: Settings
) -> None:
    """An account whose hash was made from the decomposed form as typed (before passwords were
    normalized) still signs in with it, and from then on with either form."""
    email = unique_email("typed")
    hasher = argon2.PasswordHasher(
        time_cost=settings.password_time_cost,
        memory_cost=settings.password_memory_kib,
        parallelism=settings.password_parallelism,
    )
    await create_user(db, hasher.hash(DECOMPOSED), email=email)
    assert await signs_in(api, email, DECOMPOSED)
    assert await signs_in(api, email, COMPOSED)


async def test_a_hash_of_the_normal_form_is_kept_whichever_form_signs_in(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """A sign-in typed in another form than the normal one changes nothing stored (a review found every
    such sign-in hashed the password again: a write, and the end of the admin's dashboard sessions,
    whose tokens carry the hash's fingerprint)."""
    email = unique_email("kept")
    assert (await register(api, email, COMPOSED)).status_code == 202
    stored = await scalar(db, "select password_hash from users where email = %s", email)
    for _ in range(2):
        assert await signs_in(api, email, DECOMPOSED)
    assert await scalar(db, "select password_hash from users where email = %s", email) == stored
