"""The SAQ dashboard at ``/saq``: SAQ's own page and script, served with our JSON API.

litestar-saq's controller answers the page's requests with whole jobs: every argument's value
(``queue.info(jobs=True)``, a ``repr`` of the kwargs), the job's result and its traceback. Feed jobs
carry activity payloads, so an administrator who is no member of a project read a private task's
title there, which the API answers them with a 404. Here, as in the monitoring view and the job logs,
a job is described by its function, key, queue, status, times, attempts, progress and the *names* of
its arguments; its error is scrubbed of secrets (``app.core.scrub``) and bounded; its result is not
sent. litestar-saq's web UI stays off (``web_enabled=False``); this router serves:

- ``/saq/``, ``/saq/queues/<queue>``, ``/saq/queues/<queue>/jobs/<key>``: the page (SAQ's markup)
  under a strict Content-Security-Policy that allows its one inline script by its hash; ``/saq``
  redirects to ``/saq/`` (SAQ's script routes only the latter: it rendered its own "404 not found");
- ``/saq/api/...``: the JSON the page polls, in the shapes SAQ's ``app.js`` reads, and the retry and
  abort actions (same-origin only: ``app.core.gate``);
- ``/saq/static/<name>``: SAQ's three files and our icon (``FAVICON``), public (as litestar-saq
  serves SAQ's). ``app.js`` is
  SAQ's with our fixes (``APP_JS_FIXES``: a job's queue link left ``/saq``; a refused request, read
  as data, threw and left the page stale: a 401 now opens ``<root>/login``, any other refusal is
  shown; Retry is offered for a finished job only; at a phone's width each table scrolls on its own
  and "Sign out" is in SAQ's bar); the two
  SAQ stores gzipped (``*.gz``) are sent gzipped only to a client that accepts gzip,
  plain to any other.

Every answer but the static files is ``Cache-Control: no-store``, and every route but the static files
is behind the guards of ``SAQConfig.web_guards`` (the accounts domain's ``requires_dashboard_admin``,
passed in by ``create_app``). A page request they refuse with 401 is redirected (303) to
``<root>/login``, the sign-in page of whoever provides them; the page's bar carries a sign-out form
that posts to ``<root>/logout``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import re
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Any, cast

import msgspec
from litestar import Request, Router, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import Redirect, Response
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_303_SEE_OTHER, HTTP_308_PERMANENT_REDIRECT
from litestar.types import ExceptionHandler
from litestar_saq import SAQConfig
from redis.exceptions import WatchError
from saq import Job, Queue, Status
from saq.queue.redis import RedisQueue
from saq.utils import now as saq_now

from app.core.compression import GzipAsset
from app.core.errors import AppError, ConflictError, NotFoundError, UnauthorizedError, exception_handlers
from app.core.queues import TIMERS
from app.core.routing import Controller
from app.core.scrub import scrub_text

__all__ = (
    "APP_JS_FIXES",
    "ERROR_MAX_CHARS",
    "FAVICON",
    "FAVICON_NAME",
    "JobOut",
    "QueueOut",
    "dashboard_router",
    "fixed_app_js",
    "job_out",
)

ERROR_MAX_CHARS = 2000
"""A job's error (a traceback) is cut to its last this many characters: the exception is at the end."""
_SCRUBBED_AT_MOST = 16 * ERROR_MAX_CHARS
"""Scrubbed before the final cut, so no secret is cut from the name that marks it (``password=``)."""

NO_STORE = CacheControlHeader(no_store=True)
_NO_STORE = {"Cache-Control": "no-store"}
STATIC_CACHE = CacheControlHeader(public=True, max_age=3600)
"""The static files': the same for everyone, and changed only by a release."""

RETRYABLE = frozenset({Status.COMPLETE, Status.FAILED, Status.ABORTED})
"""A job the dashboard may queue again: finished. SAQ's ``Job.retry`` takes any job off the active
list and queues it: a running one then ran twice at once (a second worker slot took it while the
first still ran it, and each overwrote the other's outcome)."""
_RETRYABLE_JS = msgspec.json.encode(sorted(status.value for status in RETRYABLE)).decode()

APP_JS_FIXES: tuple[tuple[str, str], ...] = (
    # A job's page linked its queue at "/queues/<name>", outside the dashboard (saq 0.26.4, app.js ~217).
    (
        'link({ props: { href: "/queues/" + job.queue } }, job.queue)',
        'link({ props: { href: root_path + "/queues/" + job.queue } }, job.queue)',
    ),
    # Every answer was read as data (app.js ~30): once the session was over (expired, signed out in
    # another tab, password changed) each poll's 401 problem was rendered as a queue and threw, and the
    # old numbers stayed on screen. A 401 now opens the sign-in page; any other refusal is shown.
    (
        """const get = async function(path) {
  try {
    const response = await fetch(apiPath(path))
    return await response.json()""",
        """// A refusal is not data: a session that is over (401) opens the sign-in page, any other refusal
// is an error the page shows (a failed action's until the next action, on the page it was made on).
let notice = null

const answered = async function(response) {
  if (response.status === 401) {
    await response.text()  // read to its end: leaving the page would cut it short
    window.location.assign(root_path + "/login")
    return { error: "The session has ended: opening the sign-in page." }
  }
  if (!response.ok) {
    let problem = {}
    try { problem = await response.json() } catch (_) {}
    const title = problem.title || response.statusText || "Error"
    return { error: response.status + " " + title + (problem.detail ? ": " + problem.detail : "") }
  }
  return await response.json()
}

const get = async function(path) {
  try {
    return await answered(await fetch(apiPath(path)))""",
    ),
    (
        """        body: JSON.stringify(data),
      },
    )
    return await response.json()""",
        """        body: JSON.stringify(data),
      },
    )
    const answer = await answered(response)
    const failed = answer.error && path.split("/").pop() + " failed: " + answer.error
    notice = failed ? { path: window.location.pathname, text: failed } : null
    return answer""",
    ),
    # A job's page offered Retry whatever the job's state (app.js ~188), and the server refuses (409)
    # any job that has not finished (``RETRYABLE``): the button is shown for a finished job only.
    (
        """  const buttons = [button(
    "Retry",
    event => post(root_path + "/queues/" + queue_name + "/jobs/" + job_key + "/retry"),
    { style: { marginRight: "1rem" } },
  )]""",
        f"""  const buttons = {_RETRYABLE_JS}.includes(job.status) ? [button(
    "Retry",
    event => post(root_path + "/queues/" + queue_name + "/jobs/" + job_key + "/retry"),
    {{ style: {{ marginRight: "1rem" }} }},
  )] : []""",
    ),
    # At a phone's width (390 px) the page was 489 px wide, 877 px on a queue's: only the job's page
    # put its table in a <figure> (Pico's element that scrolls on its own), a job's key was a link
    # holding its cell (<a><td>, app.js ~178), and our sign-out form was a second bar above SAQ's. Each
    # table is in a figure now, the link in the cell, and "Sign out" in SAQ's bar.
    (
        """    h("h1", "Queues"),
    h("table", [""",
        """    h("h1", "Queues"),
    h("figure", h("table", [""",
    ),
    (
        """      )),
    ]),
  ])
}

const job_headers""",
        """      )),
    ])),
  ])
}

const job_headers""",
    ),
    (
        """      h("h2", queue_name),
    ]),
    h("table", [""",
        """      h("h2", queue_name),
    ]),
    h("figure", h("table", [""",
    ),
    (
        """        h("td", queue.scheduled),
      ])),
    ]),
    h("h2", "Workers"),
    h("table", { attrs: { role: "grid" } }, [""",
        """        h("td", queue.scheduled),
      ])),
    ])),
    h("h2", "Workers"),
    h("figure", h("table", { attrs: { role: "grid" } }, [""",
    ),
    (
        """      )),
    ]),
    h("h2", "Jobs"),
    h("table", { attrs: { role: "grid" } }, [""",
        """      )),
    ])),
    h("h2", "Jobs"),
    h("figure", h("table", { attrs: { role: "grid" } }, [""",
    ),
    # A queue's page lists the first ten of its unfinished jobs (SAQ's ``info(jobs=True)``), and said
    # neither that nor where the others are: it says both now.
    (
        """      )),
    ]),
  ])
}

const job_view""",
        """      )),
    ])),
    h("p", h("small", "Listed: " + queue.jobs.length + " of the " + (queue.queued + queue.active
      + queue.scheduled) + " jobs not finished (the first ten). A finished job is not listed: open it at "
      + root_path + "/queues/" + queue_name + "/jobs/<its key>.")),
  ])
}

const job_view""",
    ),
    # Retry and Abort were links without an href (SAQ's ``button``, app.js ~84): no Tab stopped on them
    # and neither Enter nor Space pressed them. They are buttons now, disabled while their request runs.
    (
        """  data.attrs ||= {}
  data.attrs.role = "button"
  data.on ||= {}
  data.on.click = async event => {
    event.target.setAttribute("aria-busy", true)
    await handler(event)
    event.target.setAttribute("aria-busy", false)
    renderPage()
  }

  return h("a", data, children)
}""",
        """  data.attrs ||= {}
  data.attrs.type = "button"
  data.on ||= {}
  data.on.click = async event => {
    const pressed = event.currentTarget
    pressed.disabled = true
    pressed.setAttribute("aria-busy", true)
    await handler(event)
    pressed.setAttribute("aria-busy", false)
    pressed.disabled = false
    renderPage()
  }

  return h("button", data, children)
}""",
    ),
    # Abort was offered on every job not completed, and the server refuses (409) one being aborted and a
    # cron job's waiting run (``abort_job``): Abort is offered where it can work.
    (
        """  if (!job.completed) {""",
        """  const waiting_cron = job.key.startsWith("cron:") && job.status !== "active"
  if (!job.completed && job.status !== "aborting" && !waiting_cron) {""",
    ),
    (
        'link({ props: { href: root_path + "/queues/" + queue_name + "/jobs/" + job.key } }, '
        'h("td", job.key)),',
        'h("td", link({ props: { href: root_path + "/queues/" + queue_name + "/jobs/" + job.key } }, '
        "job.key)),",
    ),
    # A job not started showed an animated progress bar, as if it ran: the value 0 set as a property
    # is no change to snabbdom (a new <progress> reads 0), so the bar stayed indeterminate. And a job
    # scheduled ahead (a cron job's next run) said only "queued" (the new-user pass): it says when.
    (
        """h("td", h("progress", { props: { value: job.progress || 0, max: 1.0 } })),""",
        """h("td", h("progress", { attrs: { value: job.progress || 0, max: 1 } })),""",
    ),
    (
        """  h("td", job.status),
]""",
        """  h("td", job.status === "queued" && job.due
    ? "queued, due " + format_time(job.due * 1000)  // epoch seconds (JobOut.due)
    : job.status),
]""",
    ),
    (
        """        h("li", h("a", { props: { href: "https://saq-py.readthedocs.io" } }, "Docs")),""",
        """        h("li", h("a", { props: { href: "https://saq-py.readthedocs.io" } }, "Docs")),
        h("li", h("form", { attrs: { method: "post", action: root_path + "/logout" }, style: { margin: 0 } },
          h("button.secondary.outline", { attrs: { type: "submit" }, style: { margin: 0 } }, "Sign out")
        )),""",
    ),
    (
        """    h("main.container", view),""",
        """    h("main.container", notice && notice.path === path
      ? [h("p", { attrs: { role: "alert" } }, h("strong", notice.text)), view]
      : view),""",
    ),
)
"""What the served ``app.js`` changes in SAQ's, each text found exactly once (``fixed_app_js`` refuses
to start otherwise: a SAQ upgrade that changes one fails the app's start, not the page)."""


def fixed_app_js(upstream: str) -> str:
    """SAQ's ``app.js`` with ``APP_JS_FIXES``; ``ValueError`` if a fix's text is not there exactly once
    (SAQ changed it: drop or redo the fix)."""
    for wrong, right in APP_JS_FIXES:
        found = upstream.count(wrong)
        if found != 1:
            raise ValueError(
                f"SAQ's app.js holds {found} copies of the text a dashboard fix replaces (APP_JS_FIXES, "
                f"app.core.dashboard); redo the fix for this SAQ: {wrong[:80]!r}"
            )
        upstream = upstream.replace(wrong, right, 1)
    return upstream


FAVICON_NAME = "favicon.svg"
"""The dashboard's icon, ``<root>/static/favicon.svg``: each page links it (the sign-in page too), so the
browser no longer asks for ``/favicon.ico``, a 404 every page logged as a console error."""
FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#1095c1"/>'
    b'<path d="M4 5h8M4 8h8M4 11h5" stroke="#fff" stroke-width="1.6" stroke-linecap="round"/></svg>'
)
"""Our own (no script, nothing fetched): a queue's three lines, in Pico's primary colour."""


def _csp(inline_script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(inline_script.encode()).digest()).decode()
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' 'sha256-{digest}'",
            "style-src 'self'",
            "img-src 'self' data:",  # Pico's icons are data: URIs
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _root_script(root: str) -> str:
    """The page's one inline script: where the dashboard is (``app.js`` reads ``root_path``)."""
    return f"const root_path = {msgspec.json.encode(root).decode()};"


def _page(root: str) -> str:
    """litestar-saq's page, with our ``app.js`` (whose bar holds the sign-out form)."""
    static = html.escape(f"{root}/static")
    return f"""<!DOCTYPE html>
<html>
    <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <link rel="stylesheet" type="text/css" href="{static}/pico.min.css.gz">
        <link rel="icon" type="image/svg+xml" href="{static}/{FAVICON_NAME}">
        <title>SAQ</title>
    </head>
    <body>
        <div id="app"></div>
        <script>{_root_script(root)}</script>
        <script src="{static}/snabbdom.js.gz"></script>
        <script src="{static}/app.js"></script>
    </body>
</html>
"""


# -- wire shapes (those SAQ's app.js reads) --------------------------------------------------------


class JobOut(msgspec.Struct, frozen=True):
    """A job as the dashboard shows it: never its arguments' values nor its result."""

    function: str
    key: str
    queue: str | None
    status: str
    kwargs: str
    """The names of its arguments, comma-separated (SAQ's page shows this field as the "Args" column)."""
    attempts: int
    retries: int
    progress: float
    queued: int
    started: int
    completed: int
    scheduled: int
    touched: int
    error: str | None
    """Its error (a traceback), secrets masked, the last ``ERROR_MAX_CHARS`` characters."""
    due: int = 0
    """When a queued job is due, in epoch seconds (0: at once): its score in SAQ's ``incomplete`` set,
    which a retry after a delay moves while ``scheduled`` keeps the first run's (diffreview8)."""


class WorkerStatsOut(msgspec.Struct, frozen=True):
    complete: int = 0
    failed: int = 0
    retried: int = 0
    aborted: int = 0
    uptime: int = 0


class WorkerOut(msgspec.Struct, frozen=True):
    """A worker's counters (not the free-form metadata it registers)."""

    queue_key: str | None
    stats: WorkerStatsOut | None


class QueueOut(msgspec.Struct, frozen=True):
    name: str
    queued: int
    active: int
    scheduled: int
    workers: dict[str, WorkerOut]
    jobs: list[JobOut]
    """The first jobs of the queue's detail (SAQ's selection); empty in the list of queues."""


class QueueList(msgspec.Struct, frozen=True):
    queues: list[QueueOut]


class QueueDetail(msgspec.Struct, frozen=True):
    queue: QueueOut


class JobDetail(msgspec.Struct, frozen=True):
    job: JobOut


_DATABASE_DETAIL = re.compile(r"^(?:DETAIL|HINT|CONTEXT):  .*?(?=\n\n|\Z)", re.MULTILINE | re.DOTALL)
"""What PostgreSQL adds under an error's message in a traceback SAQ stored, to the end of that
exception's block (a blank line, or the end): DETAIL quotes whole rows (an e-mail, a password hash, a
comment's lines), which no secret pattern masks (``app.core.scrub.exception_message`` keeps the
primary message alone in the app's own logs and events)."""


def _error(text: Any) -> str | None:
    if not text:
        return None
    told = _DATABASE_DETAIL.sub("", str(text)[-_SCRUBBED_AT_MOST:])
    scrubbed = scrub_text(told)
    return scrubbed if len(scrubbed) <= ERROR_MAX_CHARS else "…" + scrubbed[-(ERROR_MAX_CHARS - 1) :]


def job_out(job: Mapping[str, Any], due: float | None = None) -> JobOut:
    """A job's dashboard view from its ``to_dict()`` (which omits fields at their defaults) and when it
    is due (``_due_times``)."""
    status = job.get("status", "new")
    queue = job.get("queue")
    return JobOut(
        function=str(job.get("function", "")),
        key=str(job.get("key", "")),
        queue=queue if isinstance(queue, str) or queue is None else getattr(queue, "name", None),
        status=str(getattr(status, "value", status)),
        kwargs=", ".join(sorted(str(name) for name in job.get("kwargs") or {})),
        attempts=int(job.get("attempts", 0)),
        retries=int(job.get("retries", 1)),
        progress=float(job.get("progress", 0.0)),
        queued=int(job.get("queued", 0)),
        started=int(job.get("started", 0)),
        completed=int(job.get("completed", 0)),
        scheduled=int(job.get("scheduled", 0)),
        touched=int(job.get("touched", 0)),
        error=_error(job.get("error")),
        due=int(due or 0),
    )


async def _due_times(queue: Queue, jobs: list[dict[str, Any]]) -> list[float | None]:
    """When each of ``jobs`` is due: its score in the queue's ``incomplete`` set (None once it has
    left it), read in one call."""
    if not jobs or not isinstance(queue, RedisQueue):
        return [None] * len(jobs)
    ids = [queue.job_id(str(job.get("key", ""))) for job in jobs]
    scores: list[float | None] = await queue.redis.zmscore(queue.namespace("incomplete"), ids)
    return scores


def _worker_out(info: Mapping[str, Any]) -> WorkerOut:
    stats = info.get("stats")
    return WorkerOut(
        queue_key=info.get("queue_key"),
        stats=msgspec.convert(stats, WorkerStatsOut) if isinstance(stats, Mapping) else None,
    )


async def _queue_out(queue: Queue, *, jobs: bool) -> QueueOut:
    info = await queue.info(jobs=jobs)
    return QueueOut(
        name=info["name"],
        queued=info["queued"],
        active=info["active"],
        scheduled=info["scheduled"],
        workers={worker: _worker_out(details) for worker, details in info["workers"].items()},
        jobs=[
            job_out(job, due)
            for job, due in zip(info["jobs"], await _due_times(queue, info["jobs"]), strict=True)
        ],
    )


# -- routes -----------------------------------------------------------------------------------------

Queues = Mapping[str, Queue]
DashboardQueues = NamedDependency[Queues]


def _queue(queues: Queues, queue_id: str) -> Queue:
    queue = queues.get(queue_id)
    if queue is None:
        raise NotFoundError(f"No queue named {queue_id!r}.", headers=_NO_STORE)
    return queue


async def _job_in(queue: Queue, job_id: str) -> Job:
    job = await queue.job(job_id)
    if job is None:
        raise NotFoundError(f"No job {job_id!r} in the {queue.name} queue.", headers=_NO_STORE)
    return job


ACTION_CLAIM_MS = 10_000
ABORTED_FROM_UI = "aborted from ui"


@contextlib.asynccontextmanager
async def _acting_on(queue: RedisQueue, job_id: str) -> AsyncIterator[None]:
    """One action of the dashboard on ``job_id`` at a time (a claim in Valkey around the check and
    the action): two retries at once, both reading the job finished, queued it twice, and the second
    took it off the active list while a worker ran the first."""
    claim = f"dashboard:acting:{queue.name}:{job_id}"
    if not await queue.redis.set(claim, 1, nx=True, px=ACTION_CLAIM_MS):
        raise ConflictError("Another action on this job is under way.", headers=_NO_STORE)
    try:
        yield
    finally:
        await queue.redis.delete(claim)


def _redis_queue(queue: Queue) -> RedisQueue:
    if not isinstance(queue, RedisQueue):
        raise TypeError(f"a dashboard action needs SAQ's Redis queue, not {type(queue).__name__}")
    return queue


async def retry_finished_job(queue: Queue, job_id: str) -> None:
    """Queue ``job_id`` again if it has finished, else ``ConflictError`` (one action at a time:
    ``_acting_on``)."""
    async with _acting_on(_redis_queue(queue), job_id):
        job = await _job_in(queue, job_id)
        if job.status not in RETRYABLE:
            raise ConflictError(
                f"The job is {job.status.value}: only a finished job is retried (abort a running one first).",
                headers=_NO_STORE,
            )
        await job.retry("retried from ui")


ABORT_ATTEMPTS = 5
"""Optimistic tries of one abort (``abort_unfinished_job``) before a 409: each fails only when a
worker or another process changed the job or SAQ's lists meanwhile."""
ABORT_NOTICE_S = 2 * TIMERS["abort"] + TIMERS["schedule"] + 1
"""How long the abort notice waits for the worker that runs the job. While it lives nothing enqueues
the job's key again; the worker polls for aborts every ``TIMERS["abort"]`` seconds and passes over a
job running for less than that, so it may act up to twice that after the abort. SAQ's default, 5 s,
let a cron's scheduler enqueue the next run over a job aborted in its first seconds: its record said
``queued``, its worker never cancelled it, and the next run overlapped it (a review)."""


async def abort_unfinished_job(queue: Queue, job_id: str) -> None:
    """Abort ``job_id`` if it has not finished, else ``ConflictError`` (one action at a time).

    One optimistic transaction (``WATCH`` on the job's record and SAQ's lists, retried when a worker
    or another process changes them first): a job no worker holds (queued, or not yet due: a
    schedule, a retry's delay) is taken off SAQ's lists and written ``aborted`` (SAQ's ``finish``:
    its completion time and its TTL) in one step; one on the active list is marked ``aborting`` as
    SAQ's abort does, and its worker cancels and finishes it. SAQ's abort alone left a job not yet due
    ``aborting`` for good (nobody finished it: Retry refused it, its record never expired); deciding
    from a status read before the abort finished a job a worker had just taken (or was still
    cancelling), and Retry then ran it twice; a finish after a separate step could fail and leave the
    job on no list, never to run. Refused (409): a finished job (SAQ overwrote its status and error,
    and it could no longer be retried), one being aborted, and a cron job's waiting run (SAQ's
    scheduler enqueues the same run again within a second: abort it while it runs)."""
    queue = _redis_queue(queue)
    incomplete, queued, active = (queue.namespace(name) for name in ("incomplete", "queued", "active"))
    record = queue.job_id(job_id)
    async with _acting_on(queue, job_id), queue.redis.pipeline(transaction=True) as pipe:
        for _ in range(ABORT_ATTEMPTS):
            try:
                await pipe.watch(record, incomplete, queued, active)
                job = queue.deserialize(await pipe.get(record))
                if job is None:
                    raise NotFoundError(f"No job {job_id!r} in the {queue.name} queue.", headers=_NO_STORE)
                held = await cast("Awaitable[int | None]", pipe.lpos(active, record)) is not None
                if not held and await pipe.zscore(incomplete, record) is None:
                    state = "being aborted" if job.status == Status.ABORTING else job.status.value
                    raise ConflictError(
                        f"The job is {state}: only a job that has not finished is aborted.", headers=_NO_STORE
                    )
                if not held and job.key.startswith("cron:"):
                    raise ConflictError(
                        "A cron job's waiting run is enqueued again at once: abort it while it runs.",
                        headers=_NO_STORE,
                    )
                pipe.multi()  # type: ignore[no-untyped-call]
                if held:  # SAQ's abort of a job a worker runs: the worker cancels it, then finishes it
                    job.status, job.error = Status.ABORTING, ABORTED_FROM_UI
                    pipe.set(record, queue.serialize(job))
                    pipe.setex(job.abort_id, ABORT_NOTICE_S, ABORTED_FROM_UI)
                    pipe.lrem(active, 0, record)
                else:  # SAQ's finish, and off the lists no worker can take it from now
                    job.status, job.result, job.error = Status.ABORTED, None, ABORTED_FROM_UI
                    job.completed = saq_now()
                    pipe.lrem(queued, 0, record)
                    if job.ttl > 0:
                        pipe.setex(record, job.ttl, queue.serialize(job))
                    elif job.ttl == 0:
                        pipe.set(record, queue.serialize(job))
                    else:
                        pipe.delete(record)
                pipe.zrem(incomplete, record)
                pipe.publish(record, job.status)
                await pipe.execute()
                return
            except WatchError:
                continue
    raise ConflictError("The job kept changing while it was aborted: try again.", headers=_NO_STORE)


class DashboardPage(msgspec.Struct, frozen=True):
    """The page and its policy, for one root path."""

    root: str
    html: str
    csp: str


class DashboardController(Controller):
    """What the page loads and polls; every answer ``no-store`` (it is job data)."""

    path = "/"
    include_in_schema = False
    cache_control = NO_STORE

    @get(
        ["/", "/queues/{queue_id:str}", "/queues/{queue_id:str}/jobs/{job_id:str}"],
        media_type="text/html",
        summary="The dashboard's page",
        description="One page for every view (SAQ's script renders the view of the address). "
        "`/saq` redirects to `/saq/`, the address the script knows.",
    )
    async def page(
        self,
        request: Request[Any, Any, Any],
        dashboard_page: NamedDependency[DashboardPage],
        queue_id: FromPath[str | None] = None,
        job_id: FromPath[str | None] = None,
    ) -> Response[str] | Redirect:
        raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        home = f"{dashboard_page.root}/"
        if queue_id is None and raw_path.split(b"?", 1)[0] != home.encode():
            return Redirect(home, status_code=HTTP_308_PERMANENT_REDIRECT)
        return Response(
            dashboard_page.html,
            media_type="text/html",
            headers={"Content-Security-Policy": dashboard_page.csp},
        )

    @get("/api/queues", summary="The queues", description="Counts and workers of every queue.")
    async def queue_list(self, dashboard_queues: DashboardQueues) -> QueueList:
        return QueueList(queues=[await _queue_out(queue, jobs=False) for queue in dashboard_queues.values()])

    @get(
        "/api/queues/{queue_id:str}",
        summary="A queue",
        description="Its counts, workers and first jobs (argument names only).",
    )
    async def queue_detail(self, dashboard_queues: DashboardQueues, queue_id: FromPath[str]) -> QueueDetail:
        return QueueDetail(queue=await _queue_out(_queue(dashboard_queues, queue_id), jobs=True))

    @get(
        "/api/queues/{queue_id:str}/jobs/{job_id:str}",
        summary="A job",
        description="Its function, status, times, attempts, argument names and scrubbed error.",
    )
    async def job_detail(
        self, dashboard_queues: DashboardQueues, queue_id: FromPath[str], job_id: FromPath[str]
    ) -> JobDetail:
        queue = _queue(dashboard_queues, queue_id)
        job = (await _job_in(queue, job_id)).to_dict()
        [due] = await _due_times(queue, [job])
        return JobDetail(job=job_out(job, due))

    @post(
        "/api/queues/{queue_id:str}/jobs/{job_id:str}/retry",
        status_code=HTTP_202_ACCEPTED,
        summary="Retry a job",
        description="Queues a finished job again (same-origin requests only); 409 for one queued or "
        "running (abort a running one first).",
    )
    async def job_retry(
        self, dashboard_queues: DashboardQueues, queue_id: FromPath[str], job_id: FromPath[str]
    ) -> dict[str, str]:
        await retry_finished_job(_queue(dashboard_queues, queue_id), job_id)
        return {}

    @post(
        "/api/queues/{queue_id:str}/jobs/{job_id:str}/abort",
        status_code=HTTP_202_ACCEPTED,
        summary="Abort a job",
        description="Aborts a job that has not finished: a queued or scheduled one at once, a running "
        "one through its worker (same-origin requests only); 409 for a finished one.",
    )
    async def job_abort(
        self, dashboard_queues: DashboardQueues, queue_id: FromPath[str], job_id: FromPath[str]
    ) -> dict[str, str]:
        await abort_unfinished_job(_queue(dashboard_queues, queue_id), job_id)
        return {}


def _static_files(directory: Path) -> dict[str, GzipAsset | tuple[str, bytes]]:
    """SAQ's files: the page's stylesheet and scripts, and our icon. ``app.js`` (SAQ's, fixed, read
    once) and the icon are answered as any answer (the compression layer encodes them as the request
    accepts); the two SAQ stores gzipped are answered gzipped or plain as the request accepts
    (``GzipAsset``, the Swagger UI assets' negotiation)."""
    return {
        "app.js": ("text/javascript", fixed_app_js((directory / "app.js").read_text()).encode()),
        "snabbdom.js.gz": GzipAsset("text/javascript", gzipped=(directory / "snabbdom.js.gz").read_bytes),
        "pico.min.css.gz": GzipAsset("text/css", gzipped=(directory / "pico.min.css.gz").read_bytes),
        FAVICON_NAME: ("image/svg+xml", FAVICON),
    }


def _static_router(files: Mapping[str, GzipAsset | tuple[str, bytes]]) -> Router:
    @get("/{name:str}", include_in_schema=False, cache_control=STATIC_CACHE)
    async def dashboard_static(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
        file = files.get(name)
        if file is None:
            raise NotFoundError(f"No dashboard file {name!r}.")
        if isinstance(file, GzipAsset):
            return await file.answer(request)
        media_type, content = file
        return Response(content, media_type=media_type)

    return Router("/static", route_handlers=[dashboard_static], include_in_schema=False)


def _sign_in_first(root: str) -> ExceptionHandler[UnauthorizedError]:
    """A page request refused 401 (anonymous, or a session that is over) is sent to the sign-in page
    at ``<root>/login`` (served by whoever provides the guards: the accounts domain); the JSON API
    keeps its 401 problem."""
    problem = exception_handlers[AppError]
    sign_in = f"{root}/login"

    def sign_in_first(request: Request[Any, Any, Any], exc: UnauthorizedError) -> Response[Any]:
        if request.route_handler.media_type == "text/html":
            return Redirect(sign_in, status_code=HTTP_303_SEE_OTHER, headers=_NO_STORE)
        return problem(request, exc)

    return sign_in_first


def dashboard_router(config: SAQConfig) -> Router:
    """The dashboard at ``config.web_path`` for ``config``'s queues, behind ``config.web_guards``.

    ``config.web_enabled`` must be off: litestar-saq would serve its own routes there.
    """
    if config.web_enabled:
        raise ValueError("litestar-saq's own dashboard is on (web_enabled): it would answer job arguments")
    root = config.web_path.rstrip("/") or "/saq"
    page = DashboardPage(root=root, html=_page(root), csp=_csp(_root_script(root)))
    queues: Queues = dict(config.get_queues().queues)
    guarded = Router(
        "/",
        route_handlers=[DashboardController],
        guards=list(config.web_guards or ()),
        dependencies={
            "dashboard_queues": Provide(lambda: queues, use_cache=True, sync_to_thread=False),
            "dashboard_page": Provide(lambda: page, use_cache=True, sync_to_thread=False),
        },
        exception_handlers={UnauthorizedError: _sign_in_first(root)},
        include_in_schema=False,
    )
    return Router(
        root,
        route_handlers=[_static_router(_static_files(config.static_files)), guarded],
        include_in_schema=False,
    )
