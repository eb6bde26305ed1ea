"""The OpenAPI UI, served entirely by the app: Swagger UI from the installed ``swagger_ui_bundle``.

Litestar's render plugins load Scalar (``@latest``) and Swagger UI from a CDN and inline their
initialiser: blank without internet, and impossible under a strict Content-Security-Policy. Here
every asset comes from this origin:

- ``/schema`` and ``/schema/swagger``: one small HTML page, no inline script;
- ``/schema/assets/swagger-ui-<version>/...``: the files the page uses, straight from the installed
  package, cached for a year (the path changes with the package's version);
- ``/schema/assets/swagger-init-<hash>.js``: the initialiser (the path changes with its content).

Every response under the docs router carries ``DOCS_CSP``; the browser tests hold the page to it. Any
other path under it is the app's problem+json 404 (``unknown_docs_path``), as everywhere else.
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path
from typing import Any

import msgspec
from litestar import MediaType, Request, Router, get
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.exceptions import NotFoundException
from litestar.openapi import ResponseSpec
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import FromPath
from litestar.response import Response
from swagger_ui_bundle import swagger_ui_path

from app.core.compression import GzipAsset
from app.core.dashboard import FAVICON
from app.core.openapi import problems

__all__ = ("DOCS_CSP", "SWAGGER_UI_DIR", "ApiIndex", "SwaggerUI", "api_index", "docs_router", "site_icon")

SWAGGER_UI_DIR = Path(str(swagger_ui_path))
"""The installed Swagger UI files; the folder's name carries the version (``swagger-ui-5.31.0``)."""

DOCS_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # Swagger UI sets style attributes from its markup
        "img-src 'self' data:",  # its icons are data: URIs
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

_SWAGGER_UI_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-bundle.js.map": "application/json",
    "swagger-ui.css": "text/css",
    "swagger-ui.css.map": "application/json",
    "favicon-32x32.png": "image/png",
}
_IMMUTABLE = CacheControlHeader(public=True, max_age=365 * 24 * 3600, immutable=True)

# Loads the spec by URL (not inlined into the page), never calls the online validator, and
# ignores ?url= / ?configUrl= in the address bar (Swagger UI's queryConfigEnabled is off by default).
_INIT_JS = b"""\
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The page reads an answer whole, so a live event stream (the feed's) kept "Execute" spinning
    // until the token expired. Asked without text/event-stream, the feed answers its poll: its ready
    // event and the replay, then the answer ends.
    requestInterceptor: function (request) {
      var headers = request.headers || {};
      Object.keys(headers).forEach(function (name) {
        if (name.toLowerCase() === "accept" && headers[name] === "text/event-stream") {
          headers[name] = "*/*";
        }
      });
      return request;
    },
  });
})();
"""
_INIT_NAME = f"swagger-init-{hashlib.sha256(_INIT_JS).hexdigest()[:12]}.js"


_SWAGGER_UI_ASSETS = {
    name: GzipAsset(media_type, plain=(SWAGGER_UI_DIR / name).read_bytes)
    for name, media_type in _SWAGGER_UI_FILES.items()
}
"""Each read (and gzipped) on its first request, once per process."""


@get("/{path:str}", include_in_schema=False, sync_to_thread=False)
def unknown_docs_path(path: FromPath[str]) -> None:
    """Any other path under the docs: the app's problem+json 404 (with its ``request_id``).

    Litestar's OpenAPI plugin adds a catch-all of its own here that answers an HTML page; a handler
    already on the router for the same path and method is the one that serves it (pinned by
    ``tests/functional/test_core_docs_assets.py``).
    """
    raise NotFoundException(f"No such documentation page: {path}")


class ApiIndex(msgspec.Struct, frozen=True):
    """Where the API's routes are described and how to start using them."""

    docs: str
    openapi: str
    login: str
    health: str


_API_INDEX = msgspec.json.encode(
    ApiIndex(docs="/schema", openapi="/schema/openapi.json", login="/api/auth/login", health="/health/ready")
)


@get(
    "/api",
    tags=["docs"],
    summary="Where to start",
    description="The paths of the OpenAPI UI, its document, the sign-in and the readiness probe: the "
    "API's routes are under `/api`, each described in the document.",
    opt={"authenticate": False},
    media_type=MediaType.JSON,
    responses={
        **problems(429),
        200: ResponseSpec(ApiIndex, description="The starting points"),
    },
    sync_to_thread=False,
)
def api_index() -> bytes:
    """The URL ``just serve`` prints for the API: an answer, not a 404, for whoever opens it."""
    return _API_INDEX


@get(
    "/favicon.ico",
    opt={"authenticate": False},
    media_type="image/svg+xml",
    cache_control=CacheControlHeader(public=True, max_age=24 * 3600),
    include_in_schema=False,
    sync_to_thread=False,
)
def site_icon() -> bytes:
    """The icon a browser asks for beside any page that links none (a JSON answer opened in a tab): the
    dashboard's, rather than a 404 the browser logs as a console error. Browsers take an SVG here."""
    return FAVICON


def docs_router(path: str = "/schema") -> Router:
    """The router for ``OpenAPIConfig(openapi_router=...)``: the docs' paths, all under ``DOCS_CSP``.

    A new one per app (a router belongs to one application).
    """
    return Router(
        path,
        route_handlers=[unknown_docs_path],
        include_in_schema=False,
        response_headers=[
            ResponseHeader(name="Content-Security-Policy", value=DOCS_CSP),
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
            ResponseHeader(name="Referrer-Policy", value="no-referrer"),
        ],
    )


class SwaggerUI(OpenAPIRenderPlugin):
    """Swagger UI from the app's own origin, at ``/swagger`` (and ``/`` when it is the only UI)."""

    def __init__(self, *, path: str | list[str] = "/swagger") -> None:
        super().__init__(path=path, favicon="", style="")
        self._assets = "/assets"

    def receive_router(self, router: Router) -> None:
        self._assets = f"{router.path.rstrip('/')}/assets"

        @get(
            f"/assets/{_INIT_NAME}",
            media_type="text/javascript",
            cache_control=_IMMUTABLE,
            sync_to_thread=False,
        )
        def swagger_init() -> bytes:
            return _INIT_JS

        @get(f"/assets/{SWAGGER_UI_DIR.name}/{{name:str}}", cache_control=_IMMUTABLE)
        async def swagger_ui_asset(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
            # Only what the page uses: the package also holds Swagger UI's demo page, which loads
            # a spec from the internet.
            asset = _SWAGGER_UI_ASSETS.get(name)
            if asset is None:
                raise NotFoundException(f"No such Swagger UI asset: {name}")
            return await asset.answer(request)

        router.register(swagger_init)
        router.register(swagger_ui_asset)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema["info"]["title"]))
        spec_url = html.escape(self.get_openapi_json_route(request))
        vendor = f"{self._assets}/{SWAGGER_UI_DIR.name}"
        return f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>{title}</title>
    <link rel="icon" type="image/png" href="{vendor}/favicon-32x32.png">
    <link rel="stylesheet" href="{vendor}/swagger-ui.css">
    <script src="{vendor}/swagger-ui-bundle.js" defer></script>
    <script src="{self._assets}/{_INIT_NAME}" defer></script>
  </head>
  <body>
    <div id="swagger-ui" data-spec-url="{spec_url}"></div>
  </body>
</html>
""".encode()
