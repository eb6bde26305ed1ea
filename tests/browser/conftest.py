"""A real headless Chromium (Debian's ``chromium``, driven by Playwright) against the served app.

The app runs for real (granian, ``tests.served.ServerProcess``) on the test database and Valkey.
Every page is opened through ``watched_page``: each request is recorded and anything not bound for
127.0.0.1 is blocked (so a page that needs the internet fails here even on a machine that has it),
and uncaught exceptions, console errors (Chromium reports CSP violations there too), CSP
violation events and failed loads are collected for ``Watch.assert_clean``.

No ``playwright install``: the browser is the system's. Without it these tests fail (never skip);
``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    CDPSession,
    ConsoleMessage,
    Page,
    Request,
    Response,
    Route,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

from app.config import Settings
from app.core.security import Passwords
from tests.factories import PASSWORD
from tests.served import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOOPBACK = "127.0.0.1"
UNROUTED_SCHEMES = {"data", "blob", "about"}
ICONS = ("/favicon.svg",)
"""A page's icon loads after the page (``<link rel="icon">``): a test that navigates on at once aborts it."""
# Reports CSP violations even where Chromium would not log them (e.g. from a caught eval attempt).
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""


@pytest.fixture(scope="session")
def served(
    database_url: str, valkey_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The app served by granian for the browser tests (one for the session)."""
    # The served app imports what this process imports (e.g. a PYTHONPATH overlay when bisecting).
    passed = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    server = ServerProcess(database_url, valkey_url, tmp_path_factory.mktemp("browser-server"), env=passed)
    with server.running():
        yield server


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 (once per session, before anything runs)
        pytest.fail(
            f"No Chromium at {CHROMIUM}: the browser tests need Debian's `chromium` package "
            "(`apt-get install chromium`; .ci/run installs it). They never download a browser."
        )
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture(scope="session")
async def password_hash(settings: Settings) -> str:
    return await Passwords(settings).hash(PASSWORD)


@dataclass
class Watch:
    """What one page did: every request, and every sign that something went wrong."""

    page: Page
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.requests, "the page made no request at all"
        assert not self.outside, f"requests left {LOOPBACK}: {self.outside}"
        strays = [url for url in self.requests if not _is_local(url)]
        assert not strays, f"requests left {LOOPBACK}: {strays}"
        assert not self.problems, "\n".join(self.problems)


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in UNROUTED_SCHEMES or parts.hostname == LOOPBACK


async def open_watched(browser: Browser, **context_options: Any) -> tuple[BrowserContext, Watch]:
    context = await browser.new_context(**context_options)
    await context.add_init_script(_CSP_LISTENER)
    page = await context.new_page()
    watch = Watch(page)

    async def gate(route: Route) -> None:
        if _is_local(route.request.url):
            await route.continue_()
        else:
            watch.outside.append(route.request.url)
            await route.abort("blockedbyclient")

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watch.problems.append(f"console error: {message.text} ({message.location})")

    def on_failed(request: Request) -> None:
        if request.failure == "net::ERR_ABORTED" and urlsplit(request.url).path.endswith(ICONS):
            return  # a page's icon, cut short by leaving the page: nothing a person sees
        watch.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def on_response(response: Response) -> None:
        # The document's own status is each test's to check (401/403 pages are expected there).
        if response.status >= 400 and response.request.resource_type != "document":
            watch.problems.append(f"{response.status} for {response.request.method} {response.url}")

    await context.route("**/*", gate)
    page.on("request", lambda request: watch.requests.append(request.url))
    page.on("pageerror", lambda error: watch.problems.append(f"uncaught: {error}"))
    page.on("console", on_console)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    return context, watch


WatchedPage = Callable[..., Awaitable[Watch]]


@pytest.fixture
async def watched_page(browser: Browser) -> AsyncIterator[WatchedPage]:
    """``await watched_page(**browser_context_options)`` → a fresh context's page, watched."""
    contexts: list[BrowserContext] = []

    async def open_page(**context_options: Any) -> Watch:
        context, watch = await open_watched(browser, **context_options)
        contexts.append(context)
        return watch

    yield open_page
    for context in contexts:
        with contextlib.suppress(PlaywrightError):  # the browser is already gone; the test has said why
            await context.close()


@dataclass
class IconWatch:
    """A page in a browser of its own, whose requests are not intercepted, and the icons it loaded.

    Chromium asks for a page's icon only when nothing routes its requests (``watched_page`` routes
    them all), and even then Playwright never sees that request: the answers are read from the
    browser's own network log (DevTools)."""

    page: Page
    devtools: CDPSession
    icons: asyncio.Queue[tuple[int, str]] = field(default_factory=asyncio.Queue)
    errors: list[str] = field(default_factory=list)

    async def next_icon(self, timeout_s: float) -> tuple[int, str]:
        """The status and URL of the next icon the browser loaded."""
        async with asyncio.timeout(timeout_s):
            return await self.icons.get()


@contextlib.asynccontextmanager
async def icon_watch(browser: Browser) -> AsyncIterator[IconWatch]:
    fresh = await browser.browser_type.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        context = await fresh.new_context()
        page = await context.new_page()
        watch = IconWatch(page, await context.new_cdp_session(page))
        page.on(
            "console",
            lambda m: watch.errors.append(f"{m.text} ({m.location})") if m.type == "error" else None,
        )
        page.on("pageerror", lambda error: watch.errors.append(f"uncaught: {error}"))
        await watch.devtools.send("Network.enable")

        def on_response(event: dict[str, Any]) -> None:
            answer = event["response"]
            if "favicon" in answer["url"]:
                watch.icons.put_nowait((answer["status"], answer["url"]))

        watch.devtools.on("Network.responseReceived", on_response)
        yield watch
    finally:
        await fresh.close()
