"""The harness of the fault suite (``test_faults_*.py``); this module holds no tests.

- ``PrivatePostgres``: an embedded PostgreSQL of the test's own (pgserver's binaries, a temporary
  data directory and socket), which a test may crash and start again without disturbing the
  session's database.
- ``Shop``: users who edit one project, a product with ample stock and a tracked site, with bearer
  tokens minted with the served apps' signing key (``SECRET_KEY``).
- ``MixedLoad``: concurrent clients that place page views, orders and tasks in turn against a served
  app and record every answer by phase: what was acknowledged (202/201, with the id the client can
  later look for) and anything else. An answer other than an acknowledgement or a 503 problem+json
  (a 500, a bare 503, a dropped connection, no answer within ``request_timeout_s``) is a failure.
  With a ``cutoff`` (a stop signal), requests sent before it that got no answer are kept apart:
  ``stored_unanswered`` says which of them were committed (an answer the server dropped).
- ``Worker``: ``python -m workers`` as a subprocess.
- ``stored``: which acknowledged ids the database holds.

(A support module named like a test module because the fault suite owns only ``test_faults_*``
files; it could move to ``tests/faults.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import httpx
import msgspec
from psycopg import AsyncConnection

from app.config import load_settings
from app.core.security import AccessTokens
from app.db.models import ProjectRole, register_types
from tests.factories import PROBLEM, clean_env, create_user, make_product, make_project, make_site, wait_until

ROOT = Path(__file__).resolve().parents[1]
# Found without importing pgserver, whose import warns where XDG_RUNTIME_DIR is unset (CI).
_PGSERVER = importlib.util.find_spec("pgserver")
assert _PGSERVER is not None and _PGSERVER.origin is not None, "pgserver is a test dependency"
PG_BIN = Path(_PGSERVER.origin).parent / "pginstall" / "bin"
SECRET_KEY = secrets.token_urlsafe(48)
"""The signing key of every app and worker the fault tests start (tokens are minted with it)."""

GENEROUS = {
    "SECRET_KEY": SECRET_KEY,
    "MAX_OPEN_ORDERS": "1000000",
    "ORDER_MAX_UNITS_PER_PRODUCT": "1000000",
    "ORDER_MAX_UNITS_HELD": "1000000",
    "RATE_LIMIT_DEFAULT_PER_MINUTE": "1000000",
    "RATE_LIMIT_DEFAULT_PER_HOUR": "10000000",
    "RATE_LIMIT_INGEST_PER_MINUTE": "100000000",
    "RATE_LIMIT_INGEST_PER_HOUR": "1000000000",
    "MONITORING_CHECK_INTERVAL_S": "3600",
}
"""Settings that keep limits out of a load test's way (the rate limit tests set their own)."""


# -- a PostgreSQL of the test's own -------------------------------------------------------------


class PrivatePostgres:
    """pgserver's PostgreSQL in a temporary directory, listening on a unix socket only.

    ``crash`` is an immediate shutdown (every backend dies, no checkpoint: recovery on the next
    start), the harshest restart short of a power cut. As root, the server runs as pgserver's
    ``pgserver`` user, as the session's embedded server does.
    """

    def __init__(self) -> None:
        # A short path: a unix socket's path is limited to ~107 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="pgf-"))
        self.directory.chmod(0o777)
        self.pgdata = self.directory / "data"
        self._user = "pgserver" if os.geteuid() == 0 else None
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
        )

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(PG_BIN / program), *args],
            check=True,
            capture_output=True,
            user=self._user,
            timeout=60,
        )

    def url(self, database: str) -> str:
        return f"postgresql://postgres:@/{database}?host={self.directory}"

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60",
            "-o", "-h '' -k " + str(self.directory),
            "-l", str(self.directory / "log"),
            "start",
        )  # fmt: skip

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop")

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])

    def pause(self) -> None:
        """Freeze the postmaster and every backend (SIGSTOP): connections hang, nothing fails.

        The postmaster first, and its children listed once it has stopped: listed first, a backend it
        was forking meanwhile (the pool opening one more connection) escaped the freeze and served
        requests through it (a task created, 201, while the database was "frozen")."""
        postmaster = self.postmaster_pid()
        os.kill(postmaster, signal.SIGSTOP)
        for _ in range(1000):  # kill() returns before the process stops; a fork under way ends first
            if _state(postmaster) in ("T", "t"):
                break
            time.sleep(0.001)
        else:
            raise AssertionError(f"the postmaster {postmaster} did not stop")
        for pid in children_of(postmaster):
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._server_pids():
            os.kill(pid, signal.SIGCONT)

    def _server_pids(self) -> list[int]:
        postmaster = self.postmaster_pid()
        return [postmaster, *children_of(postmaster)]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.resume()
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


# -- the data a load needs ------------------------------------------------------------------------


class Shop(msgspec.Struct):
    users: list[int]
    headers: list[dict[str, str]]
    project: int
    product: int
    site_key: str
    site_id: int


def mint(user_id: int) -> dict[str, str]:
    settings = load_settings({"APP_ENV": "test", "SECRET_KEY": SECRET_KEY})
    token, _ = AccessTokens(settings).issue(user_id, "member", uuid.uuid4())
    return {"Authorization": f"Bearer {token}"}


async def open_shop(database_url: str, *, users: int = 3, stock: int = 1_000_000) -> Shop:
    """Users who edit one project, a product with ``stock`` units and a site (rows, no events)."""
    async with await AsyncConnection.connect(database_url, autocommit=True) as db:
        await register_types(db)
        ids = [(await create_user(db)).id for _ in range(users)]
        project = await make_project(db, ids[0], dict.fromkeys(ids[1:], ProjectRole.EDITOR))
        product = await make_product(db, stock=stock)
        site = await make_site(db, ids[0])
        await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    return Shop(ids, [mint(i) for i in ids], project, product, site.ingest_key, site.id)


# -- load -----------------------------------------------------------------------------------------

KINDS = ("view", "order", "task")


class MixedLoad:
    """``clients`` concurrent clients, each sending a page view, an order and a task in turn."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base: str,
        shop: Shop,
        *,
        clients: int = 8,
        request_timeout_s: float = 15.0,
    ) -> None:
        self.http = http
        self.base = base
        self.shop = shop
        self.clients = clients
        self.timeout = request_timeout_s
        self.phase = "before"
        self.acked: dict[str, set[Any]] = {kind: set() for kind in KINDS}
        self.acked_in: Counter[tuple[str, str]] = Counter()  # (phase, kind)
        self.answers: Counter[tuple[str, str, int]] = Counter()  # (phase, kind, status)
        self.failures: list[str] = []
        self.cutoff: float | None = None
        """Set (``time.monotonic()``) when the server is told to stop: a request sent after it may find
        the server gone (counted in ``refused_after_cutoff``)."""
        self.refused_after_cutoff = 0
        self.unanswered: list[tuple[str, uuid.UUID]] = []
        """Requests in flight at the cutoff that got no answer: lost only if stored (see below)."""
        self.answered_across_cutoff = 0
        """Requests sent before the cutoff and answered after it: they were in flight at the signal."""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), self.timeout * 2)

    def count(self, phase: str, status: int | None = None) -> int:
        """Answers of ``phase`` (with ``status``, or acknowledgements when ``None``)."""
        if status is None:
            return sum(n for (p, _), n in self.acked_in.items() if p == phase)
        return sum(n for (p, _, s), n in self.answers.items() if p == phase and s == status)

    def acked_each(self, phase: str, at_least: int) -> bool:
        return all(self.acked_in[(phase, kind)] >= at_least for kind in KINDS)

    async def until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        """``wait_until`` for the load's own counts; a failure shows every answer so far."""
        try:
            await wait_until(holds(predicate), timeout_s, what)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nanswers: {dict(self.answers)}\nfailures: {self.failures[:5]}"
            ) from None

    async def until_acked(self, phase: str, at_least: int = 15) -> None:
        await self.until(
            lambda: self.acked_each(phase, at_least), f"{at_least} acknowledgements of each kind {phase}"
        )

    async def _client(self, n: int) -> None:
        headers = self.shop.headers[n % len(self.shop.headers)]
        turn = n
        while not self._stop.is_set():
            kind = KINDS[turn % len(KINDS)]
            turn += 1
            await self._send(kind, headers)

    async def _send(self, kind: str, headers: dict[str, str]) -> None:
        phase = self.phase
        event_id = uuid.uuid4()
        sent = time.monotonic()
        try:
            if kind == "view":
                body = {"site_key": self.shop.site_key, "url": f"https://fault.example/{event_id.int % 9}",
                        "event_id": str(event_id)}  # fmt: skip
                response = await self.http.post(
                    f"{self.base}/api/page-views", json=body, timeout=self.timeout
                )
            elif kind == "order":
                response = await self.http.post(
                    f"{self.base}/api/orders",
                    json={"lines": [{"product_id": self.shop.product, "quantity": 1}]},
                    headers=headers | {"Idempotency-Key": event_id.hex},
                    timeout=self.timeout,
                )
            else:
                response = await self.http.post(
                    f"{self.base}/api/projects/{self.shop.project}/tasks",
                    json={"title": f"fault {event_id.hex}"},
                    headers=headers,
                    timeout=self.timeout,
                )
        except httpx.TimeoutException:
            self.failures.append(f"{phase} {kind}: no answer within {self.timeout:g}s")
            return
        except httpx.HTTPError as exc:
            if self.cutoff is not None:
                if sent >= self.cutoff:
                    self.refused_after_cutoff += 1
                else:
                    self.unanswered.append((kind, event_id))
                return
            self.failures.append(f"{phase} {kind}: {type(exc).__name__} {exc}")
            return
        self.answers[(phase, kind, response.status_code)] += 1
        if self.cutoff is not None and sent < self.cutoff:
            self.answered_across_cutoff += 1
        if response.status_code in (201, 202):
            self.acked[kind].add(event_id if kind == "view" else response.json()["id"])
            self.acked_in[(phase, kind)] += 1
        elif response.status_code != 503 or response.headers.get("content-type") != PROBLEM:
            self.failures.append(f"{phase} {kind}: {response.status_code} {response.text[:300]}")


async def stored(database_url: str, load: MixedLoad) -> dict[str, set[Any]]:
    """The acknowledged ids of each kind that are in the database (to compare with ``load.acked``)."""
    async with await AsyncConnection.connect(database_url, autocommit=True) as db:
        views = await db.execute(
            "select event_id from page_views where site_id = %s and event_id = any(%s)",
            (load.shop.site_id, list(load.acked["view"])),
        )
        orders = await db.execute("select id from orders where id = any(%s)", (list(load.acked["order"]),))
        tasks = await db.execute("select id from tasks where id = any(%s)", (list(load.acked["task"]),))
        return {
            "view": {row[0] for row in await views.fetchall()},
            "order": {row[0] for row in await orders.fetchall()},
            "task": {row[0] for row in await tasks.fetchall()},
        }


async def stored_unanswered(database_url: str, load: MixedLoad) -> list[tuple[str, uuid.UUID]]:
    """The unanswered requests whose write was committed: an answer the server dropped."""
    found = []
    async with await AsyncConnection.connect(database_url, autocommit=True) as db:
        for kind, event_id in load.unanswered:
            param: object
            if kind == "view":
                sql, param = "select count(*) from page_views where event_id = %s", event_id
            elif kind == "order":
                sql, param = "select count(*) from idempotency_keys where key = %s", event_id.hex
            else:
                sql, param = "select count(*) from tasks where title = %s", f"fault {event_id.hex}"
            row = await (await db.execute(sql, (param,))).fetchone()
            if row is not None and row[0]:
                found.append((kind, event_id))
    return found


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``predicate`` as the async condition ``wait_until`` polls."""

    async def check() -> bool:
        return predicate()

    return check


def query_holds(database_url: str, sql: str, *params: Any) -> Callable[[], Awaitable[bool]]:
    """A condition for ``wait_until``: ``sql`` (one boolean) is true."""

    async def check() -> bool:
        return bool(await scalar(database_url, sql, *params))

    return check


async def scalar(database_url: str, sql: str, *params: Any) -> Any:
    async with await AsyncConnection.connect(database_url, autocommit=True) as db:
        row = await (await db.execute(sql, params)).fetchone()
        assert row is not None
        return row[0]


# -- processes -------------------------------------------------------------------------------------


class Worker:
    """``python -m workers`` on the given database and Valkey, its output in ``log_path``."""

    def __init__(self, directory: Path, database_url: str, valkey_url: str, **env: str) -> None:
        self.log_path = directory / f"worker-{secrets.token_hex(3)}.log"
        settings = {
            "APP_ENV": "test",
            "DATABASE_URL": database_url,
            "VALKEY_URL": valkey_url,
            "DATA_DIR": str(directory),
            "LOG_LEVEL": "WARNING",
            "OUTBOX_POLL_INTERVAL_S": "0.1",
            "JOB_TIMEOUT_S": "3",  # a job left active by a lost Valkey is swept and retried soon
            "DATABASE_POOL_MIN": "1",
            "DATABASE_POOL_MAX": "6",
        }
        self.env = clean_env(**{**settings, **GENEROUS, **env})
        self.command = [sys.executable, "-m", "workers"]
        """What runs: ``python -m workers`` (or, set by a test, ``python -m app.cli worker``)."""
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGKILL, timeout_s: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            code = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def children_of(pid: int) -> set[int]:
    """The live direct children of ``pid`` (granian's workers, PostgreSQL's backends)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state not in ("Z", "X"):
            found.add(int(entry.name))
    return found


async def readiness(http: httpx.AsyncClient, base: str) -> tuple[int, dict[str, bool], dict[str, str]]:
    """``/health/ready``: status, each dependency's ``ok``, and why each failed check failed
    (``timeout``: cut at its deadline; ``error``). No answer within 30 s fails the test: a check
    that waits on a dependency that never answers is the fault these tests look for."""
    response = await http.get(f"{base}/health/ready", timeout=30)
    checks = response.json()["checks"]
    return (
        response.status_code,
        {c["name"]: c["ok"] for c in checks},
        {c["name"]: c["detail"] for c in checks if c.get("detail")},
    )


def _state(pid: int) -> str:
    """A process's state letter from ``/proc/<pid>/stat`` (``T``: stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]
