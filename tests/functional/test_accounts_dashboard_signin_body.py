"""A sign-in to the SAQ dashboard whose body is not the page's form is answered 400 and the page,
repeating nothing that was sent.

Review: Litestar reads the route's body as URL-encoded whatever its type, so a JSON body holding an
``=`` came back as one unknown field named after the body's text up to it, and the API's validation
problem (a JSON 400, which a browser shows raw) repeated that name in its ``detail`` and ``errors``:
the password with it. A wrong password is answered with the page (401); an unreadable sign-in now is
too, with 400, an empty form and a message, whatever the body held.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.db.models import User, UserRole
from app.domains.accounts.dashboard_tokens import SESSION_COOKIE
from tests.factories import SAME_ORIGIN, Client, create_user

SECRET = "swordfish-4f9c2e7b=="
"""A password ending in base64's padding: the ``=`` splits a body at the password's end."""
PIECES = [piece for piece in SECRET.split("=") if piece]


@pytest.fixture
async def admin(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash, role=UserRole.ADMIN)


def bodies(email: str) -> dict[str, tuple[bytes, str]]:
    """Sign-ins that are not the form, as (body, Content-Type), each carrying ``SECRET``."""
    boundary = "sign-in-boundary"
    multipart = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("email", email), ("password", SECRET))
    )
    return {
        "json": (json.dumps({"email": email, "password": SECRET}).encode(), "application/json"),
        "json, password first": (
            json.dumps({"password": SECRET, "email": email}).encode(),
            "application/json",
        ),
        "multipart": (f"{multipart}--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"),
        "form as text": (f"email={email}&password={SECRET}".encode(), "text/plain"),
        "form with an unknown field": (
            f"email={email}&password={SECRET}&{SECRET}=1".encode(),
            "application/x-www-form-urlencoded",
        ),
        "password past the limit": (
            f"email={email}&password={SECRET * 20}".encode(),
            "application/x-www-form-urlencoded",
        ),
        "password twice": (
            f"email={email}&password={SECRET}&password={SECRET}".encode(),
            "application/x-www-form-urlencoded",
        ),
    }


CASES = list(bodies("x@example.com"))


@pytest.mark.parametrize("case", CASES)
async def test_a_sign_in_that_is_not_the_form_gets_the_page_again_with_400_and_nothing_it_sent(
    api: Client, db: AsyncConnection[Any], admin: User, case: str
) -> None:
    body, content_type = bodies(admin.email)[case]
    response = await api.post(
        "/saq/login",
        content=body,
        headers={**SAME_ORIGIN, "Content-Type": content_type},
        follow_redirects=False,
    )
    api.cookies.clear()
    answer = response.text + json.dumps(dict(response.headers))
    leaked = [piece for piece in [SECRET, *PIECES, admin.email] if piece in answer]
    assert leaked == [], answer
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert '<p role="alert"><strong>' in response.text  # says why, as a wrong password's page does
    assert '<form method="post" action="/saq/login">' in response.text
    assert response.headers["cache-control"] == "no-store"
    assert "content-security-policy" in response.headers
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    sessions = await (
        await db.execute("select count(*) from refresh_tokens where user_id = %s", (admin.id,))
    ).fetchone()
    assert sessions == (0,)
