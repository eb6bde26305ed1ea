"""The watch that the browser tests rely on does catch what they assert against."""

from __future__ import annotations

import pytest

from tests.browser.conftest import WatchedPage
from tests.served import ServerProcess


async def test_requests_to_other_hosts_are_blocked_and_reported(
    served: ServerProcess, watched_page: WatchedPage
) -> None:
    watch = await watched_page()
    await watch.page.goto(f"{served.base}/health/live")
    # "localhost" is not 127.0.0.1 to the watch, so even a broken gate sends nothing off the machine.
    outcome = await watch.page.evaluate(
        "fetch('http://localhost:9/from-a-cdn.js').then(() => 'loaded', (error) => 'blocked')"
    )
    assert outcome == "blocked"
    assert watch.outside == ["http://localhost:9/from-a-cdn.js"]
    with pytest.raises(AssertionError, match=r"requests left 127\.0\.0\.1"):
        watch.assert_clean()


async def test_script_errors_are_reported(served: ServerProcess, watched_page: WatchedPage) -> None:
    watch = await watched_page()
    await watch.page.goto(f"{served.base}/health/live")
    async with watch.page.expect_event("pageerror"):
        await watch.page.evaluate("setTimeout(() => { throw new Error('boom from the page') }, 0)")
    with pytest.raises(AssertionError, match="boom from the page"):
        watch.assert_clean()
