"""The stream's replay after ``Last-Event-ID`` keeps ``FEED_STREAM_REPLAY_MAX`` exactly."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.services import open_services
from app.db.models import UserRole
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from app.domains.activity.stream import PAGE, FeedStream
from tests.factories import Team
from tests.functional.test_activity_feed_cost import record


async def replayed(settings: Settings, team: Team, groups: int, replay_max: int) -> list[str]:
    """The events a reconnect after nothing (``Last-Event-ID: 0``) receives, ``groups`` groups missed."""
    limited = msgspec.structs.replace(settings, feed_stream_replay_max=replay_max)
    async with open_services(limited, (activity_module,)) as services:
        feed = services[ActivityService]
        await record(feed, [(team.editor.id, team.project)] * groups, 3_000_000)
        reader = CurrentUser(team.viewer.id, UserRole.MEMBER, uuid.uuid4(), "t", int(time.time()) + 600)
        stream = FeedStream(feed, None, reader, 0, live=False)  # type: ignore[arg-type]
        return [message.event async for message in stream.messages() if message.event]


@pytest.mark.parametrize(("groups", "replay_max"), [(12, 5), (PAGE + 30, PAGE + 7)])
async def test_a_replay_over_the_limit_sends_the_limit_then_a_reset(
    settings: Settings, db: AsyncConnection[Any], team: Team, groups: int, replay_max: int
) -> None:
    events = await replayed(settings, team, groups, replay_max)
    assert events.count("group") == replay_max
    assert events[-1] == "reset"


@pytest.mark.parametrize("groups", [5, PAGE])
async def test_a_replay_of_exactly_the_limit_needs_no_reset(
    settings: Settings, db: AsyncConnection[Any], team: Team, groups: int
) -> None:
    events = await replayed(settings, team, groups, groups)
    assert events.count("group") == groups
    assert "reset" not in events
