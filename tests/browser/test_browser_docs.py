"""The OpenAPI UI renders in a real browser from the app alone: offline, and under its strict CSP."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect
from psycopg import AsyncConnection

from tests.browser.conftest import WatchedPage, icon_watch
from tests.factories import PASSWORD, create_user
from tests.served import ServerProcess

RENDER_TIMEOUT_MS = 30_000


def operations(served: ServerProcess) -> list[tuple[str, str]]:
    schema = httpx.get(f"{served.base}/schema/openapi.json", timeout=10).json()
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete", "head", "options"}
    ]


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
async def test_docs_render_every_operation_offline(
    served: ServerProcess, watched_page: WatchedPage, path: str
) -> None:
    watch = await watched_page()
    page = watch.page
    response = await page.goto(f"{served.base}{path}")
    assert response is not None and response.status == 200
    login = page.locator(".opblock-post .opblock-summary-path[data-path='/api/auth/login']")
    await expect(login).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    documented = operations(served)
    assert ("POST", "/api/auth/login") in documented
    await expect(page.locator(".opblock")).to_have_count(len(documented), timeout=RENDER_TIMEOUT_MS)
    await page.wait_for_load_state("networkidle")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Monolith API")
    watch.assert_clean()


async def test_an_operation_expands_and_shows_its_schema(
    served: ServerProcess, watched_page: WatchedPage
) -> None:
    """Deeper than the list: opening an operation renders its request body model without errors."""
    watch = await watched_page()
    page = watch.page
    await page.goto(f"{served.base}/schema")
    summary = page.locator(
        ".opblock-post .opblock-summary", has=page.locator("[data-path='/api/auth/login']")
    )
    await summary.click(timeout=RENDER_TIMEOUT_MS)
    body = page.locator(".opblock-post.is-open .opblock-section-request-body")
    await expect(body).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    await expect(body).to_contain_text("email")
    await page.wait_for_load_state("networkidle")
    watch.assert_clean()


async def test_try_it_out_calls_the_api_from_the_page(
    served: ServerProcess, watched_page: WatchedPage
) -> None:
    """The console works under the page's CSP: "Execute" reaches the API (same origin) and shows 200."""
    watch = await watched_page()
    page = watch.page
    await page.goto(f"{served.base}/schema/swagger")
    operation = page.locator(".opblock-get", has=page.locator("[data-path='/health/live']"))
    await operation.locator(".opblock-summary").click(timeout=RENDER_TIMEOUT_MS)
    await operation.locator(".try-out__btn").click()
    async with page.expect_response(f"{served.base}/health/live") as called:
        await operation.locator(".execute").click()
    assert (await called.value).status == 200
    await expect(operation.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    await page.wait_for_load_state("networkidle")
    watch.assert_clean()


async def test_a_json_answer_opened_in_a_tab_gets_the_sites_icon(
    served: ServerProcess, browser: Browser
) -> None:
    """A JSON answer links no icon, so the browser asks for ``/favicon.ico``: a 404 (a console error)
    until the app served one."""
    async with icon_watch(browser) as watch:
        answer = await watch.page.goto(f"{served.base}/api")
        assert answer is not None and answer.status == 200
        assert await watch.next_icon(RENDER_TIMEOUT_MS / 1000) == (200, f"{served.base}/favicon.ico")
        assert not watch.errors, watch.errors


async def test_try_it_out_fills_a_change_that_changes_nothing_or_the_least(
    served: ServerProcess, watched_page: WatchedPage
) -> None:
    """Swagger UI made a PATCH body of every optional property (``archived: true``, ``role: admin``,
    a new password), so "Execute" run unedited changed all of them (the swagger reviewer archived a
    project and promoted a member so). Each change's body now comes from its Struct's
    ``openapi_example``: ``{}`` (nothing changes), or what a change must name and only that (a
    member's role: the least one)."""
    watch = await watched_page()
    page = watch.page
    await page.goto(f"{served.base}/schema")
    patches = [path for method, path in operations(served) if method == "PATCH"]
    assert len(patches) >= 6
    filled = {}
    for path in patches:
        operation = page.locator(
            ".opblock-patch", has=page.locator(f".opblock-summary-path[data-path='{path}']")
        )
        await operation.locator(".opblock-summary").click(timeout=RENDER_TIMEOUT_MS)
        await operation.locator(".try-out__btn").click()
        body = operation.locator("textarea.body-param__text")
        await expect(body).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        filled[path] = json.loads(await body.input_value())
        await operation.locator(".opblock-summary").click()
    required = {  # a change that must say what it changes: only that, the least it can be
        "/api/projects/{project_id}/members/{user_id}": {"role": "viewer"},
        "/api/tasks/{task_id}/comments/{comment_id}": {"body": "Draft is ready, could you review it?"},
    }
    assert filled == {path: required.get(path, {}) for path in patches}, filled
    watch.assert_clean()


async def test_the_feed_stream_answers_its_poll_in_try_it_out(
    served: ServerProcess, watched_page: WatchedPage, db: AsyncConnection[Any], password_hash: str
) -> None:
    """The page reads an answer whole: asked for ``text/event-stream``, the live feed never ended and
    "Execute" spun until the token expired (the swagger reviewer). The page now asks without it, and
    the feed answers its poll (``ready``, the replay, the end)."""
    user = await create_user(db, password_hash)
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as api:
        login = await api.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})
    token = login.json()["access_token"]
    watch = await watched_page()
    page = watch.page
    await page.goto(f"{served.base}/schema")
    await page.locator(".btn.authorize").first.click(timeout=RENDER_TIMEOUT_MS)
    await page.locator(".auth-container input").first.fill(token)
    await page.locator(".auth-btn-wrapper .authorize").first.click()
    await page.locator(".auth-btn-wrapper .btn-done").first.click()
    operation = page.locator(".opblock-get", has=page.locator("[data-path='/api/feed/stream']"))
    await operation.locator(".opblock-summary").click(timeout=RENDER_TIMEOUT_MS)
    await operation.locator(".try-out__btn").click()
    async with page.expect_response(lambda answer: "/api/feed/stream" in answer.url) as called:
        await operation.locator(".execute").click()
    assert (await called.value).status == 200
    shown = operation.locator(".live-responses-table tbody .response-col_description")
    await expect(shown).to_contain_text("event: ready", timeout=RENDER_TIMEOUT_MS)
    watch.assert_clean()
