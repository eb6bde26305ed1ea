"""A text file's ``charset``: recorded at upload (the part's declared one, or ``utf-8`` when its bytes
are valid UTF-8, else null), returned in ``FileOut`` and labelling its downloads (``text/...;
charset=...``, or the bare type when unknown). Litestar labelled every text download ``charset=utf-8``
whatever its bytes, and the upload dropped the declared charset.

Runs on ``test_files_http``'s app and fixtures (its own storage directory, wiped before each test).
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from psycopg import AsyncConnection

from tests.factories import Client
from tests.functional.test_files_http import (
    World,
    api,
    files_root,
    files_url,
    module_client,
    stream_upload,
    upload,
    world,
)

__all__ = ["api", "files_root", "module_client", "world"]  # the fixtures of test_files_http

UTF8_TEXT = "name;city\nZoë;Zürich\nJosé;São Paulo\n€ 5;日本\n".encode()
CP1252_TEXT = "name;price\nCafé;5 €\nNaïve;“quoted”\n".encode("windows-1252")  # not valid UTF-8
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
CHUNK = 64 * 1024
"""The body messages ``stream_upload`` sends: each reaches the storage as it arrives (a data event of
the multipart parser, hashed, written and checked for UTF-8 as one chunk)."""


async def uploaded(
    api: Client, world: World, content: bytes, content_type: str, *, filename: str = "data.csv"
) -> dict[str, Any]:
    response = await upload(
        api, world.editor, world.project, content, filename=filename, content_type=content_type
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def download(api: Client, world: World, file: dict[str, Any], **headers: str) -> httpx.Response:
    response = await api.get(
        files_url(world.project, file["id"]), headers={**world.editor.headers, **headers}
    )
    assert response.status_code in (200, 206), response.text
    return response


async def stored_charset(db: AsyncConnection[Any], file: dict[str, Any]) -> str | None:
    row = await (
        await db.execute("select charset from project_files where id = %s", (file["id"],))
    ).fetchone()
    assert row is not None
    value: str | None = row[0]
    return value


async def test_utf8_text_without_a_declared_charset_is_recorded_and_labelled_utf8(
    api: Client, db: AsyncConnection[Any], world: World
) -> None:
    file = await uploaded(api, world, UTF8_TEXT, "text/plain")

    assert file["charset"] == "utf-8"
    assert await stored_charset(db, file) == "utf-8"
    response = await download(api, world, file)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == UTF8_TEXT
    listed = await api.get(files_url(world.project), headers=world.editor.headers)
    assert [item["charset"] for item in listed.json()["items"]] == ["utf-8"]


async def test_utf8_with_a_bom_is_utf8(api: Client, world: World) -> None:
    file = await uploaded(api, world, b"\xef\xbb\xbf" + UTF8_TEXT, "text/csv")

    assert file["charset"] == "utf-8"
    assert (await download(api, world, file)).headers["content-type"] == "text/csv; charset=utf-8"


async def test_a_declared_charset_is_kept_lower_cased_and_labels_the_download(
    api: Client, db: AsyncConnection[Any], world: World
) -> None:
    file = await uploaded(api, world, CP1252_TEXT, "Text/CSV; charset=Windows-1252")

    assert file["content_type"] == "text/csv"
    assert file["charset"] == "windows-1252"
    assert await stored_charset(db, file) == "windows-1252"
    response = await download(api, world, file)
    assert response.headers["content-type"] == "text/csv; charset=windows-1252"
    assert response.content.decode(response.encoding or "") == CP1252_TEXT.decode("windows-1252")


async def test_a_quoted_declared_charset_is_kept(api: Client, world: World) -> None:
    file = await uploaded(api, world, CP1252_TEXT, 'text/plain; format=flowed; charset="Shift_JIS"')

    assert file["charset"] == "shift_jis"
    assert (await download(api, world, file)).headers["content-type"] == "text/plain; charset=shift_jis"


@pytest.mark.parametrize(
    ("declared", "stated"),
    [
        ('"ISO_8859-1:1987"', "iso-8859-1"),  # IANA's name, with a ":" no token may hold
        ("latin-1", "iso-8859-1"),  # Python's spellings, which browsers do not know
        ("8859", "iso-8859-1"),
        ('"windows:1252"', "windows-1252"),
        ("cp1252", "windows-1252"),
        ("sjis", "shift_jis"),
        ("UTF-16LE", "utf-16le"),
        ("mac-roman", "macintosh"),
    ],
)
async def test_a_declared_charset_is_stated_by_the_name_browsers_know(
    api: Client, world: World, declared: str, stated: str
) -> None:
    """Review: the client's spelling was kept whenever Python knew it, and a download then said
    ``charset=latin-1`` or ``charset="windows:1252"``, labels a browser does not decode by."""
    file = await uploaded(api, world, CP1252_TEXT, f"text/plain; charset={declared}")

    assert file["charset"] == stated
    assert (await download(api, world, file)).headers["content-type"] == f"text/plain; charset={stated}"


async def test_non_utf8_text_without_a_declared_charset_is_unknown_and_labelled_bare(
    api: Client, db: AsyncConnection[Any], world: World
) -> None:
    file = await uploaded(api, world, CP1252_TEXT, "text/plain")

    assert file["charset"] is None
    assert await stored_charset(db, file) is None
    response = await download(api, world, file)
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == CP1252_TEXT


@pytest.mark.parametrize("declared", ["utf-8", "UTF-8", "utf8", "cp65001", "utf-8-sig"])
async def test_a_declared_utf8_that_lies_is_not_repeated(api: Client, world: World, declared: str) -> None:
    lying = await uploaded(api, world, CP1252_TEXT, f"text/plain; charset={declared}")
    truncated = await uploaded(api, world, UTF8_TEXT + "€".encode()[:2], f"text/plain; charset={declared}")
    honest = await uploaded(api, world, UTF8_TEXT, f"text/plain; charset={declared}")

    assert lying["charset"] is None
    assert (await download(api, world, lying)).headers["content-type"] == "text/plain"
    assert truncated["charset"] is None  # a character cut off at the very end
    assert honest["charset"] == "utf-8"
    assert (await download(api, world, honest)).headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "declared",
    [
        "klingon",  # no codec
        '"latin 1"',  # a codec Python knows (as latin_1), but no plain token
        "latin" + "-" * 40 + "1",  # known too, but over 40 characters
        "base64",  # a codec, but no character set
        "rot13",
        "unicode_escape",  # a text codec of Python's, no character set of anyone else's
        "utf-7",  # a character set no browser decodes
        "cp037",  # EBCDIC
        "hz",
        '""',
    ],
)
async def test_a_charset_label_not_kept_counts_as_undeclared(
    api: Client, world: World, declared: str
) -> None:
    not_utf8 = await uploaded(api, world, CP1252_TEXT, f"text/plain; charset={declared}")
    utf8 = await uploaded(api, world, UTF8_TEXT, f"text/plain; charset={declared}")

    assert not_utf8["charset"] is None
    assert (await download(api, world, not_utf8)).headers["content-type"] == "text/plain"
    assert utf8["charset"] == "utf-8"
    assert (await download(api, world, utf8)).headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("character", ["é", "€", "😀"])
async def test_a_character_split_across_the_storages_chunks_is_still_utf8(
    api: Client, world: World, character: str
) -> None:
    """The body reaches the storage in ``CHUNK``-byte messages: the file part's header shifts the
    characters so that the first message ends after the first byte of one, the second after all but
    the last byte of another."""
    header = (
        '--{b}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    )
    prefix = len(header.format(b="0" * 32))  # stream_upload's boundary: a uuid4's 32 hex digits
    encoded = character.encode()
    first = CHUNK - prefix - 1  # where the characters start in the file: 1 byte before a boundary
    second = 2 * CHUNK - prefix - (len(encoded) - 1)  # all but their last byte before the next
    content = ("a" * first + character + "b" * (second - first - len(encoded)) + character + "z" * 9).encode()
    assert content[first : first + len(encoded)] == content[second : second + len(encoded)] == encoded

    result = await stream_upload(
        api, world.editor, world.project, content, chunk_size=CHUNK, part_type="text/plain"
    )

    assert result.status == 201, result.body
    file = msgspec.json.decode(result.body)
    assert file["charset"] == "utf-8"
    response = await download(api, world, file)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == content


async def test_an_invalid_byte_after_many_chunks_of_utf8_is_found(api: Client, world: World) -> None:
    content = ("ü" * (3 * CHUNK)).encode() + b"\xff" + ("ü" * 10).encode()
    result = await stream_upload(
        api, world.editor, world.project, content, chunk_size=CHUNK, part_type="text/plain"
    )

    assert result.status == 201, result.body
    assert msgspec.json.decode(result.body)["charset"] is None


@pytest.mark.parametrize(
    ("content", "content_type", "expected"),
    [
        (PNG, "image/png", "image/png"),
        (UTF8_TEXT, "application/json; charset=utf-8", "application/json"),  # valid UTF-8, not text/*
    ],
)
async def test_non_text_types_have_no_charset(
    api: Client, db: AsyncConnection[Any], world: World, content: bytes, content_type: str, expected: str
) -> None:
    file = await uploaded(api, world, content, content_type, filename="data.bin")

    assert file["charset"] is None
    assert await stored_charset(db, file) is None
    response = await download(api, world, file)
    assert response.headers["content-type"] == expected
    assert response.content == content


async def test_a_range_of_a_text_file_carries_the_same_content_type(api: Client, world: World) -> None:
    declared = await uploaded(api, world, CP1252_TEXT, "text/csv; charset=windows-1252")
    utf8 = await uploaded(api, world, UTF8_TEXT, "text/csv")
    unknown = await uploaded(api, world, CP1252_TEXT, "text/csv")

    for file, expected in (
        (declared, "text/csv; charset=windows-1252"),
        (utf8, "text/csv; charset=utf-8"),
        (unknown, "text/csv"),
    ):
        whole = await download(api, world, file)
        part = await download(api, world, file, Range="bytes=2-9")
        assert whole.status_code == 200
        assert part.status_code == 206
        assert whole.headers["content-type"] == part.headers["content-type"] == expected


async def test_a_text_file_stored_before_charsets_were_recorded_is_labelled_bare(
    api: Client, db: AsyncConnection[Any], world: World
) -> None:
    file = await uploaded(api, world, UTF8_TEXT, "text/markdown")
    await db.execute("update project_files set charset = null where id = %s", (file["id"],))

    response = await download(api, world, file)
    assert response.headers["content-type"] == "text/markdown"
    got = await api.get(files_url(world.project), headers=world.editor.headers)
    assert got.json()["items"][0]["charset"] is None
