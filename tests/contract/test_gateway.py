"""The gateway (deploy/nginx.conf, run by a real nginx) refuses /metrics however it is spelled.

The project's own config is started with only what a test machine needs changed: the listen address,
the upstream (the app served by ``tests.served.ServerProcess``), the pid and temp paths, and no
``user``/``mime.types`` (packaging details of the container). Requests go over a raw socket, so the
path reaches nginx byte for byte (an HTTP client would normalise ``//metrics``). The client is
127.0.0.1, outside the compose network that may scrape through the gateway.

nginx is Debian's package (``apt-get install nginx``; ``.ci/run`` installs it): without it this test
fails, it never skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.domains.reports.services import RANK_CURSOR_MAX_LENGTH
from tests.served import ROOT, ServerProcess, free_port

CONFIG = ROOT / "deploy" / "nginx.conf"
NGINX = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
REFUSED = [
    "/metrics",
    "/metrics/",
    "//metrics",
    "/metrics//",
    "/metrics?x=1",
    "/metrics/?x=1",
    "/%6detrics",
    "/%6Detrics/",
    "/metrics%2F",
    "/./metrics",
    "/x/../metrics",
    "/metrics/anything",
    "/metrics.txt",
]


def gateway_config(listen_port: int, upstream_port: int, prefix: Path) -> str:
    text = CONFIG.read_text()
    replacements = {
        # As root, nginx's workers would run as nobody, who cannot write the body buffers under tmp_path.
        "user nginx;\n": f"pid {prefix}/nginx.pid;\n" + ("user root;\n" if os.geteuid() == 0 else ""),
        "    include /etc/nginx/mime.types;\n": (
            f"    client_body_temp_path {prefix}/body;\n    proxy_temp_path {prefix}/proxy;\n"
            f"    fastcgi_temp_path {prefix}/fastcgi;\n    uwsgi_temp_path {prefix}/uwsgi;\n"
            f"    scgi_temp_path {prefix}/scgi;\n"
        ),
        "listen 80 default_server;": f"listen 127.0.0.1:{listen_port} default_server;",
        "server api:8000 ": f"server 127.0.0.1:{upstream_port} ",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/nginx.conf changed: {old!r} is not there once"
        text = text.replace(old, new)
    return text


@pytest.fixture
def app_server(database_url: str, valkey_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    served = ServerProcess(database_url, valkey_url, tmp_path / "app", workers=1)
    with served.running():
        yield served


@contextmanager
def nginx_running(upstream_port: int, prefix: Path) -> Iterator[int]:
    """The project's gateway config, in a real nginx in front of ``upstream_port``: its port."""
    assert Path(NGINX).exists(), f"nginx is not installed ({NGINX}); `apt-get install nginx` (.ci/run does)"
    prefix.mkdir()
    port = free_port()
    (prefix / "nginx.conf").write_text(gateway_config(port, upstream_port, prefix))
    log = (prefix / "out.log").open("wb")
    process = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-e", "stderr", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def gateway(app_server: ServerProcess, tmp_path: Path) -> Iterator[int]:
    with nginx_running(app_server.port, tmp_path / "nginx") as port:
        yield port


async def status_of(port: int, raw_path: str) -> int:
    """The status line's code for ``GET raw_path`` sent byte for byte (retried while nginx starts)."""
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail(f"the gateway never listened on {port}")
    writer.write(f"GET {raw_path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


async def test_the_gateway_refuses_every_spelling_of_metrics(gateway: int) -> None:
    assert await status_of(gateway, "/health/live") == 200  # the gateway proxies to the app
    answers = {path: await status_of(gateway, path) for path in REFUSED}
    assert answers == dict.fromkeys(REFUSED, 403)


async def test_other_paths_still_reach_the_app(gateway: int) -> None:
    assert await status_of(gateway, "/api/products") == 200
    assert await status_of(gateway, "/metricsfoo") in (403, 404)  # never metrics


async def post_raw(port: int, path: str, length: int, *, body: bool) -> tuple[int, dict[str, str], bytes]:
    """``POST path`` with ``Content-Length: length`` (and that many bytes when ``body``): the status,
    the headers (lower-case names) and the body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
    )
    if body:
        chunk = b"x" * 65536
        for start in range(0, length, len(chunk)):
            writer.write(chunk[: min(len(chunk), length - start)])
            await writer.drain()
    await writer.drain()
    return await read_answer(reader, writer)


async def read_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[int, dict[str, str], bytes]:
    """The whole answer on a ``Connection: close`` exchange: its status, headers (lower-case names)
    and body."""
    raw = await reader.read()
    writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, content


async def test_a_body_over_the_limit_is_a_problem_at_the_gateway(gateway: int) -> None:
    assert await status_of(gateway, "/health/live") == 200
    status, headers, content = await post_raw(gateway, "/api/orders", 1024 * 1024 + 1, body=False)
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(content)
    assert problem["type"] == "/problems/payload-too-large"
    assert problem["status"] == 413
    assert len(problem["request_id"]) == 32
    assert headers["strict-transport-security"].startswith("max-age=")


async def test_a_body_answered_before_it_was_read_is_still_read_to_its_end(app_server: ServerProcess) -> None:
    """The app alone: an upload refused before its body is read (401, no token) can still be sent
    whole and its answer read after it, as nginx sends a buffered body (else nginx answers 502)."""
    status, _, _ = await post_raw(app_server.port, "/api/projects/1/files", 20 * 1024 * 1024, body=True)
    assert status == 401


async def test_route_limits_at_the_gateway_match_the_apps(gateway: int) -> None:
    # An upload within FILE_MAX_BYTES (25 MiB) and a 3 MiB page-view batch pass the gateway: the
    # app answers them (401 without a token; 400 for a batch that is not JSON), never nginx's 413.
    assert await status_of(gateway, "/health/live") == 200
    status, _, _ = await post_raw(gateway, "/api/projects/1/files", 20 * 1024 * 1024, body=True)
    assert status == 401
    status, headers, _ = await post_raw(gateway, "/api/page-views/batch", 3 * 1024 * 1024, body=True)
    assert status == 400, headers
    # Over the upload's limit: refused by the gateway, as a problem.
    status, headers, _ = await post_raw(gateway, "/api/projects/1/files", 26 * 1024 * 1024, body=False)
    assert (status, headers["content-type"]) == (413, "application/problem+json")


async def test_the_payment_webhooks_limit_is_kept_at_the_gateway(gateway: int) -> None:
    """The webhook is public until its signature is checked: a body over its 64 KiB is refused by
    nginx before it is read, never sent on to the app (which would read it to its end to answer)."""
    assert await status_of(gateway, "/health/live") == 200
    status, headers, content = await post_raw(gateway, "/api/payments/webhook", 64 * 1024 + 1, body=False)
    assert (status, headers["content-type"]) == (413, "application/problem+json")
    assert json.loads(content)["detail"] == "The request body is larger than this route accepts."  # nginx's
    status, _, _ = await post_raw(gateway, "/api/payments/webhook", 64 * 1024, body=True)
    assert status != 413


async def get_raw(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    """``GET target`` sent byte for byte: the status, the headers (lower-case names) and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    return await read_answer(reader, writer)


async def test_the_longest_cursor_a_report_issues_passes_the_gateway(gateway: int) -> None:
    """A ranked report's ``next_cursor`` holds the value it stopped at (a page path of up to 2,000
    characters, up to 4 bytes each): up to ``RANK_CURSOR_MAX_LENGTH`` (10,684) characters. nginx's
    default request-line buffer (8 KiB) answered such a next page 414; the app must see it (401
    without a token)."""
    assert await status_of(gateway, "/health/live") == 200
    cursor = "9" * 16 + "." + "A" * (RANK_CURSOR_MAX_LENGTH - 17)
    query = f"period=custom&from=2026-11-01&to=2026-11-30&tz=America/Los_Angeles&limit=100&cursor={cursor}"
    status, _, _ = await get_raw(gateway, f"/api/sites/1/pages?{query}")
    assert status == 401


async def test_a_request_line_over_the_gateways_limit_is_a_problem(gateway: int) -> None:
    assert await status_of(gateway, "/health/live") == 200
    status, headers, content = await get_raw(gateway, "/api/products?cursor=" + "A" * 17 * 1024)
    assert (status, headers["content-type"]) == (414, "application/problem+json")
    problem = json.loads(content)
    assert (problem["type"], problem["status"]) == ("/problems/uri-too-long", 414)
    assert len(problem["request_id"]) == 32


async def test_the_app_alone_refuses_a_request_line_over_64_kib_as_documented(
    app_server: ServerProcess,
) -> None:
    """granian (hyper) refuses a request target over 64 KiB with an empty 414 before any route; the
    schema documents it on every operation (``app.core.openapi``)."""
    status, _, _ = await get_raw(app_server.port, "/api/products?cursor=" + "A" * 64 * 1024)
    assert status == 414
    async with httpx.AsyncClient(base_url=app_server.base) as client:
        schema = (await client.get("/schema/openapi.json")).json()
    undocumented = [
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "responses" in operation and "414" not in operation["responses"]
    ]
    assert not undocumented


# -- nginx's own answers, request ids, uploads, Host (the gateway reviewer) --------------------------


async def exchange(port: int, head: str, body: bytes = b"") -> tuple[int, list[tuple[str, str]], bytes]:
    """One ``Connection: close`` exchange sent byte for byte: the status, every header line (names
    lower-case, repeats kept) and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    top, _, content = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return int(lines[0].split()[1]), headers, content


def only(headers: list[tuple[str, str]], name: str) -> str:
    values = [value for key, value in headers if key == name]
    assert len(values) == 1, (name, values)
    return values[0]


async def test_every_answer_carries_one_request_id_the_clients_when_the_app_keeps_it(gateway: int) -> None:
    assert await status_of(gateway, "/health/live") == 200
    status, headers, _ = await exchange(
        gateway, "GET /health/live HTTP/1.1\r\nHost: gw\r\nX-Request-ID: mine-1\r\nConnection: close\r\n\r\n"
    )
    assert (status, only(headers, "x-request-id")) == (200, "mine-1")
    status, headers, _ = await exchange(
        gateway, "GET /health/live HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and len(only(headers, "x-request-id")) == 32


async def test_a_request_id_the_app_would_refuse_never_reaches_a_problems_json(gateway: int) -> None:
    """It was pasted into nginx's own problems: a quote ended the string (broken JSON, or fields of
    the sender's choosing) and the gateway logged another id than the app."""
    assert await status_of(gateway, "/health/live") == 200
    forged = 'x","type":"https://evil.example/","detail":"Call us'
    status, headers, content = await exchange(
        gateway,
        f"POST /api/orders HTTP/1.1\r\nHost: gw\r\nX-Request-ID: {forged}\r\n"
        f"Content-Length: {1024 * 1024 + 1}\r\nConnection: close\r\n\r\n",
    )
    problem = json.loads(content)
    assert (status, problem["type"]) == (413, "/problems/payload-too-large")
    assert len(problem["request_id"]) == 32 and problem["request_id"] == only(headers, "x-request-id")


@pytest.mark.parametrize(
    ("head", "status", "kind"),
    [
        ("GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", 403, "/problems/forbidden"),
        (
            "GET /api/products HTTP/1.1\r\nHost: gw\r\nX-Big: "
            + "a" * 17 * 1024
            + "\r\nConnection: close\r\n\r\n",
            400,
            "/problems/bad-request",
        ),
        ("TRACE / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", 405, "/problems/method-not-allowed"),
        (
            "POST /api/orders HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n",
            501,
            "/problems/not-implemented",
        ),
        ("GET / HTTP/2.0\r\nHost: gw\r\n\r\n", 505, "/problems/http-version-not-supported"),
    ],
    ids=["metrics", "header-too-large", "trace", "unknown-transfer-coding", "http-2-on-http-1"],
)
async def test_the_gateways_own_refusals_are_problems(
    gateway: int, head: str, status: int, kind: str
) -> None:
    assert await status_of(gateway, "/health/live") == 200
    answered, headers, content = await exchange(gateway, head)
    problem = json.loads(content)
    assert (answered, only(headers, "content-type"), problem["type"]) == (
        status,
        "application/problem+json",
        kind,
    )
    assert problem["request_id"] == only(headers, "x-request-id")
    assert only(headers, "strict-transport-security").startswith("max-age=")


async def test_an_app_that_does_not_answer_is_a_502_problem_without_retry_after(tmp_path: Path) -> None:
    """The request may have reached the app (a reset, a timeout): nothing invites a blind retry."""
    with nginx_running(free_port(), tmp_path / "nginx") as port:  # nothing listens upstream
        assert await status_of(port, "/nginx-health") == 200
        status, headers, content = await exchange(
            port, "GET /api/products HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
    assert (status, only(headers, "content-type")) == (502, "application/problem+json")
    assert "retry-after" not in dict(headers)
    problem = json.loads(content)
    assert (problem["type"], problem["request_id"]) == (
        "/problems/bad-gateway",
        only(headers, "x-request-id"),
    )


async def test_an_upload_is_refused_before_its_body_is_whole(gateway: int) -> None:
    """Uploads are streamed to the app, not buffered at the gateway: one without a token is answered
    401 while most of its declared 20 MiB is still unsent. Buffered, nginx waited for the whole body
    (a client trickling it held 25 MiB of the gateway's buffer space per connection, unauthenticated)."""
    assert await status_of(gateway, "/health/live") == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway)
    writer.write(
        "POST /api/projects/1/files HTTP/1.1\r\nHost: gw\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {20 * 1024 * 1024}\r\nConnection: close\r\n\r\n".encode()
        + b"x" * 65536
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=20)  # buffered: never, until 30 s
    writer.close()
    assert status_line.split()[1] == b"401"


async def test_the_app_sees_the_host_with_its_port_so_the_dashboards_own_origin_passes(gateway: int) -> None:
    """The dashboard's same-origin check (no Sec-Fetch-Site: an older browser) compares Origin with
    Host: with the port dropped by the gateway, its own page was refused 403 and another origin let
    in."""
    assert await status_of(gateway, "/health/live") == 200
    own = f"127.0.0.1:{gateway}"
    for origin, refused in ((f"http://{own}", False), ("http://127.0.0.1", True)):
        status, _, _ = await exchange(
            gateway,
            f"POST /saq/login HTTP/1.1\r\nHost: {own}\r\nOrigin: {origin}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n",
        )
        assert (status == 403) is refused, (origin, status)


def logged_lines(log: Path, request_ids: set[str]) -> dict[str, dict[str, object]]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return {str(line["request_id"]): line for line in lines if line.get("request_id") in request_ids}


async def gateway_log_lines(log: Path, request_ids: set[str]) -> dict[str, dict[str, object]]:
    """The gateway's access-log lines of ``request_ids``, by id: nginx writes a line once its answer
    is sent, so the file is read again (bounded) until all are there."""
    found: dict[str, dict[str, object]] = {}
    for _ in range(200):
        found = logged_lines(log, request_ids)
        if found.keys() == request_ids:
            return found
        await asyncio.sleep(0.02)
    pytest.fail(f"the gateway logged {sorted(found)} of {sorted(request_ids)}")


async def test_the_page_view_ingest_is_logged_without_the_visitors_address_or_agent(
    gateway: int, tmp_path: Path
) -> None:
    """A site's visitors' address and agent are kept nowhere (the app's own log leaves them out of
    these routes too); every other route's line names its client, and no line keeps a query."""
    assert await status_of(gateway, "/health/live") == 200
    body = b'{"site_key": "no-such-key-0000", "url": "https://example.com/a"}'
    agent = "PrivacyProbe/1.0"
    too_large = 2 * 1024 * 1024  # over the single view's 1 MiB: the gateway's own 413, from a named location
    sent = {
        "ingest-1": ("POST /api/page-views", body, None, 422),
        "ingest-2": ("POST /api/page-views/batch", b'{"views": [' + body + b"]}", None, 422),
        "ingest-3": ("POST /api/page-views?x=1", b"", too_large, 413),
        "ingest-4": ("POST /api/page-views/", body, None, 422),  # a final slash, as the app takes it
        "ingest-5": ("POST /api/page-views", b"", -1, 501),  # the gateway's own page, a URI: $uri moves
        "other-1": ("GET /api/products?q=secret-words", b"", None, 200),
    }
    for request_id, (line, content, declared, expected) in sent.items():
        length = len(content) if declared is None else declared
        framing = "Transfer-Encoding: gzip, chunked" if length < 0 else f"Content-Length: {length}"
        status, _, _ = await exchange(
            gateway,
            f"{line} HTTP/1.1\r\nHost: gw\r\nUser-Agent: {agent}\r\nX-Request-ID: {request_id}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n",
            content,
        )
        assert status == expected, request_id
    logged = await gateway_log_lines(tmp_path / "nginx" / "out.log", set(sent))
    assert logged["other-1"]["remote_addr"] == "127.0.0.1" and logged["other-1"]["user_agent"] == agent
    assert logged["other-1"]["uri"] == "/api/products", "the query is not logged"
    for request_id in ("ingest-1", "ingest-2", "ingest-3", "ingest-4", "ingest-5"):
        line = logged[request_id]
        assert line["status"] == sent[request_id][3], line
        assert "remote_addr" not in line and "user_agent" not in line, line
        assert "127.0.0.1" not in json.dumps(line) and agent not in json.dumps(line), line
