"""The task and product searches find a text whichever Unicode form it was written and searched in:
composed or decomposed accents (macOS and some input methods send "é" as "e" and a combining
accent), full-width letters. Both sides are compared in NFKC form (was: "José" written decomposed
was found only by a query typed decomposed too, a full-width "fix login" never by "fix")."""

from __future__ import annotations

import asyncio
import unicodedata
from typing import Any

import psycopg
from psycopg import AsyncConnection

from tests.factories import (
    Client,
    Team,
    make_product,
    make_task,
    migration_up,
    sessions_waiting_for_a_lock,
    wait_until,
)
from tests.functional.test_tasks_search import titles

COMPOSED = unicodedata.normalize("NFC", "José Müller review")
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)
FULL_WIDTH = "\uff46\uff49\uff58 \uff4c\uff4f\uff47\uff49\uff4e"  # "fix login" in full-width letters
OLD_DOCUMENT = (
    "setweight(to_tsvector('simple', title), 'A') || setweight(to_tsvector('simple', description), 'B')"
)
"""A document as stored before 20261206110000 (the text as written)."""


async def test_a_task_is_found_whichever_form_its_title_and_the_query_are_in(
    api: Client, db: AsyncConnection[Any], team: Team
) -> None:
    await make_task(db, team.project, team.owner, title=DECOMPOSED)
    await make_task(db, team.project, team.owner, title=FULL_WIDTH)
    for query in (COMPOSED.split()[0], DECOMPOSED.split()[0], "Müller", "JOSÉ"):
        assert await titles(api, team, query) == [DECOMPOSED], query
    assert await titles(api, team, "fix") == [FULL_WIDTH]
    assert await titles(api, team, FULL_WIDTH) == [FULL_WIDTH]


async def test_a_product_is_found_whichever_form_its_name_and_the_query_are_in(
    api: Client, db: AsyncConnection[Any], team: Team
) -> None:
    name = unicodedata.normalize("NFD", "Café crème mug")
    await make_product(db, name=name)
    for query in ("Café", unicodedata.normalize("NFD", "café"), "CRÈME"):
        answer = await api.get("/api/products", params={"q": query}, headers=team.viewer.headers)
        assert answer.status_code == 200, answer.text
        assert [item["name"] for item in answer.json()["items"]] == [name], query


async def test_the_documents_stored_before_are_made_again_in_nfkc_form_and_only_those(
    database_url: str, db: AsyncConnection[Any], team: Team
) -> None:
    written = await make_task(db, team.project, team.owner, title=DECOMPOSED)
    plain = await make_task(db, team.project, team.owner, title="plain ascii")
    await db.execute(
        f"update task_search_documents d set document = {OLD_DOCUMENT} from tasks t where t.id = d.task_id"
    )
    untouched = await (
        await db.execute("select xmin::text from task_search_documents where task_id = %s", (plain,))
    ).fetchone()

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("task_search_documents_nfkc"))
        conn.execute(migration_up("task_search_documents_nfkc"))

    differing = await (
        await db.execute(
            "select count(*) from tasks t join task_search_documents d on d.task_id = t.id"
            " where d.document is distinct from task_search_document(t.title, t.description)"
        )
    ).fetchone()
    assert differing == (0,)
    assert (
        await (
            await db.execute("select xmin::text from task_search_documents where task_id = %s", (plain,))
        ).fetchone()
        == untouched
    )
    found = await (
        await db.execute(
            "select task_id from task_search_documents where document @@ websearch_to_tsquery('simple', %s)",
            (COMPOSED.split()[0],),
        )
    ).fetchall()
    assert found == [(written,)]


async def test_an_edit_under_way_keeps_its_document_whatever_the_backfill_does(
    database_url: str, db: AsyncConnection[Any], team: Team
) -> None:
    """The backfill meets a task being edited: it waits for the edit, then makes the document of the new
    text (a review found it made it of the text before the edit, written over the edit's own)."""
    task = await make_task(db, team.project, team.owner, title=DECOMPOSED)
    await db.execute(
        f"update task_search_documents d set document = {OLD_DOCUMENT} from tasks t where t.id = d.task_id"
    )

    def backfill() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(migration_up("task_search_documents_nfkc"))

    with psycopg.connect(database_url) as editor:
        editor.execute("update tasks set title = 'brand new title' where id = %s", (task,))
        running = asyncio.ensure_future(asyncio.to_thread(backfill))

        async def waits_for_the_edit() -> bool:
            return running.done() or await sessions_waiting_for_a_lock(db) > 0

        await wait_until(waits_for_the_edit, 30, "the backfill waits for the edit")
        editor.commit()
    await running

    found = await (
        await db.execute(
            "select task_id from task_search_documents"
            " where document @@ websearch_to_tsquery('simple', 'brand')"
        )
    ).fetchall()
    assert found == [(task,)]
