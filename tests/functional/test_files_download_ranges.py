"""Downloads are conditional and resumable (RFC 9110 13, 14): the strong ``ETag`` (the file's SHA-256),
``If-None-Match`` (304), ``If-Modified-Since`` (304, only without ``If-None-Match``), one byte ``Range``
(206, or 416), ``If-Range``, and ranges ignored (200).

Runs on ``test_files_http``'s app and fixtures (its own storage directory, wiped before each test).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar

from app.domains.files.services import FileService
from tests.factories import Actor, Client, assert_problem, http_scope, scaled_examples
from tests.functional.test_files_http import (
    MIB,
    World,
    api,
    files_root,
    files_url,
    module_client,
    stored,
    upload,
    world,
)

__all__ = ["api", "files_root", "module_client", "world"]  # the fixtures of test_files_http

CONTENT = bytes(range(256)) * 4  # 1024 bytes, each position distinguishable from its neighbours
SIZE = len(CONTENT)


async def uploaded(api: Client, world: World, content: bytes = CONTENT, name: str = "data.csv") -> str:
    """The download path of ``content``, uploaded by the editor."""
    response = await upload(api, world.editor, world.project, content, filename=name, content_type="text/csv")
    assert response.status_code == 201, response.text
    return files_url(world.project, response.json()["id"])


async def get(api: Client, member: Actor, path: str, **headers: str) -> httpx.Response:
    return await api.get(path, headers={**member.headers, **headers})


def etag_of(content: bytes) -> str:
    return f'"{hashlib.sha256(content).hexdigest()}"'


def assert_whole(response: httpx.Response, content: bytes = CONTENT) -> None:
    assert response.status_code == 200, response.text
    assert response.content == content
    assert response.headers["content-length"] == str(len(content))
    assert "content-range" not in response.headers
    assert response.headers["etag"] == etag_of(content)
    assert response.headers["accept-ranges"] == "bytes"
    assert "content-encoding" not in response.headers  # the ETag and ranges are of the stored bytes


# -- validators ------------------------------------------------------------------------------------


async def test_every_download_answers_the_files_sha256_as_its_strong_etag(api: Client, world: World) -> None:
    path = await uploaded(api, world)
    response = await get(api, world.viewer, path)
    assert_whole(response)
    assert response.headers["etag"] == f'"{hashlib.sha256(CONTENT).hexdigest()}"'
    assert not response.headers["etag"].startswith("W/")


@pytest.mark.parametrize(
    "if_none_match",
    [
        "{tag}",
        "W/{tag}",  # weak comparison (RFC 9110 13.1.2): a weak tag of the same opaque-tag matches
        '"elsewhere", {tag}',
        '"elsewhere" ,, W/{tag} ,',
        "*",
    ],
)
async def test_if_none_match_naming_the_file_is_304_without_a_body(
    api: Client, world: World, if_none_match: str
) -> None:
    path = await uploaded(api, world)
    tag = etag_of(CONTENT)
    response = await get(api, world.viewer, path, **{"If-None-Match": if_none_match.format(tag=tag)})
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["etag"] == tag
    assert response.headers["cache-control"] == "private, no-store"
    assert "content-length" not in response.headers or response.headers["content-length"] == "0"


@pytest.mark.parametrize(
    "if_none_match",
    [
        '"0000"',
        'W/"0000", "1111"',
        "{unquoted}",  # malformed: ignored, as if absent
        '"{unquoted}',
    ],
)
async def test_if_none_match_naming_another_version_is_the_whole_file(
    api: Client, world: World, if_none_match: str
) -> None:
    path = await uploaded(api, world)
    value = if_none_match.format(unquoted=hashlib.sha256(CONTENT).hexdigest())
    assert_whole(await get(api, world.viewer, path, **{"If-None-Match": value}))


async def test_if_none_match_is_evaluated_before_range(api: Client, world: World) -> None:
    path = await uploaded(api, world)
    response = await get(api, world.viewer, path, **{"If-None-Match": etag_of(CONTENT), "Range": "bytes=0-9"})
    assert response.status_code == 304 and response.content == b""


# -- If-Match and If-Unmodified-Since: 412 --------------------------------------------------------


async def test_if_match_naming_another_file_is_a_412_before_any_range(
    api: Client, world: World, files_root: Path
) -> None:
    """A client resuming a download sends the ``ETag`` it began with (RFC 9110 13.1.1): another file's
    is a 412, not a part of a file it does not hold (both were answered, 200 and 206)."""
    path = await uploaded(api, world)
    other = etag_of(b"another file")
    refused = await get(api, world.viewer, path, **{"If-Match": other, "Range": "bytes=0-9"})
    assert_problem(refused, 412, "precondition-failed")
    assert_problem(await get(api, world.viewer, path, **{"If-Match": f"W/{etag_of(CONTENT)}"}), 412)
    assert_problem(await get(api, world.viewer, path, **{"If-Match": "nonsense"}), 400, "validation")
    part = await get(api, world.viewer, path, **{"If-Match": etag_of(CONTENT), "Range": "bytes=0-9"})
    assert (part.status_code, part.content) == (206, CONTENT[:10])
    assert_whole(await get(api, world.viewer, path, **{"If-Match": "*"}))
    head = await api.head(path, headers={**world.viewer.headers, "If-Match": other})
    assert head.status_code == 412


async def test_if_unmodified_since_before_last_modified_is_a_412_unless_if_match_is_sent(
    api: Client, world: World, files_root: Path
) -> None:
    path = await uploaded(api, world)
    modified = modified_an_hour_ago(files_root)
    before = formatdate(modified - 60, usegmt=True)
    assert_problem(await get(api, world.viewer, path, **{"If-Unmodified-Since": before}), 412)
    assert_whole(
        await get(api, world.viewer, path, **{"If-Unmodified-Since": formatdate(modified, usegmt=True)})
    )
    assert_whole(await get(api, world.viewer, path, **{"If-Unmodified-Since": "not a date"}))
    matched = {"If-Unmodified-Since": before, "If-Match": etag_of(CONTENT)}
    assert_whole(await get(api, world.viewer, path, **matched))  # If-Match decides alone
    kept = await api.delete(path, headers={**world.editor.headers, "If-Unmodified-Since": before})
    assert_problem(kept, 412, "precondition-failed")
    assert stored(files_root) != []
    deleted = await api.delete(
        path, headers={**world.editor.headers, "If-Unmodified-Since": formatdate(modified, usegmt=True)}
    )
    assert deleted.status_code == 204, deleted.text


async def test_a_delete_with_if_none_match_naming_the_file_deletes_nothing(
    api: Client, world: World, files_root: Path
) -> None:
    path = await uploaded(api, world)
    for value in ("*", etag_of(CONTENT), f"W/{etag_of(CONTENT)}"):
        refused = await api.delete(path, headers={**world.editor.headers, "If-None-Match": value})
        assert_problem(refused, 412, "precondition-failed")
    assert stored(files_root) != []
    other = {**world.editor.headers, "If-None-Match": etag_of(b"another file")}
    assert (await api.delete(path, headers=other)).status_code == 204


# -- If-Modified-Since -----------------------------------------------------------------------------


def modified_an_hour_ago(files_root: Path) -> int:
    """Sets the stored file's modification an hour and a fraction of a second back (so that dates
    after it are still in the past), and returns its whole seconds, those ``Last-Modified`` states."""
    [relative] = stored(files_root)
    mtime = time.time() - 3600 + 0.75
    os.utime(files_root / relative, (mtime, mtime))
    return int(mtime)


def assert_not_modified(response: httpx.Response) -> None:
    """The 304 ``If-None-Match`` answers (``test_if_none_match_naming_the_file_is_304_without_a_body``)."""
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["etag"] == etag_of(CONTENT)
    assert response.headers["cache-control"] == "private, no-store"
    assert "content-length" not in response.headers or response.headers["content-length"] == "0"


async def test_if_modified_since_at_or_after_last_modified_is_304(
    api: Client, world: World, files_root: Path
) -> None:
    path = await uploaded(api, world)
    modified = modified_an_hour_ago(files_root)
    assert (await get(api, world.viewer, path)).headers["last-modified"] == formatdate(modified, usegmt=True)
    for since in (
        formatdate(
            modified, usegmt=True
        ),  # the file's own Last-Modified: whole seconds, the fraction dropped
        formatdate(modified + 1, usegmt=True),
        formatdate(modified + 1800, usegmt=True),
        time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(modified)),  # RFC 850's form
        time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(modified)),  # asctime's
    ):
        assert_not_modified(await get(api, world.viewer, path, **{"If-Modified-Since": since}))
    # Evaluated before the Range, as If-None-Match is.
    since = formatdate(modified, usegmt=True)
    assert_not_modified(
        await get(api, world.viewer, path, **{"If-Modified-Since": since, "Range": "bytes=0-9"})
    )


async def test_if_modified_since_before_last_modified_is_the_whole_file(
    api: Client, world: World, files_root: Path
) -> None:
    path = await uploaded(api, world)
    modified = modified_an_hour_ago(files_root)
    for since in (formatdate(modified - 1, usegmt=True), formatdate(modified - 86400, usegmt=True)):
        assert_whole(await get(api, world.viewer, path, **{"If-Modified-Since": since}))
    response = await get(api, world.viewer, path, Range="bytes=0-9", **{"If-Modified-Since": since})
    assert response.status_code == 206 and response.content == CONTENT[:10]
    # The same file, asked since its Last-Modified: not modified (the dates above were compared).
    assert_not_modified(
        await get(api, world.viewer, path, **{"If-Modified-Since": formatdate(modified, usegmt=True)})
    )


async def test_an_invalid_or_future_if_modified_since_is_ignored(
    api: Client, world: World, files_root: Path
) -> None:
    """RFC 9110 13.1.3: not a date, or a date later than the server's clock, is ignored: the whole
    file, although each is (or reads as) a date after the file's Last-Modified."""
    path = await uploaded(api, world)
    modified = modified_an_hour_ago(files_root)
    for since in (
        "not a date",
        "Sat, 31 Feb 2026 10:00:00 GMT",
        formatdate(modified, usegmt=True).replace(" ", " " * 30),  # a date, over the characters parsed
        "x" * 5000,
        formatdate(time.time() + 3600, usegmt=True),  # in the future
        formatdate(time.time() + 10 * 365 * 86400, usegmt=True),
    ):
        assert_whole(await get(api, world.viewer, path, **{"If-Modified-Since": since}))
    assert_not_modified(
        await get(api, world.viewer, path, **{"If-Modified-Since": formatdate(modified, usegmt=True)})
    )


async def test_if_none_match_present_decides_alone_over_if_modified_since(
    api: Client, world: World, files_root: Path
) -> None:
    """RFC 9110 13.2.2: If-Modified-Since is evaluated only when the request has no If-None-Match;
    when it has one, that one decides (even a malformed one, which names nothing)."""
    path = await uploaded(api, world)
    modified = modified_an_hour_ago(files_root)
    current, stale = formatdate(modified, usegmt=True), formatdate(modified - 86400, usegmt=True)
    assert_not_modified(await get(api, world.viewer, path, **{"If-Modified-Since": current}))
    for if_none_match in ('"another version"', hashlib.sha256(CONTENT).hexdigest()):
        response = await get(
            api, world.viewer, path, **{"If-None-Match": if_none_match, "If-Modified-Since": current}
        )
        assert_whole(response)
    response = await get(
        api, world.viewer, path, **{"If-None-Match": etag_of(CONTENT), "If-Modified-Since": stale}
    )
    assert_not_modified(response)


# -- ranges ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=1000-5000", 1000, SIZE - 1),  # last-pos past the end: the end
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),
        ("bytes=500-", 500, SIZE - 1),
        ("bytes=-24", SIZE - 24, SIZE - 1),
        ("bytes=-5000", 0, SIZE - 1),  # a suffix longer than the file: all of it
        ("BYTES=3-4", 3, 4),  # the unit is case-insensitive
        ("bytes=3-4,", 3, 4),  # an empty list element is no range (RFC 9110 5.6.1)
        ("bytes= 3-4", 3, 4),
    ],
)
async def test_one_byte_range_is_206_with_exactly_those_bytes(
    api: Client, world: World, range_: str, first: int, last: int
) -> None:
    path = await uploaded(api, world)
    response = await get(api, world.viewer, path, Range=range_)
    assert response.status_code == 206, response.text
    assert response.content == CONTENT[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"data.csv\"; filename*=UTF-8''data.csv"
    )
    assert response.headers["etag"] == etag_of(CONTENT)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "private, no-store"
    assert "content-encoding" not in response.headers  # the range is of the stored bytes
    whole = await get(api, world.viewer, path)
    assert response.headers["last-modified"] == whole.headers["last-modified"]


@pytest.mark.parametrize(
    "range_", [f"bytes={SIZE}-", f"bytes={SIZE}-{SIZE + 10}", "bytes=99999-", "bytes=-0"]
)
async def test_an_unsatisfiable_range_is_416_with_the_files_size(
    api: Client, world: World, range_: str
) -> None:
    path = await uploaded(api, world)
    response = await get(api, world.viewer, path, Range=range_)
    assert_problem(response, 416, "range-not-satisfiable")
    assert response.headers["content-range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize(
    "range_",
    [
        "bytes=0-1,5-6",  # several ranges: no multipart/byteranges, the whole file instead
        "bytes=0-1, -3",
        "bytes=5-4",  # last-pos before first-pos: invalid, not unsatisfiable
        "bytes=-",
        "bytes=",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes 0-1",
        "items=0-1",  # a unit other than bytes
        "0-1",
        "garbage",
        "bytes=0-1" + " " * 300,  # over the characters parsed
        "bytes=" + "9" * 5000 + "-",
    ],
)
async def test_a_range_ignored_is_the_whole_file(api: Client, world: World, range_: str) -> None:
    path = await uploaded(api, world)
    assert_whole(await get(api, world.viewer, path, Range=range_))


async def test_a_range_of_an_empty_file(api: Client, world: World) -> None:
    """Nothing to send: a suffix is answered with the whole (empty) file, a first-pos is past the end."""
    path = await uploaded(api, world, b"")
    assert_whole(await get(api, world.viewer, path, Range="bytes=-5"), b"")
    response = await get(api, world.viewer, path, Range="bytes=0-")
    assert_problem(response, 416, "range-not-satisfiable")
    assert response.headers["content-range"] == "bytes */0"


# -- If-Range --------------------------------------------------------------------------------------


async def test_if_range_with_the_etag_or_the_last_modified_date_is_206(api: Client, world: World) -> None:
    path = await uploaded(api, world)
    last_modified = (await get(api, world.viewer, path)).headers["last-modified"]
    for validator in (etag_of(CONTENT), last_modified):
        response = await get(api, world.viewer, path, Range="bytes=4-7", **{"If-Range": validator})
        assert response.status_code == 206, (validator, response.text)
        assert response.content == CONTENT[4:8]
        assert response.headers["content-range"] == f"bytes 4-7/{SIZE}"


async def test_if_range_that_does_not_match_is_the_whole_file(
    api: Client, world: World, files_root: Any
) -> None:
    path = await uploaded(api, world)
    [relative] = stored(files_root)
    mtime = (files_root / relative).stat().st_mtime
    for validator in (
        etag_of(b"another version"),
        f"W/{etag_of(CONTENT)}",  # If-Range compares strongly: a weak tag never matches
        formatdate(mtime - 1, usegmt=True),
        formatdate(mtime + 1, usegmt=True),
        "not a date",
        "x" * 500,
    ):
        response = await get(api, world.viewer, path, Range="bytes=4-7", **{"If-Range": validator})
        assert_whole(response)
    # A mismatching If-Range drops the Range before it is found unsatisfiable.
    response = await get(api, world.viewer, path, Range="bytes=99999-", **{"If-Range": '"other"'})
    assert_whole(response)


# -- access first ----------------------------------------------------------------------------------


async def test_another_users_or_projects_file_is_404_whatever_the_headers(api: Client, world: World) -> None:
    path = await uploaded(api, world)
    elsewhere = files_url(world.other_project, int(path.rsplit("/", 1)[1]))
    for member, url in ((world.outsider, path), (world.editor, elsewhere)):
        for headers in (
            {"Range": "bytes=0-9"},
            {"Range": "bytes=99999-"},
            {"If-None-Match": "*"},
            {"If-None-Match": etag_of(CONTENT), "Range": "bytes=0-9", "If-Range": etag_of(CONTENT)},
        ):
            assert_problem(await get(api, member, url, **headers), 404, "not-found")


# -- streaming -------------------------------------------------------------------------------------


async def test_a_large_part_is_streamed_in_chunks_from_the_handle_opened_before_the_answer(
    api: Client, world: World, files_root: Any
) -> None:
    """A part over Litestar's chunk size (1 MiB) is sent in several body messages, none over a chunk
    (the file is never read whole), and a delete landing after the headers does not cut it."""
    content = os.urandom(3 * MIB)
    path = await uploaded(api, world, content, name="big.csv")
    file_id = int(path.rsplit("/", 1)[1])
    first, last = 7, 3 * MIB - 9
    app: Litestar = api.app  # type: ignore[assignment]
    files = app.state.services[FileService]
    scope = http_scope("GET", path, world.editor.token, (b"range", f"bytes={first}-{last}".encode()))
    status = 0
    headers: dict[bytes, bytes] = {}
    messages: list[bytes] = []
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
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update(message["headers"])
            await files.delete(world.editor.id, world.project, file_id)
        elif message["type"] == "http.response.body":
            messages.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    api.blocking_portal.call(api.app, scope, receive, send)

    assert status == 206
    assert headers[b"content-range"] == f"bytes {first}-{last}/{len(content)}".encode()
    assert headers[b"content-length"] == str(last - first + 1).encode()
    assert b"".join(messages) == content[first : last + 1]
    assert len([m for m in messages if m]) >= 2 and max(map(len, messages)) <= MIB
    assert stored(files_root) == [], "the delete did unlink the file"


# -- property --------------------------------------------------------------------------------------


@st.composite
def sizes_and_ranges(draw: st.DrawFn) -> tuple[int, str, int | None, int | None]:
    """A file size and a Range of one of the three forms, with positions around the file's end."""
    size = draw(st.integers(min_value=0, max_value=40))
    position = st.integers(min_value=0, max_value=size + 3)
    form = draw(st.sampled_from(["a-b", "a-", "-n"]))
    if form == "a-b":
        a, b = draw(position), draw(position)
        return size, f"bytes={a}-{b}", a, b
    if form == "a-":
        a = draw(position)
        return size, f"bytes={a}-", a, None
    n = draw(position)
    return size, f"bytes=-{n}", None, n


@hypothesis_settings(
    max_examples=scaled_examples(40),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=sizes_and_ranges())
async def test_a_part_is_python_slicing_of_the_file(
    api: Client, world: World, paths: dict[int, str], case: tuple[int, str, int | None, int | None]
) -> None:
    size, range_, a, b = case
    content = bytes((7 * i + 3) % 256 for i in range(size))
    if size not in paths:
        paths[size] = await uploaded(api, world, content)
    response = await get(api, world.viewer, paths[size], Range=range_)
    if a is None:  # -n
        assert b is not None
        if b == 0:
            assert response.status_code == 416 and response.headers["content-range"] == f"bytes */{size}"
        elif size == 0:
            assert response.status_code == 200 and response.content == b""
        else:
            expected, first = content[-b:], max(0, size - b)
            assert (response.status_code, response.content) == (206, expected)
            assert response.headers["content-range"] == f"bytes {first}-{size - 1}/{size}"
    elif b is not None and b < a:  # invalid: ignored
        assert (response.status_code, response.content) == (200, content)
    elif a >= size:
        assert response.status_code == 416 and response.headers["content-range"] == f"bytes */{size}"
    else:
        expected = content[a:] if b is None else content[a : b + 1]
        assert (response.status_code, response.content) == (206, expected)
        assert response.headers["content-range"] == f"bytes {a}-{a + len(expected) - 1}/{size}"


@pytest.fixture
def paths() -> dict[int, str]:
    """The download path of the file of each size uploaded so far (in this test's project)."""
    return {}
