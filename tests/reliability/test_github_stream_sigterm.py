"""SIGTERM with a GitHub refresh stream open, on the real server (granian, in-process workers).

granian runs the application's lifespan shutdown only once every connection has ended, and kills a
worker that takes longer than its kill timeout. A refresh stream lasts up to ``SSE_MAX_S`` (two
minutes), longer than that timeout: it kept the worker from stopping until granian killed it, which
skipped the shutdown (the in-process SAQ workers stayed registered in Valkey). It must end at the
signal, as the feed's live streams do (``app.core.stops``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import uuid
from pathlib import Path

import httpx
import msgspec
from valkey.asyncio import Valkey

from app.core.modules import QUEUE_NAMES
from tests.faults import SECRET_KEY
from tests.functional.test_github_streams import running_refresh
from tests.served import ServerProcess

WAIT_S = 60.0
PASSWORD = "stream-password-123"
ENV = {
    "SECRET_KEY": SECRET_KEY,
    "WORKER_IN_PROCESS": "true",
    "LOG_LEVEL": "INFO",
    "RATE_LIMIT_AUTH_PER_MINUTE": "10000",
}


async def signed_in(http: httpx.AsyncClient) -> dict[str, str]:
    email = f"streamer-{uuid.uuid4().hex[:8]}@example.com"
    account = {"email": email, "password": PASSWORD, "display_name": "Streamer"}
    assert (await http.post("/api/auth/register", json=account)).status_code in (201, 202)
    login = await http.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}", "Accept": "text/event-stream"}


async def test_sigterm_ends_an_open_refresh_stream_and_the_server_shuts_down_gracefully(
    database_url: str, valkey_url: str, valkey: Valkey, tmp_path: Path
) -> None:
    # Started "an hour from now": the check for an abandoned job never fails it during the test.
    running = msgspec.structs.replace(
        running_refresh(), started_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    await valkey.set(f"github:refresh:{running.id}", msgspec.json.encode(running), ex=600)
    server = ServerProcess(database_url, valkey_url, tmp_path / "server", workers=1, env=ENV)
    server.start()
    try:
        server.wait_ready_sync()
        async with httpx.AsyncClient(base_url=server.base, timeout=WAIT_S) as http:
            headers = await signed_in(http)
            async with http.stream("GET", running.events_url, headers=headers) as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                assert f"{running.id}:running" in await asyncio.wait_for(anext(lines), WAIT_S)
                assert server.process is not None
                server.process.send_signal(signal.SIGTERM)  # as a container stop does
                async with asyncio.timeout(WAIT_S):
                    async for _ in lines:  # the state's other lines, until the server ends it
                        pass
        assert await asyncio.to_thread(server.process.wait, WAIT_S) == 0
        log = server.log_path.read_text(errors="replace")
        assert "refused to gracefully stop" not in log
        shut_down = [line for line in log.splitlines() if '"Working shutting down"' in line]
        assert len(shut_down) == len(QUEUE_NAMES), "the lifespan shutdown stopped every in-process worker"
    finally:
        server.kill(signal.SIGTERM)
