"""A realistic mixed load for locust's web UI (see benchmarks/README.md).

    uv run locust --host http://127.0.0.1:8001

against a server of its own with raised limits (benchmarks/README.md, "Locust": ``DATA_DIR=.data/locust
PORT=8001 RATE_LIMIT_AUTH_PER_MINUTE=...``), not the development server's data and limits.
(``[tool.locust]`` in pyproject.toml names this file and keeps the web UI, which has no login and can
aim the load at any host, on 127.0.0.1.)

Three kinds of simulated users, all on the seeded demo data (``just serve`` seeds it):

- ``MemberUser`` (ana/ben): logs in, browses projects and their tasks, reads their own tasks,
  lists products and places an order with an ``Idempotency-Key`` (sometimes replayed, as a client
  retrying after a timeout would), looks at it, then cancels it so the open-order cap is not hit.
- ``AnalystUser`` (the administrator): reads the analytics reports of the load-test site
  (``/api/sites/{id}/summary`` etc.).
- ``VisitorUser``: a browser sending page views (``POST /api/page-views``), by far the most
  frequent request, as on a real site.

The first user of a locust process logs in as the administrator and creates what the scenario
needs when it is missing: a site ``locust.example`` (its ingest key feeds the visitors) and a few
products with plenty of stock.

Credentials come from ``ADMIN_EMAIL``, ``ADMIN_PASSWORD`` and ``DEMO_PASSWORD`` (the same variables
and defaults as the server's seed).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

from gevent.lock import Semaphore
from locust import FastHttpUser, HttpUser, between, events, task
from locust.exception import StopUser

from app.config import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD
from app.domains.accounts.seed import DEMO_MEMBERS

ADMIN_EMAIL = os.environ.get("ADMIN_EMAIL", "admin@example.com")
ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD)
DEMO_PASSWORD = os.environ.get("DEMO_PASSWORD", DEFAULT_DEMO_PASSWORD)
SITE_DOMAIN = "locust.example"
PRODUCTS = (("LOCUST-MUG", "Locust mug", "12.50"), ("LOCUST-TEE", "Locust T-shirt", "24.00"))
REPORTS = ("summary", "timeseries", "pages", "referrers")
PAGES = ("/", "/pricing", "/docs", "/docs/install", "/blog", "/blog/launch", "/about", "/contact")
REFERRERS = ("", "", "https://www.google.com/", "https://news.ycombinator.com/", "https://t.co/abc")
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 "
    "Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
)


class Fixtures:
    """What the scenario shares across users of one locust process, made once under a lock."""

    lock = Semaphore()
    site_id: int | None = None
    ingest_key: str | None = None
    product_ids: list[int] = []


def problem_detail(response: Any) -> str:
    """A problem answer's ``detail`` (which limit refused), else the start of its body."""
    try:
        return str(response.json().get("detail"))
    except (ValueError, AttributeError):
        return str(response.text)[:200]


def login(user: HttpUser | FastHttpUser, email: str, password: str) -> dict[str, str]:
    """Log in (waiting out a 429's Retry-After a few times); returns the Authorization header."""
    for _ in range(4):
        with user.client.post(
            "/api/auth/login",
            json={"email": email, "password": password},
            name="/api/auth/login",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                return {"Authorization": f"Bearer {response.json()['access_token']}"}
            if response.status_code == 429:
                response.failure(
                    f"429 on log-in ({problem_detail(response)}): raise RATE_LIMIT_AUTH_PER_MINUTE/_PER_HOUR "
                    "for load tests"
                )
                time.sleep(min(float(response.headers.get("Retry-After", "5")), 30.0))
                continue
            response.failure(f"log-in failed: {response.status_code} ({problem_detail(response)})")
            break
    raise StopUser


def prepare_fixtures(user: HttpUser | FastHttpUser, headers: dict[str, str] | None = None) -> None:
    """Find or create the load-test site and products (as the administrator: logged in here, under
    the lock, unless ``headers`` are the administrator's already). One user of the process does it
    while the others wait: visitors starting together each logging in as the administrator made
    more concurrent attempts on one account from one address than the login throttle admits
    (``LOGIN_MAX_FAILURES`` counts attempts still being checked: 429 for the sixth)."""
    with Fixtures.lock:
        if Fixtures.ingest_key is not None:
            return
        headers = headers or login(user, ADMIN_EMAIL, ADMIN_PASSWORD)
        sites = user.client.get("/api/sites/?limit=100", headers=headers, name="/api/sites/").json()
        site = next((s for s in sites.get("items", []) if s["domain"] == SITE_DOMAIN), None)
        if site is None:
            site = user.client.post(
                "/api/sites/", json={"domain": SITE_DOMAIN}, headers=headers, name="/api/sites/"
            ).json()
        Fixtures.site_id, Fixtures.ingest_key = int(site["id"]), str(site["ingest_key"])
        for sku, name, price in PRODUCTS:
            with user.client.post(
                "/api/products/",
                json={"sku": sku, "name": name, "price": price, "stock": 1_000_000},
                headers=headers,
                name="/api/products/ (create)",
                catch_response=True,
            ) as response:
                if response.status_code == 409:  # made by an earlier run
                    response.success()


class MemberUser(HttpUser):
    weight = 3
    wait_time = between(1, 4)

    def on_start(self) -> None:
        email, _ = random.choice(DEMO_MEMBERS)
        self.headers = login(self, email, DEMO_PASSWORD)
        self.project_ids: list[int] = []
        self.task_ids: list[int] = []

    def get(self, path: str, name: str) -> Any:
        with self.client.get(path, headers=self.headers, name=name, catch_response=True) as response:
            if response.status_code == 401:  # the 15-minute access token expired
                response.success()
                self.on_start()
                return None
            return response.json() if response.status_code == 200 else None

    @task(4)
    def browse_projects(self) -> None:
        page = self.get("/api/projects/?limit=20", "/api/projects/")
        if page and page.get("items"):
            self.project_ids = [p["id"] for p in page["items"]]

    @task(6)
    def browse_tasks(self) -> None:
        if not self.project_ids:
            self.browse_projects()
            if not self.project_ids:
                return
        project = random.choice(self.project_ids)
        sort = random.choice(("created", "due", "priority", "updated"))
        page = self.get(f"/api/projects/{project}/tasks/?sort={sort}&limit=20", "/api/projects/[id]/tasks/")
        if page and page.get("items"):
            self.task_ids = [t["id"] for t in page["items"]]
            task_id = random.choice(self.task_ids)
            self.get(f"/api/tasks/{task_id}/", "/api/tasks/[id]/")
            self.get(f"/api/tasks/{task_id}/comments", "/api/tasks/[id]/comments")

    @task(2)
    def my_tasks(self) -> None:
        self.get("/api/me/tasks/?limit=20", "/api/me/tasks/")

    @task(3)
    def list_products(self) -> None:
        """The catalogue's opening page, the one page the app caches; one browse in four filters
        (read from PostgreSQL)."""
        if random.random() < 0.25:
            page = self.get("/api/products/?in_stock=true&limit=20", "/api/products/?filtered")
        else:
            page = self.get("/api/products/", "/api/products/")
        if page and page.get("items"):
            with Fixtures.lock:
                Fixtures.product_ids = [p["id"] for p in page["items"] if p["stock"] > 0]

    @task(1)
    def place_order(self) -> None:
        if not Fixtures.product_ids:
            self.list_products()
            if not Fixtures.product_ids:
                return
        lines = [{"product_id": p, "quantity": random.randint(1, 3)} for p in Fixtures.product_ids[:2]]
        headers = {**self.headers, "Idempotency-Key": str(uuid.uuid4())}
        sends = 2 if random.random() < 0.2 else 1  # a client retrying after a lost answer
        order_id = None
        for attempt in range(sends):
            with self.client.post(
                "/api/orders/",
                json={"lines": lines},
                headers=headers,
                name="/api/orders/ (replay)" if attempt else "/api/orders/",
                catch_response=True,
            ) as response:
                if response.status_code == 202:
                    order_id = response.json()["id"]
                elif response.status_code in (409, 429):
                    # 409: the first send is still in progress; 429: the per-user open-order cap,
                    # expected when many simulated users share a demo account.
                    response.success()
                else:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
        if order_id is None:
            return
        self.get(f"/api/orders/{order_id}", "/api/orders/[id]")
        with self.client.post(
            f"/api/orders/{order_id}/cancel",
            headers=self.headers,
            name="/api/orders/[id]/cancel",
            catch_response=True,
        ) as response:
            if response.status_code in (200, 409):  # 409: already rejected by the worker
                response.success()


class AnalystUser(HttpUser):
    weight = 1
    wait_time = between(2, 6)

    def on_start(self) -> None:
        self.headers = login(self, ADMIN_EMAIL, ADMIN_PASSWORD)
        prepare_fixtures(self, self.headers)

    @task
    def read_reports(self) -> None:
        site = Fixtures.site_id
        for report in REPORTS:
            with self.client.get(
                f"/api/sites/{site}/{report}?period=7d",
                headers=self.headers,
                name=f"/api/sites/[id]/{report}",
                catch_response=True,
            ) as response:
                if response.status_code == 401:
                    response.success()
                    self.headers = login(self, ADMIN_EMAIL, ADMIN_PASSWORD)


class VisitorUser(FastHttpUser):
    weight = 6
    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        prepare_fixtures(self)  # the first visitor of the process prepares the site
        self.agent = random.choice(AGENTS)
        self.width = random.choice((390, 768, 1280, 1440, 1920))
        self.referrer = random.choice(REFERRERS)

    @task
    def page_view(self) -> None:
        self.client.post(
            "/api/page-views",
            json={
                "site_key": Fixtures.ingest_key,
                "url": f"https://{SITE_DOMAIN}{random.choice(PAGES)}",
                "referrer": self.referrer,
                "title": "Locust",
                "screen_width": self.width,
                "event_id": str(uuid.uuid4()),
            },
            headers={"User-Agent": self.agent},
            name="/api/page-views",
        )
        self.referrer = ""  # later views of the visit come from inside the site


@events.init_command_line_parser.add_listener
def _document_limits(parser: Any) -> None:
    parser.epilog = (
        "Start the server with raised limits for a load test, e.g. RATE_LIMIT_AUTH_PER_MINUTE=1000 "
        "RATE_LIMIT_AUTH_PER_HOUR=100000 RATE_LIMIT_DEFAULT_PER_MINUTE=100000 "
        "RATE_LIMIT_DEFAULT_PER_HOUR=1000000 just serve"
    )
