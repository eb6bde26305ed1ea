"""An invitation is accepted with the secret token its answer carried, not by owning the email.

Review (HIGH): invitations were matched on ``users.email`` alone and registration proves no control
of an address (there is no mail here), so whoever registered an invited address first accepted the
invitation and read the private project. Now ``POST /invitations`` answers a token, shown once and
stored only as its SHA-256; the owner hands it to the invitee, who accepts with it *and* the email.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import httpx
from psycopg import AsyncConnection

from app.db import projects as project_queries
from app.db.models import ProjectRole
from tests.factories import (
    Actor,
    Client,
    Team,
    assert_problem,
    create_user,
    make_project,
    make_user,
    mint_headers,
)

URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


async def invite(
    client: Client, owner: Actor, project: int, email: str, role: str = "editor"
) -> dict[str, Any]:
    sent = await client.post(
        f"/api/projects/{project}/invitations", json={"email": email, "role": role}, headers=owner.headers
    )
    assert sent.status_code == 201, sent.text
    answer: dict[str, Any] = sent.json()
    return answer


async def accept(client: Client, who: Actor, invitation: int, body: Any) -> httpx.Response:
    return await client.post(f"/api/me/invitations/{invitation}/accept", json=body, headers=who.headers)


def as_compared(problem: dict[str, Any]) -> dict[str, Any]:
    """A problem without what names the request (its id, its path)."""
    return {key: value for key, value in problem.items() if key not in {"request_id", "instance"}}


async def register(db: AsyncConnection[Any], client: Client, email: str) -> Actor:
    """An account whoever registers an address gets: nothing proves they control it."""
    user = await create_user(db, email=email, display_name="Not the colleague")
    return Actor(user.id, user.email, user.display_name, user.role, mint_headers(client.app, user.id))  # type: ignore[arg-type]


async def test_whoever_registers_an_invited_address_cannot_join_without_the_token(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    colleague = f"colleague-{team.project}@corp.example.com"
    sent = await invite(client, team.owner, team.project, colleague)
    squatter = await register(db, client, colleague)

    for body in ({"token": "guessed"}, {}, {"token": ""}):
        assert_problem(await accept(client, squatter, sent["id"], body), 404, "not-found")
    assert_problem(await accept(client, squatter, sent["id"], {"token": sent["token"][:-1]}), 404)
    no_body = await client.post(f"/api/me/invitations/{sent['id']}/accept", headers=squatter.headers)
    assert no_body.status_code in (400, 404), no_body.text
    assert_problem(await client.get(f"/api/projects/{team.project}", headers=squatter.headers), 404)
    assert await project_queries.get_member_role(db, project_id=team.project, user_id=squatter.id) is None

    # the invitation is still there for the colleague the owner hands the token to
    listed = (
        await client.get(f"/api/projects/{team.project}/invitations", headers=team.owner.headers)
    ).json()
    assert [item["id"] for item in listed["items"]] == [sent["id"]]


async def test_the_token_holder_with_the_email_joins_and_the_token_is_used_up(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    sent = await invite(client, team.owner, team.project, team.outsider.email)
    token = sent["token"]
    assert isinstance(token, str) and URL_SAFE.fullmatch(token), token
    assert len(token) >= 22, "at least 128 bits of base64url"

    # the token alone is not enough: another account presenting it gets the 404 of a missing invitation
    assert_problem(await accept(client, team.editor, sent["id"], {"token": token}), 404, "not-found")

    joined = await accept(client, team.outsider, sent["id"], {"token": token})
    assert joined.status_code == 200, joined.text
    assert (joined.json()["id"], joined.json()["my_role"]) == (team.project, "editor")
    role = await project_queries.get_member_role(db, project_id=team.project, user_id=team.outsider.id)
    assert role == ProjectRole.EDITOR
    assert_problem(await accept(client, team.outsider, sent["id"], {"token": token}), 404, "not-found")


async def test_inviting_again_issues_a_new_token_and_the_old_one_stops_working(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    first = await invite(client, team.owner, team.project, team.outsider.email, role="viewer")
    second = await invite(client, team.owner, team.project, team.outsider.email, role="editor")
    assert second["id"] == first["id"], "one invitation per (project, email), updated"
    assert second["token"] != first["token"]

    assert_problem(await accept(client, team.outsider, first["id"], {"token": first["token"]}), 404)
    joined = await accept(client, team.outsider, second["id"], {"token": second["token"]})
    assert joined.status_code == 200, joined.text
    assert joined.json()["my_role"] == "editor"


async def test_a_wrong_token_is_answered_exactly_like_an_invitation_that_does_not_exist(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    sent = await invite(client, team.owner, team.project, team.outsider.email)
    wrong = assert_problem(await accept(client, team.outsider, sent["id"], {"token": "x" * 43}), 404)
    missing = assert_problem(await accept(client, team.outsider, sent["id"], {}), 404)
    nowhere = assert_problem(await accept(client, team.outsider, sent["id"] + 1000, {"token": "x" * 43}), 404)
    assert as_compared(wrong) == as_compared(missing) == as_compared(nowhere)

    too_long = await accept(client, team.outsider, sent["id"], {"token": "x" * 1000})
    assert_problem(too_long, 400, "validation", {"token"})
    unknown_field = await accept(client, team.outsider, sent["id"], {"token": sent["token"], "role": "owner"})
    assert_problem(unknown_field, 400)
    assert (
        await project_queries.get_member_role(db, project_id=team.project, user_id=team.outsider.id) is None
    )


async def test_the_token_is_shown_once_and_stored_only_as_its_hash(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    sent = await invite(client, team.owner, team.project, team.outsider.email)
    token = sent["token"]
    owners = await client.get(f"/api/projects/{team.project}/invitations", headers=team.owner.headers)
    invitees = await client.get("/api/me/invitations", headers=team.outsider.headers)
    for listed in (owners, invitees):
        assert listed.status_code == 200, listed.text
        assert [item["id"] for item in listed.json()["items"]] == [sent["id"]]
        assert "token" not in listed.json()["items"][0]
        assert token not in listed.text

    row = await (
        await db.execute("select * from project_invitations where id = %s", (sent["id"],))
    ).fetchone()
    assert row is not None
    assert token not in repr(row)
    stored = await (
        await db.execute("select token_sha256 from project_invitations where id = %s", (sent["id"],))
    ).fetchone()
    assert stored is not None and bytes(stored[0]) == hashlib.sha256(token.encode()).digest()


async def test_an_invitation_without_a_token_cannot_be_accepted_nor_declined(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Invitations waiting when tokens came have none (the migration keeps them, unusable until they
    expire): the owner invites the email again to issue one."""
    other = await make_project(db, team.owner, name="Gemini")
    legacy = []
    for project in (team.project, other):
        row = await (
            await db.execute(
                "insert into project_invitations (project_id, email, role)"
                " values (%s, %s, 'editor') returning id",
                (project, team.outsider.email),
            )
        ).fetchone()
        assert row is not None
        legacy.append(row[0])

    for body in ({}, {"token": ""}):
        assert_problem(await accept(client, team.outsider, legacy[0], body), 404, "not-found")
        declined = await client.post(
            f"/api/me/invitations/{legacy[1]}/decline", json=body, headers=team.outsider.headers
        )
        assert_problem(declined, 404, "not-found")

    again = await invite(client, team.owner, team.project, team.outsider.email)
    assert again["id"] == legacy[0]
    joined = await accept(client, team.outsider, again["id"], {"token": again["token"]})
    assert joined.status_code == 200, joined.text


async def test_declining_takes_the_token_and_only_the_invitee_may(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Registration proves no control of an email: whoever registered the invited address first
    declined every invitation sent to it, with no token (appsec review). Declining takes the proof
    accepting takes; without it the invitation waits for the one holding the token."""
    sent = await invite(client, team.owner, team.project, team.outsider.email)
    url = f"/api/me/invitations/{sent['id']}/decline"
    stranger = await make_user(db, client.app, name="Stranger")  # type: ignore[arg-type]
    other = await client.post(url, json={"token": sent["token"]}, headers=stranger.headers)
    assert_problem(other, 404, "not-found")
    for body in (
        {},
        {"token": ""},
        {"token": sent["token"][:-1] + ("y" if sent["token"].endswith("x") else "x")},
    ):
        squatted = await client.post(url, json=body, headers=team.outsider.headers)
        assert_problem(squatted, 404, "not-found")
    owners = await client.get(f"/api/projects/{team.project}/invitations", headers=team.owner.headers)
    assert [item["id"] for item in owners.json()["items"]] == [sent["id"]], "still waiting"
    declined = await client.post(url, json={"token": sent["token"]}, headers=team.outsider.headers)
    assert declined.status_code == 204, declined.text
    assert_problem(await accept(client, team.outsider, sent["id"], {"token": sent["token"]}), 404)
