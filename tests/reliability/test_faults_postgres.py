"""PostgreSQL faults against the real server (granian, two workers) and the real worker process.

1. Restart under mixed load. Injected: a private embedded PostgreSQL is crashed (immediate
   shutdown: every backend killed, no checkpoint, crash recovery on the next start) while eight
   clients send page views, orders and tasks, then started again. Asserted: during the outage
   ``/health/ready`` answers 503 naming ``postgres`` and every request gets a
   503 problem+json (never a 500, never a dropped connection, never a hang); afterwards the same
   server processes (no restart of granian or its workers) serve again and readiness is 200.
   Lost: nothing: every page view, order and task acknowledged (202/201) before, during or after the
   outage is in the database, and every acknowledged order is reserved by the worker, whose pool and
   relay also recovered on their own.
2. A PostgreSQL that accepts connections and never answers. Injected: ``DATABASE_URL`` points at a TCP
   listener that accepts every connection and never reads from it. Asserted: ``/health/ready``
   answers 503 naming ``postgres``, its check cut at its deadline (``timeout``); 24 concurrent
   requests that need the database each get a 503 problem within 5 x ``DATABASE_TIMEOUT_S`` (a
   generous deadline: 24 piled up behind one another would take 24 x); the server still stops on
   SIGTERM, gracefully (exit 0).
3. A PostgreSQL frozen mid-session (SIGSTOP of the postmaster and every backend: established
   connections that never answer again). Same assertions as 2, and the server serves again once the
   database is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from app.core.errors import DEPENDENCY_WARN_INTERVAL_S
from app.core.migrate import dbmate
from tests.factories import PROBLEM, wait_until
from tests.faults import (
    GENEROUS,
    MixedLoad,
    PrivatePostgres,
    Shop,
    Worker,
    children_of,
    open_shop,
    readiness,
    scalar,
    stored,
)
from tests.served import ServerProcess
from tests.valkey_control import ControlledValkey

DATABASE_TIMEOUT_S = 2.0
HEALTH_TIMEOUT_S = 1.0
FAULT_ENV = {
    **GENEROUS,
    "DATABASE_TIMEOUT_S": str(DATABASE_TIMEOUT_S),
    "HEALTH_TIMEOUT_S": str(HEALTH_TIMEOUT_S),
    "HEALTH_READY_SHARED_S": "0",  # the probe right after the fault checks (sharing: test_health.py)
    "STATEMENT_TIMEOUT_MS": "5000",
}


FROZEN_LONGER_THAN_THE_BOUND_S = 60.0
"""How long the test waits for the request caught inside PostgreSQL by the freeze: far past its
bound (``STATEMENT_TIMEOUT_MS`` + ``DATABASE_TIMEOUT_S``, 7 s here), and the database stays frozen
until it is answered."""


def most_within(times: list[datetime], window: timedelta) -> int:
    """The most of ``times`` that fall within one ``window`` (starting at one of them)."""
    ordered = sorted(times)
    return max(
        (sum(1 for later in ordered[i:] if later - start < window) for i, start in enumerate(ordered)),
        default=0,
    )


async def test_postgres_restart_under_mixed_load_loses_no_acknowledged_write(
    private_postgres: PrivatePostgres,
    controlled_valkey: ControlledValkey,
    http: httpx.AsyncClient,
    processes: list[ServerProcess | Worker],
    tmp_path: Path,
) -> None:
    url = _migrated(private_postgres)
    shop = await open_shop(url)
    server = ServerProcess(url, controlled_valkey.url, tmp_path, env=FAULT_ENV)
    worker = Worker(tmp_path, url, controlled_valkey.url, DATABASE_TIMEOUT_S=str(DATABASE_TIMEOUT_S))
    processes += [server, worker]
    server.start()
    worker.start()
    await server.wait_ready(http)
    assert server.process is not None
    granian_workers = children_of(server.process.pid)
    assert len(granian_workers) == 2

    load = MixedLoad(http, server.base, shop)
    load.start()
    outage: tuple[int, dict[str, bool], float] | None = None
    try:
        await load.until_acked("before")

        load.phase = "outage"
        await asyncio.to_thread(private_postgres.crash)

        async def reported_down() -> bool:
            nonlocal outage
            outage = await readiness(http, server.base)
            return outage[0] == 503 and not outage[1]["postgres"]

        await wait_until(reported_down, 30, "readiness reports postgres down")

        async def refusal_reported() -> bool:
            """Said as an error (the pool's attempts to connect are refused), not a timeout."""
            return (await readiness(http, server.base))[2].get("postgres") == "error"

        await wait_until(refusal_reported, 30, "readiness says postgres refuses, not that it hangs")
        await load.until(lambda: load.count("outage", 503) >= 30, "30 503s during the outage")

        load.phase = "after"
        await asyncio.to_thread(private_postgres.start)

        async def ready() -> bool:
            return (await readiness(http, server.base))[0] == 200

        await wait_until(ready, 60, "readiness is 200 again")
        await load.until_acked("after")
    finally:
        await load.stop()

    assert outage is not None
    # The schema check reads PostgreSQL too: down with it.
    assert outage[1] == {"postgres": False, "schema": False, "valkey": True, "queue": True}, outage
    assert load.failures == [], load.failures[:10]
    assert load.count("outage", 500) == 0
    assert children_of(server.process.pid) == granian_workers, "the pool recovered without a restart"
    # At 3 a.m.: the outage is in the log, with its cause, once a minute per process and source (not
    # once per request; an outage longer than a minute, as on a slow machine, is said again).
    logged = [
        json.loads(line)
        for line in server.log_path.read_text(errors="replace").splitlines()
        if '"dependency_unavailable"' in line
    ]
    assert logged, f"the outage left no warning:\n{server.log_tail()}"
    assert {(entry["level"], entry["dependency"]) for entry in logged} == {("warning", "postgresql")}
    assert all(entry["message"] for entry in logged), logged
    for source in {entry["source"] for entry in logged}:
        said = [datetime.fromisoformat(entry["timestamp"]) for entry in logged if entry["source"] == source]
        assert most_within(said, timedelta(seconds=DEPENDENCY_WARN_INTERVAL_S - 1)) <= len(granian_workers), (
            logged
        )

    # Lost: nothing.
    in_database = await stored(url, load)
    for kind, acknowledged in load.acked.items():
        assert acknowledged - in_database[kind] == set(), f"acknowledged {kind}s were lost"

    async def all_reserved() -> bool:
        assert worker.alive(), worker.log_tail()
        pending = await scalar(
            url,
            "select count(*) from orders where id = any(%s) and status = 'pending'",
            list(load.acked["order"]),
        )
        return int(pending) == 0

    await wait_until(all_reserved, 60, "the worker has reserved every acknowledged order")
    # An order whose commit raced the crash is stored though its client got a 503 (the outcome was
    # unknown to it; a retry with the same Idempotency-Key finds it): counted, never rejected.
    reserved = await scalar(
        url,
        "select count(*) from orders where status = 'reserved' and id = any(%s)",
        list(load.acked["order"]),
    )
    assert reserved == len(load.acked["order"]), "every acknowledged order is reserved"
    rejected = await scalar(url, "select count(*) from orders where status = 'rejected'")
    assert rejected == 0, "no order rejected: the stock is ample"


class HangingGate:
    """A TCP listener that accepts every connection and never reads or answers, until ``open_to``
    a unix socket: then it relays each new connection there (what a network partition that
    heals looks like to the app)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = int(self.sock.getsockname()[1])
        self.held = 0
        self._target: str | None = None
        self._closed = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, sock=self.sock)

    def open_to(self, unix_socket: str) -> None:
        self._target = unix_socket

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._target is None:
            self.held += 1
            await self._closed.wait()  # never reads, never answers
            return
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(self._target)
        self._writers.append(upstream_writer)
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    async def close(self) -> None:
        self._closed.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def assert_unavailable_in_time(http: httpx.AsyncClient, server: ServerProcess, shop: Shop) -> None:
    """Readiness names postgres, cut at its deadline; 24 concurrent requests that need the database
    (orders, tasks, page views) and a feed stream each get a 503 problem within 5 x the pool's
    deadline (24 waiting behind one another would take 24 x)."""
    status, checks, failures = await readiness(http, server.base)
    assert (status, checks["postgres"]) == (503, False), checks
    assert checks["valkey"], checks
    # Cut at its deadline (timeout), not waited out, or failed at once once the pool's attempts to
    # connect had timed out (error: DatabaseUnreachable, its cause in the log).
    assert failures["postgres"] in ("timeout", "error"), failures

    async def request(n: int) -> tuple[str, int | None, str]:
        """(route, status or None when no answer came within 5 x the deadline, body)."""
        path, body, headers = [
            (
                "/api/orders",
                {"lines": [{"product_id": shop.product, "quantity": 1}]},
                shop.headers[0] | {"Idempotency-Key": f"hang-{n}"},
            ),
            (f"/api/projects/{shop.project}/tasks", {"title": "hang"}, shop.headers[1]),
            ("/api/page-views", {"site_key": shop.site_key, "url": "https://fault.example/hang"}, {}),
        ][n % 3]
        try:
            response = await http.post(
                f"{server.base}{path}", json=body, headers=headers, timeout=5 * DATABASE_TIMEOUT_S
            )
        except httpx.TimeoutException:
            return path, None, ""
        ok = response.status_code == 503 and response.headers["content-type"] == PROBLEM
        return path, response.status_code, "" if ok else response.text

    async def stream() -> tuple[str, int | None, str]:
        """The feed's stream read the database only once its answer had started: a 500, or a 200
        cut off after its headers."""
        path = "/api/feed/stream"
        try:
            async with http.stream(
                "GET", f"{server.base}{path}", headers=shop.headers[0], timeout=5 * DATABASE_TIMEOUT_S
            ) as response:
                body = (await response.aread()).decode(errors="replace")
        except httpx.TimeoutException:
            return path, None, ""
        except httpx.HTTPError as exc:  # an answer cut off
            return path, 0, repr(exc)
        ok = response.status_code == 503 and response.headers["content-type"] == PROBLEM
        return path, response.status_code, "" if ok else body

    answers = await asyncio.gather(*(request(n) for n in range(24)), stream())
    assert [a for a in answers if a[1] != 503 or a[2]] == [], (
        "not a 503 problem, or none within 5 x the deadline"
    )


async def test_a_postgres_that_never_answers_gives_timely_503s_and_the_pool_recovers(
    private_postgres: PrivatePostgres,
    controlled_valkey: ControlledValkey,
    http: httpx.AsyncClient,
    processes: list[ServerProcess | Worker],
    tmp_path: Path,
) -> None:
    shop = await open_shop(_migrated(private_postgres))
    gate = HangingGate()
    await gate.serve()
    try:
        url = f"postgresql://postgres:@127.0.0.1:{gate.port}/faults"
        metrics = tmp_path / "metrics"  # both workers' counts in every scrape
        metrics.mkdir()
        env = {**FAULT_ENV, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        server = ServerProcess(url, controlled_valkey.url, tmp_path, env=env)
        processes.append(server)
        server.start()

        async def live() -> bool:
            assert server.process is not None and server.process.poll() is None, server.log_tail()
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get(f"{server.base}/health/live", timeout=2)).status_code == 200
            return False

        await wait_until(live, 60, "the server answers /health/live")
        await assert_unavailable_in_time(http, server, shop)
        assert gate.held > 0, "the app's connections reached the hanging listener"
        # The ingest is left out of the request metrics; its 503s were in no metric at all.
        refused = await scraped(http, server.base, "app_page_view_requests_not_accepted_total")
        assert refused.get((("route", "/api/page-views"), ("status", "503")), 0) >= 8, refused
        # and the site-key lookup reported the outage, as every other route's 503 does
        down = await scraped(http, server.base, "app_dependency_unavailable_total")
        assert down.get((("dependency", "postgresql"), ("source", "page-view-keys")), 0) >= 1, down

        # The partition heals: the pool's hung attempts time out (connect_timeout) and it reconnects.
        gate.open_to(str(private_postgres.directory / ".s.PGSQL.5432"))

        async def ready() -> bool:
            return (await readiness(http, server.base))[0] == 200

        await wait_until(ready, 60, "readiness is 200 once the database answers")
        response = await http.post(
            f"{server.base}/api/projects/{shop.project}/tasks",
            json={"title": "healed"},
            headers=shop.headers[0],
        )
        assert response.status_code == 201, response.text

        await asyncio.to_thread(server.kill, signal.SIGTERM, 30)  # in a thread: the gate relays in this loop
        assert server.process is not None
        assert server.process.returncode == 0, server.log_tail()  # stopped gracefully within 30 s
    finally:
        await gate.close()


async def scraped(http: httpx.AsyncClient, base: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of ``name`` on the server's ``/metrics``, by their labels (sorted pairs)."""
    text = (await http.get(f"{base}/metrics", timeout=10)).text
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def _migrated(private_postgres: PrivatePostgres) -> str:
    url = private_postgres.url("faults")
    dbmate(url, "up")
    return url


async def test_a_postgres_frozen_mid_session_gives_timely_503s_and_recovers(
    private_postgres: PrivatePostgres,
    controlled_valkey: ControlledValkey,
    http: httpx.AsyncClient,
    processes: list[ServerProcess | Worker],
    tmp_path: Path,
) -> None:
    url = _migrated(private_postgres)
    shop = await open_shop(url)
    server = ServerProcess(url, controlled_valkey.url, tmp_path, env=FAULT_ENV)
    processes.append(server)
    server.start()
    await server.wait_ready(http)
    # Served before the freeze, so every pool (the app's, the ingest sink's) holds open connections.
    load = MixedLoad(http, server.base, shop)
    load.start()
    try:
        await load.until_acked("before", 5)
    finally:
        await load.stop()
    assert load.failures == [], load.failures[:10]

    created = await http.post(
        f"{server.base}/api/projects/{shop.project}/tasks", json={"title": "locked"}, headers=shop.headers[0]
    )
    assert created.status_code == 201, created.text
    task = created.json()["id"]

    async with (
        await psycopg.AsyncConnection.connect(url) as locker,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as watcher,
    ):
        await locker.execute("select id from tasks where id = %s for update", (task,))
        inside = asyncio.ensure_future(
            http.patch(
                f"{server.base}/api/tasks/{task}",
                json={"title": "waits"},
                headers=shop.headers[0],
                timeout=FROZEN_LONGER_THAN_THE_BOUND_S,
            )
        )

        async def waiting_on_the_lock() -> bool:
            cur = await watcher.execute(
                "select count(*) from pg_stat_activity"
                " where wait_event_type = 'Lock' and datname = current_database()"
            )
            return (await cur.fetchone() or (0,))[0] == 1

        await wait_until(waiting_on_the_lock, 30, "the PATCH waits on the task's lock inside PostgreSQL")
        private_postgres.pause()
        try:
            # Fault review: a request already inside a statement waited as long as the freeze lasted
            # (the server enforces its statement_timeout, and a frozen one enforces nothing).
            answer = await inside
            assert (answer.status_code, answer.headers["content-type"]) == (503, PROBLEM), answer.text
            await assert_unavailable_in_time(http, server, shop)
        finally:
            private_postgres.resume()

    async def ready() -> bool:
        return (await readiness(http, server.base))[0] == 200

    await wait_until(ready, 60, "readiness is 200 again")
    response = await http.post(
        f"{server.base}/api/projects/{shop.project}/tasks", json={"title": "after"}, headers=shop.headers[0]
    )
    assert response.status_code == 201, response.text
    unchanged = await http.get(f"{server.base}/api/tasks/{task}", headers=shop.headers[0])
    assert unchanged.json()["title"] == "locked", "the request answered 503 changed nothing"
