"""Projects' optimistic concurrency: a version per project, its strong ETag, If-Match on PATCH and
DELETE (RFC 9110 13.1.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import (
    Client,
    Served,
    Team,
    all_waiting_behind,
    assert_problem,
    make_team,
    serve_in_loop,
)


async def stored(db: AsyncConnection[Any], project_id: int) -> tuple[str, str, bool, int] | None:
    """(name, description, archived, version) of the project, None once it is gone."""
    cursor = await db.execute(
        "select name, description, archived, version from projects where id = %s", (project_id,)
    )
    return await cursor.fetchone()


def if_match(team: Team, value: str) -> dict[str, str]:
    return team.owner.headers | {"If-Match": value}


# -- the version and its ETag -------------------------------------------------------------------------


async def test_a_project_answers_its_version_as_a_strong_etag(client: Client, team: Team) -> None:
    created = await client.post("/api/projects", json={"name": "Gemini"}, headers=team.editor.headers)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1

    read = await client.get(f"/api/projects/{team.project}", headers=team.viewer.headers)
    assert read.status_code == 200, read.text
    assert (read.headers["etag"], read.json()["version"]) == ('"1"', 1)
    listed = await client.get("/api/projects", headers=team.viewer.headers)
    assert [item["version"] for item in listed.json()["items"]] == [1]


async def test_every_change_takes_the_next_version_and_membership_changes_none(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url = f"/api/projects/{team.project}"
    for expected, change in enumerate(
        ({"name": "Artemis"}, {"description": "to the moon"}, {"archived": True}, {"archived": False}),
        start=2,
    ):
        answer = await client.patch(url, json=change, headers=team.owner.headers)
        assert answer.status_code == 200, (change, answer.text)
        assert (answer.json()["version"], answer.headers["etag"]) == (expected, f'"{expected}"'), change
    # Members, invitations and tasks are not the project's own fields: its version stays.
    promoted = await client.patch(
        f"{url}/members/{team.viewer.id}", json={"role": "editor"}, headers=team.owner.headers
    )
    assert promoted.status_code == 200, promoted.text
    task = await client.post(f"{url}/tasks", json={"title": "Launch"}, headers=team.editor.headers)
    assert task.status_code == 201, task.text
    assert await stored(db, team.project) == ("Artemis", "to the moon", False, 5)


async def test_a_change_that_changes_nothing_keeps_the_version(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url = f"/api/projects/{team.project}"
    before = (await client.get(url, headers=team.owner.headers)).json()
    same = await client.patch(
        url, json={"name": "Apollo", "description": "", "archived": False}, headers=if_match(team, '"1"')
    )
    assert same.status_code == 200, same.text
    assert (same.json()["version"], same.headers["etag"]) == (1, '"1"')
    assert same.json()["updated_at"] == before["updated_at"]
    assert await stored(db, team.project) == ("Apollo", "", False, 1)
    # The condition is judged all the same: a stale one is refused even when nothing would change.
    await client.patch(url, json={"name": "Artemis"}, headers=team.editor.headers)
    stale = await client.patch(url, json={"name": "Artemis"}, headers=if_match(team, '"1"'))
    assert_problem(stale, 412, "precondition-failed")


# -- If-Match -----------------------------------------------------------------------------------------


async def test_a_stale_if_match_changes_nothing(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    url = f"/api/projects/{team.project}"
    loaded = (await client.get(url, headers=team.owner.headers)).headers["etag"]
    first = await client.patch(url, json={"description": "A's plan"}, headers=team.editor.headers)
    assert first.status_code == 200, first.text

    second = await client.patch(
        url, json={"name": "B's", "description": "B's plan"}, headers=if_match(team, loaded)
    )
    assert_problem(second, 412, "precondition-failed")
    assert await stored(db, team.project) == ("Apollo", "A's plan", False, 2)


async def test_a_matching_if_match_applies_the_change_and_answers_the_new_etag(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url = f"/api/projects/{team.project}"
    changed = await client.patch(url, json={"name": "Artemis"}, headers=if_match(team, '"1"'))
    assert changed.status_code == 200, changed.text
    assert (changed.headers["etag"], changed.json()["version"]) == ('"2"', 2)
    again = await client.patch(
        url, json={"description": "next"}, headers=if_match(team, changed.headers["etag"])
    )
    assert (again.status_code, again.headers["etag"]) == (200, '"3"')
    assert await stored(db, team.project) == ("Artemis", "next", False, 3)


async def test_if_match_any_and_lists(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    url = f"/api/projects/{team.project}"
    anything = await client.patch(url, json={"name": "any"}, headers=if_match(team, "*"))
    assert (anything.status_code, anything.headers["etag"]) == (200, '"2"')
    listed = await client.patch(url, json={"name": "listed"}, headers=if_match(team, '"1", W/"9", "2"'))
    assert (listed.status_code, listed.headers["etag"]) == (200, '"3"')

    none_current = await client.patch(url, json={"name": "no"}, headers=if_match(team, '"1", "2"'))
    assert_problem(none_current, 412, "precondition-failed")
    weak = await client.patch(url, json={"name": "weak"}, headers=if_match(team, 'W/"3"'))
    assert_problem(weak, 412, "precondition-failed")  # If-Match compares strongly
    empty = await client.delete(url, headers=if_match(team, ""))  # an empty list names no version
    assert_problem(empty, 412, "precondition-failed")
    assert await stored(db, team.project) == ("listed", "", False, 3)


@pytest.mark.parametrize("value", ["1", "abc", '"1" "2"', '*, "1"', "W/1"])
async def test_a_malformed_if_match_is_a_400_naming_the_header(
    client: Client, db: AsyncConnection[Any], team: Team, value: str
) -> None:
    url = f"/api/projects/{team.project}"
    for answer in (
        await client.patch(url, json={"name": "x"}, headers=if_match(team, value)),
        await client.delete(url, headers=if_match(team, value)),
    ):
        assert_problem(answer, 400, "validation", {"header.If-Match"})
    assert await stored(db, team.project) == ("Apollo", "", False, 1)


async def test_without_if_match_a_change_is_unconditional(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url = f"/api/projects/{team.project}"
    await client.patch(url, json={"name": "someone else's"}, headers=team.editor.headers)
    mine = await client.patch(url, json={"name": "mine"}, headers=team.owner.headers)
    assert mine.status_code == 200, mine.text
    assert await stored(db, team.project) == ("mine", "", False, 3)
    deleted = await client.delete(url, headers=team.owner.headers)
    assert deleted.status_code == 204, deleted.text


async def test_a_delete_with_a_stale_if_match_deletes_nothing(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url = f"/api/projects/{team.project}"
    await client.patch(url, json={"description": "changed meanwhile"}, headers=team.editor.headers)
    stale = await client.delete(url, headers=if_match(team, '"1"'))
    assert_problem(stale, 412, "precondition-failed")
    assert await stored(db, team.project) == ("Apollo", "changed meanwhile", False, 2)
    current = await client.delete(url, headers=if_match(team, '"2"'))
    assert current.status_code == 204, current.text
    assert_problem(await client.get(url, headers=team.owner.headers), 404)
    marked = await (
        await db.execute("select deleting_since from projects where id = %s", (team.project,))
    ).fetchone()
    assert marked is not None and marked[0] is not None  # being deleted: the purge job removes the row


async def test_access_is_judged_before_the_condition(client: Client, team: Team) -> None:
    url = f"/api/projects/{team.project}"
    stale = {"If-Match": '"7"'}
    assert_problem(await client.patch(url, json={"name": "x"}, headers=team.viewer.headers | stale), 403)
    assert_problem(await client.delete(url, headers=team.editor.headers | stale), 403)
    assert_problem(await client.patch(url, json={"name": "x"}, headers=team.outsider.headers | stale), 404)
    assert_problem(await client.delete("/api/projects/999999", headers=if_match(team, "*")), 404)


async def test_the_schema_documents_if_match_the_412_and_the_etag(client: Client) -> None:
    project = (await client.get("/schema/openapi.json")).json()["paths"]["/api/projects/{project_id}"]
    for method in ("patch", "delete"):
        headers = {p["name"]: p for p in project[method]["parameters"] if p["in"] == "header"}
        assert headers["If-Match"]["required"] is False
        # A plain string, its grammar told in words: fuzzers then send valid If-Match values.
        assert headers["If-Match"]["schema"] == {"type": "string"}
        assert "`*`" in headers["If-Match"]["description"]
        assert "412" in project[method]["responses"], method
    for method in ("get", "patch"):
        assert "ETag" in project[method]["responses"]["200"]["headers"], method


# -- at the same time ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve_in_loop(settings, rate_limit_default_per_minute=1_000_000) as s:
        yield s


async def test_of_concurrent_changes_from_one_version_exactly_one_is_applied(
    served: Served, db: AsyncConnection[Any], database_url: str
) -> None:
    """Every change waits behind a held project row, then all go at once: the version each compares
    is the one under its own lock, so only the first passes."""
    team = await make_team(db, served.app)
    url = f"/api/projects/{team.project}"
    names = [f"tab {i}" for i in range(6)]
    answers = await all_waiting_behind(
        database_url,
        "select id from projects where id = %s for update",
        team.project,
        [served.client.patch(url, json={"name": n}, headers=if_match(team, '"1"')) for n in names],
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] + [412] * (len(names) - 1), [a.text for a in answers]
    applied = next(answer for answer in answers if answer.status_code == 200)
    assert applied.headers["etag"] == '"2"'
    assert await stored(db, team.project) == (applied.json()["name"], "", False, 2)
