"""The SAQ dashboard's answers (``app.core.dashboard``): jobs by name, never by their arguments' values.

An administrator who is no member of a project gets a 404 for its private tasks through the API; the
dashboard must not show them what the API hides (a feed job's payload holds the task's title). A job
is shown by its function, key, queue, status, times, attempts, progress and argument *names*; its
error is scrubbed and bounded; its result is not sent. Every answer is ``no-store``; the page runs
under a strict Content-Security-Policy; retry and abort work from the dashboard's own origin only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import saq
from psycopg import AsyncConnection
from redis.asyncio.client import Pipeline
from saq import Job as SaqJob
from saq import Queue
from saq.job import Status

from app.config import Settings
from app.core.dashboard import APP_JS_FIXES, ERROR_MAX_CHARS, fixed_app_js
from app.core.queues import TIMERS
from app.core.relay import batching_of, relay_once
from app.core.scrub import MASK
from app.db.models import User, UserRole
from app.modules import MODULES
from tests.factories import (
    PASSWORD,
    Client,
    Team,
    assert_problem,
    create_user,
    mint_headers,
    saq_queues,
    sign_in_to_dashboard,
)

SAQ_STATIC = Path(saq.__path__[0]) / "web" / "static"
SAME_ORIGIN = {"Origin": "http://testserver.local", "Sec-Fetch-Site": "same-origin"}
CROSS_SITE = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
JOB_FIELDS = {
    *("function", "key", "queue", "status", "kwargs", "attempts", "retries", "progress"),
    *("queued", "started", "completed", "scheduled", "touched", "error", "due"),
}
SECRET_VALUES = ["alice@example.com", "s3cret-reset-code", "the job's r3sult"]
LEAKED_PASSWORD = "hunter2-db-password"


@pytest.fixture
async def admin(db: AsyncConnection[Any], password_hash: str) -> User:
    return await create_user(db, password_hash, role=UserRole.ADMIN)


@pytest.fixture
async def credentials(api: Client, admin: User) -> dict[str, str]:
    """A signed-in dashboard session of the admin: its cookie, for each request, and in the client's
    jar as well (httpx drops a request's own ``Cookie`` header on the redirects it follows)."""
    headers = await sign_in_to_dashboard(api, admin.email, PASSWORD)
    name, _, token = headers["Cookie"].partition("=")
    api.cookies.set(name, token, domain="testserver.local", path="/saq")
    return headers


@pytest.fixture
async def queues(valkey_url: str) -> AsyncIterator[dict[str, Queue]]:
    async with saq_queues(valkey_url) as queues:
        yield queues


async def enqueued(queue: Queue, key: str, kwargs: dict[str, Any]) -> SaqJob:
    job = await queue.enqueue(SaqJob(function="purge_outbox", kwargs=kwargs, key=key))
    assert job is not None
    return job


async def every_dashboard_answer(api: Client, credentials: dict[str, str]) -> dict[str, httpx.Response]:
    """Every answer the dashboard's page can fetch: the page, each queue, each job listed."""
    answers = {path: await api.get(path, headers=credentials) for path in ("/saq/", "/saq/api/queues")}
    for queue in answers["/saq/api/queues"].json()["queues"]:
        detail = f"/saq/api/queues/{queue['name']}"
        answers[detail] = await api.get(detail, headers=credentials)
        for job in answers[detail].json()["queue"]["jobs"]:
            for path in (f"{detail}/jobs/{job['key']}", f"/saq/queues/{queue['name']}/jobs/{job['key']}"):
                answers[path] = await api.get(path, headers=credentials)
    for path, answer in answers.items():
        assert answer.status_code == 200, (path, answer.text)
    return answers


# -- what a job shows ---------------------------------------------------------------------------------


async def test_an_admin_who_is_no_member_cannot_read_a_private_task_on_the_dashboard(
    api: Client,
    team: Team,
    admin: User,
    credentials: dict[str, str],
    settings: Settings,
    queues: dict[str, Queue],
) -> None:
    title = "Dismissal of Bob Smith - confidential"
    created = await api.post(
        f"/api/projects/{team.project}/tasks", json={"title": title}, headers=team.owner.headers
    )
    assert created.status_code == 201, created.text
    app = api.app
    as_admin = await api.get(
        f"/api/tasks/{created.json()['id']}", headers=mint_headers(app, admin.id, UserRole.ADMIN)
    )
    assert_problem(as_admin, 404, "not-found")
    services = app.state.services
    assert await relay_once(services.db.pool, queues, settings, batching_of(MODULES, settings)) >= 1

    answers = await every_dashboard_answer(api, credentials)
    feed_jobs = answers["/saq/api/queues/feed"].json()["queue"]["jobs"]
    assert feed_jobs, "the task's activity is a job on the feed queue"
    assert all(job["kwargs"] for job in feed_jobs), "its arguments are named"
    for path, answer in answers.items():
        assert title not in answer.text, f"{path} shows the private task's title"
        assert "Bob Smith" not in answer.text, path


async def test_a_job_is_shown_by_its_argument_names_and_a_scrubbed_bounded_error(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    job = await enqueued(
        queues["default"], "dashboard-values", {"email": SECRET_VALUES[0], "reset_code": SECRET_VALUES[1]}
    )
    traceback = (
        "Traceback (most recent call last):\n"
        + '  File "app/x.py", line 1, in f\n' * 400
        + 'psycopg.errors.UniqueViolation: duplicate key value violates unique constraint "users_email_key"\n'
        + f"DETAIL:  Failing row contains (7, a comment's first line\nits second line, {SECRET_VALUES[0]}).\n"
        + "CONTEXT:  SQL function\n"
        + "\nThe above exception was the direct cause of the following exception:\n\n"
        + f"ConnectionError: postgresql://app:{LEAKED_PASSWORD}@db/app refused password={LEAKED_PASSWORD}"
    )
    await job.update(error=traceback, result={"note": SECRET_VALUES[2]}, meta={"email": SECRET_VALUES[0]})

    answers = await every_dashboard_answer(api, credentials)
    shown = answers["/saq/api/queues/default"].json()["queue"]["jobs"]
    listed = [entry for entry in shown if entry["key"] == job.key]
    detail = answers["/saq/api/queues/default/jobs/dashboard-values"].json()["job"]
    assert listed == [detail]
    assert set(detail) == JOB_FIELDS, "no result, meta or argument values"
    assert detail["function"] == "purge_outbox"
    assert detail["queue"] == "default"
    assert detail["status"] == "queued"
    assert detail["kwargs"] == "email, reset_code"
    error = detail["error"]
    assert len(error) <= ERROR_MAX_CHARS
    assert error.endswith(f"refused password={MASK}"), "the end of the traceback: the exception"
    assert f"app:{MASK}@db" in error
    assert "violates unique constraint" in error and "DETAIL" not in error, "a database error's message only"
    assert "second line" not in error and "CONTEXT" not in error
    for path, answer in answers.items():
        for value in [*SECRET_VALUES, LEAKED_PASSWORD]:
            assert value not in answer.text, f"{path} answers {value!r}"


async def test_a_queued_job_says_when_it_is_due_even_after_a_delayed_retry(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    """Diffreview8: SAQ keeps when a job is due in its queue's ``incomplete`` set. A retry after a delay
    moves it there while the job's ``scheduled`` keeps its first run's (0 for a job due at once), so
    the page said "queued" for a job due in an hour, or a time already past."""
    queue = queues["default"]
    later = SaqJob(
        function="purge_outbox", kwargs={"outbox_id": 8}, key="dashboard-due", scheduled=2_000_000_000
    )
    assert await queue.enqueue(later) is not None
    await enqueued(queue, "dashboard-due-now", {"outbox_id": 9})
    retried = await queue.enqueue(
        SaqJob(function="purge_outbox", kwargs={"outbox_id": 10}, key="dashboard-retried", retry_delay=3600)
    )
    assert retried is not None
    before = time.time()
    await queue.retry(retried, "RuntimeError: boom")
    after = time.time()

    answers = await every_dashboard_answer(api, credentials)
    detail = {
        key: answers[f"/saq/api/queues/default/jobs/{key}"].json()["job"]
        for key in ("dashboard-due", "dashboard-due-now", "dashboard-retried")
    }
    assert detail["dashboard-due"]["due"] == 2_000_000_000
    assert detail["dashboard-due-now"]["due"] == 0
    assert detail["dashboard-retried"]["scheduled"] == 0
    assert int(before) + 3600 <= detail["dashboard-retried"]["due"] <= after + 3600
    listed = {job["key"]: job for job in answers["/saq/api/queues/default"].json()["queue"]["jobs"]}
    assert all(listed[key] == shown for key, shown in detail.items()), (
        "the list says what the job's page says"
    )


async def test_an_unknown_queue_or_job_is_a_problem(api: Client, credentials: dict[str, str]) -> None:
    for path in ("/saq/api/queues/nope", "/saq/api/queues/default/jobs/nope"):
        response = await api.get(path, headers=credentials)
        assert_problem(response, 404, "not-found")
        assert response.headers["cache-control"] == "no-store"


# -- headers ---------------------------------------------------------------------------------------


async def test_every_dashboard_answer_is_no_store_but_its_static_files(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    await enqueued(queues["default"], "dashboard-no-store", {"outbox_id": 1})
    answers = await every_dashboard_answer(api, credentials)
    answers["/saq"] = await api.get("/saq", headers=credentials, follow_redirects=False)
    retry = "/saq/api/queues/default/jobs/dashboard-no-store/retry"
    answers[retry] = await api.post(retry, headers={**credentials, **SAME_ORIGIN})
    assert len(answers) >= 7
    for path, answer in answers.items():
        assert answer.headers.get("cache-control") == "no-store", path
    for name in ("app.js", "snabbdom.js.gz", "pico.min.css.gz", "favicon.svg"):
        static = await api.get(f"/saq/static/{name}")
        assert static.status_code == 200, name
        assert static.headers.get_list("cache-control") == ["max-age=3600, public"], name


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls.extend(value for name, value in attrs if name in {"src", "href"} and value)
        self._in_script = tag == "script" and not dict(attrs).get("src")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_scripts.append(data)


@pytest.mark.parametrize("path", ["/saq/", "/saq/queues/default", "/saq/queues/default/jobs/some-key"])
async def test_the_page_runs_under_a_strict_policy_that_allows_its_one_inline_script(
    api: Client, credentials: dict[str, str], path: str
) -> None:
    response = await api.get(path, headers=credentials)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = _Page()
    page.feed(response.text)
    assert len(page.inline_scripts) == 1, page.inline_scripts
    digest = base64.b64encode(hashlib.sha256(page.inline_scripts[0].encode()).digest()).decode()
    policies = response.headers.get_list("content-security-policy")
    assert len(policies) == 1, policies
    directives = dict(directive.split(" ", 1) for directive in policies[0].split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == f"'self' 'sha256-{digest}'"
    assert "unsafe" not in policies[0] and "http" not in policies[0] and "*" not in policies[0]
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert len(page.urls) == 4  # the stylesheet, two scripts and the icon
    for url in page.urls:
        assert url.startswith("/saq/static/"), url
        assert (await api.get(url)).status_code == 200, url


# -- addresses --------------------------------------------------------------------------------------


async def test_the_dashboard_without_its_trailing_slash_redirects_to_it(
    api: Client, credentials: dict[str, str]
) -> None:
    response = await api.get("/saq", headers=credentials, follow_redirects=False)
    assert response.status_code == 308, response.text
    assert response.headers["location"] == "/saq/"
    followed = await api.get("/saq", headers=credentials)
    assert followed.status_code == 200
    assert str(followed.url).endswith("/saq/")
    assert 'const root_path = "/saq";' in followed.text
    api.cookies.clear()
    anonymous = await api.get("/saq", follow_redirects=False)  # the guard first: to the sign-in page
    assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/saq/login")


def test_saqs_script_still_needs_the_fixes() -> None:
    """An upgrade of SAQ that changes a fixed text (fixed upstream, or moved) fails here, and the app's
    start with it (``fixed_app_js``): drop or redo the fix."""
    upstream = (SAQ_STATIC / "app.js").read_text()
    for wrong, right in APP_JS_FIXES:
        assert upstream.count(wrong) == 1, f"SAQ's app.js no longer holds {wrong!r}"
        assert right != wrong
    assert len(APP_JS_FIXES) == 17


def test_a_fix_that_no_longer_fits_stops_the_start() -> None:
    upstream = (SAQ_STATIC / "app.js").read_text()
    for wrong, _ in APP_JS_FIXES:
        with pytest.raises(ValueError, match="redo the fix"):
            fixed_app_js(upstream.replace(wrong, wrong.replace(" ", "  ")))
    with pytest.raises(ValueError, match="2 copies"):
        fixed_app_js(upstream + APP_JS_FIXES[0][0])


async def test_the_served_script_differs_from_saqs_by_the_fixes_alone(api: Client) -> None:
    upstream = (SAQ_STATIC / "app.js").read_text()
    served = (await api.get("/saq/static/app.js")).text
    expected = upstream
    for wrong, right in APP_JS_FIXES:
        expected = expected.replace(wrong, right)
    assert served == expected != upstream
    assert 'link({ props: { href: root_path + "/queues/" + job.queue } }, job.queue)' in served
    assert 'window.location.assign(root_path + "/login")' in served
    assert served.count("await answered(") == 2  # SAQ's get and post
    assert served.count('h("figure", h("table"') == 5  # every table scrolls on its own (SAQ's job page's did)
    assert "<a><td>" not in served and 'h("td", link(' in served
    assert 'action: root_path + "/logout"' in served


# -- actions ----------------------------------------------------------------------------------------


async def test_retry_and_abort_work_from_the_dashboards_origin(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    failed = await enqueued(queues["default"], "dashboard-retry", {"outbox_id": 1})
    await failed.finish(Status.FAILED, error="RuntimeError: boom")
    retried = await api.post(
        "/saq/api/queues/default/jobs/dashboard-retry/retry", headers={**credentials, **SAME_ORIGIN}
    )
    assert retried.status_code == 202, retried.text
    await failed.refresh()
    assert failed.status == Status.QUEUED

    queued = await enqueued(queues["default"], "dashboard-abort", {"outbox_id": 2})
    aborted = await api.post(
        "/saq/api/queues/default/jobs/dashboard-abort/abort", headers={**credentials, **SAME_ORIGIN}
    )
    assert aborted.status_code == 202, aborted.text
    await queued.refresh()
    assert queued.status == Status.ABORTED


async def test_a_scheduled_job_aborted_is_finished_and_a_finished_one_is_refused(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    """SAQ's abort only marks a job not yet due ``aborting`` (the browser reviewer: it stayed so, Retry
    refused it with 409, its record never expired), and it overwrote a finished job's status and
    error, after which it could not be retried either."""
    queue = queues["default"]
    scheduled = await queue.enqueue(
        SaqJob(
            function="purge_outbox", kwargs={"outbox_id": 6}, key="dashboard-later", scheduled=2_000_000_000
        )
    )
    assert scheduled is not None
    url = "/saq/api/queues/default/jobs/{}/{}"
    aborted = await api.post(url.format("dashboard-later", "abort"), headers={**credentials, **SAME_ORIGIN})
    assert aborted.status_code == 202, aborted.text
    await scheduled.refresh()
    assert (scheduled.status, scheduled.error) == (Status.ABORTED, "aborted from ui")
    retried = await api.post(url.format("dashboard-later", "retry"), headers={**credentials, **SAME_ORIGIN})
    assert retried.status_code == 202, retried.text

    failed = await enqueued(queue, "dashboard-failed", {"outbox_id": 7})
    await failed.finish(Status.FAILED, error="RuntimeError: boom")
    refused = await api.post(url.format("dashboard-failed", "abort"), headers={**credentials, **SAME_ORIGIN})
    assert_problem(refused, 409)
    await failed.refresh()
    assert (failed.status, failed.error) == (Status.FAILED, "RuntimeError: boom")


async def test_a_running_job_is_left_to_its_worker_to_abort(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    """A worker cancels the job it runs once it reads ``aborting`` and finishes it itself."""
    queue = queues["default"]
    await enqueued(queue, "dashboard-abort-running", {"outbox_id": 8})
    running = await queue.dequeue(timeout=5)
    assert running is not None and running.key == "dashboard-abort-running"
    await running.update(status=Status.ACTIVE, attempts=1)
    aborted = await api.post(
        "/saq/api/queues/default/jobs/dashboard-abort-running/abort", headers={**credentials, **SAME_ORIGIN}
    )
    assert aborted.status_code == 202, aborted.text
    await running.refresh()
    assert running.status == Status.ABORTING
    # The worker looks every TIMERS["abort"] s, past jobs younger than that: until it has, nothing may
    # enqueue the key again (a cron's scheduler did, 5 s on, over a job aborted in its first seconds).
    notice_s = await queue.redis.ttl(running.abort_id)
    assert notice_s > 2 * TIMERS["abort"] + TIMERS["schedule"], notice_s

    again = await api.post(
        "/saq/api/queues/default/jobs/dashboard-abort-running/abort", headers={**credentials, **SAME_ORIGIN}
    )
    assert_problem(again, 409)
    retried = await api.post(
        "/saq/api/queues/default/jobs/dashboard-abort-running/retry", headers={**credentials, **SAME_ORIGIN}
    )
    assert_problem(retried, 409)
    await running.refresh()
    assert running.status == Status.ABORTING, "a second click finished a job its worker still runs"


def worker_acts_during_the_abort(
    monkeypatch: pytest.MonkeyPatch, valkey_url: str, act: Callable[[Queue], Awaitable[None]]
) -> list[bool]:
    """Run ``act`` (what a worker does, on the ``default`` queue) once, between the abort's look at
    the job (its first ``LPOS`` under ``WATCH``) and its write: in the app's event loop, through
    connections of its own. The list says whether it ran."""
    look = Pipeline.lpos
    acted: list[bool] = []

    async def meanwhile(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        if not acted:
            acted.append(True)
            async with saq_queues(valkey_url) as workers:
                await act(workers["default"])
        return await look(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "lpos", meanwhile)
    return acted


async def test_a_job_a_worker_finishes_while_it_is_aborted_stays_finished(
    api: Client,
    credentials: dict[str, str],
    queues: dict[str, Queue],
    valkey_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second diff reviewer: the worker finished the job between the dashboard's look and SAQ's
    abort, and the abort wrote its stale copy over the finished record (``aborting``, no TTL, for
    good). The abort is one transaction now: a change meanwhile makes it look again."""
    queue = queues["default"]
    await enqueued(queue, "dashboard-finishing", {"outbox_id": 10})
    running = await queue.dequeue(timeout=5)
    assert running is not None
    await running.update(status=Status.ACTIVE, attempts=1)

    async def finish(worker: Queue) -> None:
        job = await worker.job("dashboard-finishing")
        assert job is not None
        await worker.finish(job, Status.COMPLETE)

    finished = worker_acts_during_the_abort(monkeypatch, valkey_url, finish)
    aborted = await api.post(
        "/saq/api/queues/default/jobs/dashboard-finishing/abort", headers={**credentials, **SAME_ORIGIN}
    )
    assert finished
    assert_problem(aborted, 409)
    job = await queue.job("dashboard-finishing")
    assert job is not None and job.status == Status.COMPLETE, job
    assert await queue.redis.ttl(queue.job_id("dashboard-finishing")) > 0, "the record keeps its TTL"


async def test_a_cron_jobs_waiting_run_is_not_aborted(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    """SAQ's scheduler enqueues a cron job's run again within a second: an abort skipped nothing."""
    queue = queues["default"]
    waiting = await queue.enqueue(
        SaqJob(function="purge_outbox", kwargs={}, key="cron:purge_outbox", scheduled=2_000_000_000)
    )
    assert waiting is not None
    refused = await api.post(
        "/saq/api/queues/default/jobs/cron:purge_outbox/abort", headers={**credentials, **SAME_ORIGIN}
    )
    assert_problem(refused, 409)
    await waiting.refresh()
    assert waiting.status == Status.QUEUED


async def test_a_job_a_worker_takes_while_it_is_aborted_is_left_to_the_worker(
    api: Client,
    credentials: dict[str, str],
    queues: dict[str, Queue],
    valkey_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The diff reviewer: read queued, taken by a worker, then finished ``aborted`` by the dashboard
    while the worker ran it (and Retry could queue it again beside that run). The worker takes it
    between the abort's look and its write."""
    queue = queues["default"]
    await enqueued(queue, "dashboard-taken", {"outbox_id": 9})

    async def take(worker: Queue) -> None:
        job = await worker.dequeue(timeout=5)
        assert job is not None and job.key == "dashboard-taken"
        await job.update(status=Status.ACTIVE, attempts=1)

    taken = worker_acts_during_the_abort(monkeypatch, valkey_url, take)
    aborted = await api.post(
        "/saq/api/queues/default/jobs/dashboard-taken/abort", headers={**credentials, **SAME_ORIGIN}
    )
    assert taken
    assert aborted.status_code == 202, aborted.text
    job = await queue.job("dashboard-taken")
    assert job is not None and job.status == Status.ABORTING


async def test_a_running_or_queued_job_is_not_retried(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    """SAQ's retry takes any job off the active list and queues it: retried while a worker ran it, the
    job ran twice at once (a second slot took it). Only a finished job is queued again."""
    queue = queues["default"]
    await enqueued(queue, "dashboard-running", {"outbox_id": 3})
    running = await queue.dequeue(timeout=5)  # as a worker takes it, then marks it running
    assert running is not None and running.key == "dashboard-running"
    await running.update(status=Status.ACTIVE, attempts=1)
    await enqueued(queue, "dashboard-queued", {"outbox_id": 4})

    for key, status in (("dashboard-running", Status.ACTIVE), ("dashboard-queued", Status.QUEUED)):
        refused = await api.post(
            f"/saq/api/queues/default/jobs/{key}/retry", headers={**credentials, **SAME_ORIGIN}
        )
        assert_problem(refused, 409)
        job = await queue.job(key)
        assert job is not None and job.status == status, key
    info = await queue.info(jobs=True)
    assert info["active"] == 1 and info["queued"] == 1, info


async def test_two_retries_of_one_job_at_once_queue_it_once(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue]
) -> None:
    queue = queues["default"]
    failed = await enqueued(queue, "dashboard-twice", {"outbox_id": 5})
    assert await queue.dequeue(timeout=5) is not None
    await failed.finish(Status.FAILED, error="RuntimeError: boom")
    url = "/saq/api/queues/default/jobs/dashboard-twice/retry"
    answers = await asyncio.gather(*(api.post(url, headers={**credentials, **SAME_ORIGIN}) for _ in range(2)))
    assert sorted(answer.status_code for answer in answers) == [202, 409], [a.text for a in answers]
    info = await queue.info()
    assert (info["queued"], info["active"]) == (1, 0), info


@pytest.mark.parametrize("action", ["retry", "abort"])
async def test_retry_and_abort_from_another_site_are_refused(
    api: Client, credentials: dict[str, str], queues: dict[str, Queue], action: str
) -> None:
    job = await enqueued(queues["default"], f"dashboard-{action}-csrf", {"outbox_id": 3})
    await job.finish(Status.FAILED, error="RuntimeError: boom")
    response = await api.post(
        f"/saq/api/queues/default/jobs/dashboard-{action}-csrf/{action}",
        headers={**credentials, **CROSS_SITE},
    )
    assert_problem(response, 403, "forbidden")
    await job.refresh()
    assert job.status == Status.FAILED


@pytest.mark.parametrize("who", ["member", "deactivated admin"])
async def test_a_bearer_tokens_admin_claim_the_row_does_not_back_opens_nothing(
    api: Client, db: AsyncConnection[Any], queues: dict[str, Queue], who: str
) -> None:
    """A token issued before a demotion or a deactivation still claims the role until it expires:
    the dashboard reads the row, as its session cookie's check does."""
    user = await (
        create_user(db) if who == "member" else create_user(db, role=UserRole.ADMIN, is_active=False)
    )
    claim = mint_headers(api.app, user.id, UserRole.ADMIN)
    assert_problem(await api.get("/saq/api/queues", headers=claim), 403, "forbidden")
    job = await enqueued(queues["default"], f"dashboard-claim-{user.id}", {"outbox_id": 4})
    await job.finish(Status.FAILED, error="RuntimeError: boom")
    for action in ("retry", "abort"):
        response = await api.post(
            f"/saq/api/queues/default/jobs/dashboard-claim-{user.id}/{action}",
            headers={**claim, **SAME_ORIGIN},
        )
        assert_problem(response, 403, "forbidden")
    await job.refresh()
    assert job.status == Status.FAILED
