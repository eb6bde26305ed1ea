"""A problem answer's ``type`` is a page that says what the problem means (RFC 9457 3.1.1).

Review httpsem (carried since): the types were relative URIs under ``/problems/`` that answered a
404 problem of their own. ``app.core.problem_types`` serves one plain HTML page per type the app
answers, and an index of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.core.problem_types import problem_types
from tests.factories import Team, assert_problem


async def test_a_problems_type_is_a_page_saying_what_it_means(
    client: AsyncTestClient[Litestar], team: Team
) -> None:
    for problem in (
        await client.get("/api/projects/999999999", headers=team.viewer.headers),
        await client.get("/api/projects?limit=abc", headers=team.viewer.headers),
        await client.get("/api/projects"),
    ):
        body = problem.json()
        page = await client.get(body["type"])
        assert page.status_code == 200, (body, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert body["title"] in page.text and f"HTTP {body['status']}" in page.text
        assert "http://" not in page.text and "https://" not in page.text, "nothing from outside the app"
        assert "`" not in page.text, "code spans are <code>, not backticks"


async def test_every_listed_type_has_its_page_and_an_unknown_one_is_a_404(
    client: AsyncTestClient[Litestar],
) -> None:
    index = await client.get("/problems")
    assert index.status_code == 200
    links = re.findall(r'href="(/problems/[a-z0-9-]+)"', index.text)
    assert {"/problems/not-found", "/problems/validation", "/problems/precondition-failed"} <= set(links)
    assert "/problems/task-limit" in links, "a domain's own problem type"
    for link in links:
        assert (await client.get(link)).status_code == 200, link
    assert_problem(await client.get("/problems/no-such-problem"), 404, "not-found")


def test_the_gateways_own_problems_have_their_pages_with_the_same_status_and_title() -> None:
    """Review docsrev: nginx answers problems of its own (``deploy/nginx.conf``), six of whose types
    had no page, and its 500 named another type and title than the app's."""
    gateway = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
    answered = re.findall(
        r'"type":"/problems/([a-z0-9-]+)","title":"([^"]+)","status":(\d+)', gateway.read_text()
    )
    assert len(answered) >= 10
    known = problem_types()
    for slug, title, status in answered:
        assert slug in known, slug
        assert (known[slug].title, known[slug].status) == (title, int(status)), slug
