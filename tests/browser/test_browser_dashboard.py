"""The SAQ dashboard in a real browser: the queues for an admin, 403 for a member, 401 for anyone else.

Every page is watched (``watched_page``): a script or style the dashboard's Content-Security-Policy
blocks is a console error, and fails ``assert_clean``.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import expect
from psycopg import AsyncConnection
from saq import Job as SaqJob

from app.db.models import User, UserRole
from tests.browser.conftest import WatchedPage
from tests.factories import PASSWORD, create_user, saq_queues
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


@pytest.mark.parametrize("path", ["/saq", "/saq/"])
async def test_admin_sees_the_queues(
    served: ServerProcess, watched_page: WatchedPage, admin: User, path: str
) -> None:
    """At both addresses: the dashboard's script routes "/saq/" only, so "/saq" redirects there (the
    script rendered its own "404 not found" at "/saq")."""
    watch = await watched_page(**signed_in(admin))
    page = watch.page
    response = await page.goto(f"{served.base}{path}")
    assert response is not None and response.status == 200
    assert page.url == f"{served.base}/saq/"
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
    await expect(page.locator("main")).not_to_contain_text("404")
    watch.assert_clean()


async def enqueue_job(valkey_url: str, key: str, kwargs: dict[str, Any]) -> None:
    async with saq_queues(valkey_url) as queues:
        assert await queues["default"].enqueue(SaqJob(function="purge_outbox", kwargs=kwargs, key=key))


async def test_a_jobs_page_links_its_queue_inside_the_dashboard(
    served: ServerProcess, watched_page: WatchedPage, admin: User, valkey_url: str
) -> None:
    """SAQ's script linked a job's queue at "/queues/<name>", outside the dashboard."""
    await enqueue_job(valkey_url, "browser-queue-link", {"outbox_id": 1})
    watch = await watched_page(**signed_in(admin))
    page = watch.page
    response = await page.goto(f"{served.base}/saq/queues/default/jobs/browser-queue-link")
    assert response is not None and response.status == 200
    await expect(page.locator("hgroup h2")).to_have_text("browser-queue-link", timeout=RENDER_TIMEOUT_MS)
    await page.locator("figure tbody a", has_text="default").click()
    await expect(page).to_have_url(f"{served.base}/saq/queues/default", timeout=RENDER_TIMEOUT_MS)
    await expect(page.locator("hgroup h1")).to_have_text("Queue")
    await expect(page.locator("hgroup h2")).to_have_text("default")
    await expect(page.get_by_role("link", name="browser-queue-link")).to_be_visible()
    reloaded = await page.reload()
    assert reloaded is not None and reloaded.status == 200
    await expect(page.locator("hgroup h2")).to_have_text("default", timeout=RENDER_TIMEOUT_MS)
    watch.assert_clean()


async def test_a_jobs_arguments_are_shown_by_name_only(
    served: ServerProcess, watched_page: WatchedPage, admin: User, valkey_url: str
) -> None:
    await enqueue_job(valkey_url, "browser-arguments", {"note": "a private value", "outbox_id": 2})
    watch = await watched_page(**signed_in(admin))
    page = watch.page
    await page.goto(f"{served.base}/saq/queues/default")
    await page.get_by_role("link", name="browser-arguments").click(timeout=RENDER_TIMEOUT_MS)
    await expect(page.locator("hgroup h2")).to_have_text("browser-arguments", timeout=RENDER_TIMEOUT_MS)
    await expect(page.locator("figure tbody tr td").nth(1)).to_have_text("note, outbox_id")
    await expect(page.locator("main")).not_to_contain_text("a private value")
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
