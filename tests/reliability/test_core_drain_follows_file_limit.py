"""An answer given before a body was read is still read after the body, for every body a route accepts.

The request-context layer reads what is left of such a body (``app.core.middleware``), up to the
largest body any route accepts: built from the settings when the app is assembled, so an operator who
raises ``FILE_MAX_BYTES`` (and nginx's limit with it, as deploy/README.md says) keeps the answers to
uploads refused early (401, 403, 404, 409, 429) instead of a reset connection (nginx's 502).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from app.config import Settings
from app.core.middleware import MULTIPART_OVERHEAD, RequestContextMiddleware
from app.main import create_app
from tests.contract.test_gateway import post_raw
from tests.served import ServerProcess

MiB = 1024 * 1024
RAISED_FILE_MAX_BYTES = 40 * MiB
BODY_BYTES = 36 * MiB  # within the raised limit, above the 32 MiB the layer used to stop at


@pytest.fixture
def raised_server(database_url: str, valkey_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    served = ServerProcess(
        database_url,
        valkey_url,
        tmp_path / "app",
        workers=1,
        env={"FILE_MAX_BYTES": str(RAISED_FILE_MAX_BYTES)},
    )
    with served.running():
        yield served


async def test_an_upload_within_a_raised_file_limit_refused_early_is_read_to_its_end(
    raised_server: ServerProcess,
) -> None:
    try:
        status, _, _ = await post_raw(raised_server.port, "/api/projects/1/files", BODY_BYTES, body=True)
    except (ConnectionResetError, BrokenPipeError, IndexError) as exc:
        pytest.fail(f"a {BODY_BYTES // MiB} MiB upload (FILE_MAX_BYTES=40 MiB) lost its 401: {exc!r}")
    assert status == 401


def _drain_limit(settings: Settings, **changes: int) -> int:
    layer = create_app(msgspec.structs.replace(settings, **changes)).asgi_handler
    assert isinstance(layer, RequestContextMiddleware)
    return layer.drain_at_most


def test_the_drain_limit_is_the_largest_body_a_route_accepts(settings: Settings) -> None:
    # An upload: FILE_MAX_BYTES and its multipart overhead.
    assert (
        _drain_limit(settings, file_max_bytes=RAISED_FILE_MAX_BYTES)
        == RAISED_FILE_MAX_BYTES + MULTIPART_OVERHEAD
    )
    # Small uploads: the page-view batch's 4 MiB, or MAX_BODY_BYTES when that is larger.
    assert _drain_limit(settings, file_max_bytes=MiB, max_body_bytes=MiB) == 4 * MiB
    assert _drain_limit(settings, file_max_bytes=MiB, max_body_bytes=6 * MiB) == 6 * MiB
