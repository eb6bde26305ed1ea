"""Names and titles are one line whose direction is their own (``app.core.types.ONE_LINE``): a task
title, a project name or a display name holding a newline, an escape or a right-to-left override
is refused with a 400 naming the field and the rule (was: stored, and shown inside everyone's feed
sentences: "Ben commented on '\\u202efdp.exe' in Gemini" reads "... 'exe.pdf' ...")."""

from __future__ import annotations

import pytest

from tests.factories import Client, Team, assert_problem

TURNED = "\u202efdp.exe"


@pytest.mark.parametrize("title", [TURNED, "line one\nline two", "red\x1b[31m"])
async def test_a_task_title_that_is_not_one_line_is_refused(api: Client, team: Team, title: str) -> None:
    answer = await api.post(
        f"/api/projects/{team.project}/tasks", json={"title": title}, headers=team.owner.headers
    )
    body = assert_problem(answer, 400, fields={"title"})
    assert "one line" in str(body["errors"]), body


async def test_a_project_name_and_a_display_name_that_turn_the_text_around_are_refused(
    api: Client, team: Team
) -> None:
    created = await api.post("/api/projects", json={"name": TURNED}, headers=team.owner.headers)
    assert_problem(created, 400, fields={"name"})
    renamed = await api.patch(
        "/api/auth/me", json={"display_name": f"Ana{TURNED}"}, headers=team.owner.headers
    )
    assert_problem(renamed, 400, fields={"display_name"})
    kept = await api.post(
        f"/api/projects/{team.project}/tasks",
        json={"title": "José's \u05e9\u05dc\u05d5\u05dd"},
        headers=team.owner.headers,
    )
    assert kept.status_code == 201, kept.text
