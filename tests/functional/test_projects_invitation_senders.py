"""An invitation carries its sender's authority: it is acceptable only while whoever sent it is still an
active owner of the project.

Review: an owner invited an address they control (a second account: registration proves no control of
an email), kept the token, was removed (or demoted, or left), and the second account accepted (200) and
was an editor of the project again."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import httpx
import psycopg
from litestar import Litestar
from psycopg import AsyncConnection

from app.db import projects as project_queries
from app.db.models import ProjectRole
from app.domains.projects.services import new_invitation_token
from tests.factories import Actor, Client, Team, assert_problem, make_user, wait_until


class Sent(NamedTuple):
    id: int
    token: str


async def promote_editor(client: Client, team: Team) -> None:
    """The team's editor becomes a second owner (so the first may go)."""
    promoted = await client.patch(
        f"/api/projects/{team.project}/members/{team.editor.id}",
        json={"role": "owner"},
        headers=team.owner.headers,
    )
    assert promoted.status_code == 200, promoted.text


async def invite(client: Client, team: Team, sender: Actor, invitee: Actor) -> Sent:
    sent = await client.post(
        f"/api/projects/{team.project}/invitations",
        json={"email": invitee.email, "role": "editor"},
        headers=sender.headers,
    )
    assert sent.status_code == 201, sent.text
    return Sent(int(sent.json()["id"]), sent.json()["token"])


async def accept(client: Client, who: Actor, invitation: Sent) -> httpx.Response:
    return await client.post(
        f"/api/me/invitations/{invitation.id}/accept", json={"token": invitation.token}, headers=who.headers
    )


async def waiting_for(client: Client, who: Actor) -> list[int]:
    mine = await client.get("/api/me/invitations", headers=who.headers)
    assert mine.status_code == 200, mine.text
    return [item["id"] for item in mine.json()["items"]]


async def open_invitations(client: Client, team: Team, owner: Actor) -> list[int]:
    listed = await client.get(f"/api/projects/{team.project}/invitations", headers=owner.headers)
    assert listed.status_code == 200, listed.text
    return [item["id"] for item in listed.json()["items"]]


async def assert_unacceptable(
    client: Client, db: AsyncConnection[Any], team: Team, invitee: Actor, invitation: Sent
) -> None:
    """Not listed for the invitee, accepting it is the 404 of a missing invitation, nobody joined."""
    assert invitation.id not in await waiting_for(client, invitee)
    assert_problem(await accept(client, invitee, invitation), 404, "not-found")
    role = await project_queries.get_member_role(db, project_id=team.project, user_id=invitee.id)
    assert role is None


async def test_an_owner_removed_by_another_cannot_rejoin_through_an_invitation_they_sent(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team
) -> None:
    await promote_editor(client, team)
    alt = await make_user(db, app, name="Alt")
    invitation = await invite(client, team, team.owner, alt)
    removed = await client.delete(
        f"/api/projects/{team.project}/members/{team.owner.id}", headers=team.editor.headers
    )
    assert removed.status_code == 204, removed.text

    assert await open_invitations(client, team, team.editor) == [], "withdrawn with the sender"
    await assert_unacceptable(client, db, team, alt, invitation)


async def test_an_owner_who_leaves_takes_the_invitations_they_sent_with_them(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team
) -> None:
    await promote_editor(client, team)
    alt = await make_user(db, app, name="Alt")
    invitation = await invite(client, team, team.owner, alt)
    left = await client.delete(
        f"/api/projects/{team.project}/members/{team.owner.id}", headers=team.owner.headers
    )
    assert left.status_code == 204, left.text

    assert await open_invitations(client, team, team.editor) == []
    await assert_unacceptable(client, db, team, alt, invitation)


async def test_a_demoted_owners_invitations_are_withdrawn(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team
) -> None:
    await promote_editor(client, team)
    alt = await make_user(db, app, name="Alt")
    invitation = await invite(client, team, team.owner, alt)
    demoted = await client.patch(
        f"/api/projects/{team.project}/members/{team.owner.id}",
        json={"role": "editor"},
        headers=team.editor.headers,
    )
    assert demoted.status_code == 200, demoted.text

    assert await open_invitations(client, team, team.editor) == []
    await assert_unacceptable(client, db, team, alt, invitation)


async def test_an_invitation_from_a_deactivated_owner_cannot_be_accepted(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team
) -> None:
    """An administrator's deactivation does not go through the project: the acceptance checks the
    sender's account itself (reactivated, the owner's invitations hold again)."""
    await promote_editor(client, team)
    alt = await make_user(db, app, name="Alt")
    invitation = await invite(client, team, team.owner, alt)
    admin = await make_user(db, app, "admin", name="Admin")
    users = f"/api/admin/users/{team.owner.id}"
    deactivated = await client.patch(users, json={"is_active": False}, headers=admin.headers)
    assert deactivated.status_code == 200, deactivated.text

    await assert_unacceptable(client, db, team, alt, invitation)

    reactivated = await client.patch(users, json={"is_active": True}, headers=admin.headers)
    assert reactivated.status_code == 200, reactivated.text
    assert await waiting_for(client, alt) == [invitation.id]
    joined = await accept(client, alt, invitation)
    assert joined.status_code == 200, joined.text


async def test_an_invitation_written_by_someone_no_longer_an_owner_cannot_be_accepted(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team
) -> None:
    """A row written before invitations were withdrawn with their sender's ownership (here: sent in
    the name of the editor, as if they had been demoted then) is not acceptable either."""
    alt = await make_user(db, app, name="Alt")
    token, digest = new_invitation_token()
    row = await project_queries.upsert_invitation(
        db,
        project_id=team.project,
        email=alt.email,
        role=ProjectRole.EDITOR,
        invited_by=team.editor.id,
        token_sha256=digest,
    )
    assert row is not None
    await assert_unacceptable(client, db, team, alt, Sent(row.id, token))


async def test_a_demotion_committed_while_the_acceptance_waits_is_seen_by_it(
    client: Client, db: AsyncConnection[Any], app: Litestar, database_url: str, team: Team
) -> None:
    """Another transaction demotes the sender as an older release did (the project locked, the role
    changed, nothing withdrawn) and commits once the acceptance waits for its lock: the acceptance
    decides on the sender's role after that lock, so it is a 404."""
    await promote_editor(client, team)
    alt = await make_user(db, app, name="Alt")
    invitation = await invite(client, team, team.owner, alt)
    with (
        psycopg.connect(database_url) as demoter,
        psycopg.connect(database_url, autocommit=True) as probe,
    ):
        demoter.execute("select id from projects where id = %s for no key update", (team.project,))
        demoter.execute(
            "update project_members set role = 'viewer' where project_id = %s and user_id = %s",
            (team.project, team.owner.id),
        )

        def commit_once_the_acceptance_waits() -> None:
            waiting = "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))"

            async def blocked() -> bool:
                row = probe.execute(waiting, (demoter.info.backend_pid,)).fetchone()
                return row is not None and row[0] > 0

            asyncio.run(wait_until(blocked, 20, "the acceptance waits for the demotion"))
            demoter.commit()

        with ThreadPoolExecutor(max_workers=1) as pool:
            demotion = pool.submit(commit_once_the_acceptance_waits)
            accepted = await accept(client, alt, invitation)
            demotion.result()

    assert_problem(accepted, 404, "not-found")
    role = await project_queries.get_member_role(db, project_id=team.project, user_id=alt.id)
    assert role is None


async def test_an_invitation_from_an_owner_who_stays_an_owner_still_works(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team
) -> None:
    """Other members' removals and role changes leave it alone."""
    alt = await make_user(db, app, name="Alt")
    invitation = await invite(client, team, team.owner, alt)
    changed = await client.patch(
        f"/api/projects/{team.project}/members/{team.editor.id}",
        json={"role": "viewer"},
        headers=team.owner.headers,
    )
    assert changed.status_code == 200, changed.text
    removed = await client.delete(
        f"/api/projects/{team.project}/members/{team.viewer.id}", headers=team.owner.headers
    )
    assert removed.status_code == 204, removed.text

    assert await waiting_for(client, alt) == [invitation.id]
    joined = await accept(client, alt, invitation)
    assert joined.status_code == 200, joined.text
    assert joined.json()["my_role"] == "editor"


async def test_one_owners_removal_leaves_another_owners_invitations_alone(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team
) -> None:
    await promote_editor(client, team)
    theirs, other = await make_user(db, app, name="Theirs"), await make_user(db, app, name="Other")
    from_removed = await invite(client, team, team.owner, theirs)
    from_staying = await invite(client, team, team.editor, other)
    removed = await client.delete(
        f"/api/projects/{team.project}/members/{team.owner.id}", headers=team.editor.headers
    )
    assert removed.status_code == 204, removed.text

    assert await open_invitations(client, team, team.editor) == [from_staying.id]
    await assert_unacceptable(client, db, team, theirs, from_removed)
    assert await waiting_for(client, other) == [from_staying.id]
    joined = await accept(client, other, from_staying)
    assert joined.status_code == 200, joined.text


async def test_inviting_an_email_again_hands_the_invitation_to_the_new_sender(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team
) -> None:
    """The invitation is one per email: invited again by another owner (a new token), it is theirs,
    and the first sender's removal leaves it alone."""
    await promote_editor(client, team)
    alt = await make_user(db, app, name="Alt")
    await invite(client, team, team.owner, alt)
    again = await invite(client, team, team.editor, alt)
    removed = await client.delete(
        f"/api/projects/{team.project}/members/{team.owner.id}", headers=team.editor.headers
    )
    assert removed.status_code == 204, removed.text

    joined = await accept(client, alt, again)
    assert joined.status_code == 200, joined.text
