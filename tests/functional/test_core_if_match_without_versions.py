"""``If-Match`` on a write whose resource has no versions (RFC 9110 13.1.1): no entity-tag can match,
so the condition is false and nothing changes (412), unless it is ``*``.

A comment, a membership or a collection has no ``ETag``; the header was ignored there, and a client
that sent it to avoid a lost update had its change applied unconditionally (the idempotency
reviewer: a comment PATCH with ``If-Match: "999"`` answered 200). Routes that take ``If-Match``
(tasks, projects, products) compare it with their version as before."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from psycopg import AsyncConnection

from app.core.gate import takes_if_match
from app.core.preconditions import ETAG_HEADER
from tests.factories import Client, Team, assert_problem, make_task, scalar


@pytest.fixture
async def comment_url(client: Client, db: AsyncConnection[Any], team: Team) -> str:
    task_id = await make_task(db, team.project, team.owner, title="t")
    created = await client.post(
        f"/api/tasks/{task_id}/comments", json={"body": "first"}, headers=team.editor.headers
    )
    assert created.status_code == 201, created.text
    return f"/api/tasks/{task_id}/comments/{created.json()['id']}"


@pytest.mark.parametrize("if_match", ['"999"', '"1"', 'W/"1"', '"1", "2"'])
async def test_a_tag_on_a_resource_without_versions_changes_nothing(
    client: Client, db: AsyncConnection[Any], team: Team, comment_url: str, if_match: str
) -> None:
    edited = await client.patch(
        comment_url, json={"body": "edited"}, headers=team.editor.headers | {"If-Match": if_match}
    )
    assert_problem(edited, 412, "precondition-failed")
    member = await client.patch(
        f"/api/projects/{team.project}/members/{team.viewer.id}",
        json={"role": "editor"},
        headers=team.owner.headers | {"If-Match": if_match},
    )
    assert_problem(member, 412, "precondition-failed")
    created = await client.post(
        "/api/projects", json={"name": "Conditional"}, headers=team.owner.headers | {"If-Match": if_match}
    )
    assert_problem(created, 412, "precondition-failed")
    assert await scalar(db, "select body from comments order by id desc limit 1") == "first"
    assert (
        await scalar(
            db,
            "select role::text from project_members where project_id = %s and user_id = %s",
            team.project,
            team.viewer.id,
        )
        == "viewer"
    )
    assert await scalar(db, "select count(*) from projects where name = 'Conditional'") == 0


async def test_any_version_is_the_resource_existing(client: Client, team: Team, comment_url: str) -> None:
    edited = await client.patch(
        comment_url, json={"body": "edited"}, headers=team.editor.headers | {"If-Match": "*"}
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["body"] == "edited"


async def test_authentication_comes_first_and_versioned_routes_compare_as_before(
    client: Client, db: AsyncConnection[Any], team: Team, comment_url: str
) -> None:
    assert_problem(await client.patch(comment_url, json={"body": "x"}, headers={"If-Match": '"1"'}), 401)
    task_id = await make_task(db, team.project, team.owner, title="versioned")
    renamed = await client.patch(
        f"/api/tasks/{task_id}", json={"title": "renamed"}, headers=team.editor.headers | {"If-Match": '"1"'}
    )
    assert renamed.status_code == 200, renamed.text


async def test_the_refusal_is_counted_malformed_is_a_400_and_logout_always_works(
    client: Client, db: AsyncConnection[Any], team: Team, comment_url: str
) -> None:
    """The first version answered before the rate limit (400 conditions in 0.3 s, never a 429), a
    malformed value 412 where a versioned route says 400, and a logout with ``If-Match`` 412 (the diff
    reviewer)."""
    refused = await client.delete(comment_url, headers=team.editor.headers | {"If-Match": '"1"'})
    assert_problem(refused, 412, "precondition-failed")
    assert "ratelimit" in refused.headers and "ratelimit-policy" in refused.headers  # counted
    malformed = await client.delete(comment_url, headers=team.editor.headers | {"If-Match": "garbage"})
    assert_problem(malformed, 400, "validation", {"header.If-Match"})
    logout = await client.post("/api/auth/logout", headers=team.viewer.headers | {"If-Match": '"1"'})
    assert logout.status_code == 204, logout.text


async def test_the_schema_documents_the_412_where_the_route_layer_answers_it(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    comment = paths["/api/tasks/{task_id}/comments/{comment_id}"]
    assert {"412"} <= set(comment["patch"]["responses"]) & set(comment["delete"]["responses"])
    assert "412" not in paths["/api/auth/logout"]["post"]["responses"]
    assert "412" not in paths["/api/page-views"]["post"]["responses"]


async def test_a_change_with_if_none_match_any_changes_nothing_where_the_resource_exists(
    client: Client, db: AsyncConnection[Any], team: Team, comment_url: str
) -> None:
    """``If-None-Match: *`` on a change means "only if it does not exist" (RFC 9110 13.1.2): the
    comment, and the collection a POST creates in, exist, so nothing is done (412). It was ignored
    and the change applied (the HTTP-semantics reviewer). A list of tags holds (none can name a
    resource without versions), and a read ignores the header (its whole answer is always right)."""
    none_any = team.editor.headers | {"If-None-Match": "*"}
    assert_problem(await client.patch(comment_url, json={"body": "x"}, headers=none_any), 412)
    assert_problem(await client.delete(comment_url, headers=none_any), 412, "precondition-failed")
    project = await client.post("/api/projects", json={"name": "New"}, headers=none_any)
    assert_problem(project, 412, "precondition-failed")
    assert await scalar(db, "select body from comments order by id desc limit 1") == "first"
    assert await scalar(db, "select count(*) from projects where name = 'New'") == 0
    tags = team.editor.headers | {"If-None-Match": '"1", W/"2"'}
    edited = await client.patch(comment_url, json={"body": "edited"}, headers=tags)
    assert edited.status_code == 200, edited.text
    listed = await client.get(f"/api/projects/{team.project}/tasks", headers=none_any)
    assert listed.status_code == 200, listed.text
    malformed = await client.delete(comment_url, headers=team.editor.headers | {"If-None-Match": "x"})
    assert_problem(malformed, 400, "validation", {"header.If-None-Match"})


async def test_a_read_with_a_tag_in_if_match_is_a_412_where_nothing_has_versions(
    client: Client, team: Team, comment_url: str
) -> None:
    """An origin server evaluates ``If-Match`` before any method, reads included (13.1.1, 13.2.1):
    a list without versions can name no tag."""
    tasks = f"/api/projects/{team.project}/tasks"
    refused = await client.get(tasks, headers=team.editor.headers | {"If-Match": '"1"'})
    assert_problem(refused, 412, "precondition-failed")
    answered = await client.get(tasks, headers=team.editor.headers | {"If-Match": "*"})
    assert answered.status_code == 200, answered.text


async def test_a_versioned_read_takes_if_match_itself(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """The route layer refuses a tag sent to a route that takes no ``If-Match``: a project's GET,
    which answers an ``ETag``, refused its own current one (the diff reviewer)."""
    url = f"/api/projects/{team.project}"
    tag = (await client.get(url, headers=team.owner.headers)).headers["etag"]
    read = await client.get(url, headers=team.owner.headers | {"If-Match": tag})
    assert read.status_code == 200, read.text
    assert_problem(await client.get(url, headers=team.owner.headers | {"If-Match": '"99"'}), 412)


def test_every_route_that_answers_an_etag_takes_if_match(app: Litestar) -> None:
    """Else the route layer takes its resource for one without versions (``takes_if_match``)."""
    answering = [
        handler
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler, _ in route.route_handler_map.values()
        if ETAG_HEADER in (handler.response_headers or ())
    ]
    assert len(answering) >= 6
    assert [handler.handler_name for handler in answering if not takes_if_match(handler)] == []
