"""The SAQ dashboard in a real browser: the queues for an admin, 403 for a member, 401 for anyone else."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import expect
from psycopg import AsyncConnection

from app.db.models import User, UserRole
from tests.browser.conftest import WatchedPage
from tests.factories import PASSWORD, create_user
from tests.served import ServerProcess

QUEUES = ["orders", "feed", "default", "github"]
RENDER_TIMEOUT_MS = 30_000


@pytest.fixture
async def admin(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash, role=UserRole.ADMIN)


@pytest.fixture
async def member(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash)


def signed_in(user: User) -> dict[str, Any]:
    return {"http_credentials": {"username": user.email, "password": PASSWORD}}


async def test_admin_sees_the_queues(served: ServerProcess, watched_page: WatchedPage, admin: User) -> None:
    watch = await watched_page(**signed_in(admin))
    page = watch.page
    # The dashboard's script routes "/saq/" only: at "/saq" it renders its own "404 not found".
    response = await page.goto(f"{served.base}/saq/")
    assert response is not None and response.status == 200
    for queue in QUEUES:
        link = page.locator("tbody[role=grid] td a", has_text=queue)
        await expect(link).to_have_text(queue, timeout=RENDER_TIMEOUT_MS)
    # The page re-renders from /saq/api/queues every 2 s: one more round must go through cleanly too.
    async with page.expect_response(
        lambda r: r.url.endswith("/saq/api/queues"), timeout=RENDER_TIMEOUT_MS
    ) as polled:
        pass
    assert (await polled.value).status == 200
    await expect(page.locator("tbody[role=grid] tr")).to_have_count(len(QUEUES))
    watch.assert_clean()


async def test_member_is_forbidden(served: ServerProcess, watched_page: WatchedPage, member: User) -> None:
    watch = await watched_page(**signed_in(member))
    response = await watch.page.goto(f"{served.base}/saq")
    assert response is not None and response.status == 403
    assert "administrators" in await watch.page.content()
    assert not watch.outside


async def test_anonymous_is_asked_to_sign_in(served: ServerProcess, watched_page: WatchedPage) -> None:
    """A browser with no credentials gets a Basic challenge (headless Chromium cannot answer it)."""
    watch = await watched_page()
    async with watch.page.expect_response(f"{served.base}/saq") as challenged:
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            await watch.page.goto(f"{served.base}/saq")
    response = await challenged.value
    assert response.status == 401
    assert (await response.header_value("www-authenticate") or "").startswith("Basic ")
    assert not watch.outside


async def test_wrong_password_is_refused(
    served: ServerProcess, watched_page: WatchedPage, admin: User
) -> None:
    watch = await watched_page(http_credentials={"username": admin.email, "password": "not the password"})
    response = await watch.page.goto(f"{served.base}/saq")
    assert response is not None and response.status == 401
