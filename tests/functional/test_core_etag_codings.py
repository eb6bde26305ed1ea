"""A strong ETag names one representation: the compression layer gives it the content coding it applied
(``"7-br"``, ``"7-gzip"``: RFC 9110 8.8.3), and ``If-Match`` takes each form as the version it names.

The same ``"1"`` was sent with 2,965 bytes of identity, 183 of brotli and 220 of gzip.
"""

from __future__ import annotations

import gzip

import pytest
from litestar import Litestar, get
from litestar.config.compression import CompressionConfig
from litestar.response import Response
from litestar.testing import AsyncTestClient

from app.core.compression import EncodedResponsePassThrough, coded_etag
from app.core.preconditions import names_version
from tests.factories import Client, Team, assert_problem

LONG = "A description long enough for the answer to be compressed. " * 40
"""Over the layer's ``minimum_size`` (1,024 bytes): a smaller answer is sent as it is, tag and all."""


async def long_task(client: Client, team: Team) -> str:
    created = await client.post(
        f"/api/projects/{team.project}/tasks",
        json={"title": "Ship", "description": LONG},
        headers=team.editor.headers | {"Accept-Encoding": "identity"},
    )
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == '"1"'
    return f"/api/tasks/{created.json()['id']}"


async def read(client: Client, team: Team, url: str, accept_encoding: str) -> tuple[str, str | None]:
    """(ETag, Content-Encoding) of the task's GET."""
    answer = await client.get(url, headers=team.viewer.headers | {"Accept-Encoding": accept_encoding})
    assert answer.status_code == 200, answer.text
    assert answer.json()["description"] == LONG
    return answer.headers["etag"], answer.headers.get("content-encoding")


async def test_each_content_coding_has_its_own_strong_etag(client: Client, team: Team) -> None:
    url = await long_task(client, team)
    assert await read(client, team, url, "identity") == ('"1"', None)
    assert await read(client, team, url, "br") == ('"1-br"', "br")
    assert await read(client, team, url, "gzip") == ('"1-gzip"', "gzip")
    assert await read(client, team, url, "gzip, deflate, br, zstd") == ('"1-br"', "br")


@pytest.mark.parametrize("seen", ['"1-br"', '"1-gzip"', '"1"', '"0", "1-gzip"'])
async def test_if_match_with_the_etag_of_any_coding_applies_the_change(
    client: Client, team: Team, seen: str
) -> None:
    url = await long_task(client, team)
    changed = await client.patch(
        url,
        json={"title": "Shipped"},
        headers=team.editor.headers | {"If-Match": seen, "Accept-Encoding": "br"},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["version"], changed.headers["etag"]) == (2, '"2-br"')
    assert (await read(client, team, url, "identity"))[0] == '"2"'


@pytest.mark.parametrize(
    "stale",
    [
        '"1-br"',  # the version before the change, in any coding
        '"1-gzip"',
        '"1"',
        'W/"2-br"',  # weak: never matches
        '"2-deflate"',  # not a coding the layer applies
        '"2-br-br"',
        '"2br"',
    ],
)
async def test_if_match_naming_no_current_form_changes_nothing(
    client: Client, team: Team, stale: str
) -> None:
    url = await long_task(client, team)
    first = await client.patch(url, json={"title": "Shipped"}, headers=team.editor.headers)
    assert first.status_code == 200, first.text
    refused = await client.patch(
        url,
        json={"title": "Lost"},
        headers=team.editor.headers | {"If-Match": stale, "Accept-Encoding": "br"},
    )
    assert_problem(refused, 412, "precondition-failed")
    gone = await client.delete(url, headers=team.editor.headers | {"If-Match": stale})
    assert_problem(gone, 412, "precondition-failed")
    assert (await read(client, team, url, "identity"))[0] == '"2"'


async def test_a_delete_with_the_etag_of_a_compressed_read_applies(client: Client, team: Team) -> None:
    url = await long_task(client, team)
    seen, _ = await read(client, team, url, "gzip")
    deleted = await client.delete(url, headers=team.editor.headers | {"If-Match": seen})
    assert deleted.status_code == 204, deleted.text


def test_the_forms_of_a_version_are_found_from_its_own_tag() -> None:
    """Never by cutting a suffix off the tag sent: ``"1-br"`` names version 1, not a version "1-br"."""
    assert coded_etag('"7"', "br") == '"7-br"'
    assert names_version(frozenset({'"7-gzip"'}), '"7"')
    assert not names_version(frozenset({'"7"'}), '"7-br"')
    assert not names_version(frozenset({'"17-br"', '"7-"', '"7-zstd"'}), '"7"')


BIG = b"x" * 4096


@get("/strong", sync_to_thread=False)
def strong() -> Response[bytes]:
    return Response(BIG, media_type="text/plain", headers={"ETag": '"abc"'})


@get("/weak", sync_to_thread=False)
def weak() -> Response[bytes]:
    return Response(BIG, media_type="text/plain", headers={"ETag": 'W/"abc"'})


@get("/small", sync_to_thread=False)
def small() -> Response[bytes]:
    return Response(b"tiny", media_type="text/plain", headers={"ETag": '"abc"'})


@get("/identity", sync_to_thread=False)
def identity() -> Response[bytes]:
    return Response(
        b"tiny", media_type="text/plain", headers={"ETag": '"abc"', "Content-Encoding": "identity"}
    )


@get("/encoded", sync_to_thread=False)
def encoded() -> Response[bytes]:
    headers = {"ETag": '"abc"', "Content-Encoding": "gzip"}
    return Response(gzip.compress(BIG), media_type="text/plain", headers=headers)


@pytest.mark.parametrize(
    ("path", "accept_encoding", "tag"),
    [
        ("/strong", "br", '"abc-br"'),
        ("/strong", "gzip", '"abc-gzip"'),
        ("/strong", "identity", '"abc"'),
        ("/weak", "br", 'W/"abc"'),  # a weak validator may be shared by the codings
        ("/small", "br", '"abc"'),  # under minimum_size: sent as it is
        ("/identity", "br", '"abc"'),
        ("/encoded", "br", '"abc"'),  # the handler's own coding: its tag is the handler's to choose
    ],
)
async def test_the_layer_codes_only_the_strong_tags_of_what_it_encodes(
    path: str, accept_encoding: str, tag: str
) -> None:
    app = Litestar(
        [strong, weak, small, identity, encoded],
        compression_config=CompressionConfig(
            backend="brotli", brotli_gzip_fallback=True, middleware_class=EncodedResponsePassThrough
        ),
    )
    async with AsyncTestClient(app=app) as client:
        answer = await client.get(path, headers={"Accept-Encoding": accept_encoding})
        assert answer.status_code == 200
        assert answer.headers["etag"] == tag


async def test_a_compressed_copy_revalidates_as_the_copy_it_is(client: Client, team: Team) -> None:
    """A cache holding the brotli answer (``"1-br"``) sends that tag: the 304 names it back, so the
    cache refreshes the copy it holds (RFC 9111 4.3.4 selects stored answers by their validator)."""
    url = await long_task(client, team)
    etag, _ = await read(client, team, url, "br")
    held = await client.get(
        url, headers=team.viewer.headers | {"Accept-Encoding": "br", "If-None-Match": etag}
    )
    assert (held.status_code, held.headers["etag"], held.content) == (304, '"1-br"', b"")
    assert "content-encoding" not in held.headers


@pytest.mark.parametrize(
    ("accept_encoding", "listed", "named"),
    [
        ("identity", '"1-br", "1"', '"1"'),
        ("br", '"1", "1-br"', '"1-br"'),
        ("gzip", '"1-br", "1-gzip"', '"1-gzip"'),
        ("br", '"1-gzip"', '"1-gzip"'),  # the only one named: that copy is current
    ],
)
async def test_of_several_copies_the_304_names_the_one_this_request_would_get(
    client: Client, team: Team, accept_encoding: str, listed: str, named: str
) -> None:
    """A cache revalidating its variants at once was told to reuse the first listed (a brotli copy
    for a client that reads only identity), and the 304 lacked its 200's ``Vary`` (the diff
    reviewer)."""
    url = await long_task(client, team)
    held = await client.get(
        url, headers=team.viewer.headers | {"Accept-Encoding": accept_encoding, "If-None-Match": listed}
    )
    assert (held.status_code, held.headers["etag"]) == (304, named)
    assert "accept-encoding" in held.headers["vary"].lower()
