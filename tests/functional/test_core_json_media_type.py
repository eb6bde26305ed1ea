"""A JSON body declared as another media type is a 415 naming the type to send, not read as JSON.

Left alone in two closing notes, then found again at the front door: ``curl -d '{"name": "x"}'`` sends
``application/x-www-form-urlencoded`` and the project was created all the same, and a body sent as
``text/plain`` or XML was answered with a 400 about JSON syntax (or accepted, when it happened to be
JSON). A body without ``Content-Type`` is still read as JSON; the page-view ingest keeps taking
``text/plain`` (``navigator.sendBeacon``).
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import (
    Client,
    Team,
    assert_problem,
    bearer,
    create_user,
    generous_client,
    login,
    make_site,
    make_task,
    scalar,
)

NOT_JSON = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "application/xml",
    "multipart/form-data; boundary=x",
    "application/jsonp",
    "json",
    "application/json; charset=utf-16",
    'application/json; charset="latin-1"',
    "; charset=latin1",
    "application/json; charset=utf-8; charset=latin1",
    "application/json; charset",
]


@pytest.mark.parametrize("content_type", NOT_JSON)
async def test_a_body_declared_as_another_type_is_refused_and_changes_nothing(
    client: Client, db: AsyncConnection[Any], team: Team, content_type: str
) -> None:
    created = await client.post(
        "/api/projects",
        content=b'{"name": "Typed"}',
        headers=team.owner.headers | {"Content-Type": content_type},
    )
    assert_problem(created, 415, "unsupported-media-type")
    assert created.headers["accept-post"] == "application/json"
    assert "application/json" in created.json()["detail"]
    assert await scalar(db, "select count(*) from projects where name = 'Typed'") == 0

    task_id = await make_task(db, team.project, team.owner, title="kept")
    patched = await client.patch(
        f"/api/tasks/{task_id}",
        content=b'{"title": "changed"}',
        headers=team.editor.headers | {"Content-Type": content_type},
    )
    assert_problem(patched, 415, "unsupported-media-type")
    assert patched.headers["accept-patch"] == "application/json, application/merge-patch+json"
    assert await scalar(db, "select title from tasks where id = %s", task_id) == "kept"


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "Application/JSON; charset=UTF-8"},
        {"Content-Type": 'application/json; charset="utf8"'},
        {"Content-Type": 'application/json; profile="x;charset=latin1"; charset=us-ascii'},
        {"Content-Type": "application/json;"},
        {},
        {"Content-Type": ""},
    ],
    ids=[
        "json",
        "json with charset",
        "quoted utf8",
        "ascii, a quoted semicolon",
        "a trailing semicolon",
        "no content type",
        "an empty content type",
    ],
)
async def test_json_in_any_of_its_spellings_or_undeclared_is_read(
    client: Client, team: Team, headers: dict[str, str]
) -> None:
    created = await client.post(
        "/api/projects", content=b'{"name": "Declared"}', headers=team.owner.headers | headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "Declared"


async def test_authentication_comes_before_the_media_type(client: Client) -> None:
    refused = await client.post(
        "/api/projects", content=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_problem(refused, 401)


async def test_the_ingest_still_takes_a_beacon_as_text(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    site = await make_site(db, team.owner.id)
    sent = await client.post(
        "/api/page-views",
        content=f'{{"site_key": "{site.ingest_key}", "url": "https://example.com/a"}}'.encode(),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert sent.status_code == 202, sent.text


def test_every_json_body_documents_the_415(app: Litestar) -> None:
    paths = app.openapi_schema.to_schema()["paths"]
    bodies = [
        (path, method, operation)
        for path, item in paths.items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "requestBody" in operation
    ]
    assert len(bodies) > 30
    for path, method, operation in bodies:
        refused = operation["responses"].get("415")
        assert refused is not None, f"{method.upper()} {path}"
        assert "application/problem+json" in refused["content"], f"{method.upper()} {path}"
    projects = paths["/api/projects"]["post"]["responses"]["415"]["description"]
    assert "Content-Type" in projects
    ingest = paths["/api/page-views"]["post"]["responses"]["415"]["description"]
    assert "text/plain" in ingest
    patches = [(path, operation) for path, method, operation in bodies if method == "patch"]
    assert patches
    for path, operation in patches:  # what a PATCH takes, as documented as the routing takes it
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/json", "application/merge-patch+json"}, path
        assert content["application/merge-patch+json"] == content["application/json"], path


async def test_a_415_is_charged_and_comes_before_an_over_quota_429(
    settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    """What the module docstrings of ``app.core.routing`` and ``app.core.gate`` say of the 415: a body
    was read, so it spends the quota like any body refused; past the quota it is still the 415 (a
    retry cannot mend it), while a request that would be served is the 429."""
    user = await create_user(db, password_hash)
    async for api in generous_client(  # as many an hour: no window resets within the test
        settings, rate_limit_default_per_minute=3, rate_limit_default_per_hour=3
    ):
        headers = bearer((await login(api, user.email))["access_token"]) | {"Content-Type": "text/plain"}
        left = []
        for _ in range(3):
            refused = await api.post("/api/projects", content=b'{"name": "Typed"}', headers=headers)
            assert_problem(refused, 415, "unsupported-media-type")
            left.append(refused.headers["ratelimit"].rsplit(";r=", 1)[1].split(";")[0])
        assert left == ["2", "1", "0"]
        assert_problem(await api.post("/api/projects", content=b"{}", headers=headers), 415)
        json_headers = headers | {"Content-Type": "application/json"}
        assert_problem(await api.post("/api/projects", json={"name": "Typed"}, headers=json_headers), 429)
