"""The activity feed against a plain-Python reference, over random event streams, random membership
timelines and random read marks.

The reference below knows nothing of the implementation: it groups the delivered events with the
documented rule (same verb, object type, project and audience, and the same actor, or the same
target for comments; consecutive within the window, the span bounded), keeps exactly the events the
reader may see *now* and the filters select, and derives each group's count, actors, objects,
times, position and unread flag from them. Every checkpoint walks all pages of
``ActivityService.feed`` (what ``GET /api/feed`` answers) and compares, group by group; the exact
unread count too. A separate test inserts events between page reads: the walk must yield every group
of the snapshot exactly once, as it was at the snapshot.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import Services, open_services
from app.db import accounts as account_queries
from app.db import projects as project_queries
from app.db.models import ProjectRole, UserRole
from app.domains.activity.module import module as activity_module
from app.domains.activity.schemas import FeedFilters, FeedGroupOut
from app.domains.activity.services import ActivityService
from app.domains.activity.verbs import ObjectType, Verb
from tests.factories import FAKE_HASH, scaled_examples

WINDOW = timedelta(minutes=30)
SPAN = timedelta(minutes=90)
BASE = datetime(2030, 1, 1, 9, tzinfo=UTC)
SAMPLE = 8

# (verb, object type, scoped to a project, grouped by target)
KINDS = (
    (Verb.TASK_CREATED, ObjectType.TASK, True, False),
    (Verb.TASK_UPDATED, ObjectType.TASK, True, False),
    (Verb.TASK_DELETED, ObjectType.TASK, True, False),
    (Verb.FILE_UPLOADED, ObjectType.FILE, True, False),
    (Verb.COMMENT_ADDED, ObjectType.COMMENT, True, True),
    (Verb.ORDER_PLACED, ObjectType.ORDER, False, False),
    (Verb.ORDER_CANCELLED, ObjectType.ORDER, False, False),
)


class EventSpec(msgspec.Struct, frozen=True):
    actor: int  # index into the actors (the last one is the member reader)
    kind: int
    project: int
    obj: int
    target: int
    gap_min: int
    audience: int | None  # order.cancelled by someone else, for this user


class Batch(msgspec.Struct, frozen=True, tag=True):
    events: list[EventSpec]


class Join(msgspec.Struct, frozen=True, tag=True):
    project: int


class Leave(msgspec.Struct, frozen=True, tag=True):
    project: int


class MarkAll(msgspec.Struct, frozen=True, tag=True):
    nth: int  # through the nth delivered event (modulo), or everything when -1


class MarkGroup(msgspec.Struct, frozen=True, tag=True):
    nth: int  # of the member reader's visible groups


class MarkEvent(msgspec.Struct, frozen=True, tag=True):
    nth: int  # of all delivered events (invisible ones are ignored by the service)


class Check(msgspec.Struct, frozen=True, tag=True):
    as_admin: bool
    verb: int | None
    actor: int | None
    project: int | None
    page_size: int


Step = Batch | Join | Leave | MarkAll | MarkGroup | MarkEvent | Check

event_specs = st.builds(
    EventSpec,
    actor=st.integers(0, 3),
    kind=st.integers(0, len(KINDS) - 1),
    project=st.integers(0, 2),
    obj=st.integers(1, 4),
    target=st.integers(1, 3),
    gap_min=st.sampled_from((0, 0, 1, 5, 20, 29, 31, 45, 120, -10, -40)),
    audience=st.none() | st.integers(0, 3),
)
steps = st.one_of(
    st.builds(Batch, events=st.lists(event_specs, min_size=1, max_size=8)),
    st.builds(Join, project=st.integers(0, 2)),
    st.builds(Leave, project=st.integers(0, 2)),
    st.builds(MarkAll, nth=st.integers(-1, 30)),
    st.builds(MarkGroup, nth=st.integers(0, 10)),
    st.builds(MarkEvent, nth=st.integers(0, 40)),
    st.builds(
        Check,
        as_admin=st.booleans(),
        verb=st.none() | st.integers(0, len(KINDS) - 1),
        actor=st.none() | st.integers(0, 3),
        project=st.none() | st.integers(0, 2),
        page_size=st.integers(1, 4),
    ),
)


# -- the reference -------------------------------------------------------------------------------------


@dataclass
class Ev:
    outbox_id: int
    seq: int
    actor_id: int
    verb: str
    object_type: str
    object_id: int
    project_id: int | None
    audience_id: int | None
    target_id: int | None
    at: datetime
    data: dict[str, Any]
    key: str = ""


@dataclass
class RefGroup:
    key: str
    first: datetime
    last: datetime
    events: list[Ev] = field(default_factory=list)


def reference_group(events: list[Ev]) -> None:
    """Sets ``key`` on every event (delivery order = outbox order): an event joins, of its stream's
    groups whose time range holds it within the window and whose span stays within the limit, the
    one with the latest last event (of those, the newest); else it starts a group. (The streams here
    never hold the OPEN_GROUPS_PER_STREAM groups the rule reaches back.)"""
    streams: dict[tuple[Any, ...], list[RefGroup]] = {}
    for e in sorted(events, key=lambda e: e.outbox_id):
        who = ("target", e.target_id) if e.target_id is not None else ("actor", e.actor_id)
        groups = streams.setdefault((e.verb, e.object_type, e.project_id, e.audience_id, who), [])
        fitting = [
            group
            for group in groups
            if group.first - WINDOW <= e.at <= group.last + WINDOW
            and max(group.last, e.at) - min(group.first, e.at) <= SPAN
        ]
        if fitting:
            group = max(fitting, key=lambda group: (group.last, groups.index(group)))
        else:
            group = RefGroup(f"1-{e.outbox_id}", e.at, e.at)
            groups.append(group)
        group.first, group.last = min(group.first, e.at), max(group.last, e.at)
        group.events.append(e)
        e.key = group.key


@dataclass
class World:
    admin: int
    reader: int
    actors: list[int]  # the last one is the reader
    projects: list[int]
    names: dict[int, str]
    members: set[int] = field(default_factory=set)  # the reader's projects
    events: list[Ev] = field(default_factory=list)
    read_through: int = 0
    group_marks: dict[str, int] = field(default_factory=dict)
    event_reads: set[int] = field(default_factory=set)
    next_outbox: int = 1
    clock: datetime = BASE

    def may_see(self, e: Ev, as_admin: bool) -> bool:
        if as_admin:
            return True
        if e.audience_id is not None and e.audience_id != self.reader:
            return False
        if e.project_id is None:
            return e.audience_id == self.reader
        return e.project_id in self.members

    def is_read(self, e: Ev) -> bool:
        return (
            e.seq <= self.read_through or e.seq <= self.group_marks.get(e.key, 0) or e.seq in self.event_reads
        )

    def titles(self) -> dict[tuple[str, int], tuple[str | None, bool]]:
        known: dict[tuple[str, int], tuple[str | None, bool]] = {}
        for e in sorted(self.events, key=lambda e: e.outbox_id):  # the order of the changes
            ident = (e.object_type, e.object_id)
            if known.get(ident, (None, False))[1]:
                continue
            if e.verb in (Verb.TASK_DELETED, Verb.FILE_DELETED):
                known[ident] = (None, True)
            elif "title" in e.data and e.object_type == ObjectType.TASK:
                known[ident] = (e.data["title"], False)
            elif "filename" in e.data:
                known[ident] = (e.data["filename"], False)
            if e.target_id is not None and not known.get((ObjectType.TASK, e.target_id), (None, False))[1]:
                known[(ObjectType.TASK, e.target_id)] = (e.data["title"], False)  # a comment names its task
        return known

    def expected(
        self, as_admin: bool, filters: FeedFilters, upto: int | None = None
    ) -> list[tuple[Any, ...]]:
        """The feed the reader should get, newest first: one tuple per group (see ``observed``)."""
        titles = self.titles()
        by_key: dict[str, list[Ev]] = {}
        for e in self.events:
            if upto is not None and e.seq > upto:
                continue
            if not self.may_see(e, as_admin):
                continue
            if filters.verb is not None and e.verb != filters.verb:
                continue
            if filters.actor_id is not None and e.actor_id != filters.actor_id:
                continue
            if filters.project_id is not None and e.project_id != filters.project_id:
                continue
            by_key.setdefault(e.key, []).append(e)
        rows = []
        for key, events in by_key.items():
            events.sort(key=lambda e: e.seq, reverse=True)
            actors = list(dict.fromkeys(e.actor_id for e in events))
            objects = list(dict.fromkeys(e.object_id for e in events))
            object_type = events[0].object_type
            rows.append(
                (
                    events[0].seq,
                    key,
                    len(events),
                    actors[:SAMPLE],
                    len(actors),
                    [(o, *titles.get((object_type, o), (None, False))) for o in objects[:SAMPLE]],
                    len(objects),
                    min(e.at for e in events),
                    max(e.at for e in events),
                    any(not self.is_read(e) for e in events),
                )
            )
        return sorted(rows, key=lambda row: row[0], reverse=True)

    def unread_groups(self) -> int:
        keys = {e.key for e in self.events if self.may_see(e, False) and not self.is_read(e)}
        return len(keys)


def observed(group: FeedGroupOut) -> tuple[Any, ...]:
    return (
        group.last_event_id,
        group.key,
        group.count,
        [a.id for a in group.actors],
        group.actor_count,
        [(o.id, o.title, o.deleted) for o in group.objects],
        group.object_count,
        group.first_at,
        group.last_at,
        group.unread,
    )


# -- driving the service ---------------------------------------------------------------------------------


@pytest.fixture
async def services(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[Services]:
    changed = msgspec.structs.replace(
        settings,
        feed_group_window_s=int(WINDOW.total_seconds()),
        feed_group_max_span_s=int(SPAN.total_seconds()),
    )
    async with open_services(changed, (activity_module,)) as opened:
        yield opened


async def build_world(db: AsyncConnection[Any]) -> World:
    async def user(name: str, role: UserRole = UserRole.MEMBER) -> int:
        row = await account_queries.create_user(
            db,
            email=f"{name}-{uuid.uuid4().hex[:8]}@example.com",
            display_name=name,
            password_hash=FAKE_HASH,
            role=role,
        )
        assert row is not None
        return row.id

    admin = await user("admin", UserRole.ADMIN)
    actors = [await user(name) for name in ("ana", "ben", "cy", "reader")]
    projects = []
    for name in ("Apollo", "Gemini", "Mercury"):
        project = await project_queries.create_project(db, name=name, description="", owner_id=actors[0])
        assert project is not None
        projects.append(project.id)
    names = {admin: "admin", **dict(zip(actors, ("ana", "ben", "cy", "reader"), strict=True))}
    return World(admin=admin, reader=actors[-1], actors=actors, projects=projects, names=names)


async def reset(db: AsyncConnection[Any], feed: ActivityService, world: World) -> World:
    # DELETE beats TRUNCATE on a few rows; the groups take their events, actors, objects and marks along.
    for table in ("activity_groups", "activity_objects", "activity_reader_state"):
        await db.execute(f"delete from {table}")
    await db.execute("delete from project_members where user_id = %s", (world.reader,))
    await membership_changed(feed, world.reader)
    await membership_changed(feed, world.admin)
    return World(
        admin=world.admin,
        reader=world.reader,
        actors=world.actors,
        projects=world.projects,
        names=world.names,
        next_outbox=world.next_outbox,
    )


def payload(world: World, spec: EventSpec) -> tuple[dict[str, Any], Ev]:
    verb, object_type, scoped, by_target = KINDS[spec.kind]
    world.clock += timedelta(minutes=spec.gap_min)
    actor = world.actors[spec.actor]
    project = world.projects[spec.project] if scoped else None
    audience = None
    if verb == Verb.ORDER_CANCELLED and spec.audience is not None:
        audience = world.actors[spec.audience]
    data: dict[str, Any] = {}
    target = None
    if object_type == ObjectType.TASK and verb != Verb.TASK_DELETED:
        data = {"title": f"Task {spec.obj} v{world.next_outbox}"}
    elif object_type == ObjectType.FILE:
        data = {"filename": f"file-{spec.obj}.pdf"}
    elif by_target:
        data = {"task_id": spec.target, "title": f"Task {spec.target}"}
        target = spec.target
    outbox_id = world.next_outbox
    world.next_outbox += 1
    body: dict[str, Any] = {
        "outbox_id": outbox_id,
        "actor_id": actor,
        "verb": verb.value,
        "object_type": object_type.value,
        "object_id": spec.obj,
        "project_id": project,
        "data": data,
        "occurred_at": world.clock.isoformat(),
    }
    if audience is not None:
        body["audience_user_id"] = audience
    resolved_audience = audience if audience is not None else (actor if project is None else None)
    event = Ev(
        outbox_id,
        0,
        actor,
        verb,
        object_type,
        spec.obj,
        project,
        resolved_audience,
        target,
        world.clock,
        data,
    )
    return body, event


async def deliver(
    db: AsyncConnection[Any], feed: ActivityService, world: World, specs: list[EventSpec]
) -> None:
    bodies, events = zip(*(payload(world, spec) for spec in specs), strict=True)
    assert await feed.record_batch(list(bodies)) == len(bodies)
    seqs = dict(
        await (
            await db.execute(
                "select outbox_id, id from activity_events where outbox_id = any(%s)",
                ([e.outbox_id for e in events],),
            )
        ).fetchall()
    )
    for event in events:
        event.seq = seqs[event.outbox_id]
    world.events.extend(events)
    reference_group(world.events)


async def walk(
    feed: ActivityService, reader: int, filters: FeedFilters, page_size: int
) -> list[FeedGroupOut]:
    groups: list[FeedGroupOut] = []
    cursor = None
    for _ in range(500):
        page = await feed.feed(reader, filters, cursor, page_size)
        assert len(page.items) <= page_size
        assert page.next_cursor is None or len(page.items) == page_size, "pages are full"
        groups.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return groups
    raise AssertionError("the walk does not end")


def filters_of(world: World, check: Check) -> FeedFilters:
    return FeedFilters(
        verb=KINDS[check.verb][0] if check.verb is not None else None,
        actor_id=world.actors[check.actor] if check.actor is not None else None,
        project_id=world.projects[check.project] if check.project is not None else None,
    )


async def membership_changed(feed: ActivityService, user_id: int) -> None:
    """What ``ProjectService`` does after a membership change commits (its hook, wired in the
    activity module): the tests change memberships and wipe the feed in SQL, so they say it too."""
    await feed.cache.scope_changed(user_id)


async def run_step(db: AsyncConnection[Any], feed: ActivityService, world: World, step: Step) -> None:
    if isinstance(step, Batch):
        await deliver(db, feed, world, step.events)
    elif isinstance(step, Join) and world.projects[step.project] not in world.members:
        project = world.projects[step.project]
        await project_queries.add_member(
            db, project_id=project, user_id=world.reader, role=ProjectRole.VIEWER
        )
        await membership_changed(feed, world.reader)
        world.members.add(project)
    elif isinstance(step, Leave) and world.projects[step.project] in world.members:
        project = world.projects[step.project]
        await project_queries.remove_member(db, project_id=project, user_id=world.reader)
        await membership_changed(feed, world.reader)
        world.members.discard(project)
    elif isinstance(step, MarkAll):
        seqs = sorted(e.seq for e in world.events)
        through = None if step.nth < 0 or not seqs else seqs[step.nth % len(seqs)]
        await feed.mark_all_read(world.reader, through)
        world.read_through = max(world.read_through, through if through is not None else max(seqs, default=0))
    elif isinstance(step, MarkGroup):
        visible = await walk(feed, world.reader, FeedFilters(), 100)
        if visible:
            group = visible[step.nth % len(visible)]
            await feed.mark_group_read(world.reader, group.key, None)
            last = max(e.seq for e in world.events if e.key == group.key)
            world.group_marks[group.key] = max(world.group_marks.get(group.key, 0), last)
    elif isinstance(step, MarkEvent) and world.events:
        event = world.events[step.nth % len(world.events)]
        marked = await feed.mark_events_read(world.reader, [event.seq])
        assert marked == int(world.may_see(event, False))
        if marked:
            world.event_reads.add(event.seq)
    elif isinstance(step, Check):
        await check(feed, world, step)


async def check(feed: ActivityService, world: World, step: Check) -> None:
    filters = filters_of(world, step)
    reader = world.admin if step.as_admin else world.reader
    got = await walk(feed, reader, filters, step.page_size)
    want = world.expected(step.as_admin, filters)
    if step.as_admin:  # the admin's read state is not modelled: compare everything else
        want = [row[:-1] for row in want]
        assert [observed(g)[:-1] for g in got] == want
    else:
        assert [observed(g) for g in got] == want
        counts = await feed.unread_counts(world.reader)
        assert counts.unread == world.unread_groups()
    projects = {g.project.id for g in got if g.project is not None}
    if not step.as_admin:
        assert projects <= world.members, "nothing from a project the reader cannot see"


@settings(
    max_examples=scaled_examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(timeline=st.lists(steps, min_size=3, max_size=14))
async def test_feed_equals_the_reference_over_random_timelines(
    db: AsyncConnection[Any], services: Services, timeline: list[Step]
) -> None:
    feed = services[ActivityService]
    world = await reset(db, feed, await shared_world(db))
    for step in [*timeline, Check(as_admin=False, verb=None, actor=None, project=None, page_size=3)]:
        await run_step(db, feed, world, step)
    _WORLD["next_outbox"] = world.next_outbox


_WORLD: dict[str, Any] = {}


async def shared_world(db: AsyncConnection[Any]) -> World:
    """Users and projects, made once per test (examples share them; activity is reset per example)."""
    world = _WORLD.get("world")
    if world is None or not await _exists(db, world.reader):
        world = await build_world(db)
        _WORLD["world"] = world
        _WORLD["next_outbox"] = 1
    world.next_outbox = _WORLD["next_outbox"]
    return world


async def _exists(db: AsyncConnection[Any], user_id: int) -> bool:
    row = await (await db.execute("select 1 from users where id = %s", (user_id,))).fetchone()
    return row is not None


# -- walking while events arrive -----------------------------------------------------------------------


@settings(
    max_examples=scaled_examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    before=st.lists(event_specs, min_size=1, max_size=20),
    during=st.lists(st.lists(st.integers(0, 19) | event_specs, min_size=1, max_size=4), max_size=6),
    page_size=st.integers(1, 3),
    actor=st.none() | st.integers(0, 3),
)
async def test_walking_pages_while_events_arrive_yields_the_snapshot_once(
    db: AsyncConnection[Any],
    services: Services,
    before: list[EventSpec],
    during: list[list[int | EventSpec]],
    page_size: int,
    actor: int | None,
) -> None:
    feed = services[ActivityService]
    world = await reset(db, feed, await shared_world(db))
    for project in world.projects:
        await project_queries.add_member(
            db, project_id=project, user_id=world.reader, role=ProjectRole.VIEWER
        )
        world.members.add(project)
    await membership_changed(feed, world.reader)
    await deliver(db, feed, world, before)
    snapshot = max(e.seq for e in world.events)
    filters = FeedFilters(actor_id=world.actors[actor] if actor is not None else None)

    got: list[FeedGroupOut] = []
    cursor = None
    arriving = iter(during)
    for _ in range(500):
        page = await feed.feed(world.reader, filters, cursor, page_size)
        got.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
        batch = next(arriving, None)
        if batch is not None:
            await deliver(db, feed, world, [again(before, spec) for spec in batch])
    keys = [g.key for g in got]
    assert len(keys) == len(set(keys)), "a group came twice"
    # Groups as of the snapshot. Titles are read as they are when each page is read (a rename or a
    # deletion shows at once, on every page): the timeline test checks them, not this one.
    want = world.expected(False, filters, upto=snapshot)
    assert [untitled(observed(g)[:-1]) for g in got] == [untitled(row[:-1]) for row in want]
    _WORLD["next_outbox"] = world.next_outbox


def again(before: list[EventSpec], spec: int | EventSpec) -> EventSpec:
    """An index: one more event of that earlier event's stream, right away (so its group grows,
    maybe after the walk has passed it, maybe before); else a new event."""
    if isinstance(spec, EventSpec):
        return spec
    return msgspec.structs.replace(before[spec % len(before)], gap_min=0)


def untitled(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*row[:5], [obj[0] for obj in row[5]], *row[6:])
