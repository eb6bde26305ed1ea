"""Storing a batch of events and growing their groups, in the caller's transaction.

One batch costs a fixed number of statements whatever its size (arrays in, sets out): lock the
writer, drop the events already stored or no longer storable, find each stream's newest group,
decide the groups (``grouping.assign_groups``), insert the new groups and the events, then add the
events to their groups' totals, actors and objects, and record the object titles and tombstones.
The events and the titles go in as one JSON array each (``jsonb_to_recordset``): psycopg encodes a
text array element by element in Python (a regular expression per element), which cost the worker
more than the insert itself did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

import msgspec

from app.core.db import UnitOfWork
from app.core.types import NON_BLANK, one_line
from app.db import activity as queries
from app.domains.activity.grouping import (
    OPEN_GROUPS_PER_STREAM,
    GroupingRule,
    OpenGroup,
    StreamEvent,
    assign_groups,
    stream_of,
)
from app.domains.activity.verbs import ObjectType, spec_of


class IncomingEvent(msgspec.Struct, frozen=True):
    """An event as ``emit`` wrote it to the outbox, plus its outbox id."""

    outbox_id: int
    actor_id: int
    verb: str
    object_type: str
    object_id: int
    project_id: int | None
    occurred_at: datetime
    data: dict[str, Any] = {}
    audience_user_id: int | None = None
    target_type: str | None = None
    target_id: int | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a batch stored: the new event ids, and what a change notice tells the streams."""

    event_ids: list[int]
    outbox_ids: frozenset[int]
    project_ids: list[int]
    audience_ids: list[int]
    user_ids: list[int]

    @property
    def last_id(self) -> int:
        return max(self.event_ids, default=0)


NOTHING = Recorded([], frozenset(), [], [], [])


def normalise(payload: Mapping[str, Any]) -> tuple[IncomingEvent, StreamEvent]:
    """Resolve the defaults ``emit`` leaves to the feed: a project-less event without an audience is
    its actor's own; a target-grouped verb's target comes from ``data`` when not given."""
    event = msgspec.convert(payload, IncomingEvent, strict=False)
    audience = event.audience_user_id
    if audience is None and event.project_id is None:
        audience = event.actor_id
    target_type, target_id = event.target_type, event.target_id
    spec = spec_of(event.verb)
    if target_id is None and spec is not None and spec.target is not None:
        value = event.data.get(spec.target.id_key)
        if isinstance(value, int) and not isinstance(value, bool):
            target_type, target_id = spec.target.type.value, value
    if target_id is None:
        target_type = None
    event = msgspec.structs.replace(
        event, audience_user_id=audience, target_type=target_type, target_id=target_id
    )
    stream_event = StreamEvent(
        outbox_id=event.outbox_id,
        actor_id=event.actor_id,
        verb=event.verb,
        object_type=event.object_type,
        project_id=event.project_id,
        audience_user_id=audience,
        target_type=target_type,
        target_id=target_id,
        occurred_at=event.occurred_at,
    )
    return event, stream_event


class ObjectState(NamedTuple):
    """What a batch's events say of one object, from the newest of them that says anything."""

    title: str | None
    deleted: bool
    outbox_id: int  # the order of the changes (``object_updates``)
    seq: int  # the feed's id of that event (the previous release's order, still stored)


def kept_data(event: IncomingEvent) -> dict[str, Any]:
    """What an event keeps of its ``data``: the details its verb shows (``VerbSpec.details``), never
    the titles and names it carried (``object_updates`` took them): kept with the event, a task's title
    or a member's name outlived the task's deletion or the member's rename for good."""
    spec = spec_of(event.verb)
    return {key: event.data[key] for key in (spec.details if spec else ()) if key in event.data}


def object_updates(events: Iterable[tuple[int, IncomingEvent]]) -> dict[tuple[str, int], ObjectState]:
    """The titles and tombstones a batch of (feed id, event) brings, one per object: a deletion wins,
    else the newest.

    Newest by outbox id, not by the feed's id: an event is emitted in the transaction that changed
    its object (or its comment's task) after locking that row, so outbox ids follow the order of the
    changes; the feed's ids follow the order the events were recorded in, which a job retried,
    recovered (``recovery.py``) or committed by a concurrent feed job reverses (a rename recorded
    before the creation brought the old title back, in every group that names the object)."""
    updates: dict[tuple[str, int], ObjectState] = {}

    def note(key: tuple[str, int], title: str | None, deleted: bool, event: IncomingEvent, seq: int) -> None:
        known = updates.get(key)
        if known is not None and known.deleted:
            return  # a tombstone stays one
        if deleted:
            updates[key] = ObjectState(None, True, event.outbox_id, seq)
            return
        shown = shown_title(title)
        if shown is None:
            return  # nothing visible: as if the event named no title, whatever its place (a review)
        if known is None or event.outbox_id > known.outbox_id:
            updates[key] = ObjectState(shown, False, event.outbox_id, seq)

    for seq, event in events:
        spec = spec_of(event.verb)
        if spec is None:
            continue
        if spec.deletes:
            note((event.object_type, event.object_id), None, True, event, seq)
        elif spec.title_key is not None and isinstance(event.data.get(spec.title_key), str):
            note((event.object_type, event.object_id), event.data[spec.title_key], False, event, seq)
        target = spec.target
        if target is not None and target.title_key is not None and event.target_id is not None:
            title = event.data.get(target.title_key)
            if isinstance(title, str) and event.target_type is not None:
                note((event.target_type, event.target_id), title, False, event, seq)
    return updates


class FeedWriter:
    def __init__(self, rule: GroupingRule) -> None:
        self.rule = rule

    async def record(self, uow: UnitOfWork, payloads: Iterable[Mapping[str, Any]]) -> Recorded:
        """Store the events not stored yet and group them; idempotent (outbox ids are unique)."""
        unique: dict[int, tuple[IncomingEvent, StreamEvent]] = {}
        for payload in payloads:
            event, stream_event = normalise(payload)
            unique.setdefault(event.outbox_id, (event, stream_event))
        if not unique:
            return NOTHING
        conn = uow.conn
        await queries.lock_activity_writer(conn)
        candidates = [unique[outbox_id] for outbox_id in sorted(unique)]
        project_ids = sorted({e.project_id for e, _ in candidates if e.project_id is not None})
        if project_ids:
            await queries.keep_projects(conn, project_ids=project_ids)
        keep = set(
            await queries.new_activity_events(
                conn,
                outbox_ids=[e.outbox_id for e, _ in candidates],
                actor_ids=[e.actor_id for e, _ in candidates],
                project_ids=_ints(e.project_id for e, _ in candidates),
                audience_ids=_ints(e.audience_user_id for e, _ in candidates),
            )
        )
        batch = [pair for pair in candidates if pair[0].outbox_id in keep]
        if not batch:
            return NOTHING

        earliest: dict[str, datetime] = {}
        for _, streamed in batch:
            stream = stream_of(streamed)
            earliest[stream] = min(earliest.get(stream, streamed.occurred_at), streamed.occurred_at)
        streams = sorted(earliest)
        stored = await queries.open_activity_groups(
            conn,
            streams=streams,
            earliest=[earliest[stream] for stream in streams],
            window_s=self.rule.window_s,
            most=OPEN_GROUPS_PER_STREAM,
        )
        group_ids = {found.key: found.id for found in stored}
        open_groups: dict[str, list[OpenGroup]] = {}
        for found in stored:
            open_groups.setdefault(found.stream, []).append(
                OpenGroup(
                    key=found.key,
                    rule=GroupingRule(found.rule_version, found.window_s, found.max_span_s),
                    first_at=found.first_at,
                    last_at=found.last_at,
                )
            )
        keys, created = assign_groups([s for _, s in batch], open_groups, self.rule)
        for row in await self._insert_groups(uow, created):
            group_ids[row.key] = row.id

        inserted = await queries.insert_activity_events(
            conn,
            events=[
                {
                    "outbox_id": e.outbox_id,
                    "actor_id": e.actor_id,
                    "verb": e.verb,
                    "object_type": e.object_type,
                    "object_id": e.object_id,
                    "project_id": e.project_id,
                    "audience_user_id": e.audience_user_id,
                    "target_type": e.target_type,
                    "target_id": e.target_id,
                    "data": kept_data(e),
                    "occurred_at": e.occurred_at.isoformat(),
                    "group_id": group_ids[key],
                }
                for (e, _), key in zip(batch, keys, strict=True)
            ],
        )
        seq_of = {row.outbox_id: row.id for row in inserted}
        event_ids = sorted(seq_of.values())
        await queries.lock_activity_groups(conn, group_ids=sorted(set(group_ids[key] for key in keys)))
        await queries.add_events_to_activity_groups(conn, event_ids=event_ids)

        updates = object_updates((seq_of[e.outbox_id], e) for e, _ in batch)
        if updates:
            await queries.upsert_activity_objects(
                conn,
                objects=[
                    {"object_type": t, "object_id": i, **state._asdict()}
                    for (t, i), state in sorted(updates.items())
                ],
            )
        events = [e for e, _ in batch]
        return Recorded(
            event_ids=event_ids,
            outbox_ids=frozenset(seq_of),
            project_ids=sorted({e.project_id for e in events if e.project_id is not None}),
            audience_ids=sorted({e.audience_user_id for e in events if e.audience_user_id is not None}),
            user_ids=sorted({e.object_id for e in events if e.object_type == ObjectType.USER}),
        )

    async def _insert_groups(
        self, uow: UnitOfWork, created: list[OpenGroup]
    ) -> list[queries.InsertActivityGroupsRow]:
        if not created:
            return []
        firsts = [group.first for group in created]
        assert all(first is not None for first in firsts)
        events = cast("list[StreamEvent]", firsts)
        return await queries.insert_activity_groups(
            uow.conn,
            rule_version=self.rule.version,
            window_s=self.rule.window_s,
            max_span_s=self.rule.max_span_s,
            keys=[group.key for group in created],
            streams=[stream_of(event) for event in events],
            verbs=[event.verb for event in events],
            object_types=[event.object_type for event in events],
            project_ids=_ints(event.project_id for event in events),
            audience_ids=_ints(event.audience_user_id for event in events),
            target_types=_texts(event.target_type for event in events),
            target_ids=_ints(event.target_id for event in events),
            first_ats=[event.occurred_at for event in events],
        )


def _ints(values: Iterable[int | None]) -> list[int]:
    """An array parameter that may hold NULLs (the generated signature says ``list[int]``)."""
    return cast("list[int]", list(values))


def _texts(values: Iterable[str | None]) -> list[str]:
    return cast("list[str]", list(values))


def shown_title(title: str | None) -> str | None:
    """An event's title as the feed stores it: one line (``one_line``: an event of a release before
    the API refused control and direction characters may still be on its way); ``None`` when nothing
    visible is left: the event then counts as naming no title (``object_updates`` records nothing for
    it), so the newest visible title wins in every order and batch, and an object with none reads as
    ``task #7``."""
    if title is None:
        return None
    cleaned = one_line(title)
    return cleaned if re.fullmatch(NON_BLANK, cleaned) else None
