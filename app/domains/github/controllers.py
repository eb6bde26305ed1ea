"""HTTP for GitHub analytics: profiles, history, refreshes (202 + SSE) and tracked usernames."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from litestar import Response, delete, get, post
from litestar.channels import ChannelsPlugin
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from app.core.auth import Caller, requires_user
from app.core.idempotency import LOCATION_HEADER
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, IdCursor, Page, PageSize, decode_cursor
from app.core.ratelimit import ClientAddress
from app.core.responses import STREAM_HEADERS
from app.core.routing import Controller
from app.domains.github.refreshes import REFRESH_MIN_AGE_S, SSE_MAX_S
from app.domains.github.schemas import (
    Filters,
    GithubProfileOut,
    HistoryOut,
    RefreshEvent,
    RefreshOut,
    TrackCreate,
    TrackedOut,
    UsernamePath,
)
from app.domains.github.services import GithubService

Github = NamedDependency[GithubService]
Channels = NamedDependency[ChannelsPlugin]
RefreshId = Annotated[uuid.UUID, PathParameter(description="The `id` of a refresh (from POST …/refresh).")]


_EVENTS = ResponseSpec(
    data_container=RefreshEvent,
    media_type="text/event-stream",
    description=(
        "Server-Sent Events: `refresh` events whose `data` is the refresh as JSON (as from "
        "GET …/refreshes/{id}), the current state first, then each change; the stream ends after "
        "`succeeded` or `failed` (a client that connects later gets the final state at once). "
        f"It also ends without a final event after {SSE_MAX_S:g} s, or when the server could not "
        "keep the stream's place among the account's streams: reconnect to follow on (the current "
        "state comes first). Comment lines are heartbeats."
    ),
)
_ALREADY_TRACKED = ResponseSpec(data_container=TrackedOut, description="Already tracked: nothing changed")
_ALREADY_FRESH = ResponseSpec(
    data_container=RefreshOut,
    description=(
        "Fetched moments ago: nothing is fetched, the refresh is `succeeded` at once and its "
        "`fetched_at` is the stored data's"
    ),
)


class GithubUsersController(Controller):
    path = "/api/github/users"
    tags = ["github"]
    guards = [requires_user]
    security = BEARER

    @get(
        "/{username:str}",
        summary="A GitHub user's profile, repository totals, top repositories and top languages",
        description=(
            "Answered at once from the stored data (`source: cache`); data older than its TTL is "
            "answered with `stale: true` while a refresh job runs; a user seen for the first time is "
            "fetched for the request (`source: live`). Totals cover every owned repository (all "
            "pages). Forks and archived repositories are left out unless asked for. Such first "
            "fetches spend the GitHub quota every account shares: each account may spend "
            "`GITHUB_USER_QUOTA_FRACTION` of it per hour, and the accounts of one client address "
            "together `GITHUB_ADDRESS_QUOTA_FRACTION` (429 `github-lookup-budget`); an account may "
            "have `GITHUB_USER_LOOKUPS_IN_FLIGHT` under way at once, and the accounts of one address "
            "`GITHUB_ADDRESS_LOOKUPS_IN_FLIGHT` (429 `github-lookups-in-flight`); both answers carry "
            "`Retry-After`. Joining a fetch of the same user under way costs nothing. The refresh "
            "a stale answer starts is charged to the reader's shares the same way; a stale answer "
            "comes without a refresh while the account has `GITHUB_USER_PENDING_REFRESHES` pending "
            "or a share is spent."
        ),
        responses=problems(400, 401, 404, 429, 503),
    )
    async def get_profile(
        self,
        username: UsernamePath,
        github: Github,
        current_user: Caller,
        client_address: ClientAddress,
        include_forks: Annotated[bool, QueryParameter(description="Count forked repositories")] = False,
        include_archived: Annotated[bool, QueryParameter(description="Count archived repositories")] = False,
        top_repos: Annotated[int, QueryParameter(ge=0, le=100, description="Top repositories by stars")] = 10,
        top_languages: Annotated[int, QueryParameter(ge=1, le=100, description="Languages per view")] = 10,
    ) -> GithubProfileOut:
        filters = Filters(include_forks=include_forks, include_archived=include_archived)
        return await github.profile(
            username,
            filters,
            top_repos=top_repos,
            top_languages=top_languages,
            user_id=current_user.id,
            address=client_address,
        )

    @get(
        "/{username:str}/history",
        summary="Daily snapshots of a tracked GitHub user, with changes",
        description=(
            "Snapshots are taken daily for tracked users. `to` defaults to today, `from` to 29 days "
            "before `to` (30 days). A backwards range, one longer than `GITHUB_HISTORY_MAX_DAYS`, or a "
            "`to` too early in the calendar for the default `from` is a 400 `invalid-range` whose "
            "detail names the parameter. A login without snapshots (never tracked, or unknown to "
            "GitHub) answers 200 with no points, never 404. Each point names the GitHub account that "
            "held the login (`github_id`): where a login changed hands (renamed away and registered "
            "again), `change` is null and `deltas` count from the new account's first point "
            "(`deltas_from`)."
        ),
        responses=problems(400, 401, 429),
    )
    async def get_history(
        self,
        username: UsernamePath,
        github: Github,
        first_day: Annotated[
            dt.date | None, QueryParameter(name="from", description="First day (UTC), inclusive")
        ] = None,
        last_day: Annotated[
            dt.date | None, QueryParameter(name="to", description="Last day (UTC), inclusive; default today")
        ] = None,
    ) -> HistoryOut:
        return await github.history(username, first_day, last_day)

    @post(
        "/{username:str}/refresh",
        status_code=HTTP_202_ACCEPTED,
        summary="Refresh a GitHub user's data in the background",
        description=(
            "Answers 202 with the refresh (one per user at a time: a pending one is returned, at no "
            "cost to the caller). Follow `events_url` (Server-Sent Events) or poll `state_url` for "
            "its completion. What the refresh costs GitHub's quota is charged to the account's share "
            "(`GITHUB_USER_QUOTA_FRACTION`, with its lookups of users not stored yet) and to its "
            "client address's (`GITHUB_ADDRESS_QUOTA_FRACTION`): once either is spent, a new refresh "
            "is a 429 `github-lookup-budget`. Its job fetches nothing, and the refresh fails "
            "(`rate-limited`, with `retry_after_s`, and the error's `type` "
            "`/problems/github-lookup-budget` or `/problems/github-lookups-in-flight`, where "
            "GitHub's own limit is `/problems/github-rate-limited`), if a share was spent meanwhile "
            "or the address's `GITHUB_ADDRESS_LOOKUPS_IN_FLIGHT` lookups and refreshes are still "
            "under way after `GITHUB_COLD_WAIT_S`. "
            "Data fetched less than "
            f"{REFRESH_MIN_AGE_S} s ago (or `GITHUB_PROFILE_TTL_S`, if shorter) is not fetched "
            "again: 200 with the refresh already `succeeded`. A user with nothing stored yet is a "
            "404 `github-not-stored` (GET the user first); an account with "
            "`GITHUB_USER_PENDING_REFRESHES` refreshes queued or running gets 429 "
            "`github-refresh-limit`. Both 429s carry `Retry-After`."
        ),
        responses={**problems(400, 401, 404, 429), HTTP_200_OK: _ALREADY_FRESH},
        response_headers=[
            ResponseHeader(
                name="Location",
                value="/api/github/refreshes/{id}",  # documentation only: gives the header its schema
                documentation_only=True,
                description="The refresh's state (its `state_url`)",
            )
        ],
    )
    async def request_refresh(
        self, username: UsernamePath, github: Github, current_user: Caller, client_address: ClientAddress
    ) -> Response[RefreshOut]:
        refresh = await github.request_refresh(username, user_id=current_user.id, address=client_address)
        if refresh.is_final:
            return Response(refresh, status_code=HTTP_200_OK)
        return Response(refresh, status_code=HTTP_202_ACCEPTED, headers={"Location": refresh.state_url})


class GithubRefreshesController(Controller):
    path = "/api/github/refreshes"
    tags = ["github"]
    guards = [requires_user]
    security = BEARER

    @get(
        "/{refresh_id:str}",
        summary="The state of a refresh",
        description="`queued`, `running`, then `succeeded` or `failed`. A failed refresh's `error` "
        "has a `kind` and the `type` of the problem a lookup would answer for the same failure "
        "(its page under `/problems`). A refresh whose job can no "
        "longer finish it (its worker stopped, its job was lost) is `failed` with the error kind "
        "`unavailable` once that is seen, at the earliest 30 s after it was queued or started.",
        responses=problems(401, 404, 429),
    )
    async def get_refresh(self, refresh_id: RefreshId, github: Github) -> RefreshOut:
        return await github.refresh_state(refresh_id)

    @get(
        "/{refresh_id:str}/events",
        summary="A refresh's states as Server-Sent Events, until it succeeds or fails",
        media_type="text/event-stream",
        description="An account holds at most `GITHUB_STREAM_MAX_PER_USER` of these streams at once: "
        "one more is a 429 (`github-refresh-streams`, with `Retry-After`).",
        responses={**problems(401, 404, 429), HTTP_200_OK: _EVENTS},
    )
    async def refresh_events(
        self, refresh_id: RefreshId, github: Github, channels: Channels, current_user: Caller
    ) -> ServerSentEvent:
        # 404 and 429 before the stream starts
        events = await github.open_refresh_events(refresh_id, channels, current_user)
        return ServerSentEvent(events, headers=dict(STREAM_HEADERS))


class GithubTrackingController(Controller):
    path = "/api/github/tracked"
    tags = ["github"]
    guards = [requires_user]
    security = BEARER

    @get("/", summary="GitHub users you track", responses=problems(400, 401, 429))
    async def list_tracked(
        self, github: Github, current_user: Caller, cursor: CursorParam = None, limit: PageSize = 50
    ) -> Page[TrackedOut]:
        after_id = decode_cursor(cursor, IdCursor).id if cursor else 0
        return await github.list_tracked(current_user.id, after_id=after_id, limit=limit)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Track a GitHub user (daily snapshots); 200 when already tracked",
        responses={**problems(400, 401, 404, 409, 429, 503), HTTP_200_OK: _ALREADY_TRACKED},
        response_headers=[LOCATION_HEADER],
    )
    async def track_github_user(
        self,
        data: JSONBody[TrackCreate],
        github: Github,
        current_user: Caller,
        client_address: ClientAddress,
    ) -> Response[TrackedOut]:
        tracked, created = await github.track(current_user.id, data.username, client_address)
        if not created:
            return Response(tracked, status_code=HTTP_200_OK)
        location = f"/api/github/tracked/{tracked.username}"
        return Response(tracked, status_code=HTTP_201_CREATED, headers={"Location": location})

    @delete(
        "/{username:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Stop tracking a GitHub user (its snapshots are kept)",
        responses=problems(400, 401, 404, 429),
    )
    async def untrack_github_user(self, username: UsernamePath, github: Github, current_user: Caller) -> None:
        await github.untrack(current_user.id, username)
