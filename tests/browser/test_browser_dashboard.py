"""The SAQ dashboard in a real browser: an admin signs in through the dashboard's form and sees the
queues, signs out and is sent back to the sign-in page; a member gets 403, anyone else the sign-in
page (never the browser's password prompt: no more HTTP Basic); a sign-in refused while Valkey is
down (503) is the sign-in page too.

Every page is watched (``watched_page``): a script or style the dashboard's Content-Security-Policy
(or the sign-in page's) blocks is a console error, and fails ``assert_clean``.
"""

from __future__ import annotations

import os
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect
from psycopg import AsyncConnection
from saq import Job as SaqJob
from saq import Status as SaqStatus
from valkey.asyncio import Valkey

from app.db.models import User, UserRole
from tests.browser.conftest import Watch, WatchedPage, icon_watch
from tests.factories import PASSWORD, create_user, saq_queues
from tests.served import ServerProcess
from tests.valkey_control import ControlledValkey

QUEUES = ["orders", "feed", "default", "github"]
RENDER_TIMEOUT_MS = 30_000
CLOCK_START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def admin(db: AsyncConnection[Any], valkey: Valkey, password_hash: str) -> User:
    """(Valkey emptied: the sign-ins below come from 127.0.0.1, whose login-throttle counters earlier
    served tests leave behind.)"""
    return await create_user(db, password_hash, role=UserRole.ADMIN)


@pytest.fixture
async def member(db: AsyncConnection[Any], valkey: Valkey, password_hash: str) -> User:
    return await create_user(db, password_hash)


async def sign_in(page: Page, base: str, email: str, password: str = PASSWORD) -> int:
    """Fill in and send the dashboard's sign-in form, as a person would; the final answer's status."""
    opened = await page.goto(f"{base}/saq/login")
    assert opened is not None and opened.status == 200
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    async with page.expect_navigation() as navigated:
        await page.get_by_role("button", name="Sign in").click()
    response = await navigated.value
    assert response is not None
    return response.status


def assert_clean_but_the_pages_status(watch: Watch, status: int) -> None:
    """``assert_clean``, but for the console's report of the document's own refusal (a 401 or 403
    page is the expected answer there)."""
    expected = f"the server responded with a status of {status} "
    watch.problems = [p for p in watch.problems if not (p.startswith("console error:") and expected in p)]
    watch.assert_clean()


async def signed_in_page(watched_page: WatchedPage, base: str, user: User, **context_options: Any) -> Watch:
    """A watched page of a browser that signed ``user`` in, in another tab (closed since: its page's
    polling, cut short by the tab's closing, is not what the test watches)."""
    watch = await watched_page(**context_options)
    tab = await watch.page.context.new_page()
    assert await sign_in(tab, base, user.email) == 200
    assert tab.url == f"{base}/saq/"
    await tab.close()
    return watch


async def hold_the_clock(page: Page) -> None:
    """The page's timers run only when the test says (``page.clock.run_for``): its 2 s poll is never
    waited for, and never comes on its own between two steps of a test."""
    await page.clock.install(time=CLOCK_START)
    await page.clock.pause_at(CLOCK_START + timedelta(seconds=1))


async def held_page_of(watched_page: WatchedPage, served: ServerProcess, admin: User, path: str) -> Watch:
    """A watched page of ``admin`` signed in (``signed_in_page``), its clock held (``hold_the_clock``),
    opened at ``path``."""
    watch = await signed_in_page(watched_page, served.base, admin)
    await hold_the_clock(watch.page)
    await watch.page.goto(f"{served.base}{path}")
    return watch


def forget_the_polls_refused(watch: Watch, status: int) -> None:
    """The refusals a test provokes (the browser logs each as a console error too)."""
    watch.problems = [
        p
        for p in watch.problems
        if not (
            p.startswith(f"{status} for ")
            or (p.startswith("console error:") and f"the server responded with a status of {status} " in p)
        )
    ]


def forget_polls_cut_by_navigation(watch: Watch) -> None:
    """The page polls ``/saq/api/queues`` every 2 s: leaving it (signing out) may abort a poll."""
    watch.problems = [
        p for p in watch.problems if not ("/saq/api/queues" in p and p.endswith("net::ERR_ABORTED"))
    ]


@pytest.mark.parametrize("path", ["/saq", "/saq/"])
async def test_admin_sees_the_queues(
    served: ServerProcess, watched_page: WatchedPage, admin: User, path: str
) -> None:
    """At both addresses: the dashboard's script routes "/saq/" only, so "/saq" redirects there (the
    script rendered its own "404 not found" at "/saq")."""
    watch = await signed_in_page(watched_page, served.base, admin)
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


async def enqueue_job(
    valkey_url: str, key: str, kwargs: dict[str, Any], queue: str = "default", scheduled: int = 0
) -> None:
    """``scheduled``: when it is due, in epoch seconds as SAQ keeps it (0: at once)."""
    async with saq_queues(valkey_url) as queues:
        job = SaqJob(function="purge_outbox", kwargs=kwargs, key=key, scheduled=scheduled)
        assert await queues[queue].enqueue(job)


async def test_a_jobs_page_links_its_queue_inside_the_dashboard(
    served: ServerProcess, watched_page: WatchedPage, admin: User, valkey_url: str
) -> None:
    """SAQ's script linked a job's queue at "/queues/<name>", outside the dashboard."""
    await enqueue_job(valkey_url, "browser-queue-link", {"outbox_id": 1})
    watch = await signed_in_page(watched_page, served.base, admin)
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
    watch = await signed_in_page(watched_page, served.base, admin)
    page = watch.page
    await page.goto(f"{served.base}/saq/queues/default")
    await page.get_by_role("link", name="browser-arguments").click(timeout=RENDER_TIMEOUT_MS)
    await expect(page.locator("hgroup h2")).to_have_text("browser-arguments", timeout=RENDER_TIMEOUT_MS)
    await expect(page.locator("figure tbody tr td").nth(1)).to_have_text("note, outbox_id")
    await expect(page.locator("main")).not_to_contain_text("a private value")
    watch.assert_clean()


async def test_signing_out_ends_the_session(
    served: ServerProcess, watched_page: WatchedPage, admin: User
) -> None:
    """The review's finding: the browser kept the password and the dashboard open until it quit. Now
    the sign-out button ends the session, and the dashboard sends the browser to the sign-in page."""
    watch = await watched_page()
    page = watch.page
    assert await sign_in(page, served.base, admin.email) == 200
    assert page.url == f"{served.base}/saq/"
    await expect(page.locator("tbody[role=grid] td a", has_text="default")).to_be_visible(
        timeout=RENDER_TIMEOUT_MS
    )
    cookies = await page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
        ("saq_session", True, "Strict", "/saq")
    ]
    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign out").click()
    assert page.url == f"{served.base}/saq/login"
    assert await page.context.cookies() == []
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    again = await page.goto(f"{served.base}/saq/queues/default")
    assert again is not None and again.status == 200
    assert page.url == f"{served.base}/saq/login"
    # Even the old cookie, put back by hand (a stolen copy), opens nothing any more.
    await page.context.add_cookies(
        [{"name": c["name"], "value": c["value"], "domain": c["domain"], "path": c["path"]} for c in cookies]
    )
    replayed = await page.goto(f"{served.base}/saq/")
    assert replayed is not None and page.url == f"{served.base}/saq/login"
    sent = replayed.request.redirected_from
    assert sent is not None and sent.url == f"{served.base}/saq/"
    assert f"saq_session={cookies[0]['value']}" in (await sent.all_headers()).get("cookie", "")
    forget_polls_cut_by_navigation(watch)
    watch.assert_clean()


async def test_a_page_whose_session_ends_elsewhere_goes_to_the_sign_in_page(
    served: ServerProcess, watched_page: WatchedPage, admin: User
) -> None:
    """The review's finding: once the session was over (expired, signed out in another tab, password
    changed) every poll got 401, the script threw on the problem it read as data, and the old numbers
    stayed on screen until a reload. The page's clock is Playwright's: its next poll is run, not
    waited for."""
    watch = await held_page_of(watched_page, served, admin, "/saq/queues/default")
    page = watch.page
    await expect(page.locator("hgroup h2")).to_have_text("default", timeout=RENDER_TIMEOUT_MS)
    other = await page.context.new_page()
    await other.goto(f"{served.base}/saq/")
    async with other.expect_navigation():
        await other.get_by_role("button", name="Sign out").click()
    assert other.url == f"{served.base}/saq/login"
    await other.close()
    async with page.expect_navigation(url=f"{served.base}/saq/login", timeout=RENDER_TIMEOUT_MS):
        await page.clock.run_for(2_000)  # the page's next poll
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    forget_the_polls_refused(watch, 401)
    watch.assert_clean()


async def test_a_refused_poll_is_shown_not_thrown(
    served: ServerProcess, watched_page: WatchedPage, admin: User
) -> None:
    """Any other refusal of the page's request (here a job that is not there: 404) is shown on the page;
    SAQ's script read the problem as the job and threw (``reading 'completed'``)."""
    watch = await signed_in_page(watched_page, served.base, admin)
    page = watch.page
    response = await page.goto(f"{served.base}/saq/queues/default/jobs/no-such-job")
    assert response is not None and response.status == 200
    await expect(page.locator("main h1")).to_have_text("Error", timeout=RENDER_TIMEOUT_MS)
    await expect(page.locator("main pre")).to_have_text(
        "404 Not found: No job 'no-such-job' in the default queue."
    )
    forget_the_polls_refused(watch, 404)
    watch.assert_clean()


async def finish_job(valkey_url: str, key: str, status: SaqStatus, queue: str = "default") -> None:
    """End a queued job as a worker would have (no worker runs beside the served app)."""
    async with saq_queues(valkey_url) as queues:
        job = await queues[queue].job(key)
        assert job is not None
        await queues[queue].finish(job, status, error="RuntimeError: failed in the test")


async def test_retry_is_offered_for_a_finished_job_only(
    served: ServerProcess, watched_page: WatchedPage, admin: User, valkey_url: str
) -> None:
    """Retry was on every job's page, and the server refuses (409) a job that has not finished: a
    queued job offers Abort only; once it has failed, Retry only, and the retry queues it again."""
    await enqueue_job(valkey_url, "browser-retry-offered", {"outbox_id": 4})
    watch = await held_page_of(watched_page, served, admin, "/saq/queues/default/jobs/browser-retry-offered")
    page = watch.page
    await expect(page.locator("figure tbody tr td").nth(5)).to_have_text("queued", timeout=RENDER_TIMEOUT_MS)
    await expect(page.get_by_role("button", name="Abort")).to_be_visible()
    await expect(page.get_by_role("button", name="Retry")).to_have_count(0)

    await finish_job(valkey_url, "browser-retry-offered", SaqStatus.FAILED)
    await page.reload()
    await expect(page.locator("figure tbody tr td").nth(5)).to_have_text("failed", timeout=RENDER_TIMEOUT_MS)
    await expect(page.get_by_role("button", name="Abort")).to_have_count(0)
    # pressed from the keyboard: Retry was a link without an href, which took no focus and no key
    await page.get_by_role("button", name="Retry").focus()
    async with page.expect_response(lambda r: r.url.endswith("/retry")) as answered:
        await page.keyboard.press("Enter")
    assert (await answered.value).status == 202
    async with saq_queues(valkey_url) as queues:
        job = await queues["default"].job("browser-retry-offered")
        assert job is not None and job.status == SaqStatus.QUEUED
    watch.assert_clean()


async def test_a_cron_jobs_waiting_run_offers_no_abort_and_a_queue_says_what_it_lists(
    served: ServerProcess, watched_page: WatchedPage, admin: User, valkey_url: str
) -> None:
    """Review browserrev: Abort was on every cron job's page, and the server refuses (409) a cron job's
    waiting run; and a queue's page listed ten unfinished jobs without saying so, nor where the
    finished ones are."""
    await enqueue_job(valkey_url, "cron:browser-waiting", {"outbox_id": 6})
    watch = await held_page_of(watched_page, served, admin, "/saq/queues/default/jobs/cron:browser-waiting")
    page = watch.page
    await expect(page.locator("figure tbody tr td").nth(5)).to_have_text("queued", timeout=RENDER_TIMEOUT_MS)
    await expect(page.get_by_role("button", name="Abort")).to_have_count(0)
    await page.goto(f"{served.base}/saq/queues/default")
    await expect(page.get_by_text("jobs not finished (the first ten)")).to_be_visible(
        timeout=RENDER_TIMEOUT_MS
    )
    watch.assert_clean()


async def test_a_job_not_started_shows_an_empty_bar_and_when_it_is_due(
    served: ServerProcess, watched_page: WatchedPage, admin: User, valkey_url: str
) -> None:
    """The new-user pass: a queued job's progress bar was animated (an indeterminate <progress>: the
    value 0 was never set), as if it ran, and a job due in an hour said only "queued"."""
    due = CLOCK_START + timedelta(hours=1)
    await enqueue_job(valkey_url, "browser-due-later", {"outbox_id": 7}, scheduled=int(due.timestamp()))
    await enqueue_job(valkey_url, "browser-due-now", {"outbox_id": 8})
    watch = await held_page_of(watched_page, served, admin, "/saq/queues/default/jobs/browser-due-later")
    page = watch.page
    status = page.locator("figure tbody tr td").nth(5)
    await expect(status).to_have_text(re.compile(r"^queued, due .+"), timeout=RENDER_TIMEOUT_MS)
    shown = await page.evaluate(f"new Date({int(due.timestamp()) * 1000}).toLocaleString()")
    await expect(status).to_have_text(f"queued, due {shown}")
    await expect(page.locator("progress")).to_have_attribute("value", "0")
    await page.goto(f"{served.base}/saq/queues/default/jobs/browser-due-now")
    await expect(page.locator("hgroup h2")).to_have_text("browser-due-now", timeout=RENDER_TIMEOUT_MS)
    await expect(page.locator("figure tbody tr td").nth(5)).to_have_text("queued")
    watch.assert_clean()


async def test_a_failed_retry_is_shown(
    served: ServerProcess, watched_page: WatchedPage, admin: User, valkey_url: str
) -> None:
    """Retry and Abort failed silently; now their refusal is on the page. (The job is deleted under
    the page, whose clock is held: no poll notices first.)"""
    await enqueue_job(valkey_url, "browser-retry-gone", {"outbox_id": 3})
    await finish_job(valkey_url, "browser-retry-gone", SaqStatus.FAILED)
    watch = await held_page_of(watched_page, served, admin, "/saq/queues/default/jobs/browser-retry-gone")
    page = watch.page
    retry = page.get_by_role("button", name="Retry")
    await expect(retry).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    async with saq_queues(valkey_url) as queues:
        queue: Any = queues["default"]  # a RedisQueue: its job is a key of its own
        assert await queue.redis.delete(queue.job_id("browser-retry-gone")) == 1
    await retry.click()
    await expect(page.get_by_role("alert")).to_contain_text(
        "404 Not found: No job 'browser-retry-gone'", timeout=RENDER_TIMEOUT_MS
    )
    forget_the_polls_refused(watch, 404)
    watch.assert_clean()


PHONE_WIDTH = 390
PHONE = {"viewport": {"width": PHONE_WIDTH, "height": 844}, "is_mobile": True, "has_touch": True}


@pytest.mark.parametrize(("path", "rendered"), [("/saq/", "Queues"), ("/saq/queues/orders", "Queue")])
async def test_the_dashboard_fits_a_phones_width(
    served: ServerProcess, watched_page: WatchedPage, admin: User, valkey_url: str, path: str, rendered: str
) -> None:
    """At 390 px the page was 489 px wide (877 px on a queue's page, its Status column off-screen): no
    table scrolled on its own, a job's key was a link holding its cell, and the sign-out form was a
    second bar. Now the page is as wide as the screen; each table scrolls within it."""
    await enqueue_job(valkey_url, "browser-phone-width-with-a-long-key", {"order_id": 1}, queue="orders")
    watch = await signed_in_page(watched_page, served.base, admin, **PHONE)
    page = watch.page
    response = await page.goto(f"{served.base}{path}")
    assert response is not None and response.status == 200
    await expect(page.locator("main h1")).to_have_text(rendered, timeout=RENDER_TIMEOUT_MS)
    await expect(page.locator("main tbody tr").first).to_be_visible()
    # (A phone's layout viewport widens to the content: the screen's width is the context's.)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE_WIDTH, f"the page is {width} px wide on a {PHONE_WIDTH} px screen"
    watch.assert_clean()


async def test_the_dashboards_pages_show_its_own_icon(
    served: ServerProcess, browser: Browser, admin: User
) -> None:
    """Every page of a browser's first visit asked for ``/favicon.ico``: a 404, logged as a console
    error. The pages now link the dashboard's own icon. Each page links it; the browser loads it (once:
    Chromium may answer a later page's icon from its own favicon store, without a request, which made
    this test wait in vain for a third load once in a full run) and asks for nothing else."""
    icon_url = f"{served.base}/saq/static/favicon.svg"
    async with icon_watch(browser) as watch:
        page = watch.page
        opened = await page.goto(f"{served.base}/saq/login")
        assert opened is not None and opened.status == 200
        assert await page.locator("link[rel=icon]").evaluate("link => link.href") == icon_url
        assert await watch.next_icon(RENDER_TIMEOUT_MS / 1000) == (200, icon_url)
        assert await sign_in(page, served.base, admin.email) == 200  # the sign-in page, then the dashboard
        await expect(page.locator("tbody[role=grid] td a", has_text="default")).to_be_visible(
            timeout=RENDER_TIMEOUT_MS
        )
        assert await page.locator("link[rel=icon]").evaluate("link => link.href") == icon_url
        await page.goto(f"{served.base}/saq/queues/default")
        await expect(page.locator("hgroup h2")).to_have_text("default", timeout=RENDER_TIMEOUT_MS)
        assert await page.locator("link[rel=icon]").evaluate("link => link.href") == icon_url
        while not watch.icons.empty():  # any later load is of the same icon
            assert watch.icons.get_nowait() == (200, icon_url)
        assert not watch.errors, watch.errors


async def test_member_is_forbidden(served: ServerProcess, watched_page: WatchedPage, member: User) -> None:
    watch = await watched_page()
    assert await sign_in(watch.page, served.base, member.email) == 403
    assert "for administrators" in await watch.page.content()
    assert await watch.page.context.cookies() == []
    assert_clean_but_the_pages_status(watch, 403)


async def test_anonymous_is_sent_to_the_sign_in_page(
    served: ServerProcess, watched_page: WatchedPage
) -> None:
    """No password prompt (no Basic challenge any more): the dashboard's own sign-in page."""
    watch = await watched_page()
    response = await watch.page.goto(f"{served.base}/saq")
    assert response is not None and response.status == 200
    assert watch.page.url == f"{served.base}/saq/login"
    await expect(watch.page.get_by_label("Email")).to_be_visible()
    await expect(watch.page.get_by_label("Password")).to_be_visible()
    watch.assert_clean()


async def test_wrong_password_is_refused(
    served: ServerProcess, watched_page: WatchedPage, admin: User
) -> None:
    watch = await watched_page()
    assert await sign_in(watch.page, served.base, admin.email, "not the password") == 401
    assert watch.page.url == f"{served.base}/saq/login"
    await expect(watch.page.get_by_role("alert")).to_have_text("Invalid email or password.")
    assert await watch.page.context.cookies() == []
    assert_clean_but_the_pages_status(watch, 401)


async def test_sign_in_while_valkey_is_down_shows_the_page(
    database_url: str, controlled_valkey: ControlledValkey, tmp_path: Path, watched_page: WatchedPage
) -> None:
    """With ``RATE_LIMIT_AUTH_FAIL_CLOSED`` and Valkey down the sign-in is refused 503: the person sees
    the sign-in page saying so, not a problem+json document."""
    passed = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    env = {"RATE_LIMIT_AUTH_FAIL_CLOSED": "true", "VALKEY_TIMEOUT_S": "0.5", **passed}
    server = ServerProcess(database_url, controlled_valkey.url, tmp_path, workers=1, env=env)
    server.start()
    try:
        server.wait_ready_sync()
        watch = await watched_page()
        opened = await watch.page.goto(f"{server.base}/saq/login")
        assert opened is not None and opened.status == 200
        controlled_valkey.stop()
        await watch.page.get_by_label("Email").fill("someone@example.com")
        await watch.page.get_by_label("Password").fill("whatever it is")
        async with watch.page.expect_navigation() as navigated:
            await watch.page.get_by_role("button", name="Sign in").click()
        response = await navigated.value
        assert response is not None and response.status == 503
        assert watch.page.url == f"{server.base}/saq/login"
        await expect(watch.page.get_by_role("alert")).to_have_text(
            "Sign-in is briefly unavailable; try again shortly."
        )
        await expect(watch.page.get_by_role("button", name="Sign in")).to_be_visible()
        assert await watch.page.context.cookies() == []
        assert_clean_but_the_pages_status(watch, 503)
    finally:
        server.kill(signal.SIGTERM)
