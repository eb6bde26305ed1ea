"""Every route of the app, swept for authorisation (CONVENTIONS.md, "Authorization is a service rule").

The rule: an object route answers another user's id as if it did not exist (404, the object unchanged),
and every administrators' route refuses a member (403) and an anonymous caller (401).

- User A (a member) owns one object of every kind a path parameter names: a project (with a member and
  an invitation), a task, a comment, a file, a site, an order, a feed group, a tracked GitHub login and
  a refresh; an invitation addressed to A; a payment event.
- ``CASES`` maps each (method, path template) of the app's route table to the concrete path of A's
  object (a fresh one where the call destroys it) and a valid body, so that a 400/422 cannot hide the
  check. User B (a member, not in A's project) calls it with A's ids: 404, and what A reads before and
  after is the same. An anonymous caller gets 401. A, making the same call, does not get a 404 (the
  path is real).
- Every route guarded by ``requires_admin`` (or the SAQ dashboard's ``requires_dashboard_admin``) is
  found in the route table and called as A (403) and anonymously (401).
- ``MIXED``: B's own project or task as the parent, A's file, comment, invitation or member as the child.
- The caller-scoped routes without a path parameter (``/api/projects``, ``/api/feed``, ...) answer the
  caller's own data; those that take an id in a query or body are checked with A's ids.
- ``test_every_route_is_swept_or_exempt`` fails on a route with a path parameter that no case covers, a
  route open to anonymous callers that is not listed in ``EXEMPT``, and an entry naming no route.

One app, one set of objects for the module (each case that destroys an object makes its own).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.auth import requires_admin, requires_user
from app.core.services import open_services
from app.db.models import ProjectRole, register_types
from app.domains.accounts.guards import requires_dashboard_admin
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from tests.factories import (
    PROBLEM,
    Actor,
    Client,
    generous_client,
    make_product,
    make_project,
    make_site,
    make_user,
    unique_email,
)
from tests.fakes.github import FakeGitHubServer
from tests.functional.test_activity_feed import deliver
from tests.functional.test_github_http import work_refresh

UPLOAD = {"file": ("sweep.txt", b"swept", "text/plain")}


# -- A's objects ------------------------------------------------------------------------------------


@dataclass
class World:
    client: Client
    db: AsyncConnection[Any]
    a: Actor
    b: Actor
    c: Actor
    """Owns a project of their own, from which A is invited."""
    member: int = 0
    """An editor of A's project."""
    project: int = 0
    invitation: int = 0
    task: int = 0
    comment: int = 0
    file: int = 0
    site: int = 0
    product: int = 0
    order: int = 0
    payment_event: str = ""
    login: str = ""
    refresh: str = ""
    group: str = ""
    b_project: int = 0
    """B's own project and task: B's parent, A's child in the mixed paths."""
    b_task: int = 0

    async def as_a(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        headers = self.a.headers | kwargs.pop("headers", {})
        response = await self.client.request(method, path, headers=headers, **kwargs)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    async def new_task(self) -> int:
        task = await self.as_a("POST", f"/api/projects/{self.project}/tasks", 201, json={"title": "Task"})
        return int(task["id"])

    async def new_comment(self) -> int:
        comment = await self.as_a("POST", f"/api/tasks/{self.task}/comments", 201, json={"body": "A's"})
        return int(comment["id"])

    async def new_file(self) -> int:
        file = await self.as_a("POST", f"/api/projects/{self.project}/files", 201, files=UPLOAD)
        return int(file["id"])

    async def new_invitation(self, project: int, who: Actor, email: str) -> tuple[int, str]:
        """The invitation's id and the token that accepts it."""
        invitation = await self.client.post(
            f"/api/projects/{project}/invitations", json={"email": email}, headers=who.headers
        )
        assert invitation.status_code == 201, invitation.text
        return int(invitation.json()["id"]), invitation.json()["token"]

    async def new_order(self) -> int:
        order = await self.as_a(
            "POST",
            "/api/orders",
            202,
            json={"lines": [{"product_id": self.product, "quantity": 1}]},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        return int(order["id"])


@pytest.fixture(scope="module")
def sweep_settings(
    settings: Settings, fake_server: FakeGitHubServer, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_retry_wait_s=0.01,
        github_timeout_s=2.0,
        rate_limit_enabled=False,  # one address, a few hundred calls
        files_dir=tmp_path_factory.mktemp("sweep-files"),
    )


@pytest.fixture(scope="module")
async def world(
    sweep_settings: Settings, database_url: str, valkey_url: str, fake_server: FakeGitHubServer
) -> AsyncIterator[World]:
    """A's objects, made once for the module (not on a truncated database: every id is new)."""
    valkey = Valkey.from_url(valkey_url)
    await valkey.flushdb()  # the GitHub queue holds only this module's refresh
    await valkey.aclose()
    async with await AsyncConnection.connect(database_url, autocommit=True) as db:
        await register_types(db)
        # Earlier modules' undelivered activity is not this module's to deliver.
        await db.execute(
            "update outbox set published_at = now() where published_at is null and task = 'record_activity'"
        )
        # Each table's ids from its own thousand past every id in use (as tests/conftest.py does after
        # truncating): a route that took a task's id for a comment's cannot pass by coincidence.
        await db.execute(
            "select setval(format('%I.%I', schemaname, sequencename), (select coalesce(max(last_value), 0)"
            " from pg_sequences where schemaname = 'public') + 1000 * row_number() over (order by"
            " sequencename) + 1, false) from pg_sequences where schemaname = 'public'"
        )
        async for client in generous_client(sweep_settings):
            app: Litestar = client.app  # type: ignore[assignment]
            a, b, c, member = [await make_user(db, app, name=name) for name in ("Ann", "Bob", "Cyd", "Mel")]
            w = World(client, db, a, b, c, member=member.id)
            w.project = await make_project(db, a, {member.id: ProjectRole.EDITOR}, name="A's project")
            w.invitation, _ = await w.new_invitation(w.project, a, unique_email("invitee"))
            w.task = await w.new_task()
            w.comment = await w.new_comment()
            w.file = await w.new_file()
            w.site = (await make_site(db, a)).id
            w.product = await make_product(db, stock=1000)
            w.order = await w.new_order()
            w.payment_event = f"evt_sweep_{uuid.uuid4().hex}"
            await db.execute(
                "insert into payment_events (event_id, order_id, outcome) values (%s, %s, 'refund-due')",
                (w.payment_event, w.order),
            )
            w.login = f"sweep-{uuid.uuid4().hex[:8]}"
            fake_server.fake.add_user(w.login)
            await w.as_a("GET", f"/api/github/users/{w.login}", 200)
            await db.execute(  # older than a refresh refetches (one fetched moments ago is final at once)
                "update github_profiles set fetched_at = fetched_at - interval '10 minutes' where login = %s",
                (w.login,),
            )
            w.refresh = (await w.as_a("POST", f"/api/github/users/{w.login}/refresh", 202))["id"]
            assert await work_refresh(sweep_settings, w.refresh) == "succeeded"
            await w.as_a("POST", "/api/github/tracked", 201, json={"username": w.login})
            async with open_services(sweep_settings, (activity_module,)) as services:
                assert await deliver(db, services[ActivityService]) > 0
            feed = await w.as_a("GET", "/api/feed", 200, params={"project_id": w.project})
            w.group = feed["items"][0]["key"]
            w.b_project = await make_project(db, b, name="B's project")
            task = await client.post(
                f"/api/projects/{w.b_project}/tasks", json={"title": "B's"}, headers=b.headers
            )
            assert task.status_code == 201, task.text
            w.b_task = task.json()["id"]
            yield w


# -- the object routes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    path: str
    reads: tuple[str, ...] = ()
    """What A reads (GET) before and after B's call: the answers must be the same."""
    body: Any = None
    """A body only this object takes (an invitation's token), sent instead of the case's."""


@dataclass(frozen=True)
class Case:
    target: Callable[[World], Awaitable[Target]]
    a_status: int
    """What A gets for the same call (never 404: the path names a real object)."""
    body: Any = None
    upload: bool = False
    b_status: int = 404
    why: str = ""
    """Why B is not refused, where the object is not A's own (shared data)."""


def fixed(path: str, *reads: str) -> Callable[[World], Awaitable[Target]]:
    """A path (and reads) naming A's shared objects by the ``World`` field: ``/api/tasks/{task}``."""

    async def target(w: World) -> Target:
        fields = vars(w)
        return Target(path.format_map(fields), tuple(read.format_map(fields) for read in reads))

    return target


async def fresh_project(w: World) -> Target:
    project = await make_project(w.db, w.a, name="A's doomed project")
    return Target(f"/api/projects/{project}", (f"/api/projects/{project}",))


async def fresh_membership(w: World) -> Target:
    mate = await make_user(w.db, w.client.app, name="Mate")  # type: ignore[arg-type]
    project = await make_project(w.db, w.a, {mate.id: ProjectRole.VIEWER}, name="A's team")
    return Target(f"/api/projects/{project}/members/{mate.id}", (f"/api/projects/{project}/members",))


async def fresh_invitation(w: World) -> Target:
    invitation, _ = await w.new_invitation(w.project, w.a, unique_email("invitee"))
    path = f"/api/projects/{w.project}/invitations"
    return Target(f"{path}/{invitation}", (path,))


async def invitation_to_a(action: str, w: World) -> Target:
    project = await make_project(w.db, w.c, name="C's project")
    invitation, token = await w.new_invitation(project, w.c, w.a.email)
    # B is given A's token too: the token without the invited email is still a 404
    body = {"token": token}
    return Target(f"/api/me/invitations/{invitation}/{action}", ("/api/me/invitations",), body)


async def accepting(w: World) -> Target:
    return await invitation_to_a("accept", w)


async def declining(w: World) -> Target:
    return await invitation_to_a("decline", w)


async def fresh_task(w: World) -> Target:
    task = await w.new_task()
    return Target(f"/api/tasks/{task}", (f"/api/tasks/{task}",))


async def fresh_comment(w: World) -> Target:
    comment = await w.new_comment()
    return Target(f"/api/tasks/{w.task}/comments/{comment}", (f"/api/tasks/{w.task}/comments",))


async def fresh_file(w: World) -> Target:
    file = await w.new_file()
    path = f"/api/projects/{w.project}/files"
    return Target(f"{path}/{file}", (path, f"{path}/{file}"))


async def fresh_order(w: World) -> Target:
    order = await w.new_order()
    return Target(f"/api/orders/{order}/cancel", (f"/api/orders/{order}",))


async def fresh_site(w: World) -> Target:
    site = (await make_site(w.db, w.a)).id
    return Target(f"/api/sites/{site}", (f"/api/sites/{site}",))


async def fresh_tracking(w: World) -> Target:
    tracked = await w.client.post("/api/github/tracked", json={"username": w.login}, headers=w.a.headers)
    assert tracked.status_code in (200, 201), tracked.text
    return Target(f"/api/github/tracked/{w.login}", ("/api/github/tracked",))


PROJECT = "/api/projects/{project_id:int}"
TASK = "/api/tasks/{task_id:int}"
SITE = "/api/sites/{site_id:int}"
GROUP = "/api/feed/groups/{key:str}"
GITHUB_SHARED = "GitHub data is public and shared by every account (one refresh per login at a time)"
REPORTS = ("browsers", "campaigns", "current-visitors", "devices", "entry-pages", "pages", "referrers")

CASES: dict[tuple[str, str], Case] = {
    # projects, members, invitations
    ("GET", PROJECT): Case(fixed("/api/projects/{project}"), 200),
    ("PATCH", PROJECT): Case(
        fixed("/api/projects/{project}", "/api/projects/{project}"),
        200,
        body={"name": "Renamed", "description": "changed", "archived": False},
    ),
    ("DELETE", PROJECT): Case(fresh_project, 204),
    ("GET", f"{PROJECT}/members"): Case(fixed("/api/projects/{project}/members"), 200),
    ("PATCH", f"{PROJECT}/members/{{user_id:int}}"): Case(
        fixed("/api/projects/{project}/members/{member}", "/api/projects/{project}/members"),
        200,
        body={"role": "viewer"},
    ),
    ("DELETE", f"{PROJECT}/members/{{user_id:int}}"): Case(fresh_membership, 204),
    ("GET", f"{PROJECT}/invitations"): Case(fixed("/api/projects/{project}/invitations"), 200),
    ("POST", f"{PROJECT}/invitations"): Case(
        fixed("/api/projects/{project}/invitations", "/api/projects/{project}/invitations"),
        201,
        body={"email": "sweep-guest@example.com", "role": "editor"},
    ),
    ("DELETE", f"{PROJECT}/invitations/{{invitation_id:int}}"): Case(fresh_invitation, 204),
    ("POST", "/api/me/invitations/{invitation_id:int}/accept"): Case(accepting, 200),
    ("POST", "/api/me/invitations/{invitation_id:int}/decline"): Case(declining, 204),
    # tasks and comments
    ("GET", f"{PROJECT}/tasks"): Case(fixed("/api/projects/{project}/tasks"), 200),
    ("POST", f"{PROJECT}/tasks"): Case(
        fixed("/api/projects/{project}/tasks", "/api/projects/{project}/tasks"),
        201,
        body={"title": "Planted"},
    ),
    ("GET", TASK): Case(fixed("/api/tasks/{task}"), 200),
    ("PATCH", TASK): Case(
        fixed("/api/tasks/{task}", "/api/tasks/{task}"), 200, body={"title": "Changed", "status": "done"}
    ),
    ("DELETE", TASK): Case(fresh_task, 204),
    ("GET", f"{TASK}/comments"): Case(fixed("/api/tasks/{task}/comments"), 200),
    ("POST", f"{TASK}/comments"): Case(
        fixed("/api/tasks/{task}/comments", "/api/tasks/{task}/comments"), 201, body={"body": "Planted"}
    ),
    ("PATCH", f"{TASK}/comments/{{comment_id:int}}"): Case(
        fixed("/api/tasks/{task}/comments/{comment}", "/api/tasks/{task}/comments"),
        200,
        body={"body": "Edited"},
    ),
    ("DELETE", f"{TASK}/comments/{{comment_id:int}}"): Case(fresh_comment, 204),
    # files
    ("GET", f"{PROJECT}/files"): Case(fixed("/api/projects/{project}/files"), 200),
    ("POST", f"{PROJECT}/files"): Case(
        fixed("/api/projects/{project}/files", "/api/projects/{project}/files"), 201, upload=True
    ),
    ("GET", f"{PROJECT}/files/{{file_id:int}}"): Case(fixed("/api/projects/{project}/files/{file}"), 200),
    ("DELETE", f"{PROJECT}/files/{{file_id:int}}"): Case(fresh_file, 204),
    # activity
    ("GET", f"{PROJECT}/feed"): Case(fixed("/api/projects/{project}/feed"), 200),
    ("GET", GROUP): Case(fixed("/api/feed/groups/{group}"), 200),
    ("GET", f"{GROUP}/events"): Case(fixed("/api/feed/groups/{group}/events"), 200),
    ("POST", f"{GROUP}/read"): Case(
        fixed("/api/feed/groups/{group}/read", "/api/feed/groups/{group}", "/api/feed/unread-count"),
        204,
        body={},
    ),
    # commerce
    ("GET", "/api/orders/{order_id:int}"): Case(fixed("/api/orders/{order}"), 200),
    ("POST", "/api/orders/{order_id:int}/cancel"): Case(fresh_order, 200),
    # analytics
    ("GET", SITE): Case(fixed("/api/sites/{site}"), 200),
    ("DELETE", SITE): Case(fresh_site, 204),
    ("POST", f"{SITE}/ingest-key"): Case(fixed("/api/sites/{site}/ingest-key", "/api/sites/{site}"), 200),
    ("GET", f"{SITE}/summary"): Case(fixed("/api/sites/{site}/summary"), 200),
    ("GET", f"{SITE}/timeseries"): Case(fixed("/api/sites/{site}/timeseries"), 200),
    **{("GET", f"{SITE}/{report}"): Case(fixed(f"/api/sites/{{site}}/{report}"), 200) for report in REPORTS},
    # GitHub: the tracking is A's; profiles, history and refreshes are nobody's
    ("DELETE", "/api/github/tracked/{username:str}"): Case(fresh_tracking, 204),
    ("GET", "/api/github/users/{username:str}"): Case(
        fixed("/api/github/users/{login}"), 200, b_status=200, why=GITHUB_SHARED
    ),
    ("GET", "/api/github/users/{username:str}/history"): Case(
        fixed("/api/github/users/{login}/history"), 200, b_status=200, why=GITHUB_SHARED
    ),
    ("POST", "/api/github/users/{username:str}/refresh"): Case(
        fixed("/api/github/users/{login}/refresh"), 200, b_status=200, why=GITHUB_SHARED
    ),
    ("GET", "/api/github/refreshes/{refresh_id:str}"): Case(
        fixed("/api/github/refreshes/{refresh}", "/api/github/refreshes/{refresh}"),
        200,
        b_status=200,
        why=GITHUB_SHARED,
    ),
    ("GET", "/api/github/refreshes/{refresh_id:str}/events"): Case(
        fixed("/api/github/refreshes/{refresh}/events"), 200, b_status=200, why=GITHUB_SHARED
    ),
}

MIXED: dict[tuple[str, str], Case] = {
    # B's own parent, A's child: the child must be looked up under the parent, not by its id alone.
    ("GET", f"{PROJECT}/files/{{file_id:int}}"): Case(
        fixed("/api/projects/{b_project}/files/{file}", "/api/projects/{project}/files/{file}"), 0
    ),
    ("DELETE", f"{PROJECT}/files/{{file_id:int}}"): Case(
        fixed("/api/projects/{b_project}/files/{file}", "/api/projects/{project}/files/{file}"), 0
    ),
    ("PATCH", f"{TASK}/comments/{{comment_id:int}}"): Case(
        fixed("/api/tasks/{b_task}/comments/{comment}", "/api/tasks/{task}/comments"),
        0,
        body={"body": "Mine"},
    ),
    ("DELETE", f"{TASK}/comments/{{comment_id:int}}"): Case(
        fixed("/api/tasks/{b_task}/comments/{comment}", "/api/tasks/{task}/comments"), 0
    ),
    ("DELETE", f"{PROJECT}/invitations/{{invitation_id:int}}"): Case(
        fixed("/api/projects/{b_project}/invitations/{invitation}", "/api/projects/{project}/invitations"), 0
    ),
    ("PATCH", f"{PROJECT}/members/{{user_id:int}}"): Case(
        fixed("/api/projects/{b_project}/members/{member}", "/api/projects/{project}/members"),
        0,
        body={"role": "owner"},
    ),
    ("DELETE", f"{PROJECT}/members/{{user_id:int}}"): Case(
        fixed("/api/projects/{b_project}/members/{member}", "/api/projects/{project}/members"), 0
    ),
}

EXEMPT: dict[tuple[str, str], str] = {
    ("GET", "/metrics"): "operational: Prometheus scrape at the exact path, closed at the gateway",
    ("GET", "/health/live"): "operational: liveness probe, no data",
    ("GET", "/health/ready"): "operational: readiness probe, no data",
    ("GET", "/api"): "public: the paths of the docs, the sign-in and the probe, no data",
    ("GET", "/favicon.ico"): "public: the site's icon, no data",
    ("POST", "/api/auth/login"): "public: the credentials are the proof",
    ("POST", "/api/auth/refresh"): "public: the refresh token is the proof",
    ("POST", "/api/auth/register"): "public: creates an account",
    ("POST", "/api/payments/webhook"): "public: the HMAC signature (PAYMENT_WEBHOOK_SECRET) is the proof",
    ("POST", "/api/page-views"): "public: the ingest, authenticated by the site's ingest key",
    ("POST", "/api/page-views/batch"): "public: the ingest, authenticated by the site's ingest key",
    ("GET", "/api/products"): "public: the catalogue (inactive products hidden from non-admins)",
    ("GET", "/api/products/{product_id:int}"): "public: a catalogue entry, owned by nobody",
    ("GET", "/saq/login"): "public: the SAQ dashboard's sign-in page",
    ("POST", "/saq/login"): "public: the credentials are the proof (same-origin only)",
    ("POST", "/saq/logout"): "public: ends the session of the cookie sent along, if any (same-origin only)",
}
EXEMPT_PREFIXES: dict[str, str] = {
    "/schema": "public: the OpenAPI document and Swagger UI's pinned assets",
    "/problems": "public: the pages of the problem types (what a problem's `type` means), no data",
    "/saq/static/": "public: the SAQ dashboard's static files (the dashboard itself is admin-only)",
}


def case_id(key: tuple[str, str]) -> str:
    return f"{key[0]} {key[1]}"


def pattern_of(template: str) -> re.Pattern[str]:
    """``/api/tasks/{task_id:int}`` → a regex its concrete paths match."""
    kinds = {"int": "[0-9]+", "str": "[^/]+", "path": ".+", "uuid": "[0-9a-f-]+"}
    parts = re.split(r"(\{[a-z_]+:[a-z]+\})", template)
    return re.compile(
        "".join(
            kinds[part[1:-1].split(":")[1]] if part.startswith("{") else re.escape(part) for part in parts
        )
    )


async def send(
    w: World,
    who: Actor | None,
    method: str,
    path: str,
    case: Case | None = None,
    target: Target | None = None,
) -> httpx.Response:
    headers = who.headers if who else {}
    if case is not None and case.upload:
        return await w.client.request(method, path, headers=headers, files=UPLOAD)
    body = case.body if case is not None else None
    if target is not None and target.body is not None:
        body = target.body
    return await w.client.request(method, path, headers=headers, json=body)


async def read_as_a(w: World, reads: tuple[str, ...]) -> list[tuple[str, int, bytes]]:
    answers = []
    for path in reads:
        response = await w.client.get(path, headers=w.a.headers)
        answers.append((path, response.status_code, response.content))
    return answers


@pytest.mark.parametrize("key", list(CASES), ids=case_id)
async def test_another_users_ids_are_not_found(world: World, key: tuple[str, str]) -> None:
    method, template = key
    case = CASES[key]
    target = await case.target(world)
    assert pattern_of(template).fullmatch(target.path), (template, target.path)
    before = await read_as_a(world, target.reads)

    anonymous = await send(world, None, method, target.path, case, target)
    assert anonymous.status_code == 401, (target.path, anonymous.status_code, anonymous.text)

    theirs = await send(world, world.b, method, target.path, case, target)
    assert theirs.status_code == case.b_status, (
        f"{method} {target.path} as another user: {theirs.status_code} {theirs.text[:300]}"
    )
    if case.b_status == 404:
        assert theirs.headers["content-type"] == PROBLEM, theirs.headers
    assert await read_as_a(world, target.reads) == before, (
        f"{method} {target.path} by another user changed it"
    )

    mine = await send(world, world.a, method, target.path, case, target)
    assert mine.status_code == case.a_status, (method, target.path, mine.status_code, mine.text[:300])


@pytest.mark.parametrize("key", list(MIXED), ids=case_id)
async def test_another_users_child_under_their_own_parent_is_not_found(
    world: World, key: tuple[str, str]
) -> None:
    method, template = key
    case = MIXED[key]
    target = await case.target(world)
    assert pattern_of(template).fullmatch(target.path), (template, target.path)
    before = await read_as_a(world, target.reads)
    theirs = await send(world, world.b, method, target.path, case, target)
    assert theirs.status_code == 404, f"{method} {target.path} as B: {theirs.status_code} {theirs.text[:300]}"
    assert await read_as_a(world, target.reads) == before, f"{method} {target.path} by B changed A's object"


async def test_ids_in_queries_and_bodies_reveal_nothing(world: World) -> None:
    """The caller-scoped routes (no path parameter) that take another object's id elsewhere."""
    events = await world.as_a("GET", f"/api/feed/groups/{world.group}/events", 200)
    event_ids = [event["id"] for event in events["items"]]
    assert event_ids
    reads = (
        f"/api/feed/groups/{world.group}",
        f"/api/feed/groups/{world.group}/events",
        "/api/feed/unread-count",
    )
    before = await read_as_a(world, reads)
    b = world.b.headers

    feed = await world.client.get("/api/feed", params={"project_id": world.project}, headers=b)
    assert (feed.status_code, feed.json()["items"]) == (200, []), feed.text
    orders = await world.client.get("/api/orders", params={"user_id": world.a.id}, headers=b)
    assert (orders.status_code, orders.json()["items"]) == (200, []), orders.text
    marked = await world.client.post("/api/feed/events/read", json={"event_ids": event_ids}, headers=b)
    assert marked.status_code == 204, marked.text
    tasks = await world.client.get("/api/me/tasks", headers=b)
    assert (tasks.status_code, tasks.json()["items"]) == (200, []), tasks.text
    assert await read_as_a(world, reads) == before


# -- the administrators' routes ---------------------------------------------------------------------


def routes_of(app: Litestar) -> Iterator[tuple[str, str, HTTPRouteHandler]]:
    """Every (method, path template, handler) of the route table; OPTIONS and HEAD are Litestar's own."""
    for route in app.routes:
        assert isinstance(route, HTTPRoute), f"a {type(route).__name__} at {route.path}: sweep it too"
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                yield method, route.path, handler


def guards_of(handler: HTTPRouteHandler) -> set[Any]:
    return {guard for layer in handler.ownership_layers for guard in (layer.guards or ())}


def admin_only(handler: HTTPRouteHandler) -> bool:
    return bool(guards_of(handler) & {requires_admin, requires_dashboard_admin})


ADMIN_BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/api/admin/users/{user_id:int}"): {"role": "admin"},
    ("POST", "/api/products"): {"sku": "SWEEP-1", "name": "Planted", "price": "1.00", "stock": 1},
    ("PATCH", "/api/products/{product_id:int}"): {"price": "0.01", "active": True},
    ("POST", "/api/products/{product_id:int}/stock-adjustments"): {"delta": 5, "reason": "sweep"},
    ("POST", "/api/admin/monitoring/errors/{group_id:int}/resolve"): {"mode": "now"},
    ("POST", "/api/admin/monitoring/errors/{group_id:int}/ignore"): {"mode": "forever"},
    ("POST", "/api/admin/monitoring/errors/{group_id:int}/merge"): {"source_ids": [2]},
}


def admin_path(w: World, template: str) -> str:
    samples = {
        "user_id": w.a.id,  # A promoting themself
        "product_id": w.product,
        "order_id": w.order,
        "event_id": w.payment_event,
        "group_id": 1,  # refused before any lookup: no error group is needed
        "queue_id": "default",
        "job_id": "sweep",
    }

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in samples, f"admin route {template}: give its `{name}` a sample in admin_path"
        return str(samples[name])

    return re.sub(r"\{([a-z_]+):[a-z]+\}", fill, template)


async def test_admin_routes_refuse_members_and_anonymous_callers(world: World) -> None:
    reads = ("/api/auth/me", f"/api/products/{world.product}", f"/api/orders/{world.order}")
    before = await read_as_a(world, reads)
    refused: list[str] = []
    swept = 0
    for method, template, handler in routes_of(world.client.app):  # type: ignore[arg-type]
        if not admin_only(handler):
            continue
        swept += 1
        path = admin_path(world, template)
        body = ADMIN_BODIES.get((method, template))
        # An anonymous browser asking for the dashboard's page is sent to its sign-in page instead.
        anonymous = (
            303
            if requires_dashboard_admin in guards_of(handler) and handler.media_type == "text/html"
            else 401
        )
        for who, expected in ((world.a, 403), (None, anonymous)):
            response = await world.client.request(
                method, path, headers=who.headers if who else {}, json=body, follow_redirects=False
            )
            if response.status_code != expected or (
                expected == 303 and response.headers["location"] != "/saq/login"
            ):
                caller = "a member" if who else "anonymous"
                refused.append(f"{method} {path} as {caller}: {response.status_code} {response.text[:200]}")
    assert not refused, "\n".join(refused)
    assert swept >= 20, swept
    assert await read_as_a(world, reads) == before, "a member's call to an admin route changed something"


# -- nothing skips the sweep ------------------------------------------------------------------------


async def test_every_route_is_swept_or_exempt(world: World) -> None:
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for method, path, handler in routes_of(world.client.app):  # type: ignore[arg-type]
        key = (method, path)
        seen.add(key)
        guards = guards_of(handler)
        exempt = key in EXEMPT or path.startswith(tuple(EXEMPT_PREFIXES))
        if admin_only(handler):
            if key in CASES or exempt:
                problems.append(f"{case_id(key)}: admin-only, swept as such; remove it from CASES/EXEMPT")
        elif exempt:
            if key in CASES:
                problems.append(f"{case_id(key)}: both exempt and a case")
        elif key in CASES:
            if requires_user not in guards:
                problems.append(f"{case_id(key)}: a case, but open to anonymous callers")
        elif "{" in path:
            problems.append(f"{case_id(key)}: a path parameter and no case in CASES")
        elif requires_user not in guards:
            problems.append(f"{case_id(key)}: open to anonymous callers and not listed in EXEMPT")
    for key in set(CASES) | set(MIXED) | set(EXEMPT):
        if key not in seen:
            problems.append(f"{case_id(key)}: no such route (renamed or removed?)")
    assert not problems, "\n".join(sorted(problems))
