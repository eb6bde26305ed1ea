"""Invitations and leaving: a member who is removed (or leaves) cannot come back through an invitation
sent before, and accepting one never deadlocks with that removal."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import httpx
import psycopg
from psycopg import AsyncConnection

from app.db import projects as project_queries
from app.db.models import ProjectRole
from tests.factories import Actor, Client, Team, assert_problem, wait_until


class Sent(NamedTuple):
    id: int
    token: str


async def invite(client: Client, team: Team, who: Actor, role: str = "editor") -> Sent:
    sent = await client.post(
        f"/api/projects/{team.project}/invitations",
        json={"email": who.email, "role": role},
        headers=team.owner.headers,
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


async def test_a_removed_member_cannot_rejoin_through_an_invitation_sent_before(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Review: the owner invited a viewer as editor, removed them before they accepted, and the removed
    viewer still saw the invitation and joined alone as an editor (200)."""
    invitation = await invite(client, team, team.viewer)
    other = await invite(client, team, team.outsider)
    removed = await client.delete(
        f"/api/projects/{team.project}/members/{team.viewer.id}", headers=team.owner.headers
    )
    assert removed.status_code == 204, removed.text

    assert await waiting_for(client, team.viewer) == []
    accepted = await accept(client, team.viewer, invitation)
    assert_problem(accepted, 404, "not-found")
    role = await project_queries.get_member_role(db, project_id=team.project, user_id=team.viewer.id)
    assert role is None
    assert await waiting_for(client, team.outsider) == [other.id], "only the removed member's are withdrawn"


async def test_a_member_who_leaves_cannot_rejoin_through_an_invitation_either(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    invitation = await invite(client, team, team.editor, role="viewer")
    left = await client.delete(
        f"/api/projects/{team.project}/members/{team.editor.id}", headers=team.editor.headers
    )
    assert left.status_code == 204, left.text
    assert await waiting_for(client, team.editor) == []
    accepted = await accept(client, team.editor, invitation)
    assert_problem(accepted, 404, "not-found")

    # invited again after leaving: a new decision of an owner, which the member may accept
    again = await invite(client, team, team.editor, role="viewer")
    joined = await accept(client, team.editor, again)
    assert joined.status_code == 200, joined.text
    assert joined.json()["my_role"] == "viewer"


async def test_an_acceptance_racing_the_invitees_removal_waits_for_it_then_is_a_404(
    client: Client, db: AsyncConnection[Any], database_url: str, team: Team
) -> None:
    """Another transaction removes the viewer as ``remove_member`` does: the project locked, then the
    membership removed, then (only once the acceptance waits) the invitations withdrawn. An acceptance
    that took the invitation before the project's lock met the removal the other way round: each
    waited for the other (a deadlock, one of them aborted), or the viewer rejoined."""
    invitation = await invite(client, team, team.viewer)
    with (
        psycopg.connect(database_url) as remover,
        psycopg.connect(database_url, autocommit=True) as probe,
    ):
        remover.execute("select id from projects where id = %s for no key update", (team.project,))
        remover.execute(
            "delete from project_members where project_id = %s and user_id = %s",
            (team.project, team.viewer.id),
        )

        def withdraw_once_the_acceptance_waits() -> None:
            waiting = "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))"

            async def blocked() -> bool:
                row = probe.execute(waiting, (remover.info.backend_pid,)).fetchone()
                return row is not None and row[0] > 0

            asyncio.run(wait_until(blocked, 20, "the acceptance waits for the removal"))
            remover.execute(
                "delete from project_invitations where project_id = %s and email = %s",
                (team.project, team.viewer.email),
            )
            remover.commit()

        with ThreadPoolExecutor(max_workers=1) as pool:
            removal = pool.submit(withdraw_once_the_acceptance_waits)
            accepted = await accept(client, team.viewer, invitation)
            removal.result()

    assert_problem(accepted, 404, "not-found")
    role = await project_queries.get_member_role(db, project_id=team.project, user_id=team.viewer.id)
    assert role is None


async def test_owners_may_still_invite_a_member_and_the_member_keeps_their_role(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Inviting a member answers as any invitation does; accepting keeps the role they have."""
    invitation = await invite(client, team, team.viewer, role="editor")
    accepted = await accept(client, team.viewer, invitation)
    assert accepted.status_code == 200, accepted.text
    role = await project_queries.get_member_role(db, project_id=team.project, user_id=team.viewer.id)
    assert role == ProjectRole.VIEWER
