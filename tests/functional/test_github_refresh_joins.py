"""Requests for a login's refresh that meet one being begun are all given the refresh whose job
will run: none is handed an id no job finishes (it read "failed: the refresh's job was lost" once
the grace had passed, while the real refresh of the same login succeeded).

The interleaving is fixed by holding the service's calls into Valkey and SAQ (called through): the
first request is held where it is admitted until a second one, sent then, is admitted, the second
there until the first has answered, and a second enqueue, if one happens, until a third request has
answered.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import open_services
from app.domains.github.module import module as github_module
from app.domains.github.schemas import RefreshOut
from app.domains.github.services import GithubService


async def test_requests_meeting_a_refresh_being_begun_are_given_the_one_with_the_job(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_services(settings, [github_module]) as services:
        refreshes = services[GithubService].refreshes
        queue = refreshes._queue
        assert queue is not None
        admit, enqueue = refreshes._admit_refresh, queue.enqueue
        # Set when the request gets there, or ends before: a request that fails waits for nothing.
        first_admitting, second_admitting = asyncio.Event(), asyncio.Event()
        second_enqueuing, third_answered = asyncio.Event(), asyncio.Event()
        enqueues = 0

        async def held_admit(*, keys: list[str], args: list[Any]) -> Any:
            if keys == ["github:user-refreshes:1"]:
                first_admitting.set()
                await second_admitting.wait()
            elif keys == ["github:user-refreshes:2"]:
                second_admitting.set()
                await asyncio.wait([first])
            return await admit(keys=keys, args=args)

        async def held_enqueue(*args: Any, **kwargs: Any) -> Any:
            nonlocal enqueues
            enqueues += 1
            if enqueues == 2:
                second_enqueuing.set()
                await third_answered.wait()
            return await enqueue(*args, **kwargs)

        monkeypatch.setattr(refreshes, "_admit_refresh", held_admit)
        monkeypatch.setattr(queue, "enqueue", held_enqueue)

        async def ask(user_id: int, *ends: asyncio.Event) -> RefreshOut:
            try:
                refresh = await refreshes.join_or_enqueue("octo", user_id)
            finally:
                for event in ends:
                    event.set()
            assert refresh is not None, "the account is not at its cap"
            return refresh

        first = asyncio.ensure_future(ask(1, first_admitting))
        await first_admitting.wait()
        second = asyncio.ensure_future(ask(2, second_admitting, second_enqueuing))
        await second_enqueuing.wait()
        third = await ask(3, third_answered)
        answers = [await first, await second, third]

        job = await queue.job("github-refresh:octo")
        assert job is not None and job.kwargs is not None
        assert [str(answer.id) for answer in answers] == [job.kwargs["refresh_id"]] * 3
        assert await valkey.get("github:refresh-pending:octo") == job.kwargs["refresh_id"].encode()
        for user_id in (1, 2, 3):  # only the account whose refresh runs has one pending
            pending = await valkey.zrange(f"github:user-refreshes:{user_id}", 0, -1)
            assert [member.decode() for member in pending] == (
                [job.kwargs["refresh_id"]] if user_id == job.kwargs["user_id"] else []
            )
