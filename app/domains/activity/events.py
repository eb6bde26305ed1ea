"""Domain events: what changed, who did it, to which object, in which project, for whom.

Every mutation of the product domains calls ``emit`` inside its transaction; the event reaches the
activity feed through the outbox, so an event exists exactly when its change was committed.

Who may see an event is decided when the feed is read (``activity_may_see`` in the migration), from
what the event says here:

- ``project_id``: the members of that project, at the time they read;
- ``audience_user_id``: only that user (and administrators), e.g. an order's buyer when an
  administrator cancels it; with a ``project_id`` too, only while they are a member;
- neither: the event is private to its actor (an order the buyer placed, a project that is gone).
  The feed applies that default when it stores the event, so the outbox payload stays as it was.

``target`` names the object an event is about when its own object is a part of it (a comment on a
task); verbs grouped by target ("Ana and 2 others commented on 'Fix login'") read it from ``data``
when it is not given (see ``verbs.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.core.db import UnitOfWork
from app.core.outbox import enqueue
from app.domains.activity.verbs import Verb

RECORD_ACTIVITY_TASK = "record_activity"


async def emit(
    uow: UnitOfWork,
    *,
    actor: int,
    verb: str,
    obj: tuple[str, int],
    project_id: int | None,
    data: dict[str, Any] | None = None,
    audience_user_id: int | None = None,
    target: tuple[str, int] | None = None,
) -> int:
    """Write ``actor verb obj (in project, for audience)`` to the outbox; returns the outbox id.

    Raises ``ValueError`` for a verb missing from ``verbs.Verb``: list it there first.
    """
    Verb(verb)  # a verb the feed cannot render is a programming error
    object_type, object_id = obj
    payload: dict[str, Any] = {
        "actor_id": actor,
        "verb": verb,
        "object_type": object_type,
        "object_id": object_id,
        "project_id": project_id,
        "data": data or {},
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    if audience_user_id is not None:
        payload["audience_user_id"] = audience_user_id
    if target is not None:
        payload["target_type"], payload["target_id"] = target
    return await enqueue(uow, "feed", RECORD_ACTIVITY_TASK, payload)
