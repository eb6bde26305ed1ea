"""What one feed page costs the database, measured by its plan, not by a clock.

A page reads the groups the reader may see, and no more: neither an actor filter naming a busy user
whose groups the reader cannot see, nor an old or forged cursor, may make a request read the groups
of people the reader shares nothing with. The cost is the number of rows the plan takes from the
feed's tables and indexes (EXPLAIN ANALYZE), compared between readers and against a bound far below
the number of groups the database holds.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection, AsyncRawCursor

from app.config import Settings
from app.core.services import Services, open_services
from app.db import activity as queries
from app.domains.activity import services as activity_services
from app.domains.activity.module import module as activity_module
from app.domains.activity.schemas import UNREAD_COUNT_CAP, FeedFilters
from app.domains.activity.services import ActivityService
from tests.factories import Client, Team, assert_problem, make_project, make_user

BUSY_GROUPS = 5000
"""The busy actor's groups in a project the outsider is not a member of."""
OTHER_PROJECTS = 100
"""Projects of two groups each: the planner's statistics then look like a real deployment's."""
BOUND = 200
"""Rows of the feed's tables a page of 20 may read, whatever the number of groups stored."""
BASE = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
async def feed(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[ActivityService]:
    async with open_services(settings, (activity_module,)) as opened:
        services: Services = opened
        yield services[ActivityService]


async def record(feed: ActivityService, acts: list[tuple[int, int]], first_outbox_id: int) -> None:
    """One task creation per (actor, project), 31 minutes apart: one group each."""
    await feed.record_batch(
        [
            {
                "outbox_id": first_outbox_id + i,
                "actor_id": actor,
                "verb": "task.created",
                "object_type": "task",
                "object_id": first_outbox_id + i,
                "project_id": project,
                "data": {"title": f"Task {i}"},
                "occurred_at": (BASE + timedelta(minutes=31 * i)).isoformat(),
            }
            for i, (actor, project) in enumerate(acts)
        ]
    )


async def rows_read(db: AsyncConnection[Any], query: Callable[..., Any], sql: str, **params: Any) -> int:
    """Rows the query's plan takes from the feed's tables and their indexes, kept or filtered out,
    over all loops. The generated function's keyword parameters are its SQL's ``$n`` in order."""
    names = [name for name in inspect.signature(query).parameters if name != "conn"]
    async with AsyncRawCursor(db) as cur:
        await cur.execute(
            "explain (analyze, buffers, format json) " + sql, tuple(params.get(name) for name in names)
        )
        row = await cur.fetchone()
    assert row is not None
    return _rows_read(row[0][0]["Plan"])


def _rows_read(node: dict[str, Any]) -> int:
    read = 0
    if node.get("Relation Name", "").startswith("activity_"):
        per_loop = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        read = round((per_loop + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"])
    return read + sum(_rows_read(child) for child in node.get("Plans", ()))


async def group_count(client: Client, headers: dict[str, str], url: str = "/api/feed", **params: Any) -> int:
    response = await client.get(url, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


@pytest.fixture
async def busy(db: AsyncConnection[Any], app: Litestar, team: Team, feed: ActivityService) -> int:
    """The team's editor acted in BUSY_GROUPS groups of the team's project and in 3 of a side project
    the outsider owns, among other projects' groups; returns the side project."""
    side = await make_project(db, team.outsider, {team.editor.id: "editor"}, name="Side")
    others = [await make_project(db, team.owner, name=f"Other {n}") for n in range(OTHER_PROJECTS)]
    await record(feed, [(team.owner.id, project) for project in others for _ in range(2)], 1_000_000)
    await record(feed, [(team.editor.id, team.project)] * BUSY_GROUPS, 2_000_000)
    await record(feed, [(team.editor.id, side)] * 3, 3_000_000)
    await db.execute("analyze")
    return side


async def test_an_actor_filter_reads_only_the_groups_the_reader_may_see(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team, busy: int
) -> None:
    editor, outsider, viewer = team.editor.id, team.outsider, team.viewer
    assert await group_count(client, outsider.headers, actor_id=editor) == 3
    assert await group_count(client, outsider.headers, f"/api/projects/{busy}/feed", actor_id=editor) == 3
    assert await group_count(client, viewer.headers, actor_id=editor) == 20
    assert await group_count(client, viewer.headers, actor_id=editor, project_id=busy) == 0

    async def cost(reader: int, project: int | None = None) -> int:
        return await rows_read(
            db,
            queries.feed_page_by_actor,
            queries.FEED_PAGE_BY_ACTOR,
            row_limit=21,
            reader_id=reader,
            actor_id=editor,
            project_id=project,
        )

    sees_nothing, sees_everything = await cost(outsider.id), await cost(viewer.id)
    # Was: the outsider's page tested each of the editor's 5,003 groups, one by one.
    assert sees_nothing <= sees_everything < BOUND, (sees_nothing, sees_everything)
    assert await cost(outsider.id, busy) < BOUND
    admin = await make_user(db, app, "admin", name="Admin")
    assert await cost(admin.id) < BOUND


async def test_an_old_or_forged_cursor_reads_only_the_groups_the_reader_may_see(
    client: Client, db: AsyncConnection[Any], team: Team, busy: int
) -> None:
    editor, outsider, viewer = team.editor.id, team.outsider, team.viewer
    for who in (outsider, viewer):
        for params in ({}, {"actor_id": editor}):
            # No group had begun at event 0: nothing to show, and nothing to scan for.
            assert await group_count(client, who.headers, cursor="0.0", **params) == 0

    async def cost(reader: int, **filters: Any) -> int:
        query, sql = (
            (queries.feed_page_by_actor, queries.FEED_PAGE_BY_ACTOR)
            if "actor_id" in filters
            else (queries.feed_page, queries.FEED_PAGE)
        )
        return await rows_read(
            db, query, sql, row_limit=21, reader_id=reader, snapshot=0, before=0, **filters
        )

    # Was: every group of every user with activity after the cursor's snapshot was read and tested.
    assert await cost(outsider.id) < BOUND
    assert await cost(outsider.id, actor_id=editor) < BOUND
    assert await cost(outsider.id, project_id=team.project) < BOUND


async def test_a_walk_begun_too_many_events_ago_is_refused_and_a_fresh_one_goes_on(
    client: Client, team: Team, busy: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an old or forged cursor costs grows with the reader's projects and their history (0.7 s a
    page for a member of 1,000 projects: the memberships review); a walk more than
    FEED_WALK_MAX_EVENTS behind the newest event is refused, so a page reads at most that many."""
    monkeypatch.setattr(activity_services, "FEED_WALK_MAX_EVENTS", 1000)  # of the ~5,200 recorded
    for url in ("/api/feed", f"/api/projects/{team.project}/feed"):
        first = await client.get(url, headers=team.viewer.headers)
        assert first.status_code == 200, first.text
        fresh = await client.get(
            url, params={"cursor": first.json()["next_cursor"]}, headers=team.viewer.headers
        )
        assert fresh.status_code == 200, fresh.text
        assert len(fresh.json()["items"]) == 20
        for old in ("0.0", "4000.3999"):
            refused = await client.get(url, params={"cursor": old}, headers=team.viewer.headers)
            assert_problem(refused, 400, "invalid-cursor")
            assert "start again from the first page" in refused.json()["detail"]


async def test_the_unread_counts_stop_at_their_cap_and_read_no_further(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team, busy: int
) -> None:
    """A reader who never marked anything read, in a project of more unread groups than the counts
    say exactly: they stop at the cap, say so, and read about as many groups as they count."""
    admin = await make_user(db, app, "admin", name="Admin")
    for reader in (team.viewer, admin):
        response = await client.get("/api/feed/unread-count", headers=reader.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"unread": UNREAD_COUNT_CAP, "unseen": UNREAD_COUNT_CAP, "capped": True}
        # Was: every one of the BUSY_GROUPS groups above the reader's read_through, on every stale stamp.
        query, sql, limit = queries.unread_counts, queries.UNREAD_COUNTS, UNREAD_COUNT_CAP + 1
        read = await rows_read(
            db, query, sql, reader_id=reader.id, read_through=0, seen_through=0, row_limit=limit
        )
        assert read < UNREAD_COUNT_CAP + BOUND < BUSY_GROUPS, read
    response = await client.get("/api/feed/unread-count", headers=team.outsider.headers)
    assert response.json() == {"unread": 3, "unseen": 3, "capped": False}


async def test_the_unread_counts_are_exact_up_to_their_cap_and_capped_one_past_it(
    client: Client, team: Team, feed: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the cap the counts are exact and not capped; one group more and they say capped (the cap
    made 3 here, for groups a test can afford to make)."""
    monkeypatch.setattr(activity_services, "UNREAD_COUNT_CAP", 3)
    await record(feed, [(team.editor.id, team.project)] * 3, 4_000_000)
    counts = await client.get("/api/feed/unread-count", headers=team.viewer.headers)
    assert counts.json() == {"unread": 3, "unseen": 3, "capped": False}
    await record(feed, [(team.editor.id, team.project)] * 4, 4_000_000)  # the first three again: stored once
    counts = await client.get("/api/feed/unread-count", headers=team.viewer.headers)
    assert counts.json() == {"unread": 3, "unseen": 3, "capped": True}


@pytest.mark.parametrize("as_admin", [False, True], ids=["member", "admin"])
@pytest.mark.parametrize("by_actor", [False, True], ids=["all", "by-actor"])
async def test_a_group_that_grows_during_a_walk_keeps_its_place(
    db: AsyncConnection[Any], app: Litestar, team: Team, feed: ActivityService, as_admin: bool, by_actor: bool
) -> None:
    """The walk reads the groups that grew after its snapshot from the reader's own ranges (the
    property tests walk as a member; this covers an administrator's too)."""
    verbs = ("task.created", "task.updated", "task.status_changed", "task.assigned", "file.uploaded")

    async def act(outbox_id: int, verb: str, minute: int) -> None:
        object_type = verb.partition(".")[0]
        await feed.record_batch(
            [
                {
                    "outbox_id": outbox_id,
                    "actor_id": team.editor.id,
                    "verb": verb,
                    "object_type": object_type,
                    "object_id": outbox_id,
                    "project_id": team.project,
                    "data": {"title": f"{object_type} {outbox_id}"},
                    "occurred_at": (BASE + timedelta(minutes=minute)).isoformat(),
                }
            ]
        )

    for n, verb in enumerate(verbs):
        await act(n + 1, verb, n)
    reader = (await make_user(db, app, "admin", name="Admin")).id if as_admin else team.viewer.id
    filters = FeedFilters(actor_id=team.editor.id if by_actor else None)

    first = await feed.feed(reader, filters, None, 2)
    await act(10, "task.updated", 6)  # the second oldest group grows after the walk's snapshot
    seen = [(group.verb, group.count) for group in first.items]
    cursor = first.next_cursor
    while cursor is not None:
        page = await feed.feed(reader, filters, cursor, 2)
        seen += [(group.verb, group.count) for group in page.items]
        cursor = page.next_cursor
    assert seen == [(verb, 1) for verb in reversed(verbs)]
