"""``HEAD`` wherever ``GET`` is (RFC 9110 9.1, 9.3.2; ``app/core/head.py``): the ``GET``'s status and
headers without its body. Litestar answered 405 on every route without a ``HEAD`` handler of its own.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from tests.factories import Client, Team, assert_problem, make_task

COMPARED = ("content-type", "content-length", "cache-control", "etag", "x-content-type-options")


async def test_a_head_answers_the_gets_status_and_headers_without_a_body(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    task = await make_task(db, team.project, team.owner, title="t")
    for path in (f"/api/projects/{team.project}/tasks", f"/api/tasks/{task}", "/api/auth/me", "/api/feed"):
        got = await client.get(path, headers=team.editor.headers)
        head = await client.head(path, headers=team.editor.headers)
        assert (head.status_code, head.content) == (got.status_code, b""), path
        assert got.status_code == 200 and got.content, path
        assert {name: head.headers.get(name) for name in COMPARED} == {
            name: got.headers.get(name) for name in COMPARED
        }, path


async def test_a_head_is_judged_as_its_get(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    """The conditions, the authentication and the ownership of the ``GET`` hold for its ``HEAD``."""
    task = await make_task(db, team.project, team.owner, title="t")
    path = f"/api/tasks/{task}"
    etag = (await client.get(path, headers=team.editor.headers)).headers["etag"]
    held = await client.head(path, headers=team.editor.headers | {"If-None-Match": etag})
    assert (held.status_code, held.content) == (304, b"")
    stale = await client.head(path, headers=team.editor.headers | {"If-Match": '"99"'})
    assert (stale.status_code, stale.content) == (412, b"")
    assert (await client.head(path)).status_code == 401
    assert (await client.head(path, headers=team.outsider.headers)).status_code == 404


async def test_a_route_without_get_still_refuses_a_head(client: Client) -> None:
    """``Allow`` (of a 405, of ``OPTIONS``) names the documented methods: ``HEAD`` goes with ``GET``
    unsaid, as HTTP has it."""
    refused = await client.head("/api/auth/login")
    assert refused.status_code == 405
    assert "GET" not in refused.headers["allow"]


async def test_a_head_of_an_event_stream_ends_with_its_headers(client: Client, team: Team) -> None:
    """The stream is told the client has gone once its body would begin: it ends there."""
    head = await client.head(
        "/api/feed/stream", headers=team.viewer.headers | {"Accept": "text/event-stream"}
    )
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"].startswith("text/event-stream")
    assert_problem(await client.get("/api/feed/stream", headers={"Accept": "text/event-stream"}), 401)
