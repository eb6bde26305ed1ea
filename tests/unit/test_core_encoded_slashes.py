"""An encoded slash stays in its path segment (``app.core.middleware.keep_encoded_slashes``).

Each case is a (raw path, path) pair as granian 2.8.7 hands them to the application (read off a
served app with a raw socket), and the path the router must see. The routes' own refusals of such
segments are tested through the app in ``tests/functional/test_core_path_ids.py`` and
``test_github_http.py``.
"""

from __future__ import annotations

import pytest

from app.core.middleware import keep_encoded_slashes

KEPT = [
    (b"/api/projects/%2F", "/api/projects//", "/api/projects/%2F"),
    (b"/api/projects/%2f1", "/api/projects//1", "/api/projects/%2F1"),
    (b"/api/projects/1%2F/tasks", "/api/projects/1//tasks", "/api/projects/1%2F/tasks"),
    (b"/a/%2F%2F%2F", "/a////", "/a/%2F%2F%2F"),
    (b"/api/projects/%C3%A9%2F5", "/api/projects/\u00e9/5", "/api/projects/\u00e9%2F5"),
    (b"/api/projects/%FF%2F", "/api/projects/\ufffd/", "/api/projects/\ufffd%2F"),
    # raw (unescaped) UTF-8 bytes, which granian decodes as UTF-8 too
    (b"/api/projects/%2F\xc3\xa9", "/api/projects//\u00e9", "/api/projects/%2F\u00e9"),
    (
        b"/api/github/users/\xc3\xa9%2F/history",
        "/api/github/users/\u00e9//history",
        "/api/github/users/\u00e9%2F/history",
    ),
    (
        b"/api/projects/%2F?x=%2F",
        "/api/projects//",
        "/api/projects/%2F",
    ),  # a client's raw path with its query
]


@pytest.mark.parametrize(("raw_path", "path", "routed"), KEPT)
def test_an_encoded_slash_is_kept_in_its_segment(raw_path: bytes, path: str, routed: str) -> None:
    assert keep_encoded_slashes(raw_path, path) == routed


UNCHANGED = [
    (b"/api/projects/%252F", "/api/projects/%2F"),  # an encoded percent sign, then "2F"
    (b"/api/projects?x=%2F", "/api/projects"),  # in the query only
    (b"/api/projects/%2", "/api/projects/%2"),
    (b"/a%2Fb", "/somewhere/else"),  # not the server's decoding of the raw path: it stands
]


@pytest.mark.parametrize(("raw_path", "path"), UNCHANGED)
def test_a_path_without_an_encoded_slash_or_not_read_from_it_is_left_as_the_server_read_it(
    raw_path: bytes, path: str
) -> None:
    assert keep_encoded_slashes(raw_path, path) == path
