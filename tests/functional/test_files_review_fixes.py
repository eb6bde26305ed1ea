"""Project files, review fixes: the uploader's quota after leaving a project, a stalled upload's
deadline, reservations lost by Valkey, and the sweep against live uploads.

The uploads are driven through the ASGI app served in the test's loop with a hand-made ``receive``
(as in ``test_files_http``), so a test decides chunk by chunk what the client sends, and when. A
``receive`` is called for the next chunk only once the previous one has been handled (lease kept,
data written), which is what these tests synchronise on.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings, SettingsError, load_settings
from app.domains.files.services import FileService
from tests.factories import (
    GENEROUS_AUTH,
    Actor,
    assert_problem,
    generous_client,
    http_scope,
    make_project,
    serve_in_loop,
)
from tests.functional.test_files_http import (
    MAX_BYTES,
    MIB,
    World,
    api,
    file_events,
    file_rows,
    files_root,
    files_url,
    module_client,
    stored,
    upload,
    world,
)

__all__ = ["api", "files_root", "module_client", "world"]  # the fixtures of test_files_http

DAYS_AGO = 2 * 86_400


@dataclass
class Answer:
    status: int = 0
    body: bytes = b""

    @property
    def problem(self) -> str:
        return str(msgspec.json.decode(self.body)["type"]) if self.body else ""


Message = dict[str, Any]


class ScriptedBody:
    """A multipart upload whose chunks are produced by the test: ``head`` (the part's headers),
    then whatever the script returns for each further call (data, or the ``tail`` to end it)."""

    def __init__(self) -> None:
        self.boundary = uuid.uuid4().hex
        self.head = (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()

    @staticmethod
    def more(data: bytes) -> Message:
        return {"type": "http.request", "body": data, "more_body": True}

    def end(self) -> Message:
        return {"type": "http.request", "body": self.tail, "more_body": False}


async def post_scripted(
    app: Litestar,
    member: Actor,
    project_id: int,
    body: ScriptedBody,
    script: Callable[[int], Awaitable[Message]],
) -> Answer:
    """POST an unannounced-length upload whose ``n``-th body message (from 0) is ``script(n)``."""
    scope = http_scope(
        "POST",
        files_url(project_id),
        member.token,
        (b"content-type", f"multipart/form-data; boundary={body.boundary}".encode()),
    )
    answer = Answer()
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        return await script(calls - 1)

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    await app(scope, receive, send)  # type: ignore[arg-type]
    return answer


def temp_files(root: Path) -> list[Path]:
    return sorted((root / "tmp").glob("*.part"))


async def reservation_keys(valkey: Valkey) -> list[bytes]:
    return [key async for key in valkey.scan_iter("files:uploading:*")]


# -- 1. the uploader's quota counts only the projects they still belong to ----------------------


async def test_files_left_behind_in_a_project_no_longer_count_against_their_uploaders_quota(
    settings: Settings, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """A member removed from (or leaving) a project kept its files counted against their own quota
    for ever, although they can no longer see or delete them: the 409 said "delete files first".
    Only the files of projects the uploader still belongs to count now; the project's quota still
    counts every file in it."""
    quotas = {"file_user_max_count": 1, "file_project_max_count": 1}
    async for client in generous_client(settings, files_dir=files_root, file_max_bytes=MAX_BYTES, **quotas):
        own = await make_project(db, world.editor, name="Mine")
        assert (await upload(client, world.editor, world.project, b"x")).status_code == 201
        still_a_member = await upload(client, world.editor, world.other_project, b"y")
        assert_problem(still_a_member, 409, "quota-exceeded")
        assert "uploader" in still_a_member.json()["detail"]

        removed = await client.delete(
            f"/api/projects/{world.project}/members/{world.editor.id}", headers=world.owner.headers
        )
        assert removed.status_code == 204, removed.text
        assert (await upload(client, world.editor, world.other_project, b"y")).status_code == 201

        left = await client.delete(
            f"/api/projects/{world.other_project}/members/{world.editor.id}", headers=world.editor.headers
        )
        assert left.status_code == 204, left.text
        assert (await upload(client, world.editor, own, b"z")).status_code == 201
        assert_problem(await upload(client, world.editor, own, b"z"), 409, "quota-exceeded")

        # The files left behind still fill their projects.
        project_full = await upload(client, world.owner, world.project, b"o")
        assert_problem(project_full, 409, "quota-exceeded")
        assert "project" in project_full.json()["detail"]
    assert await file_rows(db) == 3


# -- 2. a stalled upload ends at its lease ------------------------------------------------------


async def test_an_upload_whose_body_stops_arriving_is_answered_408_and_gives_its_room_back(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, world: World, files_root: Path
) -> None:
    """A client that stopped sending midway (still connected) got no answer and kept its temp file,
    while its reservation lapsed and the next upload was admitted: one account staged past
    FILE_UPLOADS_PER_USER and the quotas. Waiting for the next chunk now has the lease as deadline:
    the upload is answered 408 ``upload-stalled``, its temp file removed, its room given back."""
    async with serve_in_loop(
        settings,
        files_dir=files_root,
        file_max_bytes=MAX_BYTES,
        file_uploads_per_user=1,
        file_upload_lease_s=3,  # the slot must still be held at the next POST, on a loaded machine too
        **GENEROUS_AUTH,
    ) as served:
        body = ScriptedBody()
        in_flight = asyncio.Event()

        async def stall_after_a_mib(n: int) -> Message:
            if n == 0:
                return body.more(body.head + b"s" * MIB)
            in_flight.set()
            await asyncio.Event().wait()  # the client sends nothing more, and stays connected
            raise AssertionError("unreachable")

        stalled = asyncio.create_task(
            post_scripted(served.app, world.editor, world.project, body, stall_after_a_mib)
        )
        await in_flight.wait()
        assert len(temp_files(files_root)) == 1
        # While it is in flight, it holds the account's only upload slot.
        assert_problem(
            await served.client.post(
                files_url(world.other_project),
                files={"file": ("z.txt", b"z", "text/plain")},
                headers=world.editor.headers,
            ),
            429,
            "too-many-uploads",
        )

        answer = await stalled

        assert answer.status == 408, answer.body
        assert answer.problem == "/problems/upload-stalled"
        assert temp_files(files_root) == []
        assert await reservation_keys(valkey) == []
        again = await served.client.post(
            files_url(world.other_project),
            files={"file": ("z.txt", b"z", "text/plain")},
            headers=world.editor.headers,
        )
        assert again.status_code == 201, again.text
    assert await file_rows(db) == 1


@pytest.mark.parametrize("ended_by", ["logout", "deactivation"])
async def test_an_upload_whose_session_ended_while_its_body_streamed_in_keeps_nothing(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    world: World,
    files_root: Path,
    ended_by: str,
) -> None:
    """The session was checked when the request arrived only: an upload streaming in for as long as
    its client kept sending was stored, and its feed event sent, after the uploader signed out or was
    deactivated (a review). The file is recorded only if the session still stands then: a 401, and
    nothing kept (row, file, event, reservation)."""
    async with serve_in_loop(
        settings, files_dir=files_root, file_max_bytes=MAX_BYTES, **GENEROUS_AUTH
    ) as served:
        body = ScriptedBody()
        in_flight, session_ended = asyncio.Event(), asyncio.Event()

        async def end_once_the_session_has(n: int) -> Message:
            if n == 0:
                return body.more(body.head + b"s" * MIB)
            in_flight.set()
            await session_ended.wait()
            return body.end()

        upload_task = asyncio.create_task(
            post_scripted(served.app, world.editor, world.project, body, end_once_the_session_has)
        )
        await in_flight.wait()
        if ended_by == "logout":
            signed_out = await served.client.post("/api/auth/logout", headers=world.editor.headers)
            assert signed_out.status_code == 204, signed_out.text
        else:
            await db.execute("update users set is_active = false where id = %s", (world.editor.id,))
        session_ended.set()
        answer = await upload_task

    assert answer.status == 401, answer.body
    assert answer.problem == "/problems/unauthorized"
    assert (await file_rows(db), await file_events(db)) == (0, [])
    assert temp_files(files_root) == []
    assert await reservation_keys(valkey) == []


# -- 3. reservations lost by Valkey ------------------------------------------------------------


async def test_an_upload_whose_reservation_valkey_lost_is_renewed_and_completes(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, world: World, files_root: Path
) -> None:
    """Valkey restarted without persistence (or failed over) drops ``files:uploading:*``: the renewal
    took the missing reservation for a lapsed lease and failed a client that never stalled with a 408
    ``upload-stalled``. A missing reservation is added back at its renewal; the upload completes."""
    async with serve_in_loop(
        settings, files_dir=files_root, file_max_bytes=MAX_BYTES, file_upload_lease_s=1, **GENEROUS_AUTH
    ) as served:
        body = ScriptedBody()
        user_key = f"files:uploading:user:{world.editor.id}"

        async def lose_the_keys_then_send_until_renewed(n: int) -> Message:
            if n == 0:
                return body.more(body.head + b"v" * 1024)
            if n == 1:
                keys = await reservation_keys(valkey)
                assert len(keys) == 2, keys
                await valkey.delete(*keys)  # what a restart without persistence does
            if await valkey.exists(user_key):  # renewed: added back
                return body.end()
            return body.more(b"v" * 256)  # the client keeps sending, a little at a time

        answer = await post_scripted(
            served.app, world.editor, world.project, body, lose_the_keys_then_send_until_renewed
        )
    assert answer.status == 201, answer.body
    assert await file_rows(db) == 1
    assert await reservation_keys(valkey) == []


# -- 4. the sweep against live uploads -----------------------------------------------------------


def _environ(**variables: int) -> dict[str, str]:
    """An environment with these settings and an explicit key (no key file is written)."""
    return {"SECRET_KEY": "k" * 16 + "0123456789ABCDEF"} | {
        name.upper(): str(value) for name, value in variables.items()
    }


def test_a_temp_max_age_not_well_above_the_upload_lease_is_refused() -> None:
    """FILE_TEMP_MAX_AGE_S could be 60 while FILE_UPLOAD_LEASE_S was up to 3600: the sweep deleted
    the temp file of an upload within its lease. It must be at least twice the lease."""
    with pytest.raises(SettingsError) as refused:
        load_settings(_environ(file_temp_max_age_s=60, file_upload_lease_s=120))
    message = str(refused.value)
    assert "FILE_TEMP_MAX_AGE_S" in message and "FILE_UPLOAD_LEASE_S" in message, message
    with pytest.raises(SettingsError):
        load_settings(_environ(file_temp_max_age_s=239, file_upload_lease_s=120))
    settings = load_settings(_environ(file_temp_max_age_s=240, file_upload_lease_s=120))
    assert (settings.file_temp_max_age_s, settings.file_upload_lease_s) == (240, 120)
    assert load_settings(_environ()).file_temp_max_age_s == 86_400


async def test_renewing_an_uploads_lease_keeps_its_temp_file_from_the_sweep(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, world: World, files_root: Path
) -> None:
    """The sweep judged a temp file stale by its last write: a client trickling its body (writes
    buffered, so the file's time did not move) or pausing within its lease lost its temp file to the
    sweep, then failed 500. Each renewal of the lease touches the temp file."""
    async with serve_in_loop(
        settings, files_dir=files_root, file_max_bytes=MAX_BYTES, file_upload_lease_s=1, **GENEROUS_AUTH
    ) as served:
        files = served.app.state.services[FileService]
        body = ScriptedBody()
        user_key = f"files:uploading:user:{world.editor.id}"
        first_deadline: list[float] = []
        backdated = time.time() - DAYS_AGO
        swept: dict[str, int] = {}

        async def trickle_until_renewed_then_sweep(n: int) -> Message:
            [(_member, deadline)] = await valkey.zrange(user_key, 0, -1, withscores=True)
            if n == 0:
                return body.more(body.head + b"t" * (64 * 1024))
            if n == 1:
                [temp] = temp_files(files_root)
                os.utime(temp, (backdated, backdated))  # as if its last write were long ago
                first_deadline.append(deadline)
            if deadline == first_deadline[0]:
                return body.more(b"t")  # one byte at a time: buffered, the file is not written
            [temp] = temp_files(files_root)
            assert temp.stat().st_mtime > backdated + DAYS_AGO / 2, "the renewal touched the temp file"
            swept.update(await files.sweep())
            assert temp_files(files_root) == [temp]
            return body.end()

        answer = await post_scripted(
            served.app, world.editor, world.project, body, trickle_until_renewed_then_sweep
        )
    assert answer.status == 201, answer.body
    assert swept["temp"] == 0
    assert await file_rows(db) == len(stored(files_root)) == 1


async def test_a_staged_file_swept_before_it_is_placed_is_a_408_and_records_nothing(
    settings: Settings, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """A staged file that vanished before its rename into place (the sweep judged it stale) made the
    upload fail 500 (``FileNotFoundError``). It is a 408 ``upload-expired`` now: no row, no event,
    no file. The test holds the uploader's quota lock so that the recording waits while the staged
    file is swept."""
    lock = "select pg_advisory_lock(hashtextextended(concat('files-uploader:', %s::bigint), 0))"
    unlock = "select pg_advisory_unlock(hashtextextended(concat('files-uploader:', %s::bigint), 0))"
    waiting = (
        "select count(*) from pg_locks where locktype = 'advisory' and not granted"
        " and pid <> pg_backend_pid()"
        " and database = (select oid from pg_database where datname = current_database())"
    )
    async with serve_in_loop(
        settings, files_dir=files_root, file_max_bytes=MAX_BYTES, **GENEROUS_AUTH
    ) as served:
        files = served.app.state.services[FileService]
        body = ScriptedBody()
        locked = asyncio.Event()

        async def send_all_once_the_lock_is_held(n: int) -> Message:
            if n == 0:
                return body.more(body.head + b"g" * 1024)
            await db.execute(lock, (world.editor.id,))  # the reservation was taken: the lock is free
            locked.set()
            return body.end()

        task = asyncio.create_task(
            post_scripted(served.app, world.editor, world.project, body, send_all_once_the_lock_is_held)
        )
        try:
            await locked.wait()
            for _ in range(1200):  # until the recording transaction waits for the quota lock
                row = await (await db.execute(waiting)).fetchone()
                if row is not None and row[0] > 0:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the upload never waited for the quota lock")
            [temp] = temp_files(files_root)
            os.utime(temp, (time.time() - DAYS_AGO, time.time() - DAYS_AGO))
            assert (await files.sweep())["temp"] == 1
        finally:
            await db.execute(unlock, (world.editor.id,))
        answer = await task
    assert answer.status == 408, answer.body
    assert answer.problem == "/problems/upload-expired"
    assert await file_rows(db) == 0
    assert await file_events(db) == []
    assert stored(files_root) == []
