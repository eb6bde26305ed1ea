"""HTTP for the activity feed (``/api/feed``, ``/api/projects/{id}/feed``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.channels import ChannelsPlugin
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT, HTTP_429_TOO_MANY_REQUESTS

from app.core.auth import Caller, requires_user
from app.core.errors import Problem
from app.core.openapi import BEARER, problems
from app.core.pagination import MAX_PAGE_SIZE, CursorParam, PageSize, cursor_query
from app.core.responses import STREAM_HEADERS
from app.core.routing import Controller
from app.core.types import MAX_ID, IdPath, whole
from app.domains.activity.schemas import (
    EventPage,
    FeedCursor,
    FeedFilters,
    FeedGroupOut,
    FeedPage,
    MarkEventsRead,
    MarkThrough,
    StreamEventDoc,
    UnreadCountsOut,
)
from app.domains.activity.services import DEFAULT_PAGE, FEED_WALK_MAX_EVENTS, ActivityService
from app.domains.activity.stream import FeedStream
from app.domains.activity.verbs import ObjectType, Verb

Activity = NamedDependency[ActivityService]
Filters = NamedDependency[FeedFilters]
Channels = NamedDependency[ChannelsPlugin]

FeedCursorParam = Annotated[str | None, cursor_query(FeedCursor, example="1042.1017")]
WALK_DOC = (
    "A walk (`cursor`: the previous page's `next_cursor`) keeps each group in its place while events"
    " arrive; one that began more than"
    f" {FEED_WALK_MAX_EVENTS:,} events ago is refused with a 400 `invalid-cursor`: start again from"
    " the first page."
)
FeedPageSize = Annotated[
    int,
    QueryParameter(
        ge=1,
        le=MAX_PAGE_SIZE,
        description=f"Groups per page (1-{MAX_PAGE_SIZE}); each carries up to 8 actors and 8 objects",
    ),
]
GroupKeyPath = Annotated[
    str,
    PathParameter(
        pattern=whole(r"[1-9][0-9]{0,3}-[0-9]{1,19}"),
        min_length=3,
        max_length=24,
        description="A group's `key`",
        schema_extra={"examples": ["3-1042"]},
    ),
]
LastEventId = Annotated[
    str,
    HeaderParameter(
        name="Last-Event-ID",
        pattern=whole(r"[0-9]{0,16}"),
        max_length=16,
        schema_extra={"examples": ["1042"]},
        description="The last event id received: the stream first replays what came after it (empty: none)",
    ),
]
"""A string, never null (a header has no null): absent or empty means a fresh stream."""
VerbFilter = Annotated[Verb | None, QueryParameter(description="Only events of this verb")]
ObjectTypeFilter = Annotated[ObjectType | None, QueryParameter(description="Only events on this object type")]
ActorFilter = Annotated[int | None, QueryParameter(ge=1, le=MAX_ID, description="Only events by this user")]
ProjectFilter = Annotated[
    int | None, QueryParameter(ge=1, le=MAX_ID, description="Only events in this project")
]

EVENT_STREAM = "text/event-stream"


def provide_filters(
    verb: VerbFilter = None,
    object_type: ObjectTypeFilter = None,
    actor_id: ActorFilter = None,
    project_id: ProjectFilter = None,
) -> FeedFilters:
    """Filters select events before they are grouped and counted."""
    return FeedFilters(verb=verb, object_type=object_type, actor_id=actor_id, project_id=project_id)


def provide_project_filters(
    verb: VerbFilter = None, object_type: ObjectTypeFilter = None, actor_id: ActorFilter = None
) -> FeedFilters:
    return FeedFilters(verb=verb, object_type=object_type, actor_id=actor_id)


_STREAM_RESPONSE = {
    HTTP_200_OK: ResponseSpec(
        data_container=StreamEventDoc,
        media_type="text/event-stream",
        description=(
            'Server-Sent Events. `ready` (data: `{"last_event_id"}`) once subscribed; `group` '
            "(data: a FeedGroupOut, id: its `last_event_id`) for each new or changed group the "
            "caller may see; `reset` when a replay would exceed the limit (reload GET /api/feed); "
            "comment lines as heartbeats. Reconnect with `Last-Event-ID`. Only a request whose "
            "`Accept` names `text/event-stream` (as EventSource's do) stays open; any other gets "
            "`ready` and the replay, then the response ends (a poll). A live stream ends when the "
            "access token expires (reconnect with a fresh one and `Last-Event-ID`), when its session "
            "ends (logout, account deactivated or demoted, password changed) and when the server stops."
        ),
    ),
    HTTP_429_TOO_MANY_REQUESTS: ResponseSpec(
        data_container=Problem,
        media_type="application/problem+json",
        description=(
            "Rate limit exceeded, or the account already holds FEED_STREAM_MAX_PER_USER live streams "
            "(type `.../too-many-streams`: close one); see Retry-After"
        ),
    ),
}


class FeedController(Controller):
    path = "/api/feed"
    tags = ["activity"]
    guards = [requires_user]
    security = BEARER
    dependencies = {"filters": Provide(provide_filters, sync_to_thread=False)}

    @get(
        "/",
        summary="The caller's feed: grouped activity they may see, newest first",
        description=WALK_DOC,
        responses=problems(400, 401, 429),
    )
    async def get_feed(
        self,
        current_user: Caller,
        activity: Activity,
        filters: Filters,
        cursor: FeedCursorParam = None,
        limit: FeedPageSize = DEFAULT_PAGE,
    ) -> FeedPage:
        return await activity.feed(current_user.id, filters, cursor, limit)

    @get("/groups/{key:str}", summary="One group of the feed", responses=problems(400, 401, 404, 429))
    async def get_feed_group(
        self, key: GroupKeyPath, current_user: Caller, activity: Activity, filters: Filters
    ) -> FeedGroupOut:
        return await activity.group(current_user.id, key, filters)

    @get(
        "/groups/{key:str}/events",
        summary="The events of a group, newest first",
        responses=problems(400, 401, 404, 429),
    )
    async def list_feed_group_events(
        self,
        key: GroupKeyPath,
        current_user: Caller,
        activity: Activity,
        filters: Filters,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> EventPage:
        return await activity.group_events(current_user.id, key, filters, cursor, limit)

    @get(
        "/unread-count",
        summary="Counts of unread and unseen groups the caller may see, exact up to 1,000",
        responses=problems(401, 429),
    )
    async def unread_count(self, current_user: Caller, activity: Activity) -> UnreadCountsOut:
        return await activity.unread_counts(current_user.id)

    @post(
        "/seen",
        status_code=HTTP_204_NO_CONTENT,
        summary="The bell was opened: activity up to `through` (default: now) is seen",
        responses=problems(400, 401, 429),
    )
    async def mark_seen(self, data: JSONBody[MarkThrough], current_user: Caller, activity: Activity) -> None:
        await activity.mark_seen(current_user.id, data.through)

    @post(
        "/read",
        status_code=HTTP_204_NO_CONTENT,
        summary="Mark everything up to `through` (an event id; default: now) read",
        responses=problems(400, 401, 429),
    )
    async def mark_all_read(
        self, data: JSONBody[MarkThrough], current_user: Caller, activity: Activity
    ) -> None:
        await activity.mark_all_read(current_user.id, data.through)

    @post(
        "/groups/{key:str}/read",
        status_code=HTTP_204_NO_CONTENT,
        summary="Mark a group read up to `through` (default: its last event); unread again when it grows",
        responses=problems(400, 401, 404, 429),
    )
    async def mark_group_read(
        self, key: GroupKeyPath, data: JSONBody[MarkThrough], current_user: Caller, activity: Activity
    ) -> None:
        await activity.mark_group_read(current_user.id, key, data.through)

    @post(
        "/events/read",
        status_code=HTTP_204_NO_CONTENT,
        summary="Mark single events read (ids the caller may not see are ignored)",
        responses=problems(400, 401, 429),
    )
    async def mark_events_read(
        self, data: JSONBody[MarkEventsRead], current_user: Caller, activity: Activity
    ) -> None:
        await activity.mark_events_read(current_user.id, data.event_ids)

    @get(
        "/stream",
        summary="New and changed groups, live (Server-Sent Events)",
        responses={**problems(400, 401), **_STREAM_RESPONSE},
    )
    async def feed_stream(
        self,
        request: Request[Any, Any, Any],
        current_user: Caller,
        activity: Activity,
        channels: Channels,
        last_event_id: LastEventId = "",
    ) -> ServerSentEvent:
        after = int(last_event_id) if last_event_id else None
        live = EVENT_STREAM in request.headers.get("accept", "").lower()
        stream = await FeedStream.open(activity, channels, current_user, after, live=live)
        return ServerSentEvent(stream.messages(), headers=dict(STREAM_HEADERS))


class ProjectFeedController(Controller):
    path = "/api/projects/{project_id:int}/feed"
    tags = ["activity"]
    guards = [requires_user]
    security = BEARER
    dependencies = {"filters": Provide(provide_project_filters, sync_to_thread=False)}

    @get(
        "/",
        summary="A project's feed (members and administrators)",
        description=WALK_DOC,
        responses=problems(400, 401, 404, 429),
    )
    async def project_feed(
        self,
        project_id: IdPath,
        current_user: Caller,
        activity: Activity,
        filters: Filters,
        cursor: FeedCursorParam = None,
        limit: FeedPageSize = DEFAULT_PAGE,
    ) -> FeedPage:
        return await activity.project_feed(current_user.id, project_id, filters, cursor, limit)
