"""Wire shapes of the activity feed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.core.pagination import Page
from app.core.types import MAX_ID, Id, whole
from app.domains.activity.verbs import ObjectType, Verb

GroupKey = Annotated[str, msgspec.Meta(pattern=whole(r"[1-9][0-9]{0,3}-[0-9]{1,19}"), max_length=24)]
"""A group's key: ``<rule version>-<outbox id of its first event>``."""

Position = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
"""An event id: a place in the feed's sequence."""


class ActorOut(msgspec.Struct, frozen=True):
    id: int
    name: str


class ObjectOut(msgspec.Struct, frozen=True):
    """An object an event is about. A deleted one is a tombstone: ``deleted`` and no ``title``; a
    ``title`` is also absent when no event ever carried one (orders, comments)."""

    type: str
    id: int
    title: str | None
    deleted: bool


class ProjectRef(msgspec.Struct, frozen=True):
    id: int
    name: str


class FeedGroupOut(msgspec.Struct, frozen=True):
    """A burst of similar activity, as the reader may see it.

    ``count``, ``actor_count``, ``object_count`` and the samples cover exactly the events that the
    reader may see now and that match the request's filters; ``text`` is written from them.
    """

    key: str
    rule_version: int
    text: str
    verb: str
    object_type: str
    count: Annotated[int, msgspec.Meta(description="Events in the group (visible, matching the filters)")]
    actors: Annotated[list[ActorOut], msgspec.Meta(description="Up to 8 actors, most recent first")]
    actor_count: int
    objects: Annotated[
        list[ObjectOut], msgspec.Meta(description="Up to 8 objects, most recently touched first")
    ]
    object_count: int
    truncated: Annotated[bool, msgspec.Meta(description="Some actors or objects are not in the samples")]
    project: ProjectRef | None
    target: ObjectOut | None
    private: Annotated[bool, msgspec.Meta(description="Only its audience (and administrators) see it")]
    first_at: datetime
    last_at: datetime
    last_event_id: Annotated[
        int,
        msgspec.Meta(
            description="Its newest event (as counted): the stream's event id; `through` for marking"
        ),
    ]
    unread: bool


FeedPage = Page[FeedGroupOut]


class FeedCursor(msgspec.Struct, frozen=True):
    """Where a walk through the feed stands: the newest event id when it began, and the position
    (an event id) of the last group shown. Groups are placed by their activity up to the snapshot,
    so a walk is stable while events arrive: every group comes once."""

    snapshot: Annotated[int, msgspec.Meta(ge=0)]
    position: Annotated[int, msgspec.Meta(ge=0)]


class EventOut(msgspec.Struct, frozen=True):
    id: int
    actor: ActorOut
    verb: str
    object: ObjectOut
    occurred_at: datetime
    read: bool
    details: Annotated[dict[str, Any], msgspec.Meta(description="What changed (per verb; never titles)")]


EventPage = Page[EventOut]


UNREAD_COUNT_CAP = 1000
"""The most the unread counts say exactly: past it they stop counting (a bell shows "1000+")."""


class UnreadCountsOut(msgspec.Struct, frozen=True):
    unread: Annotated[
        int,
        msgspec.Meta(description=f"Visible groups with an unread event (at most {UNREAD_COUNT_CAP})"),
    ]
    unseen: Annotated[
        int, msgspec.Meta(description="Of those, groups with activity since the bell was opened")
    ]
    capped: Annotated[
        bool,
        msgspec.Meta(
            description=f"More than {UNREAD_COUNT_CAP} groups are unread: the counts stop at"
            f" {UNREAD_COUNT_CAP} (show {UNREAD_COUNT_CAP}+)"
        ),
    ] = False


class MarkThrough(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``through``: the newest event id the client showed (a group's ``last_event_id``, a stream's
    last ``id``). Absent means everything so far, events that arrived after the client last read the
    feed included: they are marked without having been shown, so a client that shows the feed should
    send it."""

    through: Position | None = None


class MarkEventsRead(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    event_ids: Annotated[
        list[Id],
        msgspec.Meta(
            min_length=1,
            max_length=100,
            # Litestar leaves the items' bounds out of the schema: spelled out here.
            extra_json_schema={"extra": {"items": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}},
        ),
    ]


class StreamEventDoc(msgspec.Struct, frozen=True):
    """One Server-Sent Event of ``GET /api/feed/stream`` (its fields; heartbeats are comment lines)."""

    event: Literal["ready", "group", "reset"]
    id: Annotated[
        str, msgspec.Meta(pattern=whole(r"[0-9]{1,16}"), description="The newest event id it covers")
    ]
    data: Annotated[
        str,
        msgspec.Meta(
            description='JSON: `{"last_event_id": n}` (ready, reset) or the group (group: a FeedGroupOut)'
        ),
    ]
    retry: Annotated[int | None, msgspec.Meta(description="Reconnection delay (ms), on `ready`")] = None


class FeedFilters(msgspec.Struct, frozen=True):
    """Applied to events before they are counted: a group shows only its matching events."""

    verb: Verb | None = None
    object_type: ObjectType | None = None
    actor_id: int | None = None
    project_id: int | None = None
