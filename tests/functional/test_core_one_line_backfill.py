"""Names and titles stored before the API refused control and direction characters (368c2ac) are
made one line by 20261206140000: a right-to-left override stored in a task title turned other
people's feed sentences around, and a client sending a row's unchanged title back in a PATCH got a
400 (left alone in note 39). The feed writer stores every title one line too (an event of the previous
release may still be on its way)."""

from __future__ import annotations

import re
import sys
from typing import Any

import psycopg
from psycopg import AsyncConnection

from app.config import Settings
from app.core import types
from app.core.migrate import MIGRATIONS_DIR
from app.core.services import open_services
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from tests.factories import Client, Team, make_product, make_task, migration_up, scalar

HEBREW = "\u05e9\u05dc\u05d5\u05dd \u200f\u05e2\u05d5\u05dc\u05dd 🎉"
"""Hebrew words, a right-to-left mark between them, an emoji."""
STORED = {
    "Fix\nthe login": "Fix the login",
    "\u202eevil.exe\u202c report": "evil.exe report",
    "Ship \x1b[31mred\x1b[0m\r\n now": "Ship  [31mred [0m  now",
    "\u2066isolated\u2069\t": "isolated",
    "\t\n\u202e": None,  # nothing left: the placeholder
    "\u200b\n": None,  # nothing visible left (a review: it was kept, a blank title)
    "\xa0\u202e": None,
    "Plain title": "Plain title",
    HEBREW: HEBREW,  # right-to-left text with a mark: its own, unchanged
}
UNTOUCHED = ("Plain title", HEBREW)


async def versions(db: AsyncConnection[Any], ids: list[int]) -> list[tuple[str, int]]:
    rows = await (
        await db.execute("select xmin::text, version from tasks where id = any(%s) order by id", (ids,))
    ).fetchall()
    return [(xmin, version) for xmin, version in rows]


async def test_old_names_and_titles_become_one_line_and_only_they_change(
    api: Client, database_url: str, db: AsyncConnection[Any], team: Team
) -> None:
    tasks = {text: await make_task(db, team.project, team.owner, title=text) for text in STORED}
    product = await make_product(db, name="Blue\u202e mug\n")
    await db.execute("update projects set name = 'Apollo\x07' where id = %s", (team.project,))
    await db.execute("update users set display_name = E'Ana\\nLima' where id = %s", (team.editor.id,))
    await db.execute(
        "insert into activity_objects (object_type, object_id, title, deleted, seq)"
        " values ('task', %s, %s, false, 1), ('user', %s, %s, false, 2)",
        (tasks["Fix\nthe login"], "Fix\nthe login", team.editor.id, "Ana\u202eLima"),
    )
    untouched = await versions(db, [tasks[text] for text in UNTOUCHED])

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("names_one_line"))
        conn.execute(migration_up("names_one_line"))

    for text, expected in STORED.items():
        title, version = await (
            await db.execute("select title, version from tasks where id = %s", (tasks[text],))
        ).fetchone() or (None, None)
        assert title == (expected or "Untitled task"), text
        assert re.fullmatch(types.ONE_LINE, title), title
        assert version == (1 if text in UNTOUCHED else 2), text
    assert await versions(db, [tasks[text] for text in UNTOUCHED]) == untouched
    assert await scalar(db, f"select name from products where id = {product}") == "Blue mug"
    assert await scalar(db, f"select name from projects where id = {team.project}") == "Apollo"
    assert await scalar(db, f"select display_name from users where id = {team.editor.id}") == "Ana Lima"
    titles = await (
        await db.execute("select object_type, title from activity_objects order by seq")
    ).fetchall()
    assert titles == [("task", "Fix the login"), ("user", "AnaLima")]

    task = tasks["\u202eevil.exe\u202c report"]
    shown = await api.get(f"/api/tasks/{task}", headers=team.owner.headers)
    sent_back = await api.patch(
        f"/api/tasks/{task}",
        json={"title": shown.json()["title"], "status": "in_progress"},
        headers={**team.owner.headers, "If-Match": shown.headers["ETag"]},
    )
    assert sent_back.status_code == 200, sent_back.text


async def test_the_feed_stores_an_old_events_title_one_line(
    settings: Settings, db: AsyncConnection[Any], team: Team
) -> None:
    """An event written before the migration and recorded after it would bring its title back."""
    async with open_services(settings, (activity_module,)) as services:
        await services[ActivityService].record_batch(
            [
                {
                    "outbox_id": 1,
                    "actor_id": team.owner.id,
                    "verb": "task.created",
                    "object_type": "task",
                    "object_id": 7,
                    "project_id": team.project,
                    "data": {"title": "\u202eevil.exe\u202c\nreport"},
                    "occurred_at": "2030-01-01T00:00:00+00:00",
                },
                {
                    "outbox_id": 2,
                    "actor_id": team.owner.id,
                    "verb": "task.created",
                    "object_type": "task",
                    "object_id": 8,
                    "project_id": team.project,
                    "data": {"title": "\u200b\n"},  # nothing visible left: no title, not a blank one
                    "occurred_at": "2030-01-01T00:00:00+00:00",
                },
            ]
        )
    assert await scalar(db, "select title from activity_objects where object_id = 7") == "evil.exe report"
    # nothing visible left: the event names no title, and no object row is made of it
    assert await scalar(db, "select count(*) from activity_objects where object_id = 8") == 0


def renamed(outbox_id: int, object_id: int, title: str, actor: int, project: int) -> dict[str, Any]:
    return {
        "outbox_id": outbox_id,
        "actor_id": actor,
        "verb": "task.updated",
        "object_type": "task",
        "object_id": object_id,
        "project_id": project,
        "data": {"title": title},
        "occurred_at": f"2030-01-01T00:00:{outbox_id % 60:02d}+00:00",
    }


async def test_a_blank_old_title_never_hides_a_real_one_whatever_the_order(
    settings: Settings, db: AsyncConnection[Any], team: Team
) -> None:
    """A rename to B, then an old event whose title shows nothing: B, in whatever order and batches the
    events are recorded (a review: the blank took B's place, so B recorded after it, or beside it in a
    batch, was lost)."""
    orders = {11: [[1], [2], [3]], 12: [[1], [3], [2]], 13: [[1], [2, 3]], 14: [[3], [1, 2]]}
    async with open_services(settings, (activity_module,)) as services:
        feed = services[ActivityService]
        for object_id, batches in orders.items():
            events = {
                n: renamed(object_id * 10 + n, object_id, title, team.owner.id, team.project)
                for n, title in ((1, "A"), (2, "B"), (3, "\u200b\n"))
            }
            for batch in batches:
                await feed.record_batch([events[n] for n in batch])
    rows = await (
        await db.execute(
            "select object_id, title from activity_objects where object_id = any(%s)", (list(orders),)
        )
    ).fetchall()
    assert sorted(rows) == [(object_id, "B") for object_id in sorted(orders)]


def test_the_migrations_blank_is_the_apis() -> None:
    """The class the migration tells a name with nothing visible by is ``_BLANK``, character for character."""
    (path,) = MIGRATIONS_DIR.glob("*_names_one_line.sql")
    migration = re.compile(re.search(r"~ '\[\^([^']*)\]'", path.read_text())[1].join("[]"))  # type: ignore[index]
    api = re.compile(f"[{types._BLANK}]")
    differ = [
        f"U+{point:04X}"
        for point in range(sys.maxunicode + 1)
        if not 0xD800 <= point <= 0xDFFF and bool(migration.match(chr(point))) != bool(api.match(chr(point)))
    ]
    assert differ == []
