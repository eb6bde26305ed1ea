"""The task search finds Chinese, Japanese and Korean text by any run of it. These scripts put no
spaces between words, and PostgreSQL's parser read a whole run as one word: "東京都の会議" was found
only by that exact run, never by "会議" (the Unicode reviewer's finding). The stored document holds each
run as its overlapping pairs and each character alone (``search_words``, ``search_characters``); the
query's runs become phrases of pairs (``app.domains.tasks.search.cjk_phrases``)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import AsyncConnection

from app.domains.tasks.search import CJK, search_text
from tests.factories import Client, Team, make_task, migration_up, scaled_examples
from tests.functional.test_tasks_search import titles

MEETING = "東京都の会議"
KOREAN = "서울에서 회의"
RANGES = [
    (int(start, 16), int(end, 16))
    for start, end in re.findall(
        r"\\[uU]([0-9a-f]+)-\\[uU]([0-9a-f]+)", CJK.encode("unicode_escape").decode()
    )
]
"""The ranges of ``CJK``, as (first, last) code points."""
NFKC_BEFORE = (
    "setweight(to_tsvector('simple', normalize(title, nfkc)), 'A')"
    " || setweight(to_tsvector('simple', normalize(description, nfkc)), 'B')"
)
"""A document as stored before 20261206120000 (a CJK run one word)."""
FOUND = "select task_search_document(%s, '') @@ websearch_to_tsquery('simple', %s)"


async def found(db: AsyncConnection[Any], title: str, q: str) -> bool:
    row = await (await db.execute(FOUND, (title, search_text(q)))).fetchone()
    assert row is not None
    return bool(row[0])


async def test_a_task_is_found_by_any_run_of_its_cjk_text(
    api: Client, db: AsyncConnection[Any], team: Team
) -> None:
    meeting = await make_task(db, team.project, team.owner, title=MEETING)
    await db.execute("update tasks set description = %s where id = %s", (KOREAN, meeting))
    await make_task(db, team.project, team.owner, title="京都の旅")
    for query in ("会議", "東京", "東京都", "都の会", "회의", "서울", "울에", "会"):
        assert await titles(api, team, query) == [MEETING], query
    assert await titles(api, team, "京都") == sorted([MEETING, "京都の旅"])
    assert await titles(api, team, "旅") == ["京都の旅"]
    assert await titles(api, team, "京") == sorted([MEETING, "京都の旅"])
    assert await titles(api, team, "議会") == []
    assert await titles(api, team, "京都 -会議") == ["京都の旅"]
    assert await titles(api, team, '"京都の"') == sorted([MEETING, "京都の旅"])


async def test_cjk_runs_keep_the_web_syntax_around_them(db: AsyncConnection[Any]) -> None:
    assert await found(db, "東京都-x", "東京都-x")
    assert await found(db, "東京都-x", '"東京都-x"')
    assert await found(db, "release 東京都 plan", '"release 東京都 plan"')
    assert await found(db, "release 東京都 plan", "plan東京")
    assert not await found(db, "release 東京都 plan", '"plan 東京都"')
    assert not await found(db, "release 東京都 plan", "-東京都")
    assert await found(db, "release 東京都 plan", "大阪 or 京都")
    assert not await found(db, "release 東京都 plan", '"都東京')
    assert await found(db, "Python東京v2", "Python東京v2")


@hypothesis_settings(
    max_examples=scaled_examples(200), suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.lists(
        st.sampled_from([*"東京都の会議大阪にカタログー서울에서회의々𠀀", " ", "fix", "v2", "é"]),
        min_size=1,
        max_size=20,
    ).map("".join),
    data=st.data(),
)
async def test_every_run_of_cjk_characters_in_a_title_finds_it(
    db: AsyncConnection[Any], text: str, data: st.DataObject
) -> None:
    runs = re.findall(f"[{CJK}]+", text)
    if not runs:
        return
    run = data.draw(st.sampled_from(runs))
    start = data.draw(st.integers(0, len(run) - 1))
    end = data.draw(st.integers(start + 1, len(run)))
    assert await found(db, text, run[start:end]), (text, run[start:end], search_text(run[start:end]))
    assert await found(db, text, text), (text, search_text(text))


async def read_as_cjk(db: AsyncConnection[Any], characters: list[str]) -> list[tuple[str, bool, bool]]:
    """(character in hex, CJK to the document's side, CJK to the query's side) of each character."""
    rows = await (
        await db.execute(
            "select c, search_characters(c) <> ''"
            " from unnest(%s::text[]) with ordinality as t(c, n) order by n",
            (characters,),
        )
    ).fetchall()
    return [(hex(ord(c)), document, re.fullmatch(f"[{CJK}]", c) is not None) for c, document in rows]


async def test_the_query_and_the_document_read_the_same_characters_as_cjk_at_every_range_end(
    db: AsyncConnection[Any],
) -> None:
    """``CJK`` (the query's side) and the migration's class (the document's) agree at every range's
    ends and one past them."""
    ends = [chr(point) for first, last in RANGES for point in (first - 1, first, last, last + 1)]
    read = await read_as_cjk(db, ends)
    assert [(point, document) for point, document, _ in read] == [(point, query) for point, _, query in read]
    assert sum(query for _, _, query in read) == 2 * len(RANGES)


@hypothesis_settings(
    max_examples=scaled_examples(100), suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(characters=st.lists(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=50))
async def test_the_query_and_the_document_read_any_character_alike(
    db: AsyncConnection[Any], characters: list[str]
) -> None:
    read = await read_as_cjk(db, [c for c in characters if c != "\x00"])
    assert [(point, document) for point, document, _ in read] == [(point, query) for point, _, query in read]


async def test_the_previous_releases_whole_run_queries_still_find_cjk_tasks(db: AsyncConnection[Any]) -> None:
    """Expand, then contract (the upgrade review): during a rolling deploy, or after a rollback of the
    code, the previous release sends a CJK run as one word, in NFKC form. A title's phrase is found
    beside a long CJK description too (a review: its old words were pushed past the positions' limit)."""
    long_description = "".join(chr(0x4E00 + i) for i in range(9000))
    for title, description, q in (
        (MEETING, "", MEETING),
        ("Python東京 plan", "", "Python東京"),
        ("\u337f 会議", "", "株式会社"),
        ("plan 東京都 review", long_description, '"plan 東京都"'),
    ):
        row = await (
            await db.execute(
                "select task_search_document(%s, %s) @@ websearch_to_tsquery('simple', normalize(%s, nfkc))",
                (title, description, q),
            )
        ).fetchone()
        assert row == (True,), (title, q)


async def test_the_documents_of_cjk_tasks_are_made_again_and_only_those(
    database_url: str, db: AsyncConnection[Any], team: Team
) -> None:
    cjk = await make_task(db, team.project, team.owner, title=MEETING)
    squared = await make_task(db, team.project, team.owner, title="plan")
    await db.execute("update tasks set description = '\u337f' where id = %s", (squared,))  # ㍿
    plain = await make_task(db, team.project, team.owner, title="plain ascii")
    await db.execute(
        f"update task_search_documents d set document = {NFKC_BEFORE} from tasks t where t.id = d.task_id"
    )
    untouched = await (
        await db.execute("select xmin::text from task_search_documents where task_id = %s", (plain,))
    ).fetchone()
    assert await titles_matching(db, "会議") == []

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("task_search_documents_cjk"))
        conn.execute(migration_up("task_search_documents_cjk"))

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
    assert await titles_matching(db, "会議") == [cjk]
    assert await titles_matching(db, "会社") == [squared]


async def titles_matching(db: AsyncConnection[Any], q: str) -> list[int]:
    rows = await (
        await db.execute(
            "select task_id from task_search_documents where document @@ websearch_to_tsquery('simple', %s)"
            " order by task_id",
            (search_text(q),),
        )
    ).fetchall()
    return [task_id for (task_id,) in rows]
