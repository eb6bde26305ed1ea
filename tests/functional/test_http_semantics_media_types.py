"""A body's declared media type is one the route applies, or a 415 (RFC 9110 15.5.16, RFC 5789).

The HTTP-semantics review found any ``application/*+json`` read as JSON: a JSON Patch
(``application/json-patch+json``, an array of operations) sent to a ``PATCH`` was answered 400
"Expected object, got array" instead of 415, and ``application/vnd.foo+json`` was accepted. A
``PATCH`` takes ``application/merge-patch+json`` (its updates are merge patches), no route another
``+json`` type. And the page-view ingest, which reads its own bodies, took any type at all: a view
sent as XML, PNG, a form or UTF-16 JSON was stored (decoded as UTF-8).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db.models import UserRole
from tests.factories import (
    Client,
    Team,
    assert_problem,
    make_product,
    make_site,
    make_task,
    make_user,
    scalar,
)

PATCH_TYPES = "application/json, application/merge-patch+json"


def assert_unsupported(response: httpx.Response, accept: str, accepted: str) -> None:
    assert_problem(response, 415, "unsupported-media-type")
    assert response.headers[accept] == accepted


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json-patch+json", b'[{"op": "replace", "path": "/title", "value": "changed"}]'),
        ("application/json-patch+json", b'{"title": "changed"}'),
        ("application/vnd.foo+json", b'{"title": "changed"}'),
        ("application/problem+json", b'{"title": "changed"}'),
        ("application/merge-patch+json; charset=utf-16", b'{"title": "changed"}'),
    ],
)
async def test_a_patch_in_another_json_type_is_a_415_naming_both_it_takes(
    client: Client, db: AsyncConnection[Any], team: Team, content_type: str, body: bytes
) -> None:
    task_id = await make_task(db, team.project, team.owner, title="kept")
    patched = await client.patch(
        f"/api/tasks/{task_id}", content=body, headers=team.editor.headers | {"Content-Type": content_type}
    )
    assert_unsupported(patched, "accept-patch", PATCH_TYPES)
    assert "application/merge-patch+json" in patched.json()["detail"]
    assert await scalar(db, "select title from tasks where id = %s", task_id) == "kept"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/merge-patch+json",
        "Application/Merge-Patch+JSON; charset=UTF-8",
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json;",
        None,
    ],
)
async def test_a_merge_patch_or_json_patches_a_task(
    client: Client, db: AsyncConnection[Any], team: Team, content_type: str | None
) -> None:
    task_id = await make_task(db, team.project, team.owner, title="kept")
    declared = {"Content-Type": content_type} if content_type is not None else {}
    patched = await client.patch(
        f"/api/tasks/{task_id}",
        content=b'{"title": "changed", "due_date": null}',
        headers=team.editor.headers | declared,
    )
    assert patched.status_code == 200, patched.text
    assert await scalar(db, "select title from tasks where id = %s", task_id) == "changed"


@pytest.mark.parametrize(
    "content_type", ["application/vnd.foo+json", "application/merge-patch+json", "application/ld+json"]
)
async def test_a_creation_in_another_json_type_is_a_415(
    client: Client, db: AsyncConnection[Any], team: Team, content_type: str
) -> None:
    """A merge patch is a ``PATCH``'s: a ``POST`` takes ``application/json`` alone."""
    created = await client.post(
        "/api/projects",
        content=b'{"name": "Typed"}',
        headers=team.owner.headers | {"Content-Type": content_type},
    )
    assert_unsupported(created, "accept-post", "application/json")
    assert await scalar(db, "select count(*) from projects where name = 'Typed'") == 0


INGEST_TYPES = "application/json, text/plain"


@pytest.mark.parametrize("path", ["/api/page-views", "/api/page-views/batch"])
@pytest.mark.parametrize(
    "content_type",
    [
        "application/xml",
        "image/png",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "text/plain; charset=latin1",
        "text/html",
        "application/vnd.foo+json",
    ],
)
async def test_a_page_view_declared_as_another_type_is_a_415_and_not_stored(
    client: Client, db: AsyncConnection[Any], team: Team, path: str, content_type: str
) -> None:
    site = await make_site(db, team.owner.id)
    view = f'{{"site_key": "{site.ingest_key}", "url": "https://example.com/a"}}'
    body = view if path == "/api/page-views" else f'{{"views": [{view}]}}'
    sent = await client.post(path, content=body.encode(), headers={"Content-Type": content_type})
    assert_unsupported(sent, "accept-post", INGEST_TYPES)
    assert await scalar(db, "select count(*) from page_views where site_id = %s", site.id) == 0


@pytest.mark.parametrize("path", ["/api/page-views", "/api/page-views/batch"])
@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=UTF-8",
        "application/json;charset=utf-8",
        "text/plain;charset=UTF-8",
        "text/plain",
        'Text/Plain; charset="utf-8"',
        "text/plain;",
        "",
        None,
    ],
)
async def test_a_page_view_as_json_or_text_in_utf8_or_undeclared_is_stored(
    client: Client, db: AsyncConnection[Any], team: Team, path: str, content_type: str | None
) -> None:
    site = await make_site(db, team.owner.id)
    view = f'{{"site_key": "{site.ingest_key}", "url": "https://example.com/a"}}'
    body = view if path == "/api/page-views" else f'{{"views": [{view}]}}'
    declared = {"Content-Type": content_type} if content_type is not None else {}
    sent = await client.post(path, content=body.encode(), headers=declared)
    assert sent.status_code == 202, sent.text
    assert await scalar(db, "select count(*) from page_views where site_id = %s", site.id) == 1


async def test_a_patch_nulls_only_what_may_be_removed(
    client: Client, app: Litestar, db: AsyncConnection[Any], team: Team
) -> None:
    """A merge patch's null removes (RFC 7396): a task's assignee or due date. Every other field is
    one every resource has, and its null was taken for "left out": a 200 that changed nothing. Now
    it is the 400 naming the field, and nothing changes."""
    task_id = await make_task(db, team.project, team.owner, title="kept")
    product_id = await make_product(db, name="Kept")
    admin = await make_user(db, app, UserRole.ADMIN)
    for url, headers, field in (
        (f"/api/tasks/{task_id}", team.editor.headers, "title"),
        (f"/api/tasks/{task_id}", team.editor.headers, "status"),
        (f"/api/tasks/{task_id}", team.editor.headers, "position"),
        (f"/api/projects/{team.project}", team.owner.headers, "name"),
        (f"/api/projects/{team.project}", team.owner.headers, "archived"),
        (f"/api/products/{product_id}", admin.headers, "price"),
        (f"/api/products/{product_id}", admin.headers, "active"),
        ("/api/auth/me", team.editor.headers, "display_name"),
        (f"/api/admin/users/{team.viewer.id}", admin.headers, "role"),
    ):
        nulled = await client.patch(
            url,
            content=b'{"%s": null}' % field.encode(),
            headers=headers | {"Content-Type": "application/merge-patch+json"},
        )
        assert_problem(nulled, 400, "validation", fields={field})
    assert await scalar(db, "select title from tasks where id = %s", task_id) == "kept"
    removed = await client.patch(
        f"/api/tasks/{task_id}",
        content=b'{"due_date": null, "assignee_id": null}',
        headers=team.editor.headers | {"Content-Type": "application/merge-patch+json"},
    )
    assert removed.status_code == 200, removed.text
