"""The answers of projects, tasks and invitations carry what their neighbours carry.

Review: creating a task or a project answered 201 without an ``ETag``, although GET and PATCH of the
same object carry one (the version was only in the body), and the schema documented none; and the
invitation answers (a project's list, the invitee's ``/api/me/invitations``, the invite's own answer)
showed ``created_at`` but not when the invitation expires (``INVITATION_TTL_S`` after it, the rule of
``sql/queries/projects.sql``). Now the 201 carries the ETag a GET of the new object answers (a replay
too, documented like GET's), and every invitation answer carries ``expires_at``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import Actor, Client, Team, make_user


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_a_created_project_answers_the_etag_its_get_answers(client: Client, team: Team) -> None:
    created = await client.post("/api/projects", json={"name": "Gemini"}, headers=team.editor.headers)
    assert created.status_code == 201, created.text
    read = await client.get(f"/api/projects/{created.json()['id']}", headers=team.editor.headers)
    assert read.status_code == 200, read.text
    assert created.headers.get("etag") == read.headers["etag"] == f'"{created.json()["version"]}"'


async def test_a_created_task_answers_the_etag_its_get_answers(client: Client, team: Team) -> None:
    created = await client.post(
        f"/api/projects/{team.project}/tasks", json={"title": "Launch"}, headers=team.editor.headers
    )
    assert created.status_code == 201, created.text
    read = await client.get(f"/api/tasks/{created.json()['id']}", headers=team.editor.headers)
    assert read.status_code == 200, read.text
    assert created.headers.get("etag") == read.headers["etag"] == f'"{created.json()["version"]}"'


async def test_a_replayed_creation_answers_the_etag_of_the_version_it_shows(
    client: Client, team: Team
) -> None:
    """A retry with the same idempotency key replays the first answer: its ETag is the one of the body
    (the version the object was created at), also once the object has changed since."""
    for url, body, get_url in (
        ("/api/projects", {"name": "Gemini"}, "/api/projects/{id}"),
        (f"/api/projects/{team.project}/tasks", {"title": "Launch"}, "/api/tasks/{id}"),
    ):
        headers = team.editor.headers | {"Idempotency-Key": f"create {url}"}
        first = await client.post(url, json=body, headers=headers)
        assert first.status_code == 201, first.text
        changed = await client.patch(
            get_url.format(id=first.json()["id"]),
            json={"title" if "tasks" in url else "name": "Renamed"},
            headers=team.editor.headers,
        )
        assert changed.status_code == 200, changed.text
        replayed = await client.post(url, json=body, headers=headers)
        assert replayed.status_code == 201, replayed.text
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json() == first.json()
        assert first.headers.get("etag") == replayed.headers.get("etag") == '"1"', url
        assert changed.headers["etag"] == '"2"'


async def test_the_schema_documents_the_etag_of_creations_as_of_gets(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    for created, read in (
        (paths["/api/projects"]["post"], paths["/api/projects/{project_id}"]["get"]),
        (paths["/api/projects/{project_id}/tasks"]["post"], paths["/api/tasks/{task_id}"]["get"]),
    ):
        documented = created["responses"]["201"].get("headers", {})
        assert documented.get("ETag") == read["responses"]["200"]["headers"]["ETag"]
        assert "Idempotent-Replayed" in documented


async def invited(client: Client, team: Team, invitee: Actor) -> dict[str, Any]:
    sent = await client.post(
        f"/api/projects/{team.project}/invitations",
        json={"email": invitee.email, "role": "editor"},
        headers=team.owner.headers,
    )
    assert sent.status_code == 201, sent.text
    answer: dict[str, Any] = sent.json()
    return answer


async def test_every_invitation_answer_says_when_it_expires(
    client: Client, db: AsyncConnection[Any], app: Litestar, settings: Settings, team: Team
) -> None:
    invitee = await make_user(db, app, name="Ines")
    sent = await invited(client, team, invitee)
    ttl = timedelta(seconds=settings.invitation_ttl_s)
    assert moment(sent["expires_at"]) == moment(sent["created_at"]) + ttl

    listed = await client.get(f"/api/projects/{team.project}/invitations", headers=team.owner.headers)
    assert listed.status_code == 200, listed.text
    mine = await client.get("/api/me/invitations", headers=invitee.headers)
    assert mine.status_code == 200, mine.text
    for answer in (listed, mine):
        [item] = answer.json()["items"]
        assert (item["id"], item["created_at"]) == (sent["id"], sent["created_at"])
        assert moment(item["expires_at"]) == moment(sent["expires_at"])

    # The instant the SQL's rule stops listing it: just before expires_at it is listed, from it on not.
    for ago, still_listed in ((ttl - timedelta(seconds=30), True), (ttl, False)):
        await db.execute(
            "update project_invitations set created_at = now() - %s where id = %s", (ago, sent["id"])
        )
        stored = await db.execute("select created_at from project_invitations where id = %s", (sent["id"],))
        row = await stored.fetchone()
        assert row is not None
        answer = await client.get("/api/me/invitations", headers=invitee.headers)
        items = answer.json()["items"]
        assert len(items) == (1 if still_listed else 0)
        if still_listed:
            assert moment(items[0]["expires_at"]) == row[0] + ttl


async def test_the_schema_documents_expires_at(client: Client) -> None:
    schemas = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]
    for name in ("InvitationOut", "SentInvitationOut", "MyInvitationOut"):
        [key] = [
            key for key in schemas if key == name or key.endswith(f".{name}") or key.endswith(f"_{name}")
        ]
        assert "expires_at" in schemas[key]["required"], name
        assert "INVITATION_TTL_S" in schemas[key]["properties"]["expires_at"]["description"], name
