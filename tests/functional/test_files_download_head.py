"""``HEAD`` of a download answers what its ``GET`` answers, without the body (RFC 9110 9.3.2): the same
status and header fields (``Content-Length`` of the body the GET would send, the validators, the
range's ``Content-Range``, the download's security headers), after the same access checks, and the
file is neither read nor left open.

Runs on ``test_files_http``'s app and fixtures (its own storage directory, wiped before each test).
"""

from __future__ import annotations

import asyncio
import os
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import Client, http_scope
from tests.functional.test_files_download_ranges import CONTENT, SIZE, etag_of, uploaded
from tests.functional.test_files_http import World, api, files_root, files_url, module_client, stored, world

__all__ = ["api", "files_root", "module_client", "world"]  # the fixtures of test_files_http

PER_REQUEST = frozenset({"x-request-id", "ratelimit", "ratelimit-policy"})
"""Headers that name the request, not the answer (its id, the limiter's remaining quota)."""

OUTSIDER, OTHER_PROJECT, ANONYMOUS = "outsider", "other project", "anonymous"


def answer_headers(response: httpx.Response) -> list[tuple[str, str]]:
    """Every header line of an answer, in order, repeated ones included, but the request's own."""
    return [(name, value) for name, value in response.headers.multi_items() if name not in PER_REQUEST]


async def get_and_head(
    api: Client, path: str, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    return await api.get(path, headers=headers), await api.head(path, headers=headers)


@pytest.mark.parametrize(
    ("request_headers", "status"),
    [
        ({}, 200),
        ({"Range": "bytes=10-19"}, 206),
        ({"Range": "bytes=-24"}, 206),
        ({"Range": "bytes=0-9", "If-Range": '"another version"'}, 200),
        ({"Range": "bytes=0-9", "If-Range": "{etag}"}, 206),
        ({"Range": "bytes=0-1,5-6"}, 200),  # several ranges: ignored
        ({"If-None-Match": "{etag}"}, 304),
        ({"If-None-Match": "{etag}", "Range": "bytes=0-9"}, 304),
        ({"If-Modified-Since": "{last_modified}"}, 304),
        ({"Range": f"bytes={SIZE}-"}, 416),
        ({"Range": "bytes=-0"}, 416),
    ],
)
async def test_head_answers_the_gets_status_and_headers_without_a_body(
    api: Client, world: World, request_headers: dict[str, str], status: int
) -> None:
    path = await uploaded(api, world)
    last_modified = (await api.get(path, headers=world.viewer.headers)).headers["last-modified"]
    headers = {
        **world.viewer.headers,
        **{
            name: value.format(etag=etag_of(CONTENT), last_modified=last_modified)
            for name, value in request_headers.items()
        },
    }
    got, headed = await get_and_head(api, path, headers)
    assert got.status_code == status, got.text
    assert headed.status_code == status
    assert answer_headers(headed) == answer_headers(got)
    assert headed.content == b""
    if status in (200, 206):  # the headers a GET's bytes are described by, all there
        names = {name for name, _ in answer_headers(headed)}
        expected = {"content-type", "content-length", "etag", "last-modified", "accept-ranges"}
        assert expected | {"content-disposition", "x-content-type-options", "cache-control"} <= names
        assert headed.headers["content-length"] == str(len(got.content))


async def test_head_of_a_text_file_labels_it_with_its_charset(api: Client, world: World) -> None:
    path = await uploaded(api, world, "naïve,café\n".encode())
    got, headed = await get_and_head(api, path, world.viewer.headers)
    assert (got.status_code, headed.status_code) == (200, 200)
    assert headed.headers["content-type"] == got.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer_headers(headed) == answer_headers(got)


@pytest.mark.parametrize("who", [OUTSIDER, OTHER_PROJECT, ANONYMOUS])
@pytest.mark.parametrize(
    "request_headers",
    [
        {},
        {"Range": "bytes=0-9"},
        {"Range": "bytes=99999-"},
        {"If-None-Match": "*"},
        {"If-Modified-Since": "{now}"},
    ],
)
async def test_head_of_a_file_the_caller_may_not_see_is_the_gets_404_or_401(
    api: Client, world: World, who: str, request_headers: dict[str, str]
) -> None:
    path = await uploaded(api, world)
    credentials = {OUTSIDER: world.outsider.headers, OTHER_PROJECT: world.editor.headers, ANONYMOUS: {}}[who]
    if who == OTHER_PROJECT:  # the editor is a member there, but the file is not that project's
        path = files_url(world.other_project, int(path.rsplit("/", 1)[1]))
    now = formatdate(usegmt=True)
    headers = {**credentials, **{name: value.format(now=now) for name, value in request_headers.items()}}
    got, headed = await get_and_head(api, path, headers)
    assert got.status_code == (401 if who == ANONYMOUS else 404), got.text
    assert headed.status_code == got.status_code
    assert answer_headers(headed) == answer_headers(got)
    assert headed.content == b""


# -- on the wire -----------------------------------------------------------------------------------


def descriptors_open_on(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
    return count


def drive(
    api: Client, method: str, path: str, token: str, stored_file: Path, *headers: tuple[bytes, bytes]
) -> tuple[int, dict[bytes, bytes], list[bytes], int]:
    """The app's ASGI messages for one request (the test client drops a HEAD's body before a test could
    see it): the status, the headers, every body message's bytes, and the descriptors open on the
    stored file when the answer started (a body to come reads a handle opened before it)."""
    scope = http_scope(method, path, token, *headers)
    status, open_at_start = 0, -1
    answer: dict[bytes, bytes] = {}
    bodies: list[bytes] = []
    requested = False
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if requested:
            await answered.wait()
            return {"type": "http.disconnect"}
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, open_at_start
        if message["type"] == "http.response.start":
            status = message["status"]
            answer.update(message["headers"])
            open_at_start = descriptors_open_on(stored_file)
        elif message["type"] == "http.response.body":
            bodies.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    api.blocking_portal.call(api.app, scope, receive, send)
    return status, answer, bodies, open_at_start


@pytest.mark.parametrize(
    ("request_headers", "status"),
    [
        ((), 200),
        (((b"range", b"bytes=10-19"),), 206),
        (((b"if-none-match", b"*"),), 304),
    ],
)
async def test_head_sends_no_body_byte_and_holds_no_handle_on_the_file(
    api: Client, world: World, files_root: Path, request_headers: tuple[tuple[bytes, bytes], ...], status: int
) -> None:
    """The app itself sends no byte of the body (a server that forwarded them would break the
    connection's framing), and the file is closed before the answer starts: nothing will read it."""
    path = await uploaded(api, world)
    [relative] = stored(files_root)
    stored_file = (files_root / relative).resolve()
    token = world.viewer.token

    got = drive(api, "GET", path, token, stored_file, *request_headers)
    assert got[0] == status
    if status != 304:  # the control: the GET streams from the handle it opened before its answer
        assert got[3] == 1 and b"".join(got[2]) != b""

    headed_status, headed_headers, bodies, open_at_start = drive(
        api, "HEAD", path, token, stored_file, *request_headers
    )
    assert headed_status == status
    assert b"".join(bodies) == b"" and len(bodies) == 1
    assert open_at_start == 0
    assert descriptors_open_on(stored_file) == 0
    per_request = {name.encode() for name in PER_REQUEST}
    assert {k: v for k, v in headed_headers.items() if k not in per_request} == {
        k: v for k, v in got[1].items() if k not in per_request
    }
