"""An upload whose client leaves while its quota is being reserved gives the room back at once.

The soak review found a stream's slot taken in Valkey and then left to its lease when the client
left during the take; an upload's reservation was made the same way (``await uploads.add(...)``
assigned only once Valkey answered), so one cancelled there held the uploader's room and one of
their uploads in flight until its lease ran out. The reservation is now made first
(``UploadReservations.prepare``) and held after (``Reservation.hold``), inside the ``try`` that
releases it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.domains.files.reservations import Reservation
from app.domains.files.services import FileService
from tests.factories import Team, serve_in_loop, wait_until


async def test_an_upload_cancelled_while_its_room_is_held_gives_it_back(
    settings: Settings, db: AsyncConnection[Any], team: Team, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    held, forever = asyncio.Event(), asyncio.Event()
    hold = Reservation.hold

    async def held_in_valkey(reservation: Reservation) -> None:
        await hold(reservation)
        held.set()
        await forever.wait()  # the client leaves here: Valkey holds the room

    monkeypatch.setattr(Reservation, "hold", held_in_valkey)
    async with serve_in_loop(settings, files_dir=tmp_path, rate_limit_enabled=False) as served:
        files = served.app.state.services[FileService]
        upload = asyncio.ensure_future(
            served.client.post(
                f"/api/projects/{team.project}/files",
                files={"file": ("a.txt", b"a" * 1000, "text/plain")},
                headers=team.editor.headers,
            )
        )

        async def room_held() -> bool:
            return held.is_set()

        await wait_until(room_held, 30, "the upload's room is held")
        assert (await files.uploads.in_flight(team.editor.id, team.project)).uploader_files == 1
        upload.cancel()  # the client left

        async def given_back() -> bool:
            return (await files.uploads.in_flight(team.editor.id, team.project)).uploader_files == 0

        await wait_until(given_back, 3, "the room is given back")
