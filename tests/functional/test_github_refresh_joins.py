"""Requests for a login's refresh that meet one being begun are all given the refresh whose job
will run: none is handed an id no job finishes (it read "failed: the refresh's job was lost" once
the grace had passed, while the real refresh of the same login succeeded).

The interleaving is fixed by holding the service's calls into Valkey and SAQ (called through): the
first request is held where it is admitted until a second one is admitted, the second until the
first has answered, and a second enqueue, if one happens, until a third request has answered.
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
        second_admitted, first_answered = asyncio.Event(), asyncio.Event()
        second_enqueue, third_answered = asyncio.Event(), asyncio.Event()
        admissions = enqueues = 0

        async def held_admit(*args: Any, **kwargs: Any) -> Any:
            nonlocal admissions
            admissions += 1
            if admissions == 1:
                await second_admitted.wait()
            elif admissions == 2:
                second_admitted.set()
                await first_answered.wait()
            return await admit(*args, **kwargs)

        async def held_enqueue(*args: Any, **kwargs: Any) -> Any:
            nonlocal enqueues
            enqueues += 1
            if enqueues == 2:
                second_enqueue.set()
                await third_answered.wait()
            return await enqueue(*args, **kwargs)

        monkeypatch.setattr(refreshes, "_admit_refresh", held_admit)
        monkeypatch.setattr(queue, "enqueue", held_enqueue)

        async def ask(user_id: int) -> RefreshOut:
            refresh = await refreshes.join_or_enqueue("octo", user_id)
            assert refresh is not None, "the account is not at its cap"
            return refresh

        first = asyncio.ensure_future(ask(1))
        first.add_done_callback(lambda _: first_answered.set())
        second = asyncio.ensure_future(ask(2))
        enqueued_again = asyncio.ensure_future(second_enqueue.wait())
        await asyncio.wait([enqueued_again, second], return_when=asyncio.FIRST_COMPLETED)
        enqueued_again.cancel()
        third = await ask(3)
        third_answered.set()
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
