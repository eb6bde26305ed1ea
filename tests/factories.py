"""The test-data library: users and callers, projects, tasks, products, sites, problem checks and the
app harnesses. Every test module arranges its data through these; do not paste helpers into a module.

Rows are inserted straight into the database (no events, no HTTP), in states the API can produce: a
project always has its owner as an ``owner`` member. Callers get access tokens minted by the app's own
``AccountService``; a real ``login`` (argon2, refresh family) only where the login is under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar.types import ASGIApp, Receive, Scope, Send
from psycopg import AsyncConnection, AsyncRawCursor, sql
from saq import Queue
from structlog.stdlib import ProcessorFormatter

from app.config import Settings
from app.core.cache import Cache
from app.core.idempotency import idempotency as idempotency_module
from app.core.logging import configure_logging
from app.core.migrate import MIGRATIONS_DIR
from app.core.modules import Module
from app.core.pool import FailFastPool
from app.core.queues import build_queues
from app.core.slots import Slot
from app.db import accounts as account_queries
from app.db import products as product_queries
from app.db import projects as project_queries
from app.db import sites as site_queries
from app.db import tasks as task_queries
from app.db.models import ProjectRole, Site, TaskPriority, TaskStatus, User, UserRole
from app.domains.accounts.dashboard_tokens import SESSION_COOKIE
from app.domains.accounts.module import module as accounts_module
from app.domains.accounts.services import AccountService
from app.domains.github.services import GithubService
from app.domains.monitoring.capture import RawEvent
from app.domains.monitoring.services import MonitoringService
from app.domains.orders.module import module as orders_module
from app.domains.products.module import module as products_module
from app.domains.tasks.schemas import MAX_POSITION
from app.main import create_app

Client = AsyncTestClient[Litestar]
COMMERCE: tuple[Module, ...] = (idempotency_module, accounts_module, products_module, orders_module)
"""The modules a test needs for products and orders services without an app (accounts: an
administrator's write checks the actor's row)."""
PASSWORD = "correct horse battery staple"
FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$bm90LWEtcmVhbC1zYWx0$bm90LWEtcmVhbC1oYXNoLW5vdC1hLXJlYWwtaGFzaA"
"""A well-formed argon2id hash that no password matches: users who never log in (tokens are minted)."""
PROBLEM = "application/problem+json"

_counter = itertools.count(1)
_run = uuid.uuid4().hex[:8]

MakeCache = Callable[..., Cache]
OpenPool = Callable[..., contextlib.AbstractAsyncContextManager[FailFastPool]]
"""``open_pool(database_url, *, wait=True, **setting_changes)`` (the fixture in
``tests/functional/conftest.py``): the app's pool (``create_pool``) on that URL, with those settings
changed, open for the block (``wait=False``: without waiting for a first connection, as to a
database that refuses)."""
"""The ``make_cache`` fixture: ``Cache(valkey, **options)``, closed after the test."""

T = TypeVar("T")


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{_run}-{next(_counter)}@example.com"


# -- users and callers ------------------------------------------------------------------------------


class Actor(msgspec.Struct, frozen=True):
    """A user and the headers that make a request theirs."""

    id: int
    email: str
    name: str
    role: UserRole
    headers: dict[str, str]

    @property
    def token(self) -> str:
        return self.headers["Authorization"].removeprefix("Bearer ")


async def create_user(
    db: AsyncConnection[Any],
    password_hash: str = FAKE_HASH,
    *,
    email: str | None = None,
    role: UserRole | str = UserRole.MEMBER,
    is_active: bool = True,
    display_name: str | None = None,
) -> User:
    """Insert a user. ``password_hash`` is an argon2 hash (of ``PASSWORD`` for a user who logs in)."""
    email = (email or unique_email()).lower()
    user = await account_queries.create_user(
        db,
        email=email,
        display_name=display_name or email.split("@", 1)[0],
        password_hash=password_hash,
        role=UserRole(role),
    )
    assert user is not None, f"{email} already exists"
    if not is_active:
        user = await account_queries.admin_update_user(db, role=None, is_active=False, id=user.id)
        assert user is not None
    return user


def migrations_before(first_left_out: str, directory: Path) -> Path:
    """``directory`` holding copies of the migrations that come before the file whose name contains
    ``first_left_out`` (for a database migrated up to, not including, it)."""
    directory.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if first_left_out in path.name:
            break
        shutil.copy(path, directory / path.name)
    return directory


ANALYTICS_ROLLUP_TABLES = (
    "page_view_hourly",
    "page_view_dimension_hourly",
    "page_view_hourly_visitors",
    "page_view_visits",
    "page_view_daily_visitors",
    "page_view_quarters",
    "page_view_entry_hourly",
)
"""Every table the analytics rollup and its triggers write (what a site's purge and the retention
delete; see ReportService.purge_rollups)."""


def migration_up(name: str) -> str:
    """The up section of the one migration whose file name ends with ``_<name>.sql`` (a backfill a
    test runs by hand, again and again)."""
    (path,) = MIGRATIONS_DIR.glob(f"*_{name}.sql")
    up, _, _ = path.read_text().partition("-- migrate:down")
    return up


def migration_down(name: str) -> str:
    """The down section of that migration (a test steps back to the release before it)."""
    (path,) = MIGRATIONS_DIR.glob(f"*_{name}.sql")
    _, _, down = path.read_text().partition("-- migrate:down")
    return down


@contextlib.contextmanager
def database_to_come(database_url: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(URL, name) of a database of the caller's own on ``database_url``'s server, not created yet
    (``migrate`` creates it); dropped, with whatever is connected to it, at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}")), name
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def mint_headers(app: Litestar, user_id: int, role: UserRole | str = UserRole.MEMBER) -> dict[str, str]:
    """A bearer header with an access token the app accepts (a new session family, no login)."""
    token, _ = app.state.services[AccountService].tokens.issue(user_id, UserRole(role).value, uuid.uuid4())
    return bearer(token)


async def make_user(
    db: AsyncConnection[Any],
    app: Litestar,
    role: UserRole | str = UserRole.MEMBER,
    *,
    name: str | None = None,
    is_active: bool = True,
) -> Actor:
    """A user (who never logs in) and a caller with a minted token."""
    user = await create_user(
        db,
        email=unique_email(name.lower() if name else UserRole(role).value),
        role=role,
        is_active=is_active,
        display_name=name,
    )
    return Actor(user.id, user.email, user.display_name, user.role, mint_headers(app, user.id, role))


async def login(client: Client | httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    """A fresh session's token pair (``access_token``, ``refresh_token``, ``user``, ...)."""
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(email: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{email}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


# -- the SAQ dashboard's sign-in ---------------------------------------------------------------------

SAME_ORIGIN = {"Origin": "http://testserver.local", "Sec-Fetch-Site": "same-origin"}


async def sign_in(
    api: Client, email: str, password: str = PASSWORD, headers: dict[str, str] | None = None
) -> httpx.Response:
    """The browser's form post, from the dashboard's own page."""
    response = await api.post(
        "/saq/login",
        data={"email": email, "password": password},
        headers={**SAME_ORIGIN, **(headers or {})},
        follow_redirects=False,
    )
    api.cookies.clear()  # each request carries the cookie it means
    return response


def session_of(response: httpx.Response) -> str:
    """The session cookie's value set by ``response``."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name.strip() == SESSION_COOKIE:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no {SESSION_COOKIE} cookie set: {response.headers}")


def with_session(token: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={token}", **(headers or {})}


async def sign_in_to_dashboard(api: Client, email: str, password: str = PASSWORD) -> dict[str, str]:
    """Headers carrying a fresh dashboard session of ``email`` (an administrator)."""
    response = await sign_in(api, email, password)
    assert response.status_code == 303, response.text
    return with_session(session_of(response))


# -- work: projects and tasks -----------------------------------------------------------------------


def _id_of(who: int | Actor | User) -> int:
    return who if isinstance(who, int) else who.id


async def make_project(
    db: AsyncConnection[Any],
    owner: int | Actor | User,
    members: Mapping[int, ProjectRole | str] | None = None,
    *,
    name: str = "Apollo",
    description: str = "",
) -> int:
    """A project owned by ``owner`` (always an ``owner`` member too) with ``members`` (user id → role)."""
    owner_id = _id_of(owner)
    project = await project_queries.create_project(db, name=name, description=description, owner_id=owner_id)
    assert project is not None
    await project_queries.add_member(db, project_id=project.id, user_id=owner_id, role=ProjectRole.OWNER)
    for user_id, role in (members or {}).items():
        assert user_id != owner_id, "the owner is a member already"
        await project_queries.add_member(db, project_id=project.id, user_id=user_id, role=ProjectRole(role))
    return project.id


async def make_task(
    db: AsyncConnection[Any],
    project_id: int,
    creator: int | Actor | User,
    *,
    title: str = "Task",
    status: TaskStatus = TaskStatus.TODO,
    priority: TaskPriority = TaskPriority.MEDIUM,
    assignee: int | Actor | User | None = None,
    due: date | None = None,
) -> int:
    """A task of ``project_id`` created by ``creator`` (who should be an editor or owner there)."""
    task = await task_queries.create_task(
        db,
        project_id=project_id,
        title=title,
        description="",
        status=status,
        priority=priority,
        assignee_id=_id_of(assignee) if assignee is not None else None,
        due_date=due,
        max_position=MAX_POSITION,
        created_by=_id_of(creator),
    )
    assert task is not None
    return task.id


class Team(msgspec.Struct, frozen=True):
    """A project with an owner, an editor and a viewer, and a user who is not a member."""

    owner: Actor
    editor: Actor
    viewer: Actor
    outsider: Actor
    project: int


async def make_team(db: AsyncConnection[Any], app: Litestar) -> Team:
    owner, editor, viewer, outsider = [
        await make_user(db, app, name=name) for name in ("Owner", "Editor", "Viewer", "Outsider")
    ]
    project = await make_project(db, owner, {editor.id: ProjectRole.EDITOR, viewer.id: ProjectRole.VIEWER})
    return Team(owner, editor, viewer, outsider, project)


# -- commerce and analytics -------------------------------------------------------------------------


async def make_product(
    db: AsyncConnection[Any],
    *,
    stock: int = 10,
    price: str = "2.50",
    active: bool = True,
    sku: str | None = None,
    name: str = "Thing",
) -> int:
    """A product's id (inactive ones are hidden from members)."""
    row = await product_queries.create_product(
        db,
        sku=sku or f"P-{uuid.uuid4().hex[:10]}",
        name=name,
        description="",
        price=Decimal(price),
        stock=stock,
    )
    assert row is not None
    if not active:
        await db.execute("update products set active = false where id = %s", (row.id,))
    return row.id


async def make_site(
    db: AsyncConnection[Any],
    owner: int | Actor | User,
    *,
    domain: str = "example.com",
    timezone: str = "UTC",
) -> Site:
    """A tracked site (its ``ingest_key`` is what a tracker sends)."""
    site = await site_queries.create_site(
        db, owner_id=_id_of(owner), domain=domain, ingest_key=uuid.uuid4().hex, timezone=timezone
    )
    assert site is not None
    return site


# -- answers ----------------------------------------------------------------------------------------


def assert_problem(
    response: httpx.Response, status: int, slug: str | None = None, fields: set[str] | None = None
) -> dict[str, Any]:
    """An RFC 9457 answer: problem+json with type, title, status and the request's id; ``slug`` is
    the type's last part; ``fields`` must each be named in ``errors``. Returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM, response.headers.get("content-type")
    body: dict[str, Any] = response.json()
    assert body["status"] == status, body
    assert body["type"].startswith("/problems/"), body
    if slug is not None:
        assert body["type"] == f"/problems/{slug}", body
    assert isinstance(body["title"], str) and body["title"], body
    assert body["request_id"] == response.headers["x-request-id"], body
    if fields is not None:
        named = {error["field"] for error in body.get("errors") or []}
        assert fields <= named, (fields, body)
    return body


async def assert_page_size_is_capped(
    client: Client | httpx.AsyncClient, path: str, headers: dict[str, str]
) -> None:
    """A list answers ``limit`` 1 and 100 and refuses 0 and 101 (a 400 naming ``query.limit``)."""
    for limit in (1, 100):
        response = await client.get(path, params={"limit": limit}, headers=headers)
        assert response.status_code == 200, (path, limit, response.text)
        assert len(response.json()["items"]) <= limit
    for limit in (0, 101):
        response = await client.get(path, params={"limit": limit}, headers=headers)
        assert_problem(response, 400, "validation", {"query.limit"})


async def scalar(db: AsyncConnection[Any], query: str, *params: Any) -> Any:
    """The first column of the one row ``query`` returns (a row it must return). Without ``params`` the
    query is sent as written, so a literal ``%`` in it needs no escaping."""
    row = await (await db.execute(query, params or None)).fetchone()
    assert row is not None
    return row[0]


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll ``condition`` (every 50 ms) until it holds; fail after a generous ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")
        await asyncio.sleep(0.05)


async def sessions_waiting_for_a_lock(db: AsyncConnection[Any], *wait_events: str) -> int:
    """How many sessions of this database wait for a lock now (of one of ``wait_events``, e.g.
    ``advisory``, ``transactionid``, ``tuple``; any when none is named). Read live even inside a
    transaction (the statistics snapshot it would keep is cleared first); another database of the
    cluster (another pytest-xdist worker's) is not counted."""
    await db.execute("select pg_stat_clear_snapshot()")
    return int(
        await scalar(
            db,
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and wait_event_type = 'Lock' and (cardinality(%s::text[]) = 0 or wait_event = any(%s))",
            list(wait_events),
            list(wait_events),
        )
    )


async def all_waiting_behind(
    database_url: str, hold: str, row_id: int, requests: list[Awaitable[httpx.Response]]
) -> list[httpx.Response]:
    """The requests' answers, each started while another transaction holds ``hold`` (SQL locking a
    row, ``row_id`` its parameter) and let go only once every request waits for a lock: they all
    reach the contended step together, whatever the scheduling."""
    async with (
        await AsyncConnection.connect(database_url) as holder,
        await AsyncConnection.connect(database_url, autocommit=True) as probe,
    ):
        await holder.execute(hold, (row_id,))
        started = [asyncio.ensure_future(request) for request in requests]

        async def all_waiting() -> bool:
            return await sessions_waiting_for_a_lock(probe) >= len(started)

        try:
            await wait_until(all_waiting, 10, "every request waits behind the held row")
        finally:
            await holder.rollback()
        return list(await asyncio.gather(*started))


async def answer_racing(
    database_url: str,
    change: str | Callable[[psycopg.Connection[Any]], object],
    row_id: int,
    request: Callable[[], Awaitable[T]],
) -> T:
    """``request()``'s answer while ``change`` (SQL, ``row_id`` its one parameter: a deletion, or what a
    concurrent request would do; or a function given the connection, for several statements) is
    committed by another transaction only once a session waits for that transaction (the request:
    nothing else touches what it changed). The in-process client holds the event loop while the app
    runs, so a thread watches and commits."""
    with psycopg.connect(database_url) as changer, psycopg.connect(database_url, autocommit=True) as probe:
        if isinstance(change, str):
            changer.execute(change, (row_id,))
        else:
            change(changer)

        def commit_once_the_request_waits() -> None:
            waiting = "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))"
            deadline = time.monotonic() + 20
            while probe.execute(waiting, (changer.info.backend_pid,)).fetchone() == (0,):
                assert time.monotonic() < deadline, "the request never waited for the other change"
                time.sleep(0.05)
            changer.commit()

        with ThreadPoolExecutor(max_workers=1) as pool:
            committed = pool.submit(commit_once_the_request_waits)
            answer = await request()
            committed.result()  # its failure, if any, is this test's
            return answer


# -- apps -------------------------------------------------------------------------------------------


def with_test_peer(app: ASGIApp) -> ASGIApp:
    """Outermost harness: an ``x-test-peer`` header sets the network peer (the client address).

    The test transport's peer is always ``testclient``; a real server puts the TCP peer there.
    """

    async def harness(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = dict(scope["headers"]).get(b"x-test-peer")
            if peer:
                scope["client"] = (peer.decode(), 50000)
        await app(scope, receive, send)

    return harness


GENEROUS_AUTH = {"rate_limit_auth_per_minute": 10_000, "rate_limit_auth_per_hour": 100_000}

_OUTLIVING: list[AsyncTestClient[Litestar]] = []


@asynccontextmanager
async def client_across_tests(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """``AsyncTestClient(app)`` for an app that outlives a test (a session- or module-scoped
    fixture): ``settle_outliving_apps`` writes what it holds before the next test's truncation."""
    async with AsyncTestClient(app=app) as client:
        _OUTLIVING.append(client)
        try:
            yield client
        finally:
            _OUTLIVING.remove(client)


async def settle_outliving_apps() -> None:
    """Have every app that outlives a test write now, in its own loop, what its monitoring still
    holds (a 500's event, the latency of the requests it answered: ``MonitoringService.write_held``).
    Its background task wrote that a second (errors) or ten (latency) later, in whichever test ran
    then: into that test's empty tables, with ids the truncation was about to hand out again (a
    duplicate key in the next test's insert), or as a write that held the feed's recovery back."""
    for client in list(_OUTLIVING):
        portal = client.blocking_portal
        assert portal is not None
        monitoring: MonitoringService = client.app.state.services[MonitoringService]
        await asyncio.wrap_future(portal.start_task_soon(monitoring.write_held))


async def generous_client(settings: Settings, **changes: Any) -> AsyncIterator[Client]:
    """The real app with auth rate limits out of the way (one test address makes many auth calls)
    and the ``x-test-peer`` harness; use as a module-scoped fixture body."""
    app = create_app(msgspec.structs.replace(settings, **{**GENEROUS_AUTH, **changes}))
    app.asgi_handler = with_test_peer(app.asgi_handler)
    async with client_across_tests(app) as client:
        yield client


class Served(msgspec.Struct):
    app: Litestar
    client: httpx.AsyncClient


@asynccontextmanager
async def serve_in_loop(settings: Settings, **changes: Any) -> AsyncIterator[Served]:
    """The app served in the test's own event loop (httpx's ASGI transport, the app's lifespan), so
    that requests really run concurrently and the app's services may be called from the test.

    Litestar's ``AsyncTestClient`` runs the app in a portal thread, one request at a time: its pool
    and services must not be used from the test's loop.
    """
    app = create_app(msgspec.structs.replace(settings, **changes))
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:  # entered and left in one task (anyio's cancel scopes insist)
        async with app.lifespan():
            started.set()
            await stop.wait()

    running = asyncio.create_task(lifespan())
    starting = asyncio.create_task(started.wait())
    await asyncio.wait({running, starting}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if not started.is_set():
        starting.cancel()
        if running.done():
            running.result()  # the start-up's own error
        running.cancel()
        raise AssertionError("the app did not start within 60 s")
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Served(app, client)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


# -- processes --------------------------------------------------------------------------------------

_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def clean_env(**values: str) -> dict[str, str]:
    """A subprocess's environment built from scratch: only what finds programs and sets the locale is
    inherited, so a developer's ``SINK_DRIVER``, ``RATE_LIMIT_*`` or ``LOG_*`` never changes what a
    test measures. ``values`` are the settings (``APP_ENV="test"``, ``DATABASE_URL=...``)."""
    return {**{name: os.environ[name] for name in _INHERITED if name in os.environ}, **values}


def cli_env(database_url: str, valkey_url: str, data_dir: Path, **values: str) -> dict[str, str]:
    """``clean_env`` for ``python -m app.cli`` on the given services: a small pool, no monitoring
    checks of the cron slots no worker runs, plain-text logs at WARNING unless ``values`` say else."""
    defaults = {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "VALKEY_URL": valkey_url,
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        "LOG_JSON": "false",
        "DATABASE_POOL_MIN": "1",
        "DATABASE_POOL_MAX": "4",
        "MONITORING_CHECK_INTERVAL_S": "3600",
    }
    return clean_env(**{**defaults, **values})


# -- Hypothesis -------------------------------------------------------------------------------------


def scaled_examples(count: int) -> int:
    """``count`` examples under the full profile, proportionally fewer under ``HYPOTHESIS_PROFILE=ci``
    (a heavy property test states its own count; the profile scales it). Never below 5."""
    return max(5, count * hypothesis_settings.default.max_examples // 100)


def clocked_github(clock: Callable[[], datetime]) -> Module:
    """The GitHub module with its service on ``clock`` (for ``open_services``)."""
    return Module(
        name="github",
        service=lambda s: GithubService(s.db, s.settings, s.valkey, s.broadcaster, clock=clock),
    )


@asynccontextmanager
async def saq_queues(valkey_url: str) -> AsyncIterator[dict[str, Queue]]:
    """The app's SAQ queues on ``valkey_url``, their shared client closed afterwards."""
    queues = build_queues(valkey_url)
    try:
        yield queues
    finally:
        with contextlib.suppress(Exception):
            await queues["default"].redis.aclose()  # type: ignore[attr-defined]


class LogCapture:
    """The lines logged meanwhile, rendered by the app's own formatter (JSON: the suite's settings
    keep ``LOG_JSON``) and decoded; ``captured_logs`` installs it."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]


async def blocked_by(db: AsyncConnection[Any], holder: int, work: asyncio.Future[Any]) -> int:
    """The pid of the backend waiting for a lock the backend ``holder`` holds, once one waits (polled
    on ``db``); fails if ``work`` ends first, or after a minute of never waiting."""
    deadline = time.monotonic() + 60
    while True:
        row = await (
            await db.execute(
                "select pid from pg_stat_activity where %s = any(pg_blocking_pids(pid))", (holder,)
            )
        ).fetchone()
        if row is not None:
            return int(row[0])
        assert not work.done(), work  # it ended (or failed) without ever waiting for the lock
        assert time.monotonic() < deadline, "nothing ever waited for the held lock"
        await asyncio.sleep(0.02)


async def cancelled_once_blocked(db: AsyncConnection[Any], holder: int, work: Awaitable[T]) -> T:
    """Run ``work`` until its statement waits for a lock ``holder`` holds, then cancel that statement
    (what a statement timeout does, without a clock that a loaded machine outruns): ``work``'s own
    outcome, usually ``QueryCanceled``."""
    task = asyncio.ensure_future(work)
    try:
        waiting = await blocked_by(db, holder, task)
        await db.execute("select pg_cancel_backend(%s)", (waiting,))
        return await task
    finally:
        task.cancel()


def monitoring_spy(app: Litestar, monkeypatch: Any) -> list[RawEvent]:
    """What ``app``'s error monitoring buffers from now on (its own buffer's ``add``, spied on)."""
    buffer = app.state.services[MonitoringService].buffer
    events: list[RawEvent] = []
    add = buffer.add

    def spy(event: RawEvent) -> bool:
        events.append(event)
        return add(event)

    monkeypatch.setattr(buffer, "add", spy)
    return events


@contextlib.contextmanager
def captured_logs(level: int = logging.INFO) -> Iterator[LogCapture]:
    """Capture what the process logs at ``level`` and above; enter it after the app configured
    logging (``create_app`` replaces the root handler, whose formatter is reused here)."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, ProcessorFormatter) for h in root.handlers):
        configure_logging("WARNING")  # no app of this session configured it yet
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    formatters = [h.formatter for h in root.handlers if isinstance(h.formatter, ProcessorFormatter)]
    handler.setFormatter(formatters[0])
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield LogCapture(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def http_scope(method: str, path: str, token: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    """The ASGI scope of a request with ``token``, for driving the app without the test client
    (whose ASGI transport buffers a whole answer: no view of a stream, or of a body half sent)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }


async def drive_asgi(
    app: ASGIApp, scope: dict[str, Any], messages: list[dict[str, Any]]
) -> tuple[int, Any, int]:
    """Run ``app`` on ``scope``, its ``receive`` answering ``messages`` and then ``http.disconnect``:
    the answer's status, its JSON body, and how many times the app called ``receive``."""
    pending = list(messages)
    calls = 0
    status, answer = 0, bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer.extend(message.get("body", b""))

    await app(scope, receive, send)  # type: ignore[arg-type]
    return status, json.loads(answer), calls


def plan_scans(node: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """The plan's nodes reading ``relation`` (its heap or one of its indexes; not the deletion itself,
    which counts the rows the nodes below it found)."""
    reads = node.get("Relation Name") == relation and node["Node Type"] != "ModifyTable"
    found = [node] if reads else []
    return found + [scan for child in node.get("Plans", ()) for scan in plan_scans(child, relation)]


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, ``node`` first."""
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def plan_rows_read(node: dict[str, Any]) -> int:
    """Rows an EXPLAIN ANALYZE node read: those it returned and those its filters (join filters
    included) threw away, over all of its loops (what a plan test counts instead of timing)."""
    per_loop: float = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
    per_loop += node.get("Rows Removed by Index Recheck", 0) + node.get("Rows Removed by Join Filter", 0)
    loops: float = node["Actual Loops"]
    return round(per_loop * loops)


async def analyzed_plan(db: AsyncConnection[Any], statement: str, params: Sequence[Any]) -> dict[str, Any]:
    """The root node of ``statement``'s EXPLAIN (ANALYZE, FORMAT JSON), run with ``params``."""
    async with AsyncRawCursor(db) as cur:
        await cur.execute("explain (analyze, format json) " + statement, tuple(params))
        row = await cur.fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


async def insert_root_group(db: AsyncConnection[Any], group_id: int) -> None:
    """A bare monitoring group of its own tree (for a plan test that fills its rows with SQL)."""
    await db.execute(
        "insert into monitoring_groups (id, root_id, kind, title, status_changed_at, first_seen_at,"
        " last_seen_at) values (%s, %s, 'error', 'g', now(), now(), now())",
        (group_id, group_id),
    )


def hold_slot_takes(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Every ``Slot.take`` holds once Valkey has answered, for good: the moment a client that leaves
    right after its request cancels a stream's body (the lease taken, the body not yet in its ``try``).
    Returns the event set when a take got there."""
    taken, hold = asyncio.Event(), asyncio.Event()
    take = Slot.take

    async def held_after_taking(slot: Slot) -> bool:
        result = await take(slot)
        taken.set()
        await hold.wait()
        return result

    monkeypatch.setattr(Slot, "take", held_after_taking)
    return taken
