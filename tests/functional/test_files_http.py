"""/api/projects/{id}/files: streamed multipart upload, download, delete, permissions, atomicity.

Runs the real app with its own storage directory (``FILES_DIR`` = a temp dir, wiped before every
test) and a 6 MiB limit. Some tests drive the ASGI app directly with a hand-made ``receive`` to
send a body in many chunks, count how much of it was read, or disconnect midway: the test client
always delivers the whole body in one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import resource
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import Database, UnitOfWork
from app.core.deadline import sever
from app.core.middleware import MULTIPART_OVERHEAD
from app.db.models import ProjectRole
from app.domains.files.downloads import attachment
from app.domains.files.services import FileService
from app.domains.files.storage import FileStorage, StorageFullError, name_for_type, sanitize_filename
from app.domains.monitoring.capture import RawEvent
from app.domains.projects.jobs import purge_deleted_project
from tests.factories import (
    GENEROUS_AUTH,
    Actor,
    Client,
    answer_racing,
    assert_problem,
    captured_logs,
    generous_client,
    http_scope,
    make_project,
    make_user,
    monitoring_spy,
    serve_in_loop,
)
from tests.valkey_control import ControlledValkey

MIB = 1024 * 1024
MAX_BYTES = 6 * MIB


def files_url(project_id: int, file_id: int | None = None) -> str:
    base = f"/api/projects/{project_id}/files"
    return base if file_id is None else f"{base}/{file_id}"


@pytest.fixture(scope="module")
def files_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
async def module_client(settings: Settings, files_root: Path) -> AsyncIterator[Client]:
    async for client in generous_client(settings, files_dir=files_root, file_max_bytes=MAX_BYTES):
        yield client


def wipe(root: Path) -> None:
    for child in root.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


@pytest.fixture
async def api(module_client: Client, db: AsyncConnection[Any], valkey: Valkey, files_root: Path) -> Client:
    wipe(files_root)
    module_client.headers.clear()
    module_client.cookies.clear()
    return module_client


@dataclass
class World:
    project: int  # editor is editor, viewer is viewer, outsider is not a member
    other_project: int  # editor and outsider are editors
    editor: Actor
    viewer: Actor
    outsider: Actor
    owner: Actor  # owns both projects


@pytest.fixture
async def world(api: Client, db: AsyncConnection[Any]) -> World:
    app: Litestar = api.app  # type: ignore[assignment]
    owner, editor, viewer, outsider = [
        await make_user(db, app, name=name) for name in ("Own", "Ana", "Vic", "Out")
    ]
    project = await make_project(
        db, owner, {editor.id: ProjectRole.EDITOR, viewer.id: ProjectRole.VIEWER}, name="P"
    )
    other = await make_project(
        db, owner, {outsider.id: ProjectRole.EDITOR, editor.id: ProjectRole.EDITOR}, name="P"
    )
    return World(project, other, editor, viewer, outsider, owner)


def stored(root: Path) -> list[str]:
    """Every file left in the storage directory, temp files included."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


async def upload(
    api: Client,
    member: Actor | None,
    project_id: int,
    content: bytes,
    *,
    filename: str = "report.txt",
    content_type: str = "text/plain",
) -> httpx.Response:
    return await api.post(
        files_url(project_id),
        files={"file": (filename, content, content_type)},
        headers=member.headers if member else {},
    )


def multipart_body(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> bytes:
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: text/plain\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


async def file_rows(db: AsyncConnection[Any]) -> int:
    row = await (await db.execute("select count(*) from project_files")).fetchone()
    assert row is not None
    return int(row[0])


async def file_events(db: AsyncConnection[Any]) -> list[dict[str, Any]]:
    cursor = await db.execute(
        "select payload from outbox where task = 'record_activity' "
        "and payload->>'verb' like 'file.%%' order by id"
    )
    return [row[0] for row in await cursor.fetchall()]


# -- upload and download ------------------------------------------------------------------------


async def test_upload_then_download_round_trip(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    content = b"quarterly numbers\n" * 1000
    response = await upload(api, world.editor, world.project, content, filename="Q3 report.txt")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["size_bytes"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["filename"] == "Q3 report.txt"
    assert body["content_type"] == "text/plain"
    assert body["project_id"] == world.project
    assert body["uploaded_by"] == world.editor.id
    assert "storage_key" not in body
    on_disk = stored(files_root)
    assert len(on_disk) == 1 and on_disk[0].startswith(f"{world.project}/"), on_disk
    assert (files_root / on_disk[0]).read_bytes() == content

    download = await api.get(files_url(world.project, body["id"]), headers=world.editor.headers)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"].startswith("text/plain")
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"Q3 report.txt\"; filename*=UTF-8''Q3%20report.txt"
    )
    assert download.headers["x-content-type-options"] == "nosniff"
    # A project's private file: kept out of shared and disk caches, and never run as a page even if a
    # browser were made to render it.
    assert download.headers["cache-control"] == "private, no-store"
    policy = download.headers["content-security-policy"]
    assert policy == "sandbox; default-src 'none'; frame-ancestors 'none'"


async def test_an_upload_racing_its_projects_deletion_is_a_404_and_leaves_nothing(
    api: Client, db: AsyncConnection[Any], database_url: str, world: World, files_root: Path
) -> None:
    """The recording transaction checked the role before the deletion committed, then the row's
    foreign-key check failed: a 500. It now holds the project before checking: a 404."""
    answer = await answer_racing(
        database_url,
        "delete from projects where id = %s",
        world.project,
        lambda: upload(api, world.editor, world.project, b"late\n"),
    )
    assert_problem(answer, 404, "not-found")
    assert await file_rows(db) == 0
    assert stored(files_root) == []


async def test_upload_emits_an_event_in_the_outbox(
    api: Client, db: AsyncConnection[Any], world: World
) -> None:
    response = await upload(
        api, world.editor, world.project, b"%PDF-1.7", filename="a.pdf", content_type="application/pdf"
    )
    assert response.status_code == 201
    file_id = response.json()["id"]

    [event] = await file_events(db)
    assert event["verb"] == "file.uploaded"
    assert event["actor_id"] == world.editor.id
    assert (event["object_type"], event["object_id"]) == ("file", file_id)
    assert event["project_id"] == world.project
    assert event["data"] == {"filename": "a.pdf", "size_bytes": 8}


async def test_filename_is_sanitised_and_never_a_path(api: Client, world: World, files_root: Path) -> None:
    body = multipart_body(("file", "../../etc/pass\x07wd \u00fc.txt", b"x"))
    response = await api.post(
        files_url(world.project),
        content=body,
        headers={**world.editor.headers, "content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "passwd \u00fc.txt"
    assert not (files_root.parent / "etc").exists()
    download = await api.get(files_url(world.project, response.json()["id"]), headers=world.editor.headers)
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"passwd u.txt\"; filename*=UTF-8''passwd%20%C3%BC.txt"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "日本語 файл.pdf",
            'attachment; filename="___ ____.pdf"; '
            "filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E%20%D1%84%D0%B0%D0%B9%D0%BB.pdf",
        ),
        (
            'café "x"\\y.txt',
            "attachment; filename=\"cafe _x__y.txt\"; filename*=UTF-8''caf%C3%A9%20%22x%22%5Cy.txt",
        ),
        ("a+b&c~d.txt", "attachment; filename=\"a+b&c~d.txt\"; filename*=UTF-8''a+b&c~d.txt"),
    ],
)
def test_a_download_names_its_file_in_ascii_too(name: str, expected: str) -> None:
    """``filename*`` alone: a client that reads only ``filename`` (curl's ``-J``) saved the file under
    the URL's last segment (the HTTP-semantics reviewer; RFC 6266 appendix D)."""
    assert attachment(name) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("C:\\Users\\ana\\report.pdf", "report.pdf"),
        ("/etc/passwd", "passwd"),
        ("a\x00b\r\nc\u202etxt.exe", "abctxt.exe"),
        ("  spaced  ", "spaced"),
        ("..", "file"),
        ("dir/", "file"),
        ("x" * 300 + ".tar.gz", "x" * 252 + ".gz"),
        ("y" * 300, "y" * 255),
    ],
)
def test_sanitize_filename(raw: str, expected: str) -> None:
    assert sanitize_filename(raw) == expected
    assert len(sanitize_filename(raw)) <= 255


@pytest.mark.parametrize(
    ("filename", "content_type", "stored"),
    [
        ("report.html", "text/plain", "report.html.txt"),
        ("invoice.pdf.exe", "image/png", "invoice.pdf.exe.png"),
        ("notes", "text/plain", "notes.txt"),
        ("photo.JPG", "image/jpeg", "photo.JPG"),
        ("photo.jpeg", "image/jpeg", "photo.jpeg"),
        ("data.csv", "text/csv", "data.csv"),
        ("x" * 255, "application/zip", "x" * 251 + ".zip"),
        ("drawing.svg", "image/x-operator-added", "drawing.svg"),  # no known extension: as sent
    ],
)
def test_a_stored_name_ends_in_an_extension_of_its_type(
    filename: str, content_type: str, stored: str
) -> None:
    """The type is checked, the name was not: another member's browser saved ``report.html`` (declared
    ``text/plain``) as a page that ran its script from ``file://`` (the files and reports reviewer)."""
    assert name_for_type(filename, content_type) == stored
    assert len(name_for_type(filename, content_type)) <= 255


async def test_a_retried_upload_stores_one_file_and_replays_its_answer(
    api: Client, world: World, db: AsyncConnection[Any]
) -> None:
    """The key was ignored: a retry after a lost answer stored the file twice and spent the quota
    twice (the idempotency reviewer). The key alone stands for the upload (each retry's multipart
    bytes are new): claimed before the body is read, completed with the file's row."""
    keyed = world.editor.headers | {"Idempotency-Key": str(uuid.uuid4())}

    async def send(content: bytes) -> httpx.Response:
        return await api.post(
            files_url(world.project), files={"file": ("q3.txt", content, "text/plain")}, headers=keyed
        )

    first, again = await send(b"the report"), await send(b"the report")
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.content == first.content
    assert (first.headers["idempotent-replayed"], again.headers["idempotent-replayed"]) == ("false", "true")
    stored = await db.execute("select count(*) from project_files where project_id = %s", (world.project,))
    assert (await stored.fetchone()) == (1,)
    other = await send(b"another report")  # a different file under the used key: the first answer
    assert (other.status_code, other.content) == (201, first.content)
    unkeyed = await upload(api, world.editor, world.project, b"the report", filename="q3.txt")
    assert unkeyed.status_code == 201 and "idempotent-replayed" not in unkeyed.headers


async def test_a_retry_of_the_upload_that_filled_the_quota_is_its_replay(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """Claimed after its body was read, a retry met the quota its first upload had filled: 409
    ``quota-exceeded`` in place of the stored 201 (the diff reviewer)."""
    async for api in generous_client(settings, file_project_max_count=1):
        owner = await make_user(db, api.app)
        project = await make_project(db, owner)
        keyed = owner.headers | {"Idempotency-Key": str(uuid.uuid4())}
        answers = [
            await api.post(files_url(project), files={"file": ("a.txt", b"abc", "text/plain")}, headers=keyed)
            for _ in range(2)
        ]
        assert [answer.status_code for answer in answers] == [201, 201], answers[1].text
        assert answers[1].headers["idempotent-replayed"] == "true"


async def test_an_upload_named_as_another_type_is_saved_under_its_own(api: Client, world: World) -> None:
    response = await upload(
        api, world.editor, world.project, b"<script>alert(1)</script>", filename="report.html"
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "report.html.txt"
    download = await api.get(files_url(world.project, response.json()["id"]), headers=world.editor.headers)
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"report.html.txt\"; filename*=UTF-8''report.html.txt"
    )


async def test_empty_file_is_accepted(api: Client, world: World) -> None:
    response = await upload(api, world.editor, world.project, b"")
    assert response.status_code == 201, response.text
    assert response.json()["size_bytes"] == 0
    assert response.json()["sha256"] == hashlib.sha256(b"").hexdigest()


# -- listing ------------------------------------------------------------------------------------


async def test_list_is_keyset_paginated_newest_first(api: Client, world: World) -> None:
    ids = []
    for name in ("one.txt", "two.txt", "three.txt"):
        response = await upload(api, world.editor, world.project, name.encode(), filename=name)
        ids.append(response.json()["id"])
    await upload(api, world.outsider, world.other_project, b"elsewhere")

    first = await api.get(files_url(world.project), params={"limit": 2}, headers=world.viewer.headers)
    assert first.status_code == 200
    page = first.json()
    assert [item["id"] for item in page["items"]] == [ids[2], ids[1]]
    assert page["next_cursor"]

    second = await api.get(
        files_url(world.project),
        params={"limit": 2, "cursor": page["next_cursor"]},
        headers=world.viewer.headers,
    )
    page = second.json()
    assert [item["filename"] for item in page["items"]] == ["one.txt"]
    assert page["next_cursor"] is None


async def test_list_caps_limit_and_rejects_foreign_cursors(api: Client, world: World) -> None:
    assert_problem(
        await api.get(files_url(world.project), params={"limit": 101}, headers=world.viewer.headers), 400
    )
    assert_problem(
        await api.get(
            files_url(world.project), params={"cursor": "not-a-cursor"}, headers=world.viewer.headers
        ),
        400,
        "invalid-cursor",
    )


# -- permissions --------------------------------------------------------------------------------


async def test_viewer_lists_and_downloads_but_cannot_upload_or_delete(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    file_id = (await upload(api, world.editor, world.project, b"shared")).json()["id"]

    assert (await api.get(files_url(world.project), headers=world.viewer.headers)).status_code == 200
    download = await api.get(files_url(world.project, file_id), headers=world.viewer.headers)
    assert download.status_code == 200 and download.content == b"shared"
    assert_problem(await upload(api, world.viewer, world.project, b"nope"), 403, "forbidden")
    assert_problem(await api.delete(files_url(world.project, file_id), headers=world.viewer.headers), 403)

    assert await file_rows(db) == 1
    assert len(stored(files_root)) == 1


async def test_non_member_gets_404_for_everything(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    file_id = (await upload(api, world.editor, world.project, b"secret")).json()["id"]
    auth = world.outsider.headers

    assert_problem(await api.get(files_url(world.project), headers=auth), 404, "not-found")
    assert_problem(await upload(api, world.outsider, world.project, b"intrude"), 404)
    assert_problem(await api.get(files_url(world.project, file_id), headers=auth), 404)
    assert_problem(await api.delete(files_url(world.project, file_id), headers=auth), 404)
    assert_problem(await api.get(files_url(999_999), headers=auth), 404)

    assert await file_rows(db) == 1
    assert len(stored(files_root)) == 1


async def test_file_of_another_project_is_not_found(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    # The editor is a member of both projects, but a file is only reachable through its own project.
    other_file = (await upload(api, world.outsider, world.other_project, b"B's file")).json()["id"]

    assert_problem(await api.get(files_url(world.project, other_file), headers=world.editor.headers), 404)
    assert_problem(await api.delete(files_url(world.project, other_file), headers=world.editor.headers), 404)
    ok = await api.get(files_url(world.other_project, other_file), headers=world.editor.headers)
    assert ok.status_code == 200 and ok.content == b"B's file"
    assert await file_rows(db) == 1


async def test_anonymous_gets_401(api: Client, world: World) -> None:
    file_id = (await upload(api, world.editor, world.project, b"data")).json()["id"]
    assert_problem(await api.get(files_url(world.project)), 401, "unauthorized")
    assert_problem(await upload(api, None, world.project, b"anon"), 401)
    assert_problem(await api.get(files_url(world.project, file_id)), 401)
    assert_problem(await api.delete(files_url(world.project, file_id)), 401)


# -- rejected uploads leave nothing -------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(MAX_BYTES + 1, id="file-over-limit"),
        pytest.param(MAX_BYTES + MULTIPART_OVERHEAD + 1, id="content-length-over-limit"),
    ],
)
async def test_too_large_is_413_and_leaves_nothing(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path, size: int
) -> None:
    response = await upload(api, world.editor, world.project, b"\0" * size)
    assert_problem(response, 413, "payload-too-large")
    assert await file_rows(db) == 0
    assert stored(files_root) == []
    assert await file_events(db) == []


async def test_file_of_exactly_the_limit_is_accepted(api: Client, world: World) -> None:
    response = await upload(api, world.editor, world.project, b"\1" * MAX_BYTES)
    assert response.status_code == 201, response.text
    assert response.json()["size_bytes"] == MAX_BYTES


async def test_disallowed_type_is_415_and_leaves_nothing(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    response = await upload(
        api,
        world.editor,
        world.project,
        b"MZ...",
        filename="setup.exe",
        content_type="application/x-msdownload",
    )
    body = assert_problem(response, 415, "unsupported-media-type")
    assert "application/x-msdownload" in body["detail"]
    assert await file_rows(db) == 0
    assert stored(files_root) == []


async def test_a_body_that_is_not_multipart_is_415(api: Client, world: World) -> None:
    response = await api.post(files_url(world.project), json={"file": "x"}, headers=world.editor.headers)
    assert_problem(response, 415)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b"this is not multipart at all", "multipart/form-data; boundary=b0undary", id="garbage"),
        pytest.param(
            multipart_body(("file", "a.txt", b"cut short"))[: -len("\r\n--b0undary--\r\n")],
            "multipart/form-data; boundary=b0undary",
            id="truncated",
        ),
        pytest.param(multipart_body(("file", "a.txt", b"x")), "multipart/form-data", id="no-boundary"),
        pytest.param(
            multipart_body(("note", None, b"hello")),
            "multipart/form-data; boundary=b0undary",
            id="no-file-part",
        ),
        pytest.param(
            multipart_body(("attachment", "a.txt", b"x")),
            "multipart/form-data; boundary=b0undary",
            id="file-part-misnamed",
        ),
        pytest.param(
            multipart_body(("file", None, b"x")),
            "multipart/form-data; boundary=b0undary",
            id="file-without-filename",
        ),
        pytest.param(
            multipart_body(("file", "a.txt", b"x"), ("file", "b.txt", b"y")),
            "multipart/form-data; boundary=b0undary",
            id="two-files",
        ),
        pytest.param(
            multipart_body(("file", "a.txt", b"x"), ("note", None, b"y")),
            "multipart/form-data; boundary=b0undary",
            id="extra-field",
        ),
        pytest.param(b"", "multipart/form-data; boundary=b0undary", id="empty"),
        pytest.param(
            multipart_body(("file", "a.txt", b"x")).replace(b'filename="a.txt"', b'filename="a\xff.txt"'),
            "multipart/form-data; boundary=b0undary",
            id="header-not-utf-8",
        ),
    ],
)
async def test_malformed_multipart_is_400_and_leaves_nothing(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path, body: bytes, content_type: str
) -> None:
    response = await api.post(
        files_url(world.project), content=body, headers={**world.editor.headers, "content-type": content_type}
    )
    problem = assert_problem(response, 400, "invalid-upload")
    assert "Error(" not in problem["detail"] and "\\x" not in problem["detail"], problem  # no Python repr
    assert await file_rows(db) == 0
    assert stored(files_root) == []


# -- atomicity ----------------------------------------------------------------------------------


@pytest.fixture
async def failing_insert(db: AsyncConnection[Any], request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A real PostgreSQL failure on ``project_files``: at the INSERT, or (deferred) at COMMIT —
    the latter after the row, the event and the rename into place have all happened."""
    timing = "deferrable initially deferred" if request.param == "at-commit" else "not deferrable"
    await db.execute(
        "create or replace function files_test_fail() returns trigger language plpgsql as "
        "$$ begin raise exception 'forced failure for a test'; end $$"
    )
    await db.execute(
        f"create constraint trigger files_test_fail after insert on project_files {timing} "
        "for each row execute function files_test_fail()"
    )
    try:
        yield
    finally:
        await db.execute("drop trigger files_test_fail on project_files")
        await db.execute("drop function files_test_fail()")


@pytest.mark.parametrize("failing_insert", ["at-insert", "at-commit"], indirect=True)
async def test_database_failure_leaves_neither_file_nor_row(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path, failing_insert: None
) -> None:
    response = await upload(api, world.editor, world.project, b"doomed" * 1000)
    assert_problem(response, 500)
    assert "forced failure" not in response.text
    assert await file_rows(db) == 0
    assert await file_events(db) == []
    assert stored(files_root) == []


ACK_LOCK = 74_110_001
"""Advisory lock the test holds so that the server works on the upload's COMMIT until released."""


@pytest.fixture
async def commit_waits_for_the_test(db: AsyncConnection[Any]) -> AsyncIterator[None]:
    """COMMIT of a ``project_files`` row runs a deferred trigger that waits for ``ACK_LOCK``."""
    await db.execute(
        "create or replace function files_test_wait() returns trigger language plpgsql as "
        f"$$ begin perform pg_advisory_xact_lock_shared({ACK_LOCK}); return null; end $$"
    )
    await db.execute(
        "create constraint trigger files_test_wait after insert on project_files "
        "deferrable initially deferred for each row execute function files_test_wait()"
    )
    try:
        yield
    finally:
        await db.execute("drop trigger files_test_wait on project_files")
        await db.execute("drop function files_test_wait()")


class RecordingDatabase:
    """A service's ``Database`` that notes each transaction's connection (to sever one)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.connections: list[AsyncConnection[Any]] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        async with self.db.transaction() as uow:
            self.connections.append(uow.conn)
            yield uow


@contextlib.contextmanager
def answer_lost_at_commit(database_url: str, recording: RecordingDatabase) -> Iterator[None]:
    """While the block runs, the first COMMIT that waits for ``ACK_LOCK`` has its connection severed
    (the server has the COMMIT; its answer can no longer arrive), then is let finish.

    The in-process client holds the event loop while the app runs, so a thread watches and severs;
    it releases the lock whatever happens, so a failure here ends the request instead of hanging it.
    """
    with (
        psycopg.connect(database_url, autocommit=True) as locker,
        psycopg.connect(database_url, autocommit=True) as probe,
    ):
        locker.execute("select pg_advisory_lock(%s)", (ACK_LOCK,))

        def sever_once_the_commit_waits() -> None:
            waiting = "select pid from pg_stat_activity where %s = any(pg_blocking_pids(pid))"
            deadline = time.monotonic() + 20
            try:
                while not (rows := probe.execute(waiting, (locker.info.backend_pid,)).fetchall()):
                    assert time.monotonic() < deadline, "no COMMIT waited for the test"
                    time.sleep(0.05)
                [(pid,)] = rows
                sever(next(conn for conn in recording.connections if conn.info.backend_pid == pid))
            finally:
                locker.execute("select pg_advisory_unlock(%s)", (ACK_LOCK,))

        with ThreadPoolExecutor(max_workers=1) as pool:
            severed = pool.submit(sever_once_the_commit_waits)
            yield
            severed.result()


async def test_a_commit_whose_answer_is_lost_keeps_the_file(
    api: Client,
    db: AsyncConnection[Any],
    database_url: str,
    world: World,
    files_root: Path,
    commit_waits_for_the_test: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once COMMIT is sent, a lost answer leaves the outcome unknown: the file was discarded, and
    when the row had committed it was listed, counted against the quotas and answered 404 for ever
    (the sweep only removes files without rows). The client gets a 503 and the file stays."""
    app: Litestar = api.app  # type: ignore[assignment]
    service = app.state.services[FileService]
    recording = RecordingDatabase(service.db)
    monkeypatch.setattr(service, "db", recording)

    with answer_lost_at_commit(database_url, recording):
        response = await upload(api, world.editor, world.project, b"committed\n")

    assert_problem(response, 503, "service-unavailable")
    row = await committed_file(db)
    assert stored(files_root) == [row["storage_key"]]
    download = await api.get(files_url(world.project, row["id"]), headers=world.editor.headers)
    assert download.status_code == 200 and download.content == b"committed\n"


async def committed_file(db: AsyncConnection[Any]) -> dict[str, Any]:
    """The one file row, once the server has finished the COMMIT whose answer was lost."""
    deadline = time.monotonic() + 20
    while not (rows := await (await db.execute("select id, storage_key from project_files")).fetchall()):
        assert time.monotonic() < deadline, "the COMMIT never finished"
        await asyncio.sleep(0.05)
    [(file_id, storage_key)] = rows
    return {"id": file_id, "storage_key": storage_key}


# -- delete -------------------------------------------------------------------------------------


async def test_delete_removes_row_and_file_and_emits(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    kept = (await upload(api, world.editor, world.project, b"keep me", filename="keep.txt")).json()
    gone = (await upload(api, world.editor, world.project, b"delete me", filename="gone.txt")).json()
    assert len(stored(files_root)) == 2

    response = await api.delete(files_url(world.project, gone["id"]), headers=world.editor.headers)
    assert response.status_code == 204

    assert await file_rows(db) == 1
    on_disk = stored(files_root)
    assert len(on_disk) == 1 and (files_root / on_disk[0]).read_bytes() == b"keep me"
    assert_problem(await api.get(files_url(world.project, gone["id"]), headers=world.editor.headers), 404)
    assert_problem(await api.delete(files_url(world.project, gone["id"]), headers=world.editor.headers), 404)
    assert (
        await api.get(files_url(world.project, kept["id"]), headers=world.viewer.headers)
    ).status_code == 200

    events = await file_events(db)
    assert [event["verb"] for event in events] == ["file.uploaded", "file.uploaded", "file.deleted"]
    deleted = events[-1]
    assert deleted["actor_id"] == world.editor.id
    assert (deleted["object_type"], deleted["object_id"]) == ("file", gone["id"])
    assert deleted["project_id"] == world.project
    assert deleted["data"] == {"filename": "gone.txt", "size_bytes": 9}


async def test_delete_of_a_row_whose_file_vanished_still_succeeds(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    file_id = (await upload(api, world.editor, world.project, b"x")).json()["id"]
    wipe(files_root)
    assert (
        await api.delete(files_url(world.project, file_id), headers=world.editor.headers)
    ).status_code == 204
    assert await file_rows(db) == 0


async def test_download_of_a_file_missing_on_disk_is_404_not_500(
    api: Client, world: World, files_root: Path
) -> None:
    file_id = (await upload(api, world.editor, world.project, b"x")).json()["id"]
    [relative] = stored(files_root)
    (files_root / relative).unlink()
    assert_problem(
        await api.get(files_url(world.project, file_id), headers=world.editor.headers), 404, "not-found"
    )


async def test_a_delete_landing_between_the_row_read_and_the_open_is_a_plain_404(
    api: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download reads the row, then opens the content: a delete committed in between unlinks it.
    That is a file deleted, not one lost from the disk: a plain 404 and no error logged."""
    file_id = (await upload(api, world.editor, world.project, b"x")).json()["id"]
    app: Litestar = api.app  # type: ignore[assignment]
    files = app.state.services[FileService]
    storage = files.storage
    open_content = storage.open

    async def open_after_a_delete(storage_key: str) -> Any:
        await files.delete(world.editor.id, world.project, file_id)
        return await open_content(storage_key)

    monkeypatch.setattr(storage, "open", open_after_a_delete)
    with captured_logs() as logs:
        answer = await api.get(files_url(world.project, file_id), headers=world.viewer.headers)
    assert_problem(answer, 404, "not-found")
    assert answer.json()["detail"] == "No such file."
    assert not logs.events("file_missing_on_disk")


async def test_a_delete_landing_after_the_headers_of_a_download_does_not_cut_its_body(
    api: Client, world: World, files_root: Path
) -> None:
    """The download used to open the file only when sending its body, after the 200 went out: a
    delete committed in between cut the answer (an error after the headers). The content it
    started to serve is served whole, from the handle opened before the answer began."""
    content = os.urandom(3 * MIB)
    file_id = (await upload(api, world.editor, world.project, content, filename="big.bin")).json()["id"]
    app: Litestar = api.app  # type: ignore[assignment]
    files = app.state.services[FileService]
    path = files_url(world.project, file_id)
    scope = http_scope("GET", path, world.editor.token)
    status = 0
    body = bytearray()
    requested = False
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        """The request, then, as a server does, a disconnect once the answer has ended."""
        nonlocal requested
        if requested:
            await answered.wait()
            return {"type": "http.disconnect"}
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            await files.delete(world.editor.id, world.project, file_id)
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    api.blocking_portal.call(api.app, scope, receive, send)

    assert status == 200
    assert stored(files_root) == [], "the delete did unlink the file"
    assert len(body) == len(content) and bytes(body) == content
    assert_problem(await api.get(path, headers=world.editor.headers), 404)


async def test_deleting_a_project_leaves_none_of_its_files_on_disk(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """Review M4 (probe P5): deleting a project cascades to its file rows, and its directory is
    removed from disk once the deletion has committed; other projects' files stay."""
    await upload(api, world.editor, world.project, b"project file", filename="a.txt")
    kept = (await upload(api, world.outsider, world.other_project, b"other project's")).json()
    assert len(stored(files_root)) == 2

    deleted = await api.delete(f"/api/projects/{world.project}", headers=world.owner.headers)
    assert deleted.status_code == 204, deleted.text

    on_disk = stored(files_root)  # removed once the deletion committed
    assert len(on_disk) == 1, on_disk
    app: Litestar = api.app
    purge = partial(purge_deleted_project, {"services": app.state.services}, project_id=world.project)
    assert api.blocking_portal.call(purge) is True  # the rows go with the project's purge
    assert await file_rows(db) == 1
    on_disk = stored(files_root)
    assert len(on_disk) == 1, on_disk
    assert (files_root / on_disk[0]).read_bytes() == b"other project's"
    assert (
        await api.get(files_url(world.other_project, kept["id"]), headers=world.outsider.headers)
    ).status_code == 200


# -- streaming (the ASGI app driven directly, so the body arrives in many messages) --------------


@dataclass
class AsgiResult:
    status: int
    body: bytes
    chunks_read: int
    chunks_read_before_answer: int


async def stream_upload(
    client: Client,
    member: Actor,
    project_id: int,
    content: bytes,
    *,
    chunk_size: int = 64 * 1024,
    disconnect_after: int | None = None,
    declare_length: bool = False,
    declared_length: bytes | None = None,
    part_type: str = "application/zip",
) -> AsgiResult:
    """POST ``content`` as the file part (of content type ``part_type``), delivered in ``chunk_size``
    messages, without Content-Length unless ``declare_length`` (its true value) or ``declared_length``
    (that one).

    With ``disconnect_after``, the client goes away after that many body messages.
    ``chunks_read_before_answer`` counts those read when the answer started (the pipeline may drain
    an unread body after it).
    """
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            f"Content-Type: {part_type}\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
    path = files_url(project_id)
    length = [(b"content-length", str(len(body)).encode())] if declare_length else []
    if declared_length is not None:
        length = [(b"content-length", declared_length)]
    scope = http_scope(
        "POST",
        path,
        member.token,
        (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        *length,
    )
    read = 0
    read_before_answer = 0
    status = 0
    response = bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read == disconnect_after or read >= len(chunks):
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, read_before_answer
        if message["type"] == "http.response.start":
            status = message["status"]
            read_before_answer = read
        elif message["type"] == "http.response.body":
            response.extend(message.get("body", b""))

    # The app (and its pools) live on the test client's portal loop, as for the client's own requests.
    client.blocking_portal.call(client.app, scope, receive, send)
    return AsgiResult(status, bytes(response), read, read_before_answer)


@pytest.mark.parametrize("declared", [b"-5", b"+5", b"1_0", b" 5", b"\xd9\xa5"])
async def test_a_content_length_that_is_not_digits_is_a_400_and_reserves_nothing(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path, declared: bytes
) -> None:
    """RFC 9110's Content-Length is ``1*DIGIT``; Python's ``int()`` also took ``-5``, ``+5``, ``1_0`` and
    `` 5``, and the upload went on, sizing its quota reservation by that number (``-5``: a negative
    size). Refused before anything is reserved, the uploader's next upload is not held up."""
    refused = await stream_upload(api, world.editor, world.project, b"data", declared_length=declared)
    assert refused.status == 400, refused.body
    assert b"content-length" in refused.body.lower()

    after = await stream_upload(api, world.editor, world.project, b"data", declare_length=True)
    assert after.status == 201, after.body
    assert await file_rows(db) == 1


async def test_multi_chunk_upload_of_5_mib_streams_to_disk(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    content = bytes(range(256)) * (5 * MIB // 256)
    result = await stream_upload(api, world.editor, world.project, content)

    assert result.status == 201, result.body
    body = msgspec.json.decode(result.body)
    assert body["size_bytes"] == 5 * MIB
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    download = await api.get(files_url(world.project, body["id"]), headers=world.editor.headers)
    assert download.content == content
    assert download.headers["content-type"] == "application/zip"
    assert [path for path in stored(files_root) if path.startswith("tmp")] == []


async def test_too_large_stream_is_refused_without_reading_the_rest(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    result = await stream_upload(api, world.editor, world.project, b"\0" * (3 * MAX_BYTES))

    assert result.status == 413
    assert msgspec.json.decode(result.body)["type"] == "/problems/payload-too-large"
    total_chunks = (3 * MAX_BYTES) // (64 * 1024)
    assert result.chunks_read <= MAX_BYTES // (64 * 1024) + 2 < total_chunks
    assert stored(files_root) == []
    assert await file_rows(db) == 0


@pytest.fixture
def captured_events(api: Client, monkeypatch: pytest.MonkeyPatch) -> list[RawEvent]:
    """What error monitoring buffers from now on (the app's own buffer, spied on)."""
    return monitoring_spy(api.app, monkeypatch)  # type: ignore[arg-type]


def unhandled_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if "unhandled_error" in str(record.msg)]


async def test_client_disconnect_midway_leaves_no_temp_file(
    api: Client,
    db: AsyncConnection[Any],
    world: World,
    files_root: Path,
    captured_events: list[RawEvent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that abandons its upload is no server fault: it was a 500, logged as unhandled and
    captured by error monitoring (an alert); it is a 400 now, and nothing is left behind."""
    with caplog.at_level(logging.ERROR, logger="app.errors"):
        result = await stream_upload(api, world.editor, world.project, b"\1" * (2 * MIB), disconnect_after=5)

    assert unhandled_errors(caplog) == []
    assert captured_events == []
    assert result.status == 400, result.body
    assert msgspec.json.decode(result.body)["type"] == "/problems/client-disconnected"
    assert result.chunks_read == 5
    assert stored(files_root) == []
    assert await file_rows(db) == 0
    assert await file_events(db) == []
    ok = await stream_upload(api, world.editor, world.project, b"\1" * MIB)
    assert ok.status == 201, "the route still works after an aborted upload"


# -- quotas and the sweep (review M4) -------------------------------------------------------------


async def test_an_upload_that_cannot_fit_is_refused_before_its_body_is_read(
    settings: Settings, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """The quota check before the body is read used a size of 0, not the announced length: a body
    that could never fit was streamed, hashed and written before its 409. The announced length less
    the multipart overhead allowance is the least the file can be: beyond the room left, the
    upload is refused before its first byte is read; a file that fits exactly is still accepted."""
    async for api in generous_client(
        settings, files_dir=files_root, file_max_bytes=MAX_BYTES, file_project_max_bytes=MIB + 1024
    ):
        assert (await upload(api, world.editor, world.project, b"x" * MIB)).status_code == 201
        refused = await stream_upload(
            api, world.editor, world.project, b"\1" * (5 * MIB), declare_length=True
        )
        assert refused.status == 409, refused.body
        assert msgspec.json.decode(refused.body)["type"] == "/problems/quota-exceeded"
        assert refused.chunks_read_before_answer == 0
        assert len(stored(files_root)) == await file_rows(db) == 1
        fits = await stream_upload(api, world.editor, world.project, b"\1" * 1024, declare_length=True)
        assert fits.status == 201, fits.body
        assert len(stored(files_root)) == await file_rows(db) == 2


async def test_project_and_uploader_quotas_refuse_uploads_past_them(
    settings: Settings, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """Per project and per uploader, files and bytes are capped; a refused upload leaves nothing on
    disk, and deleting a file makes room again."""
    quotas = {
        "file_project_max_count": 3,
        "file_project_max_bytes": 100,
        "file_user_max_count": 4,
        "file_user_max_bytes": 1000,
    }
    async for api in generous_client(settings, files_dir=files_root, file_max_bytes=MAX_BYTES, **quotas):
        for _ in range(2):
            assert (await upload(api, world.editor, world.project, b"x" * 40)).status_code == 201
        too_big = await upload(api, world.editor, world.project, b"x" * 21)  # 101 bytes in the project
        assert_problem(too_big, 409, "quota-exceeded")
        assert "project" in too_big.json()["detail"]
        third = await upload(api, world.editor, world.project, b"x" * 20)
        assert third.status_code == 201, third.text
        assert_problem(await upload(api, world.owner, world.project, b"y"), 409, "quota-exceeded")
        # the uploader's own quota spans projects: 3 files here, room for one more anywhere
        assert (await upload(api, world.editor, world.other_project, b"z")).status_code == 201
        refused = await upload(api, world.editor, world.other_project, b"z")
        assert_problem(refused, 409, "quota-exceeded")
        assert "uploader" in refused.json()["detail"]
        assert (await upload(api, world.outsider, world.other_project, b"o")).status_code == 201
        assert await file_rows(db) == len(stored(files_root)) == 5, stored(files_root)
        deleted = await api.delete(files_url(world.project, third.json()["id"]), headers=world.editor.headers)
        assert deleted.status_code == 204
        assert (await upload(api, world.editor, world.other_project, b"z")).status_code == 201


async def test_the_sweep_removes_only_what_no_row_refers_to(
    api: Client, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """The hourly sweep removes directories of deleted projects, old files without a row and stale
    temp files; it keeps every file with a row and anything young enough to be an upload in flight."""
    kept = (await upload(api, world.editor, world.project, b"kept")).json()
    hours_ago = time.time() - 3 * 3600
    days_ago = time.time() - 2 * 86400
    project_dir = files_root / str(world.project)
    orphan, young = project_dir / uuid.uuid4().hex, project_dir / uuid.uuid4().hex
    gone_project = files_root / "987654321"
    gone_project.mkdir()
    left_behind = gone_project / uuid.uuid4().hex
    stale_temp, fresh_temp = files_root / "tmp" / "a.part", files_root / "tmp" / "b.part"
    stale_temp.parent.mkdir(exist_ok=True)
    for path in (orphan, young, left_behind, stale_temp, fresh_temp):
        path.write_bytes(b"leftover")
    for path in (orphan, left_behind, *project_dir.iterdir()):
        if path != young:
            os.utime(path, (hours_ago, hours_ago))
    os.utime(stale_temp, (days_ago, days_ago))
    app: Litestar = api.app  # type: ignore[assignment]
    removed = api.blocking_portal.call(app.state.services[FileService].sweep)
    assert removed == {"projects": 1, "files": 1, "temp": 1}
    assert not gone_project.exists() and not orphan.exists() and not stale_temp.exists()
    assert young.exists() and fresh_temp.exists()
    download = await api.get(files_url(world.project, kept["id"]), headers=world.editor.headers)
    assert download.content == b"kept"


async def test_concurrent_uploads_cannot_overshoot_a_quota(
    settings: Settings, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """The quota is checked under the uploader's and the project's locks in the recording
    transaction: eight uploads at once into a project with room for three store exactly three."""
    async with serve_in_loop(
        settings,
        files_dir=files_root,
        file_max_bytes=MAX_BYTES,
        file_project_max_count=3,
        file_uploads_per_user=8,  # all eight in flight at once: the quota refuses, not the cap
        **GENEROUS_AUTH,
    ) as served:
        responses = await asyncio.gather(
            *(
                served.client.post(
                    files_url(world.project),
                    files={"file": (f"f{n}.txt", b"x" * 1000, "text/plain")},
                    headers=world.editor.headers,
                )
                for n in range(8)
            )
        )
    assert sorted(r.status_code for r in responses) == [201] * 3 + [409] * 5, [r.text for r in responses]
    assert await file_rows(db) == len(stored(files_root)) == 3


# -- uploads in flight (review: staging past every quota) ---------------------------------------


@dataclass
class HeldUpload:
    """An upload sent from the test's loop whose last body chunk waits for ``release``."""

    status: int = 0
    body: bytes = b""
    chunks_read_before_answer: int = -1
    holding: bool = False  # every chunk but the last has been read (also drained after an answer)

    @property
    def in_flight(self) -> bool:
        return self.holding and self.status == 0

    @property
    def settled(self) -> bool:
        return self.holding or self.status != 0


async def held_upload(
    app: Litestar,
    member: Actor,
    project_id: int,
    content: bytes,
    release: asyncio.Event,
    *,
    into: HeldUpload | None = None,
    declare_length: bool = True,
    chunk_size: int = 256 * 1024,
) -> HeldUpload:
    """POST ``content`` into ``app`` (served in this loop) in ``chunk_size`` messages, the last one
    only once ``release`` is set: a slow client whose upload stays in flight meanwhile. Its progress
    is kept in ``into`` (returned)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
    length = [(b"content-length", str(len(body)).encode())] if declare_length else []
    scope = http_scope(
        "POST",
        files_url(project_id),
        member.token,
        (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        *length,
    )
    result = into if into is not None else HeldUpload()
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read == len(chunks) - 1:
            result.holding = True
            await release.wait()
        if read >= len(chunks):
            await asyncio.Event().wait()  # nothing more to send: wait to be cancelled
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.chunks_read_before_answer = read
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")

    await app(scope, receive, send)  # type: ignore[arg-type]
    return result


async def settle(uploads: list[HeldUpload]) -> None:
    """Wait (generously) until every upload is answered or holding back its last chunk."""
    for _ in range(1200):
        if all(upload.settled for upload in uploads):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the uploads did not settle")


def temp_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in (root / "tmp").glob("*") if path.is_file())


async def test_uploads_in_flight_count_against_the_quota_before_their_body_is_read(
    settings: Settings, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """Only committed rows were counted: eight 5 MiB uploads at once into a 6 MiB quota each
    streamed, fsynced and staged their whole body (40 MiB in tmp/) before seven got 409. Each upload
    now reserves its announced size first: while the first is in flight the other seven are refused
    before a byte of theirs is read, and no more than the quota and one file is ever staged."""
    quota = 6 * MIB
    content = b"x" * (5 * MIB)
    async with serve_in_loop(
        settings,
        files_dir=files_root,
        file_max_bytes=MAX_BYTES,
        file_project_max_bytes=quota,
        file_user_max_bytes=quota,
        file_uploads_per_user=20,  # the quota, not the cap on uploads in flight, is what refuses here
        **GENEROUS_AUTH,
    ) as served:
        release = asyncio.Event()
        results = [HeldUpload() for _ in range(8)]
        tasks = [
            asyncio.create_task(
                held_upload(served.app, world.editor, world.project, content, release, into=result)
            )
            for result in results
        ]
        try:
            await settle(results)
            staged = temp_bytes(files_root)
            assert staged <= quota + MAX_BYTES, f"{staged / MIB:.1f} MiB staged in tmp/"
            assert sum(result.in_flight for result in results) == 1, "one in flight, the others refused"
        finally:
            release.set()
            await asyncio.gather(*tasks)
    statuses = sorted(result.status for result in results)
    assert statuses == [201] + [409] * 7, [result.body for result in results]
    for result in results:
        if result.status == 409:
            assert msgspec.json.decode(result.body)["type"] == "/problems/quota-exceeded"
            assert result.chunks_read_before_answer == 0
    assert await file_rows(db) == len(stored(files_root)) == 1


async def test_an_account_has_at_most_file_uploads_per_user_in_flight(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, world: World, files_root: Path
) -> None:
    """Beyond FILE_UPLOADS_PER_USER uploads in flight, the next is a 429 ``too-many-uploads`` before
    its body is read; another account is not held back, and the room is given back as they end."""
    async with serve_in_loop(
        settings, files_dir=files_root, file_max_bytes=MAX_BYTES, file_uploads_per_user=2, **GENEROUS_AUTH
    ) as served:
        release = asyncio.Event()
        in_flight = [HeldUpload() for _ in range(2)]
        held = [
            asyncio.create_task(
                held_upload(
                    served.app,
                    world.editor,
                    world.project,
                    b"y" * MIB,
                    release,
                    into=result,
                    declare_length=n == 0,  # unannounced: reserves FILE_MAX_BYTES
                )
            )
            for n, result in enumerate(in_flight)
        ]
        try:
            await settle(in_flight)
            assert all(result.in_flight for result in in_flight), [r.body for r in in_flight]
            third = HeldUpload()
            held.append(
                asyncio.create_task(
                    held_upload(
                        served.app, world.editor, world.other_project, b"z" * MIB, release, into=third
                    )
                )
            )
            await settle([third])
            assert third.status == 429, f"in flight: {third.in_flight}"
            assert msgspec.json.decode(third.body)["type"] == "/problems/too-many-uploads"
            assert third.chunks_read_before_answer == 0
            other = await served.client.post(
                files_url(world.other_project),
                files={"file": ("o.txt", b"other account", "text/plain")},
                headers=world.outsider.headers,
            )
            assert other.status_code == 201, other.text
        finally:
            release.set()
            await asyncio.gather(*held)
        assert [result.status for result in in_flight] == [201, 201], [r.body for r in in_flight]
        again = await served.client.post(
            files_url(world.project),
            files={"file": ("again.txt", b"again", "text/plain")},
            headers=world.editor.headers,
        )
        assert again.status_code == 201, again.text
    assert [key async for key in valkey.scan_iter("files:uploading:*")] == [], "reservations released"


async def test_a_reservation_left_by_a_crashed_upload_lapses(
    settings: Settings, valkey: Valkey, world: World, files_root: Path
) -> None:
    """A process killed with an upload in flight never releases its reservation: it lapses with its
    lease (three seconds here: the first upload must find it held, on a loaded machine too), and then
    no longer counts."""
    from app.domains.files.reservations import UploadReservations

    async with serve_in_loop(
        settings,
        files_dir=files_root,
        file_max_bytes=MAX_BYTES,
        file_user_max_bytes=2 * MIB,
        file_upload_lease_s=1,
        **GENEROUS_AUTH,
    ) as served:
        files = served.app.state.services[FileService]
        crashed = UploadReservations(valkey, per_user=2, lease_s=3)
        await crashed.prepare(world.editor.id, world.project, 2 * MIB).hold()  # and never released

        async def post() -> httpx.Response:
            return await served.client.post(
                files_url(world.project),
                files={"file": ("a.txt", b"a" * 1000, "text/plain")},
                headers=world.editor.headers,
            )

        assert_problem(await post(), 409, "quota-exceeded")
        for _ in range(600):
            if (await files.uploads.in_flight(world.editor.id, world.project)).uploader_files == 0:
                break
            await asyncio.sleep(0.05)
        assert (await post()).status_code == 201


async def test_an_upload_whose_reservation_lapsed_midway_is_refused(
    settings: Settings, db: AsyncConnection[Any], world: World, files_root: Path
) -> None:
    """A client that sends nothing for a whole lease has its room given back and its upload ended:
    a 408 ``upload-stalled`` (without waiting for the body to resume) that leaves nothing behind."""
    async with serve_in_loop(
        settings, files_dir=files_root, file_max_bytes=MAX_BYTES, file_upload_lease_s=1, **GENEROUS_AUTH
    ) as served:
        files = served.app.state.services[FileService]
        release = asyncio.Event()
        stalled = HeldUpload()
        task = asyncio.create_task(
            held_upload(
                served.app,
                world.editor,
                world.project,
                b"s" * MIB,
                release,
                into=stalled,
                chunk_size=MIB // 2,
            )
        )
        await settle([stalled])
        assert stalled.in_flight
        for _ in range(600):  # the client sends nothing more until the lease has lapsed
            if (await files.uploads.in_flight(world.editor.id, world.project)).uploader_files == 0:
                break
            await asyncio.sleep(0.05)
        release.set()
        result = await task
    assert result.status == 408, result.body
    assert msgspec.json.decode(result.body)["type"] == "/problems/upload-stalled"
    assert stored(files_root) == []
    assert await file_rows(db) == 0


# -- downloads are not compressed (review: brotli/gzip in the event loop) ------------------------


async def test_downloads_are_sent_uncompressed_while_json_answers_still_are(
    api: Client, world: World
) -> None:
    """A download was brotli/gzip-encoded chunk by chunk in the event loop (0.9 s of CPU for 25 MiB
    of CSV, stalling every other request): file downloads are excluded from compression, by route;
    the JSON API still compresses."""
    content = b"date,amount,comment\n" + b"2026-12-01,12.50,quite compressible\n" * 20_000
    for n in range(8):
        uploaded = await upload(
            api, world.editor, world.project, content, filename=f"ledger-{n}.csv", content_type="text/csv"
        )
        assert uploaded.status_code == 201, uploaded.text
    url = files_url(world.project, uploaded.json()["id"])
    for encoding in ("gzip", "br", "gzip, deflate, br"):
        download = await api.get(url, headers={**world.editor.headers, "Accept-Encoding": encoding})
        assert download.status_code == 200
        assert "content-encoding" not in download.headers, (encoding, download.headers)
        assert download.content == content
    listing = await api.get(
        files_url(world.project), headers={**world.editor.headers, "Accept-Encoding": "gzip"}
    )
    assert listing.status_code == 200
    assert listing.headers.get("content-encoding") == "gzip"
    assert len(listing.json()["items"]) == 8


async def test_uploads_go_on_while_valkey_is_down(
    settings: Settings,
    db: AsyncConnection[Any],
    world: World,
    files_root: Path,
    controlled_valkey: ControlledValkey,
) -> None:
    """Reservations live in Valkey; without it an upload is not refused (as the rate limits fail
    open): the recording transaction's exact check still holds the quotas."""
    async with serve_in_loop(
        settings, files_dir=files_root, valkey_url=controlled_valkey.url, **GENEROUS_AUTH
    ) as served:
        controlled_valkey.stop()
        try:
            response = await upload(served.client, world.editor, world.project, b"kept without Valkey")
        finally:
            controlled_valkey.start()
    assert response.status_code == 201, response.text
    assert await file_rows(db) == 1


async def test_a_delete_with_if_match_compares_the_files_etag(api: Client, world: World) -> None:
    """A file answers a strong ``ETag`` (its digest): ``If-Match`` naming it is a true condition. The
    gate's 412 for routes without versions refused even that one (the diff reviewer)."""
    created = (await upload(api, world.editor, world.project, b"to delete")).json()
    url = files_url(world.project, created["id"])
    tag = (await api.get(url, headers=world.editor.headers)).headers["etag"]
    other = '"' + "0" * 64 + '"'
    stale = await api.delete(url, headers=world.editor.headers | {"If-Match": other})
    assert_problem(stale, 412, "precondition-failed")
    assert (await api.get(url, headers=world.editor.headers)).status_code == 200, "nothing was deleted"
    assert (await api.delete(url, headers=world.editor.headers | {"If-Match": tag})).status_code == 204
    assert (await api.get(url, headers=world.editor.headers)).status_code == 404


@contextlib.contextmanager
def files_may_grow_to(max_bytes: int) -> Iterator[None]:
    """This process's writes past ``max_bytes`` of a file fail with ``EFBIG``, as writes to a full
    disk fail with ``ENOSPC`` (a full disk cannot be made here without privileges): both are an
    ``OSError`` from the same write. ``SIGXFSZ`` is ignored meanwhile, or it would end the process."""
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)


async def test_a_storage_without_room_is_a_507_problem_that_stores_nothing(
    api: Client, world: World, db: AsyncConnection[Any], files_root: Path
) -> None:
    """A full disk was a 500 (an unexpected ``OSError``, captured as a bug): it is a 507 naming the
    cause, with an error line for the operator; the upload's staged bytes are removed and its
    reservation released, so the next upload that fits is stored."""
    with files_may_grow_to(MIB), captured_logs() as logs:
        refused = await upload(api, world.editor, world.project, b"x" * (2 * MIB))
    assert_problem(refused, 507, "storage-full")
    assert stored(files_root) == []
    (line,) = logs.events("file_storage_full")
    assert line["level"] == "error" and line["files_dir"] == str(files_root), line
    count = await (await db.execute("select count(*) from project_files")).fetchone()
    assert count == (0,)
    kept = await upload(api, world.editor, world.project, b"fits")
    assert kept.status_code == 201, kept.text


async def test_the_floor_is_checked_on_the_file_system_files_dir_will_be_made_on(tmp_path: Path) -> None:
    """``FILES_DIR`` is made by the first upload: the check looked for room in a directory that did
    not exist yet and failed the upload with a 500 (the contract run found it)."""
    storage = FileStorage(tmp_path / "not" / "yet", min_free_bytes=1)
    await storage.require_room(0)
    with pytest.raises(StorageFullError):
        await FileStorage(tmp_path / "not" / "yet", min_free_bytes=2**62).require_room(0)


async def test_an_upload_that_would_leave_less_than_the_floor_free_is_refused_before_its_body(
    api: Client, world: World, db: AsyncConnection[Any], files_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FILE_MIN_FREE_BYTES``: the quotas bound each account, not how many accounts there are, and
    the disk is often PostgreSQL's too. An upload that would leave the file system under the floor is
    a 507 before a byte is staged, with an error line for the operator; with room again, the next
    upload is stored (nothing of the refused one was reserved for good)."""
    storage = api.app.state.services[FileService].storage
    free = shutil.disk_usage(files_root).free
    monkeypatch.setattr(storage, "min_free_bytes", free + 2**40)
    with captured_logs() as logs:
        refused = await upload(api, world.editor, world.project, b"small")
    assert_problem(refused, 507, "storage-full")
    assert stored(files_root) == []
    (line,) = logs.events("file_storage_low")
    assert line["level"] == "error" and line["min_free_bytes"] == free + 2**40, line
    assert await file_rows(db) == 0
    monkeypatch.setattr(storage, "min_free_bytes", 1)
    kept = await upload(api, world.editor, world.project, b"fits")
    assert kept.status_code == 201, kept.text
