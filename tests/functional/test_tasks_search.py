"""The task list's full-text search (``q``, web-search syntax) answers any text the parameter admits,
and means by it what PostgreSQL means.

Review: ``"-" * 33 + "a"`` was a 500 (``tsquery stack too small``): each ``-`` awaiting an operand is
a NOT waiting on a 32-entry stack in ``websearch_to_tsquery``.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import AsyncConnection

from app.domains.tasks.search import MAX_DASHES_IN_A_ROW, search_text
from tests.factories import Client, Team, make_task, scaled_examples

WORDS = ["alpha", "beta", "launch", "or", "OR", "x-y", "-1", "é"]
PIECES = [
    *WORDS,
    *"-------- \t\n\r\x0b\x0c!&|()<\":*'\\,.",
    "<->",
    "<2>",
    "\u00a0",
    "\u3000",
    "\u2028",
]
"""Words, the web syntax's operators, what it skips between operands, and spaces it does not know."""
RUNS = (
    st.integers(1, 70)
    .flatmap(
        lambda dashes: st.lists(
            st.sampled_from(["-", "-", "- ", "-!", "-(", "-<", "-\t", "-|", " -", "&-"]),
            min_size=dashes,
            max_size=dashes,
        )
    )
    .map("".join)
)
"""Stretches a run of NOTs is made of: up to 70 dashes, the characters skipped between them mixed in."""
QUERIES = st.lists(st.one_of(RUNS, st.sampled_from(PIECES)), min_size=1, max_size=12).map(
    lambda parts: "".join(parts)[:200]
)
DOCUMENTS = ["alpha launch", "beta", "x-y -1", "or é alpha", "alpha--beta", ""]


async def titles(client: Client, team: Team, q: str) -> list[str]:
    response = await client.get(
        f"/api/projects/{team.project}/tasks", params={"q": q}, headers=team.viewer.headers
    )
    assert response.status_code == 200, (q, response.text)
    return sorted(item["title"] for item in response.json()["items"])


async def test_a_long_run_of_exclusions_means_what_its_pairs_leave(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    await make_task(db, team.project, team.owner, title="alpha launch")
    await make_task(db, team.project, team.owner, title="beta")
    assert await titles(client, team, "-" * 33 + "a") == ["alpha launch", "beta"]
    assert await titles(client, team, "-" * 33 + "alpha") == ["beta"]
    assert await titles(client, team, "-" * 34 + "alpha") == ["alpha launch"]
    # spaces and the skipped operators between the dashes make one run too; an or waits below it
    assert await titles(client, team, "launch or " + "- !(<" * 34) == ["alpha launch"]
    assert await titles(client, team, "beta or " + "- " * 40 + "alpha") == ["alpha launch", "beta"]
    assert await titles(client, team, "beta or " + "- " * 41 + "alpha") == ["beta"]
    assert await titles(client, team, '"alpha launch"' + "-" * 51 + "beta") == ["alpha launch"]


async def test_dashes_that_are_text_read_the_same_however_many(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Glued to a word or quoted, dashes are no exclusions; past ``MAX_DASHES_IN_A_ROW`` in a row they
    are cut to that many (a cap that does not rely on reading the parser right), which reads the same."""
    await make_task(db, team.project, team.owner, title="alpha")
    await make_task(db, team.project, team.owner, title="alpha--beta")
    many = MAX_DASHES_IN_A_ROW + 30
    assert await titles(client, team, "alpha" + "-" * many) == ["alpha", "alpha--beta"]
    assert await titles(client, team, '"' + "- " * many + '" alpha') == ["alpha", "alpha--beta"]
    assert await titles(client, team, "alpha" + "-" * many + "beta") == ["alpha--beta"]
    assert await titles(client, team, '"alpha' + "-" * many + 'beta"') == ["alpha--beta"]


@hypothesis_settings(
    max_examples=scaled_examples(300), suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=QUERIES)
async def test_any_search_text_is_answered(client: Client, team: Team, q: str) -> None:
    await titles(client, team, q)


@hypothesis_settings(
    max_examples=scaled_examples(300), suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=QUERIES)
async def test_what_the_search_gets_matches_what_was_sent(db: AsyncConnection[Any], q: str) -> None:
    """Where PostgreSQL parses the text as sent (in NFKC form, as the search reads every query:
    ``search_text``), the text the search gets matches the same documents. Compared as sent, a
    no-break space before ``-alpha`` (NFKC: a space, so a NOT) was glued to it for PostgreSQL."""
    matches = (
        "select array_agg(to_tsvector('simple', d) @@ websearch_to_tsquery('simple', %s) order by n)"
        " from unnest(%s::text[]) with ordinality as t(d, n)"
    )
    try:
        sent = await (await db.execute(matches, (unicodedata.normalize("NFKC", q), DOCUMENTS))).fetchone()
    except psycopg.errors.InternalError_:  # the stack overflow this guards against
        return
    searched = await (await db.execute(matches, (search_text(q), DOCUMENTS))).fetchone()
    assert searched == sent, (q, search_text(q))
