"""Tasks' optimistic concurrency: a version per task, its strong ETag, If-Match on PATCH and DELETE
(RFC 9110 13.1.1), If-None-Match on GET (13.1.2), and distinct positions for tasks created at the
same time."""

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
    make_task,
    make_team,
    serve_in_loop,
)


async def stored(db: AsyncConnection[Any], task_id: int) -> tuple[str, str, int] | None:
    """(title, description, version) of the task, None once it is gone."""
    cursor = await db.execute("select title, description, version from tasks where id = %s", (task_id,))
    return await cursor.fetchone()


async def new_task(db: AsyncConnection[Any], team: Team) -> tuple[str, int]:
    task_id = await make_task(db, team.project, team.owner, title="original")
    return f"/api/tasks/{task_id}", task_id


def if_match(team: Team, value: str) -> dict[str, str]:
    return team.editor.headers | {"If-Match": value}


# -- the version and its ETag -------------------------------------------------------------------------


async def test_a_task_answers_its_version_as_a_strong_etag(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    created = await client.post(
        f"/api/projects/{team.project}/tasks", json={"title": "Ship"}, headers=team.editor.headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    url = f"/api/tasks/{created.json()['id']}"

    read = await client.get(url, headers=team.viewer.headers)
    assert read.status_code == 200, read.text
    assert (read.headers["etag"], read.json()["version"]) == ('"1"', 1)
    listed = await client.get(f"/api/projects/{team.project}/tasks", headers=team.viewer.headers)
    assert [item["version"] for item in listed.json()["items"]] == [1]
    mine = await client.patch(url, json={"assignee_id": team.viewer.id}, headers=team.editor.headers)
    assert mine.headers["etag"] == '"2"'
    assigned = await client.get("/api/me/tasks", headers=team.viewer.headers)
    assert [item["version"] for item in assigned.json()["items"]] == [2]


async def test_every_kind_of_change_takes_the_next_version(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url, task_id = await new_task(db, team)
    changes: list[dict[str, Any]] = [
        {"title": "renamed"},
        {"description": "what it is about"},
        {"status": "in_progress"},
        {"priority": "urgent"},
        {"assignee_id": team.viewer.id},
        {"assignee_id": None},
        {"due_date": "2027-01-31"},
        {"due_date": None},
        {"position": 42},  # a move
    ]
    for expected, change in enumerate(changes, start=2):
        answer = await client.patch(url, json=change, headers=team.editor.headers)
        assert answer.status_code == 200, (change, answer.text)
        assert (answer.json()["version"], answer.headers["etag"]) == (expected, f'"{expected}"'), change
    row = await stored(db, task_id)
    assert row is not None and row[2] == len(changes) + 1


async def test_a_member_removed_unassigns_their_tasks_and_that_takes_the_next_version(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """The database clears the assignee (``on delete set null``): no statement of ours runs, yet the
    task a client read changed, so an If-Match based on it must not pass."""
    url, _ = await new_task(db, team)
    assigned = await client.patch(url, json={"assignee_id": team.viewer.id}, headers=team.editor.headers)
    read_etag = assigned.headers["etag"]
    removed = await client.delete(
        f"/api/projects/{team.project}/members/{team.viewer.id}", headers=team.owner.headers
    )
    assert removed.status_code == 204, removed.text

    after = await client.get(url, headers=team.editor.headers)
    assert after.json()["assignee_id"] is None
    assert after.headers["etag"] != read_etag
    stale = await client.patch(url, json={"title": "based on the old"}, headers=if_match(team, read_etag))
    assert_problem(stale, 412, "precondition-failed")


async def test_a_change_that_changes_nothing_keeps_the_version(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url, task_id = await new_task(db, team)
    same = await client.patch(url, json={"title": "original", "position": 0}, headers=if_match(team, '"1"'))
    assert same.status_code == 200, same.text
    assert (same.json()["version"], same.headers["etag"]) == (1, '"1"')
    assert await stored(db, task_id) == ("original", "", 1)
    # The condition is judged all the same: a stale one is refused even when nothing would change.
    await client.patch(url, json={"title": "changed"}, headers=team.editor.headers)
    stale = await client.patch(url, json={"title": "changed"}, headers=if_match(team, '"1"'))
    assert_problem(stale, 412, "precondition-failed")


# -- If-Match -----------------------------------------------------------------------------------------


async def test_a_stale_if_match_changes_nothing(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    url, task_id = await new_task(db, team)
    loaded = (await client.get(url, headers=team.owner.headers)).headers["etag"]
    first = await client.patch(url, json={"title": "A's"}, headers=if_match(team, loaded))
    assert first.status_code == 200, first.text

    second = await client.patch(
        url,
        json={"title": "B's", "description": "B's plan"},
        headers=team.owner.headers | {"If-Match": loaded},
    )
    assert_problem(second, 412, "precondition-failed")
    assert await stored(db, task_id) == ("A's", "", 2)


async def test_a_matching_if_match_applies_the_change_and_answers_the_new_etag(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url, task_id = await new_task(db, team)
    changed = await client.patch(url, json={"description": "the plan"}, headers=if_match(team, '"1"'))
    assert changed.status_code == 200, changed.text
    assert (changed.headers["etag"], changed.json()["version"]) == ('"2"', 2)
    assert await stored(db, task_id) == ("original", "the plan", 2)
    again = await client.patch(url, json={"title": "next"}, headers=if_match(team, changed.headers["etag"]))
    assert (again.status_code, again.headers["etag"]) == (200, '"3"')


async def test_if_match_any_and_lists(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    url, task_id = await new_task(db, team)
    anything = await client.patch(url, json={"title": "any"}, headers=if_match(team, "*"))
    assert (anything.status_code, anything.headers["etag"]) == (200, '"2"')

    listed = await client.patch(url, json={"title": "listed"}, headers=if_match(team, '"9", "2" ,, "1"'))
    assert (listed.status_code, listed.headers["etag"]) == (200, '"3"')
    # Two header lines are one list (RFC 9110 5.3).
    lines = [*team.editor.headers.items(), ("If-Match", '"1"'), ("If-Match", '"3"')]
    two_lines = await client.patch(url, json={"title": "two lines"}, headers=lines)
    assert (two_lines.status_code, two_lines.headers["etag"]) == (200, '"4"')

    none_current = await client.patch(url, json={"title": "no"}, headers=if_match(team, '"1", "2", "3"'))
    assert_problem(none_current, 412, "precondition-failed")
    weak = await client.patch(url, json={"title": "weak"}, headers=if_match(team, 'W/"4"'))
    assert_problem(weak, 412, "precondition-failed")  # If-Match compares strongly
    for no_tag in ("", " , ,"):  # an empty list (RFC 9110 #entity-tag) names no version
        empty = await client.patch(url, json={"title": "empty"}, headers=if_match(team, no_tag))
        assert_problem(empty, 412, "precondition-failed")
    too_long = await client.patch(url, json={"title": "long"}, headers=if_match(team, '"4",' * 600))
    assert_problem(too_long, 400, "validation", {"header.If-Match"})
    assert await stored(db, task_id) == ("two lines", "", 4)


@pytest.mark.parametrize("value", ["4", "abc", '"4" "5"', '"4""5"', '*, "4"', 'w/"4"', '"a\x7fb"', "*" * 2])
async def test_a_malformed_if_match_is_a_400_naming_the_header(
    client: Client, db: AsyncConnection[Any], team: Team, value: str
) -> None:
    url, task_id = await new_task(db, team)
    for answer in (
        await client.patch(url, json={"title": "x"}, headers=if_match(team, value)),
        await client.delete(url, headers=if_match(team, value)),
    ):
        assert_problem(answer, 400, "validation", {"header.If-Match"})
    assert await stored(db, task_id) == ("original", "", 1)


async def test_without_if_match_a_change_is_unconditional(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url, task_id = await new_task(db, team)
    await client.patch(url, json={"title": "someone else's"}, headers=team.owner.headers)
    mine = await client.patch(url, json={"title": "mine"}, headers=team.editor.headers)
    assert mine.status_code == 200, mine.text
    assert await stored(db, task_id) == ("mine", "", 3)
    deleted = await client.delete(url, headers=team.editor.headers)
    assert deleted.status_code == 204, deleted.text


async def test_a_delete_with_a_stale_if_match_deletes_nothing(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url, task_id = await new_task(db, team)
    await client.patch(url, json={"title": "changed meanwhile"}, headers=team.owner.headers)
    stale = await client.delete(url, headers=if_match(team, '"1"'))
    assert_problem(stale, 412, "precondition-failed")
    assert await stored(db, task_id) == ("changed meanwhile", "", 2)
    current = await client.delete(url, headers=if_match(team, '"2"'))
    assert current.status_code == 204, current.text
    assert await stored(db, task_id) is None


async def test_access_is_judged_before_the_condition(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url, _ = await new_task(db, team)
    stale = {"If-Match": '"7"'}
    assert_problem(await client.patch(url, json={"title": "x"}, headers=team.viewer.headers | stale), 403)
    assert_problem(await client.delete(url, headers=team.outsider.headers | stale), 404)
    assert_problem(
        await client.patch("/api/tasks/999999", json={"title": "x"}, headers=if_match(team, "*")), 404
    )


async def test_the_schema_documents_if_match_the_412_and_the_etag(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    task = paths["/api/tasks/{task_id}"]
    for method in ("patch", "delete"):
        headers = {p["name"]: p for p in task[method]["parameters"] if p["in"] == "header"}
        assert headers["If-Match"]["required"] is False
        # A plain string, its grammar told in words: fuzzers then send valid If-Match values.
        assert headers["If-Match"]["schema"] == {"type": "string"}
        assert "`*`" in headers["If-Match"]["description"]
        assert "412" in task[method]["responses"], method
    for method in ("get", "patch"):
        assert "ETag" in task[method]["responses"]["200"]["headers"], method


# -- reading only if changed (If-None-Match) ----------------------------------------------------------


async def test_a_read_naming_the_current_version_is_a_304_without_a_body(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url, _ = await new_task(db, team)
    held = await client.get(url, headers=team.viewer.headers | {"If-None-Match": '"1"'})
    assert (held.status_code, held.content, held.headers["etag"]) == (304, b"", '"1"')
    changed = await client.patch(url, json={"title": "renamed"}, headers=team.editor.headers)
    assert changed.headers["etag"] == '"2"'
    fresh = await client.get(url, headers=team.viewer.headers | {"If-None-Match": '"1"'})
    assert (fresh.status_code, fresh.headers["etag"], fresh.json()["title"]) == (200, '"2"', "renamed")


async def test_a_task_may_be_kept_by_its_reader_only_and_asked_about_again(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Every answer is ``no-store`` by default (a review: personal data kept by browsers' caches); a
    versioned read says ``private, no-cache`` instead, on its 200 and its 304, or there would be no copy
    to revalidate. The PATCH's answer is not one to keep."""
    url, _ = await new_task(db, team)
    read = await client.get(url, headers=team.viewer.headers)
    held = await client.get(url, headers=team.viewer.headers | {"If-None-Match": '"1"'})
    changed = await client.patch(url, json={"title": "renamed"}, headers=team.editor.headers)
    assert [answer.status_code for answer in (read, held, changed)] == [200, 304, 200]
    assert [answer.headers.get_list("cache-control") for answer in (read, held, changed)] == [
        ["private, no-cache"],
        ["private, no-cache"],
        ["no-store"],
    ]


@pytest.mark.parametrize(
    ("if_none_match", "status", "tag"),
    [
        ('W/"1"', 304, '"1"'),  # weak comparison
        ('"0", "1"', 304, '"1"'),
        ('"0", W/"1-gzip"', 304, '"1-gzip"'),  # the copy a cache holds, as it holds it
        ("*", 304, '"1"'),
        ('"0"', 200, '"1"'),
        ('"1', 200, '"1"'),  # malformed: ignored, the whole answer
        ("1", 200, '"1"'),
        ('"1"' + ", " * 1100, 200, '"1"'),  # overlong: ignored
    ],
)
async def test_if_none_match_compares_weakly_and_ignores_what_it_cannot_read(
    client: Client, db: AsyncConnection[Any], team: Team, if_none_match: str, status: int, tag: str
) -> None:
    url, _ = await new_task(db, team)
    answer = await client.get(url, headers=team.viewer.headers | {"If-None-Match": if_none_match})
    assert (answer.status_code, answer.headers["etag"]) == (status, tag)
    assert (answer.content == b"") == (status == 304)


async def test_a_change_whose_if_none_match_names_the_current_version_changes_nothing(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """``If-None-Match`` on a change (13.1.2): ``*`` (the task exists) or a tag naming its current
    version, weakly, is a 412 and nothing changes; one naming another version holds. It was ignored."""
    url, task_id = await new_task(db, team)
    for value in ("*", '"1"', 'W/"1"', '"7", "1-br"'):
        refused = await client.patch(
            url, json={"title": "x"}, headers=team.editor.headers | {"If-None-Match": value}
        )
        assert_problem(refused, 412, "precondition-failed")
    assert_problem(await client.delete(url, headers=team.editor.headers | {"If-None-Match": '"1"'}), 412)
    assert await stored(db, task_id) == ("original", "", 1)
    applied = await client.patch(
        url, json={"title": "renamed"}, headers=team.editor.headers | {"If-None-Match": '"7"'}
    )
    assert applied.status_code == 200, applied.text
    assert applied.headers["etag"] == '"2"'
    both = team.editor.headers | {"If-Match": '"2"', "If-None-Match": '"2"'}
    assert_problem(await client.patch(url, json={"title": "again"}, headers=both), 412)


async def test_a_read_whose_if_match_names_another_version_is_a_412(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """``If-Match`` on a read (13.1.1): a client resuming its copy refuses a changed task. It was
    ignored (200 with the other version)."""
    url, _ = await new_task(db, team)
    assert_problem(await client.get(url, headers=if_match(team, '"9"')), 412, "precondition-failed")
    assert_problem(await client.get(url, headers=if_match(team, "nonsense")), 400, "validation")
    for value in ('"1"', '"1-gzip"', "*"):
        read = await client.get(url, headers=if_match(team, value))
        assert read.status_code == 200, (value, read.text)
    held = await client.get(url, headers=if_match(team, '"1"') | {"If-None-Match": '"1"'})
    assert held.status_code == 304


async def test_access_is_judged_before_if_none_match(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url, _ = await new_task(db, team)
    assert_problem(await client.get(url, headers=team.outsider.headers | {"If-None-Match": "*"}), 404)
    assert_problem(await client.get(url, headers={"If-None-Match": '"1"'}), 401)


async def test_the_schema_documents_if_none_match_and_the_304(client: Client) -> None:
    read = (await client.get("/schema/openapi.json")).json()["paths"]["/api/tasks/{task_id}"]["get"]
    headers = {p["name"]: p for p in read["parameters"] if p["in"] == "header"}
    assert headers["If-None-Match"]["schema"] == {"type": "string"}
    assert "304" in headers["If-None-Match"]["description"]
    assert "content" not in read["responses"]["304"]
    assert "ETag" in read["responses"]["304"]["headers"]
    assert "TaskOut" in read["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]


# -- at the same time ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve_in_loop(settings, rate_limit_default_per_minute=1_000_000) as s:
        yield s


async def test_of_concurrent_changes_from_one_version_exactly_one_is_applied(
    served: Served, db: AsyncConnection[Any], database_url: str
) -> None:
    team = await make_team(db, served.app)
    url, task_id = await new_task(db, team)
    titles = [f"tab {i}" for i in range(6)]
    answers = await all_waiting_behind(
        database_url,
        "select id from tasks where id = %s for update",
        task_id,
        [served.client.patch(url, json={"title": t}, headers=if_match(team, '"1"')) for t in titles],
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] + [412] * (len(titles) - 1), [a.text for a in answers]
    applied = next(answer for answer in answers if answer.status_code == 200)
    assert applied.headers["etag"] == '"2"'
    assert await stored(db, task_id) == (applied.json()["title"], "", 2)


async def test_tasks_created_at_the_same_time_get_distinct_positions(
    served: Served, db: AsyncConnection[Any], database_url: str
) -> None:
    team = await make_team(db, served.app)
    create = f"/api/projects/{team.project}/tasks"
    answers = await all_waiting_behind(
        database_url,
        "select id from projects where id = %s for update",
        team.project,
        [served.client.post(create, json={"title": f"t{i}"}, headers=team.editor.headers) for i in range(8)],
    )
    assert [answer.status_code for answer in answers] == [201] * 8, [a.text for a in answers]
    assert sorted(answer.json()["position"] for answer in answers) == list(range(8))
