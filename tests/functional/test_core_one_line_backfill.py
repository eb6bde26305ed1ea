"""Names and titles stored before the API refused control and direction characters (368c2ac) are
made one line by 20261206140000: a right-to-left override stored in a task title turned other
people's feed sentences around, and a client sending a row's unchanged title back in a PATCH got a
400 (left alone in note 39)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import AsyncConnection

from app.core.types import ONE_LINE
from tests.factories import Client, Team, make_product, make_task, migration_up, scalar

STORED = {
    "Fix\nthe login": "Fix the login",
    "\u202eevil.exe\u202c report": "evil.exe report",
    "Ship \x1b[31mred\x1b[0m\r\n now": "Ship  [31mred [0m  now",
    "\u2066isolated\u2069\t": "isolated",
    "\t\n\u202e": None,  # nothing left: the placeholder
    "Plain title": "Plain title",
}


async def test_old_names_and_titles_become_one_line_and_only_they_change(
    api: Client, database_url: str, db: AsyncConnection[Any], team: Team
) -> None:
    tasks = {text: await make_task(db, team.project, team.owner, title=text) for text in STORED}
    product = await make_product(db, name="Blue\u202e mug\n")
    await db.execute("update projects set name = 'Apollo\x07' where id = %s", (team.project,))
    await db.execute("update users set display_name = E'Ana\\nLima' where id = %s", (team.editor.id,))
    await db.execute(
        "insert into activity_objects (object_type, object_id, title, deleted, seq)"
        " values ('task', %s, %s, false, 1)",
        (tasks["Fix\nthe login"], "Fix\nthe login"),
    )
    plain_before = await scalar(
        db, f"select xmin::text || version from tasks where id = {tasks['Plain title']}"
    )

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("names_one_line"))
        conn.execute(migration_up("names_one_line"))

    for text, expected in STORED.items():
        title, version = await (
            await db.execute("select title, version from tasks where id = %s", (tasks[text],))
        ).fetchone() or (None, None)
        assert title == (expected or "Untitled task"), text
        assert re.fullmatch(ONE_LINE, title), title
        assert version == (1 if text == "Plain title" else 2), text
    assert (
        await scalar(db, f"select xmin::text || version from tasks where id = {tasks['Plain title']}")
        == plain_before
    )
    assert await scalar(db, f"select name from products where id = {product}") == "Blue mug"
    assert await scalar(db, f"select name from projects where id = {team.project}") == "Apollo"
    assert await scalar(db, f"select display_name from users where id = {team.editor.id}") == "Ana Lima"
    assert (
        await scalar(db, "select title from activity_objects where object_type = 'task'") == "Fix the login"
    )

    task = tasks["\u202eevil.exe\u202c report"]
    shown = await api.get(f"/api/tasks/{task}", headers=team.owner.headers)
    sent_back = await api.patch(
        f"/api/tasks/{task}",
        json={"title": shown.json()["title"], "status": "in_progress"},
        headers={**team.owner.headers, "If-Match": shown.headers["ETag"]},
    )
    assert sent_back.status_code == 200, sent_back.text
