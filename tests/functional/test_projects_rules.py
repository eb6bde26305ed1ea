"""Business rules of projects and their members over HTTP: owners, membership, archiving, names."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import AsyncConnection

from app.db import projects as project_queries
from app.db.models import ProjectRole
from tests.factories import (
    Client,
    Team,
    answer_racing,
    assert_page_size_is_capped,
    assert_problem,
    make_project,
    make_task,
    make_user,
)


async def role_of(db: AsyncConnection[Any], project_id: int, user_id: int) -> ProjectRole | None:
    return await project_queries.get_member_role(db, project_id=project_id, user_id=user_id)


async def assignee_of(db: AsyncConnection[Any], task_id: int) -> int | None:
    row = await (await db.execute("select assignee_id from tasks where id = %s", (task_id,))).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# -- leaving clears assignments -----------------------------------------------------------------------


async def test_removing_a_member_clears_their_assignments_in_that_project_only(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    other_project = await make_project(db, team.owner, {team.editor.id: ProjectRole.EDITOR})
    here = [await make_task(db, team.project, team.owner, assignee=team.editor) for _ in range(2)]
    someone_else = await make_task(db, team.project, team.owner, assignee=team.viewer)
    there = await make_task(db, other_project, team.owner, assignee=team.editor)

    response = await client.delete(
        f"/api/projects/{team.project}/members/{team.editor.id}", headers=team.owner.headers
    )
    assert response.status_code == 204, response.text

    assert await role_of(db, team.project, team.editor.id) is None
    assert [await assignee_of(db, task_id) for task_id in here] == [None, None]
    assert await assignee_of(db, someone_else) == team.viewer.id
    assert await assignee_of(db, there) == team.editor.id
    assert_problem(await client.get(f"/api/tasks/{here[0]}", headers=team.editor.headers), 404, "not-found")


async def test_a_member_leaving_clears_their_assignments_too(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    task_id = await make_task(db, team.project, team.owner, assignee=team.viewer)
    response = await client.delete(
        f"/api/projects/{team.project}/members/{team.viewer.id}", headers=team.viewer.headers
    )
    assert response.status_code == 204, response.text
    assert await assignee_of(db, task_id) is None
    assert await role_of(db, team.project, team.viewer.id) is None


# -- owners -------------------------------------------------------------------------------------------


async def test_the_last_owner_can_be_neither_demoted_nor_removed(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    members = f"/api/projects/{team.project}/members"
    me = f"{members}/{team.owner.id}"
    assert_problem(
        await client.patch(me, json={"role": "editor"}, headers=team.owner.headers), 409, "conflict"
    )
    assert_problem(await client.delete(me, headers=team.owner.headers), 409, "conflict")
    assert await role_of(db, team.project, team.owner.id) == ProjectRole.OWNER
    # an owner may "change" their role to owner: nothing to protect
    same = await client.patch(me, json={"role": "owner"}, headers=team.owner.headers)
    assert same.status_code == 200, same.text


async def test_with_a_second_owner_the_first_can_step_down_and_leave(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    members = f"/api/projects/{team.project}/members"
    promoted = await client.patch(
        f"{members}/{team.editor.id}", json={"role": "owner"}, headers=team.owner.headers
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {"role": "owner"}

    demoted = await client.patch(
        f"{members}/{team.owner.id}", json={"role": "viewer"}, headers=team.owner.headers
    )
    assert demoted.status_code == 200, demoted.text
    assert await role_of(db, team.project, team.owner.id) == ProjectRole.VIEWER

    # the new sole owner is protected in turn, also against the other (now viewer) member
    assert_problem(await client.delete(f"{members}/{team.editor.id}", headers=team.editor.headers), 409)
    assert_problem(
        await client.delete(f"{members}/{team.editor.id}", headers=team.owner.headers), 403, "forbidden"
    )

    left = await client.delete(f"{members}/{team.owner.id}", headers=team.owner.headers)
    assert left.status_code == 204, left.text
    assert await role_of(db, team.project, team.owner.id) is None
    assert await role_of(db, team.project, team.editor.id) == ProjectRole.OWNER


async def test_an_owner_removes_another_owner_while_one_remains(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    members = f"/api/projects/{team.project}/members"
    await project_queries.update_member_role(
        db, role=ProjectRole.OWNER, project_id=team.project, user_id=team.editor.id
    )
    removed = await client.delete(f"{members}/{team.editor.id}", headers=team.owner.headers)
    assert removed.status_code == 204, removed.text
    assert await role_of(db, team.project, team.editor.id) is None


HANDED_OVER = """
    with held as (select id from projects where id = %s for no key update),
    promoted as (
        update project_members set role = 'owner'
        where project_id = (select id from held) and user_id = {editor}
    ),
    gone as (delete from project_members where project_id = (select id from held) and user_id = {owner})
    select 1
"""


@pytest.mark.parametrize(
    ("method", "body"), [("PATCH", {"role": "viewer"}), ("DELETE", None)], ids=["demoted", "removed"]
)
async def test_a_change_of_members_reads_roles_only_once_it_holds_the_project(
    client: Client,
    db: AsyncConnection[Any],
    database_url: str,
    team: Team,
    method: str,
    body: dict[str, str] | None,
) -> None:
    """The owner hands the project over (promotes the editor, then leaves: one transaction, holding
    the members' lock as every change of members does) while their own earlier request to demote or
    remove the editor is under way. That request read the roles before the hand-over committed: the
    editor was no owner, so there was no owner to keep; then it demoted or removed the new sole owner,
    and the project had none. A change of members now reads roles only under the lock."""
    answer = await answer_racing(
        database_url,
        HANDED_OVER.format(editor=team.editor.id, owner=team.owner.id),
        team.project,
        lambda: client.request(
            method,
            f"/api/projects/{team.project}/members/{team.editor.id}",
            headers=team.owner.headers,
            json=body,
        ),
    )
    assert_problem(answer, 404, "not-found")  # the owner who sent it is no longer a member
    assert await role_of(db, team.project, team.editor.id) == ProjectRole.OWNER
    assert await role_of(db, team.project, team.owner.id) is None


EDITOR_REMOVED = "delete from project_members where project_id = %s and user_id = {editor}"


@pytest.mark.parametrize(
    ("method", "path", "body", "deletion"),
    [
        ("DELETE", "", None, "delete from projects where id = %s"),
        ("DELETE", "/members/{editor}", None, EDITOR_REMOVED),
        ("PATCH", "/members/{editor}", {"role": "viewer"}, EDITOR_REMOVED),
        ("POST", "/invitations", {"email": "late@example.com"}, "delete from projects where id = %s"),
    ],
    ids=["project deleted twice", "member removed twice", "role of a removed member", "invited to a deleted"],
)
async def test_a_change_racing_a_removal_is_a_404_and_records_nothing(
    client: Client,
    db: AsyncConnection[Any],
    database_url: str,
    team: Team,
    method: str,
    path: str,
    body: dict[str, str] | None,
    deletion: str,
) -> None:
    """The request read the project or the membership before another transaction removed it, and
    its change then matched nothing: it answered 204 or 200 and put the event in the feed's outbox
    (a project deleted twice, a removed member's new role); an invitation's insert failed its
    foreign-key check (a 500)."""
    outbox = "select count(*) from outbox"
    before = await (await db.execute(outbox)).fetchone()
    editor = team.editor.id
    answer = await answer_racing(
        database_url,
        deletion.format(editor=editor),
        team.project,
        lambda: client.request(
            method,
            f"/api/projects/{team.project}{path.format(editor=editor)}",
            headers=team.owner.headers,
            json=body,
        ),
    )
    assert_problem(answer, 404, "not-found")
    assert await (await db.execute(outbox)).fetchone() == before


# -- invitations (review M2): members join by accepting, never by being added by id -----------------


def invitation_answer(response: Any) -> dict[str, Any]:
    """An invitation's answer with what differs by nature (its id, time and token) left out."""
    assert response.status_code == 201, response.text
    return {k: v for k, v in response.json().items() if k not in {"id", "created_at", "expires_at", "token"}}


async def test_members_cannot_be_added_by_user_id(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Probe P3: the old `POST /members {"user_id"}` harvested emails by guessing ids; it is gone."""
    members = f"/api/projects/{team.project}/members"
    response = await client.post(members, json={"user_id": team.outsider.id}, headers=team.owner.headers)
    assert response.status_code in (404, 405), response.text
    assert team.outsider.email not in response.text
    assert await role_of(db, team.project, team.outsider.id) is None


async def test_an_invitation_answers_the_same_whoever_the_email_belongs_to(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Unknown, inactive, active and already-member emails get answers of the same shape and content
    (the email they were sent, the role), so inviting tells nothing about who has an account; and
    nobody joins a project by being invited."""
    inactive = await make_user(db, client.app, name="Dormant", is_active=False)  # type: ignore[arg-type]
    invitations = f"/api/projects/{team.project}/invitations"
    answers = {}
    for who, email in (
        ("unknown", "nobody-here@example.com"),
        ("inactive", inactive.email),
        ("active", team.outsider.email),
        ("member", team.viewer.email),
    ):
        response = await client.post(
            invitations, json={"email": email.upper(), "role": "editor"}, headers=team.owner.headers
        )
        answer = invitation_answer(response)
        assert answer == {"project_id": team.project, "email": email.lower(), "role": "editor"}, who
        answers[who] = sorted(response.json())
        assert set(response.headers) >= {"content-type"}
    assert len({tuple(keys) for keys in answers.values()}) == 1
    assert await role_of(db, team.project, team.outsider.id) is None
    assert await role_of(db, team.project, inactive.id) is None
    assert await role_of(db, team.project, team.viewer.id) == ProjectRole.VIEWER


async def test_the_invitee_accepts_or_declines_and_only_the_invitee(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    invitations = f"/api/projects/{team.project}/invitations"
    sent = await client.post(
        invitations, json={"email": team.outsider.email, "role": "editor"}, headers=team.owner.headers
    )
    invitation, token = sent.json()["id"], {"token": sent.json()["token"]}
    mine = await client.get("/api/me/invitations", headers=team.outsider.headers)
    assert [(i["id"], i["project_id"], i["project_name"], i["role"]) for i in mine.json()["items"]] == [
        (invitation, team.project, "Apollo", "editor")
    ]
    # nobody else sees or uses it: not the owner who sent it, not another member
    for other in (team.owner, team.editor):
        assert (await client.get("/api/me/invitations", headers=other.headers)).json()["items"] == []
        accepted = await client.post(
            f"/api/me/invitations/{invitation}/accept", json=token, headers=other.headers
        )
        assert_problem(accepted, 404, "not-found")
        declined = await client.post(
            f"/api/me/invitations/{invitation}/decline", json=token, headers=other.headers
        )
        assert_problem(declined, 404, "not-found")
    assert await role_of(db, team.project, team.owner.id) == ProjectRole.OWNER

    joined = await client.post(
        f"/api/me/invitations/{invitation}/accept", json=token, headers=team.outsider.headers
    )
    assert joined.status_code == 200, joined.text
    assert (joined.json()["id"], joined.json()["my_role"]) == (team.project, "editor")
    assert await role_of(db, team.project, team.outsider.id) == ProjectRole.EDITOR
    again = await client.post(
        f"/api/me/invitations/{invitation}/accept", json=token, headers=team.outsider.headers
    )
    assert_problem(again, 404, "not-found")
    events = await (
        await db.execute(
            "select payload->>'verb', payload->'data' from outbox where task = 'record_activity'"
            " and payload->>'project_id' = %s order by id",
            (str(team.project),),
        )
    ).fetchall()
    assert [verb for verb, _ in events][-2:] == ["member.invited", "member.joined"]
    assert team.outsider.email not in str(events), "the feed never carries the invitee's email"

    # a declined invitation is gone and adds nobody
    second = await client.post(
        invitations, json={"email": team.outsider.email.upper()}, headers=team.owner.headers
    )
    declined = await client.post(
        f"/api/me/invitations/{second.json()['id']}/decline",
        json={"token": second.json()["token"]},
        headers=team.outsider.headers,
    )
    assert declined.status_code == 204
    assert (await client.get(invitations, headers=team.owner.headers)).json()["items"] == []
    assert await role_of(db, team.project, team.outsider.id) == ProjectRole.EDITOR, (
        "a member keeps their role"
    )


async def test_owners_list_and_withdraw_invitations(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    invitations = f"/api/projects/{team.project}/invitations"
    sent = await client.post(invitations, json={"email": team.outsider.email}, headers=team.owner.headers)
    listed = await client.get(invitations, headers=team.owner.headers)
    assert [(i["email"], i["role"]) for i in listed.json()["items"]] == [(team.outsider.email, "viewer")]
    for member in (team.editor, team.viewer):
        assert_problem(await client.get(invitations, headers=member.headers), 403, "forbidden")
    assert_problem(await client.get(invitations, headers=team.outsider.headers), 404, "not-found")
    withdrawn = await client.delete(f"{invitations}/{sent.json()['id']}", headers=team.owner.headers)
    assert withdrawn.status_code == 204
    accepted = await client.post(
        f"/api/me/invitations/{sent.json()['id']}/accept",
        json={"token": sent.json()["token"]},
        headers=team.outsider.headers,
    )
    assert_problem(accepted, 404, "not-found")
    assert await role_of(db, team.project, team.outsider.id) is None


async def test_an_unknown_or_owner_role_is_400_naming_it(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    invitations = f"/api/projects/{team.project}/invitations"
    for role in ("admin", "owner"):
        sent = await client.post(
            invitations, json={"email": team.outsider.email, "role": role}, headers=team.owner.headers
        )
        assert_problem(sent, 400, "validation", {"role"})
    bad_email = await client.post(invitations, json={"email": "not-an-email"}, headers=team.owner.headers)
    assert_problem(bad_email, 400, "validation", {"email"})
    changed = await client.patch(
        f"/api/projects/{team.project}/members/{team.viewer.id}",
        json={"role": "superuser"},
        headers=team.owner.headers,
    )
    assert_problem(changed, 400, "validation", {"role"})
    assert await role_of(db, team.project, team.viewer.id) == ProjectRole.VIEWER
    assert (await client.get(invitations, headers=team.owner.headers)).json()["items"] == []


async def test_only_owners_see_members_emails(client: Client, team: Team) -> None:
    """Review L13: a viewer or editor sees members' names and roles, and only their own email."""
    members = f"/api/projects/{team.project}/members"
    by_owner = (await client.get(members, headers=team.owner.headers)).json()["items"]
    assert {m["user_id"]: m["email"] for m in by_owner} == {
        team.owner.id: team.owner.email,
        team.editor.id: team.editor.email,
        team.viewer.id: team.viewer.email,
    }
    for member in (team.editor, team.viewer):
        seen = (await client.get(members, headers=member.headers)).json()["items"]
        assert {m["user_id"]: m["email"] for m in seen} == {
            team.owner.id: None,
            team.editor.id: team.editor.email if member is team.editor else None,
            team.viewer.id: team.viewer.email if member is team.viewer else None,
        }
        assert {m["display_name"] for m in seen} == {"Owner", "Editor", "Viewer"}


# -- the project itself -------------------------------------------------------------------------------


async def test_owner_id_names_the_creator_and_says_so(client: Client, team: Team) -> None:
    """Review: ``owner_id`` kept naming the creator after they handed the project over and left, with
    nothing to tell a client it is not an owner. It stays (the wire does not change) and is documented."""
    promoted = await client.patch(
        f"/api/projects/{team.project}/members/{team.editor.id}",
        json={"role": "owner"},
        headers=team.owner.headers,
    )
    assert promoted.status_code == 200, promoted.text
    left = await client.delete(
        f"/api/projects/{team.project}/members/{team.owner.id}", headers=team.owner.headers
    )
    assert left.status_code == 204, left.text
    project = await client.get(f"/api/projects/{team.project}", headers=team.editor.headers)
    assert project.json()["owner_id"] == team.owner.id

    doc = (await client.get("/schema/openapi.json")).json()
    described = doc["components"]["schemas"]["ProjectOut"]["properties"]["owner_id"].get("description", "")
    assert "created the project" in described and "`owner` role" in described, described


async def test_archiving_needs_an_owner(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    url = f"/api/projects/{team.project}"
    refused = await client.patch(url, json={"archived": True, "name": "Sneaky"}, headers=team.editor.headers)
    assert_problem(refused, 403, "forbidden")
    stored = await project_queries.get_project(db, id=team.project)
    assert stored is not None
    assert (stored.archived, stored.name) == (False, "Apollo")

    renamed = await client.patch(url, json={"name": "Artemis"}, headers=team.editor.headers)
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["archived"], renamed.json()["my_role"]) == (
        "Artemis",
        False,
        "editor",
    )

    archived = await client.patch(url, json={"archived": True}, headers=team.owner.headers)
    assert archived.status_code == 200, archived.text
    assert archived.json()["archived"] is True
    only_archived = await client.get(
        "/api/projects", params={"archived": "true"}, headers=team.editor.headers
    )
    assert [p["id"] for p in only_archived.json()["items"]] == [team.project]
    active = await client.get("/api/projects", params={"archived": "false"}, headers=team.editor.headers)
    assert active.json()["items"] == []


async def test_blank_project_names_are_400(client: Client, team: Team) -> None:
    """They used to pass validation, be stripped to '' and hit a CHECK constraint as a 500."""
    headers = team.owner.headers
    created = await client.post("/api/projects", json={"name": "   "}, headers=headers)
    assert_problem(created, 400, "validation", {"name"})
    renamed = await client.patch(f"/api/projects/{team.project}", json={"name": " "}, headers=headers)
    assert_problem(renamed, 400, "validation", {"name"})


async def test_a_renamed_project_is_stored_stripped(client: Client, team: Team) -> None:
    response = await client.patch(
        f"/api/projects/{team.project}", json={"name": "  Apollo 2  "}, headers=team.owner.headers
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Apollo 2"


async def test_project_and_member_lists_cap_their_page_size(client: Client, team: Team) -> None:
    for path in ("/api/projects", f"/api/projects/{team.project}/members"):
        await assert_page_size_is_capped(client, path, team.viewer.headers)


async def test_a_body_of_many_unknown_fields_gets_a_small_answer(client: Client, team: Team) -> None:
    """Review L10 (probe P13): the validation problem lists at most 20 bad fields, each bounded, and
    counts the rest, so a body of 20,000 unknown keys is not echoed back."""
    body = {f"k{i}": 0 for i in range(20_000)} | {"x" * 5000: 1, "name": "Fine"}
    response = await client.post("/api/projects", json=body, headers=team.owner.headers)
    problem = assert_problem(response, 400, "validation")
    assert len(problem["errors"]) == 20
    assert [e["field"] for e in problem["errors"]][:2] == ["k0", "k1"]
    assert "and 19981 more errors" in problem["detail"]
    assert len(response.content) < 4000, len(response.content)
    long_key = await client.post(
        "/api/projects", json={"x" * 5000: 1, "name": "A"}, headers=team.owner.headers
    )
    assert len(assert_problem(long_key, 400, "validation")["errors"][0]["field"]) <= 200
