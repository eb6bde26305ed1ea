"""What a browser downloads for the OpenAPI UI and the SAQ dashboard, checked over HTTP.

A browser sends ``Accept-Encoding: gzip, deflate, br``; curl and most test clients send nothing or
``gzip``. The dashboard's pre-compressed assets were compressed a second time for the browser's
header only, so these requests send exactly what Chromium sends.
"""

from __future__ import annotations

import gzip
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import saq
from litestar import Litestar, get
from litestar.config.compression import CompressionConfig
from litestar.response import Response
from litestar.testing import AsyncTestClient

from app.core.compression import EncodedResponsePassThrough, accepts
from app.core.dashboard import FAVICON, fixed_app_js
from app.core.docs import DOCS_CSP, SWAGGER_UI_DIR
from tests.factories import assert_problem

BROWSER_ACCEPT_ENCODING = "gzip, deflate, br, zstd"
SAQ_STATIC = Path(saq.__path__[0]) / "web" / "static"
DOCS_PAGES = ["/schema", "/schema/swagger"]
YEAR = 365 * 24 * 3600

Client = AsyncTestClient[Litestar]


async def raw_get(
    client: Client, path: str, accept_encoding: str | None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the body exactly as sent (not decoded by the client); ``None`` sends no
    ``Accept-Encoding`` at all, as curl does (the test client would send its own)."""
    request = client.build_request("GET", path)
    if accept_encoding is None:
        request.headers.pop("accept-encoding", None)
    else:
        request.headers["accept-encoding"] = accept_encoding
    response = await client.send(request, stream=True)
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return response.status_code, dict(response.headers), body


DASHBOARD_GZIPPED = {"snabbdom.js.gz": "text/javascript", "pico.min.css.gz": "text/css"}


@pytest.mark.parametrize("name", DASHBOARD_GZIPPED)
@pytest.mark.parametrize("accept_encoding", [BROWSER_ACCEPT_ENCODING, "gzip", "br;q=1, gzip;q=0.5"])
async def test_precompressed_dashboard_assets_keep_exactly_their_own_encoding(
    client: Client, name: str, accept_encoding: str
) -> None:
    status, headers, body = await raw_get(client, f"/saq/static/{name}", accept_encoding)
    assert status == 200
    assert headers["content-encoding"] == "gzip", "one coding, the file's own"
    assert headers["vary"].lower() == "accept-encoding"
    assert body == (SAQ_STATIC / name).read_bytes(), "the file's bytes, not compressed again"
    assert gzip.decompress(body)


@pytest.mark.parametrize("name", DASHBOARD_GZIPPED)
@pytest.mark.parametrize("accept_encoding", [None, "identity", "gzip;q=0"])
async def test_precompressed_dashboard_assets_are_plain_for_a_client_that_refuses_gzip(
    client: Client, name: str, accept_encoding: str | None
) -> None:
    """curl without ``--compressed`` sends no Accept-Encoding: it was sent gzip bytes as the script."""
    for _ in range(2):  # the first request decompresses the file, the second answers what it kept
        status, headers, body = await raw_get(client, f"/saq/static/{name}", accept_encoding)
        assert status == 200
        assert "content-encoding" not in headers
        assert headers["vary"].lower() == "accept-encoding"
        assert headers["content-type"].startswith(DASHBOARD_GZIPPED[name])
        assert body == gzip.decompress((SAQ_STATIC / name).read_bytes())
        text = body.decode()  # JavaScript and CSS, as text: not gzip's binary
        assert ("function" in text) if name.endswith(".js.gz") else ("{" in text and "}" in text)


@pytest.mark.parametrize("name", DASHBOARD_GZIPPED)
async def test_precompressed_dashboard_assets_are_brotli_for_a_brotli_only_client(
    client: Client, name: str
) -> None:
    """Plain for the asset's own negotiation, then encoded by the compression layer as for any answer."""
    status, headers, _ = await raw_get(client, f"/saq/static/{name}", "br")
    assert status == 200
    assert headers["content-encoding"] == "br"
    assert "accept-encoding" in headers["vary"].lower()
    decoded = await client.get(f"/saq/static/{name}", headers={"Accept-Encoding": "br"})
    assert decoded.content == gzip.decompress((SAQ_STATIC / name).read_bytes())


async def test_plain_dashboard_script_is_still_compressed_for_a_browser(client: Client) -> None:
    status, headers, body = await raw_get(client, "/saq/static/app.js", BROWSER_ACCEPT_ENCODING)
    assert status == 200
    assert headers["content-encoding"] == "br"
    assert len(body) < (SAQ_STATIC / "app.js").stat().st_size
    decoded = await client.get("/saq/static/app.js", headers={"Accept-Encoding": BROWSER_ACCEPT_ENCODING})
    # SAQ's script with one fix (tests/functional/test_core_dashboard.py pins it).
    assert decoded.content == fixed_app_js((SAQ_STATIC / "app.js").read_text()).encode()


NEGOTIATED_ASSETS = [
    *(f"/saq/static/{name}" for name in DASHBOARD_GZIPPED),
    *(f"/schema/assets/{SWAGGER_UI_DIR.name}/{name}" for name in ["swagger-ui-bundle.js", "swagger-ui.css"]),
]
"""Answers whose own handler negotiates the coding (``GzipAsset``) and says ``Vary: Accept-Encoding``."""


@pytest.mark.parametrize("path", [*NEGOTIATED_ASSETS, "/saq/static/app.js", "/schema/openapi.json"])
@pytest.mark.parametrize("accept_encoding", ["br", "gzip", None, BROWSER_ACCEPT_ENCODING])
async def test_vary_names_accept_encoding_once(
    client: Client, path: str, accept_encoding: str | None
) -> None:
    """A plain asset the compression layer encodes as brotli answered ``Vary: Accept-Encoding,
    Accept-Encoding``: the asset said it and the layer added it again. Read as sent: every ``Vary``
    line, each token."""
    request = client.build_request("GET", path)
    if accept_encoding is None:
        request.headers.pop("accept-encoding", None)
    else:
        request.headers["accept-encoding"] = accept_encoding
    response = await client.send(request)
    assert response.status_code == 200, path
    tokens = [
        token.strip().lower() for line in response.headers.get_list("vary") for token in line.split(",")
    ]
    assert len(tokens) == len(set(tokens)), response.headers.get_list("vary")
    if path in NEGOTIATED_ASSETS or "content-encoding" in response.headers:
        assert tokens == ["accept-encoding"], response.headers.get_list("vary")


BIG_TEXT = b"already encoded by the handler " * 200


@get("/encoded", sync_to_thread=False)
def encoded() -> Response[bytes]:
    return Response(gzip.compress(BIG_TEXT), media_type="text/plain", headers={"Content-Encoding": "gzip"})


@get("/identity", sync_to_thread=False)
def identity() -> Response[bytes]:
    return Response(BIG_TEXT, media_type="text/plain", headers={"Content-Encoding": "identity"})


@get("/plain", sync_to_thread=False)
def plain() -> bytes:
    return BIG_TEXT


async def test_the_compression_layer_skips_only_responses_that_are_already_encoded() -> None:
    app = Litestar(
        [encoded, identity, plain],
        compression_config=CompressionConfig(backend="brotli", middleware_class=EncodedResponsePassThrough),
    )
    async with AsyncTestClient(app=app) as client:
        _, headers, body = await raw_get(client, "/encoded", BROWSER_ACCEPT_ENCODING)
        assert headers["content-encoding"] == "gzip"
        assert gzip.decompress(body) == BIG_TEXT
        for path in ["/identity", "/plain"]:
            _, headers, body = await raw_get(client, path, BROWSER_ACCEPT_ENCODING)
            assert headers["content-encoding"] == "br", path
            assert len(body) < len(BIG_TEXT), path
            assert (await client.get(path)).content == BIG_TEXT


class _References(HTMLParser):
    """Every URL a page makes the browser load or follow, and the bodies of its <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href", "data-spec-url", "action", "srcset"} and value:
                self.urls.append(value)
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


@pytest.mark.parametrize("page", DOCS_PAGES)
async def test_docs_page_loads_only_same_origin_assets_under_a_strict_csp(client: Client, page: str) -> None:
    response = await client.get(page, headers={"Accept-Encoding": BROWSER_ACCEPT_ENCODING})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == DOCS_CSP
    references = _References()
    references.feed(response.text)
    assert not references.inline_scripts, "inline scripts cannot run under script-src 'self'"
    assert len(references.urls) >= 4  # icon, stylesheet, Swagger UI, the initialiser, the spec
    for url in references.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} references another origin: {url}"
        assert url.startswith("/schema/"), url
        asset = await client.get(url, headers={"Accept-Encoding": BROWSER_ACCEPT_ENCODING})
        assert asset.status_code == 200, url
        if "/assets/" in url:
            cache_control = asset.headers["cache-control"]
            assert f"max-age={YEAR}" in cache_control, url
            assert "immutable" in cache_control, url


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js", "swagger-ui.css"])
async def test_swagger_ui_assets_are_the_package_files_gzipped_once(client: Client, name: str) -> None:
    path = f"/schema/assets/{SWAGGER_UI_DIR.name}/{name}"
    original = (SWAGGER_UI_DIR / name).read_bytes()
    status, headers, body = await raw_get(client, path, BROWSER_ACCEPT_ENCODING)
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert "accept-encoding" in headers["vary"].lower()
    assert gzip.decompress(body) == original
    assert (await raw_get(client, path, BROWSER_ACCEPT_ENCODING))[2] == body, "the same bytes every time"
    for accept_encoding in ("identity", None):
        status, headers, body = await raw_get(client, path, accept_encoding)
        assert status == 200
        assert "content-encoding" not in headers
        assert headers["vary"].lower() == "accept-encoding"
        assert body == original


@pytest.mark.parametrize(
    ("accept_encoding", "gzip_ok"),
    [
        ("gzip, deflate, br, zstd", True),
        ("br;q=1.0, gzip;q=0.5", True),
        ("*", True),
        ("GZIP", True),
        ("", False),
        ("identity", False),
        ("br", False),
        ("gzip;q=0", False),
        ("gzip; q=0.000, br", False),
        ("*;q=0", False),
        ("gzip;q=0, *", False),
        ("gzip;q=oops", False),
    ],
)
def test_accept_encoding_is_read_with_its_qualities(accept_encoding: str, gzip_ok: bool) -> None:
    assert accepts("gzip", accept_encoding) is gzip_ok


@pytest.mark.parametrize(
    "path",
    [
        "/schema/nope",
        "/schema/redoc",
        "/schema/oauth2-redirect.html",
        "/schema/openapi.yaml",
        "/schema/swagger/nope",
        "/schema/assets/nope",
    ],
)
async def test_an_unknown_docs_path_is_a_problem_like_any_other(client: Client, path: str) -> None:
    """Litestar's OpenAPI router answered its own HTML page, without a request id, for any one-segment
    path (the first three); the others were already problems and must stay so."""
    response = await client.get(path, headers={"Accept": "text/html,application/xhtml+xml"})
    assert_problem(response, 404, "not-found")


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger", "/schema/openapi.json"])
async def test_the_docs_pages_are_still_served(client: Client, path: str) -> None:
    assert (await client.get(path)).status_code == 200


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "oauth2-redirect.html", "..%2Fx"])
async def test_only_the_files_the_page_uses_are_served(client: Client, name: str) -> None:
    """The package also holds Swagger UI's demo page, which would load a spec from the internet."""
    assert (await client.get(f"/schema/assets/{SWAGGER_UI_DIR.name}/{name}")).status_code == 404


def test_csp_names_no_other_origin_and_allows_no_inline_script() -> None:
    directives = dict(directive.split(" ", 1) for directive in DOCS_CSP.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert "frame-ancestors" in directives
    assert "http" not in DOCS_CSP and "*" not in DOCS_CSP


async def test_served_swagger_ui_can_render_the_openapi_version_the_app_serves(client: Client) -> None:
    """Swagger UI 4 refuses OpenAPI 3.1 documents ("Unable to render this definition")."""
    schema = (await client.get("/schema/openapi.json")).json()
    major = int(SWAGGER_UI_DIR.name.removeprefix("swagger-ui-").split(".")[0])
    if schema["openapi"].startswith("3.1"):
        assert major >= 5, f"{SWAGGER_UI_DIR.name} cannot render OpenAPI {schema['openapi']}"


async def test_the_site_icon_is_the_dashboards_svg(client: Client) -> None:
    """A browser asks for ``/favicon.ico`` beside any page that links no icon (a JSON answer)."""
    response = await client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == "max-age=86400, public"
    assert response.content == FAVICON
