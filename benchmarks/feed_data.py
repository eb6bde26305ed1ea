"""The activity feed's benchmark: its data set, and a small measuring run.

``python -m benchmarks.feed_data`` (DATA_DIR selects the embedded PostgreSQL and Valkey, default
``.data/bench``):

1. creates the database ``feed_bench`` (migrated) and fills it, in SQL, with the feed of a busy
   deployment: 1,000,000 events in about 290,000 groups over 90 days, 1,000 projects of 10 members,
   2,000 users, and one reader who is a member of 50 projects and read everything older than a day.
   The events, groups, per-group actors and objects and the object titles are generated together
   and consistently (what the feed writer would have stored for that history); a second run reuses
   the data set when it is complete.
2. serves the app (granian, 2 workers, rate limits off) and measures with wrk, 32 connections:
   ``GET /api/feed`` (default page) and ``GET /api/feed/unread-count`` as the reader, plus the unread
   count of a reader who never read anything (the worst case: every visible group counted).
3. measures events/s through the ``feed`` queue: a worker process (``python -m workers``: relay
   + SAQ + ``record_activities`` batches) stores and groups 50,000 outbox events; the clock runs from
   their commit to the last one stored.

It prints a Markdown table (p50, p99, req/s, target, met). ``--explain`` adds EXPLAIN ANALYZE of the
reader's feed queries. ``--only data`` stops after the data set. Targets (issue 11): feed p99 <= 30 ms,
unread count p99 <= 15 ms, >= 5,000 events/s.

The reader is the load-test harness's bench account (``benchmarks/harness/provision.py``), so
``--harness`` puts the same data set into the harness's database (``app`` under the same DATA_DIR,
replacing its users, projects and sites) and ``python -m benchmarks.run --only feed,feed-unread``
then measures the feed on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.harness.provision import BENCH_EMAIL, BENCH_PASSWORD, claim_data_dir

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "feed_bench"
EVENTS = 1_000_000
PROJECTS = 1_000
USERS = 2_000
MEMBERS_PER_PROJECT = 10
READER_PROJECTS = 50
QUEUE_EVENTS = 50_000
PORT = int(os.environ.get("FEED_BENCH_PORT", "18610"))
CONNECTIONS = 32
DURATION_S = int(os.environ.get("FEED_BENCH_DURATION_S", "20"))
HARNESS_DATABASE = "app"  # app.core.runtime.DEFAULT_DATABASE: the harness's database
READER_EMAIL = BENCH_EMAIL
FRESH_EMAIL = "fresh-reader@bench.example.com"
PASSWORD = BENCH_PASSWORD

# The history: groups of 1 + Exp(mean 2.5) events, 3 minutes apart, started uniformly over 90 days.
GENERATE = f"""
set session_replication_role = replica;  -- a bulk load of consistent rows: skip FK triggers

insert into users (email, display_name, password_hash, role)
select 'bench-' || i || '@bench.example.com', 'User ' || i, %(hash)s, 'member'
from generate_series(1, {USERS}) as s(i);
insert into users (email, display_name, password_hash, role) values
    ('{READER_EMAIL}', 'Reader', %(hash)s, 'member'),
    ('{FRESH_EMAIL}', 'Fresh Reader', %(hash)s, 'member');

create temp table bench_users as
select array_agg(id order by id) as ids from users where email like 'bench-%%';

insert into projects (name, owner_id)
select 'Project ' || i, (select ids from bench_users)[1 + i %% {USERS}]
from generate_series(1, {PROJECTS}) as s(i);

create temp table bench_projects as select array_agg(id order by id) as ids from projects;

insert into project_members (project_id, user_id, role)
select distinct (select ids from bench_projects)[i],
       (select ids from bench_users)[1 + (i * 7 + k * 197) %% {USERS}],
       'editor'::project_role
from generate_series(1, {PROJECTS}) as s(i) cross join generate_series(0, {MEMBERS_PER_PROJECT - 1}) as t(k);

insert into project_members (project_id, user_id, role)
select (select ids from bench_projects)[i], u.id, 'viewer'::project_role
from generate_series(1, {PROJECTS}, {PROJECTS // READER_PROJECTS}) as s(i)
cross join users u
where u.email in ('{READER_EMAIL}', '{FRESH_EMAIL}');

create temp table bench_groups as
select g as id,
       (select ids from bench_projects)[1 + floor(random() * {PROJECTS})::int] as project_id,
       (array['task.created', 'task.updated', 'task.status_changed', 'file.uploaded', 'comment.added'])
           [1 + floor(random() * 5)::int] as verb,
       floor(random() * {USERS})::int as actor_n,
       1 + floor(-ln(1 - random()) * 2.5)::int as size,
       now() - interval '90 days' + random() * interval '90 days' as start
from generate_series(1, {EVENTS // 3}) as s(g);

create temp table bench_group_sizes as
select id, size, sum(size) over (order by id) as running from bench_groups;
delete from bench_groups where id in (select id from bench_group_sizes where running - size >= {EVENTS});
update bench_groups g set size = {EVENTS} - (s.running - s.size)
from bench_group_sizes s where s.id = g.id and s.running > {EVENTS};

create temp table bench_events as
select g.id as group_id, g.project_id, g.verb, k,
       (select ids from bench_users)[1 + case when g.verb = 'comment.added'
            then (g.actor_n + k %% 3) %% {USERS} else g.actor_n end] as actor_id,
       case when g.verb in ('task.updated', 'task.status_changed') then g.id * 10 + k %% 2
            else g.id * 10 + k end as object_id,
       g.start + k * interval '3 minutes' as occurred_at
from bench_groups g cross join lateral generate_series(0, g.size - 1) as t(k);

insert into activity_groups (
    id, key, rule_version, window_s, max_span_s, stream, verb, object_type, project_id,
    audience_user_id, target_type, target_id, first_at, last_at, first_seq, last_seq,
    event_count, actor_count, object_count)
overriding system value
select g.id, 'bench-' || g.id, 1, 1800, 21600,
       g.verb || '|' || split_part(g.verb, '.', 1) || '|p:' || g.project_id || '|u:-|'
           || case when g.verb = 'comment.added' then 't:task:' || g.id else 'a:' || g.actor_n end,
       g.verb, split_part(g.verb, '.', 1), g.project_id, null,
       case when g.verb = 'comment.added' then 'task' end, case when g.verb = 'comment.added' then g.id end,
       g.start, g.start, 0, 0, 0, 0, 0
from bench_groups g;

insert into activity_events (
    outbox_id, actor_id, verb, object_type, object_id, project_id, audience_user_id, target_type,
    target_id, data, occurred_at, group_id)
select row_number() over (order by e.occurred_at, e.group_id, e.k), e.actor_id, e.verb, g.object_type,
       e.object_id, e.project_id, null, g.target_type, g.target_id,
       jsonb_build_object('title', 'Item ' || e.object_id), e.occurred_at, e.group_id
from bench_events e join activity_groups g on g.id = e.group_id
order by e.occurred_at, e.group_id, e.k;

update activity_groups g
set event_count = a.n, first_seq = a.first_seq, last_seq = a.last_seq, first_at = a.first_at,
    last_at = a.last_at, actor_count = a.actors, object_count = a.objects, key = '1-' || a.first_outbox
from (
    select group_id, count(*) as n, min(id) as first_seq, max(id) as last_seq, min(occurred_at) as first_at,
           max(occurred_at) as last_at, count(distinct actor_id) as actors,
           count(distinct object_id) as objects,
           min(outbox_id) as first_outbox
    from activity_events group by group_id
) a
where a.group_id = g.id;

insert into activity_group_actors
    (group_id, actor_id, event_count, first_seq, last_seq, project_id, audience_user_id)
select e.group_id, e.actor_id, count(*), min(e.id), max(e.id), g.project_id, g.audience_user_id
from activity_events e join activity_groups g on g.id = e.group_id
group by e.group_id, e.actor_id, g.project_id, g.audience_user_id;

insert into activity_group_objects (group_id, object_id, event_count, last_seq)
select group_id, object_id, count(*), max(id) from activity_events group by group_id, object_id;

insert into activity_objects (object_type, object_id, title, deleted, seq)
select object_type, object_id, 'Item ' || object_id, false, max(id)
from activity_events where object_type in ('task', 'file') group by object_type, object_id;
insert into activity_objects (object_type, object_id, title, deleted, seq)
select 'task', target_id, 'Task ' || target_id, false, max(id)
from activity_events where target_id is not null group by target_id
on conflict do nothing;

insert into activity_reader_state (user_id, read_through)
select u.id, (select max(id) from activity_events where occurred_at < now() - interval '1 day')
from users u where u.email = '{READER_EMAIL}';

select setval(pg_get_serial_sequence('activity_groups', 'id'), (select max(id) from activity_groups));
-- The synthetic events took outbox ids 1 .. {EVENTS}: real outbox rows start after them.
select setval(pg_get_serial_sequence('outbox', 'id'), {EVENTS} + 1);
set session_replication_role = origin;
"""

QUEUE_LOAD = f"""
insert into outbox (queue, task, payload)
select 'feed', 'record_activity', jsonb_build_object(
    'actor_id', m.user_id, 'verb', 'task.updated', 'object_type', 'task', 'object_id', 10000000 + n % 5000,
    'project_id', m.project_id,
    'data', jsonb_build_object('fields', jsonb_build_array('title'), 'title', 'Q' || n),
    'occurred_at', now())
from generate_series(1, {QUEUE_EVENTS}) n
join lateral (
    select project_id, user_id from project_members
    where project_id = (select min(id) from projects) + n % {PROJECTS} limit 1
) m on true
"""


@dataclass
class Row:
    measure: str
    p50_ms: float | None
    p99_ms: float | None
    rate: float
    unit: str
    target: str
    met: bool | None
    note: str = ""


def say(message: str) -> None:
    print(f"feed-bench: {message}", flush=True)


def services(data_dir: Path, database: str) -> tuple[str, str]:
    from app.core import embedded

    server = embedded.start_postgres(data_dir)
    embedded.ensure_database(server, database)
    database_url = embedded.postgres_url(server, database)
    valkey_url, _ = embedded.start_valkey(data_dir)
    return database_url, valkey_url


async def password_hash() -> str:
    from app.config import Settings
    from app.core.security import Passwords

    return await Passwords(Settings(app_env="test")).hash(PASSWORD)


def scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return row[0] if row else None


def ensure_data(database_url: str) -> None:
    from app.core.migrate import migrate

    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        events = scalar(conn, f"select count(*) from activity_events where outbox_id <= {EVENTS}")
        if events == EVENTS:
            say(f"data set present ({events:,} events): reused")
            return
        say("generating the data set (1,000,000 events) ...")
        started = time.monotonic()
        conn.execute(
            "truncate activity_event_reads, activity_group_reads, activity_reader_state, activity_objects,"
            " activity_group_objects, activity_group_actors, activity_events, activity_groups,"
            " project_members,"
            " projects, outbox, users restart identity cascade"
        )
        with conn.transaction():
            # One script of many statements: parameters bound client-side.
            psycopg.ClientCursor(conn).execute(GENERATE, {"hash": asyncio.run(password_hash())})
        conn.execute("vacuum analyze")
        groups = scalar(conn, "select count(*) from activity_groups")
        say(f"generated in {time.monotonic() - started:.0f} s: {EVENTS:,} events, {groups:,} groups")


def server_env(database_url: str, valkey_url: str, data_dir: Path) -> dict[str, str]:
    inherited = {
        k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "TMPDIR")
    }
    return {
        **inherited,
        "APP_ENV": "development",
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url,
        "VALKEY_URL": valkey_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_ENABLED": "false",
        "WORKER_IN_PROCESS": "false",
        "DATABASE_POOL_MIN": "4",
        "DATABASE_POOL_MAX": "20",
    }


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready:\n{log.read_text()[-3000:]}")


def token(base: str, email: str) -> str:
    response = httpx.post(f"{base}/api/auth/login", json={"email": email, "password": PASSWORD}, timeout=30)
    response.raise_for_status()
    return str(response.json()["access_token"])


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, bearer: str) -> tuple[float, float, float, int]:
    """(p50 ms, p99 ms, requests/s, non-2xx) of ``url`` at CONNECTIONS connections."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    command = [
        "wrk",
        "-t2",
        f"-c{CONNECTIONS}",
        f"-d{DURATION_S}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {bearer}",
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def percentile(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert match, output
        return float(match[1]) * _UNIT_MS[match[2]]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    assert rate, output
    return percentile("50"), percentile("99"), float(rate[1]), int(errors[1]) if errors else 0


def measure_http(database_url: str, valkey_url: str, data_dir: Path) -> list[Row]:
    env = server_env(database_url, valkey_url, data_dir)
    base = f"http://127.0.0.1:{PORT}"
    log = data_dir / "feed-bench-server.log"
    granian = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "app.main:create_app",
        "--host", "127.0.0.1", "--port", str(PORT), "--workers", "2", "--loop", "auto", "--no-access-log",
        "--backlog", "2048",
    ]  # fmt: skip
    server = start(granian, env, log)
    try:
        wait_ready(base, server, log)
        reader, fresh = token(base, READER_EMAIL), token(base, FRESH_EMAIL)
        for path in ("/api/feed", "/api/feed/unread-count"):  # warm the pools and prepared statements
            for who in (reader, fresh):
                for _ in range(20):
                    httpx.get(
                        base + path, headers={"Authorization": f"Bearer {who}"}, timeout=30
                    ).raise_for_status()
        unread = httpx.get(
            f"{base}/api/feed/unread-count", headers={"Authorization": f"Bearer {reader}"}
        ).json()
        never = httpx.get(
            f"{base}/api/feed/unread-count", headers={"Authorization": f"Bearer {fresh}"}
        ).json()
        rows = []
        p50, p99, rate, errors = wrk(f"{base}/api/projects?limit=20", reader)
        rows.append(Row("reference: GET /api/projects (the stack)", p50, p99, rate, "req/s", "", None))
        say(f"reference GET /api/projects: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {rate:.0f} req/s")
        cases = [
            ("GET /api/feed (20 groups)", "/api/feed", reader, 30.0, ""),
            (
                "GET /api/feed/unread-count",
                "/api/feed/unread-count",
                reader,
                15.0,
                f"{unread['unread']} unread groups",
            ),
            (
                "  … a reader who never read",
                "/api/feed/unread-count",
                fresh,
                15.0,
                f"{never['unread']} unread groups",
            ),
        ]
        for name, path, who, target, note in cases:
            p50, p99, rate, errors = wrk(base + path, who)
            if errors:
                note = f"{note}; {errors} non-2xx".strip("; ")
            rows.append(
                Row(
                    name, p50, p99, rate, "req/s", f"p99 <= {target:g} ms", p99 <= target and not errors, note
                )
            )
            say(f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {rate:.0f} req/s")
        return rows
    finally:
        stop(server)


def drop_queue_events(conn: psycopg.Connection[Any]) -> None:
    """The groups of a queue measure (they hold only its events, outbox ids above ``EVENTS``)."""
    conn.execute(
        "delete from activity_groups where id in"
        f" (select group_id from activity_events where outbox_id > {EVENTS})"
    )


def measure_queue(database_url: str, valkey_url: str, data_dir: Path, processes: int = 1) -> Row:
    env = {
        **server_env(database_url, valkey_url, data_dir),
        "OUTBOX_POLL_INTERVAL_S": "0.05",
        "OUTBOX_BATCH_SIZE": os.environ.get("OUTBOX_BATCH_SIZE", "1000"),
        "FEED_BATCH_SIZE": os.environ.get("FEED_BATCH_SIZE", "500"),
    }
    logs = [data_dir / f"feed-bench-worker-{n}.log" for n in range(processes)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Repeatable: drop what an earlier run stored (its groups hold only its own events).
        drop_queue_events(conn)
        conn.execute("delete from outbox")
        conn.execute(
            f"select setval('outbox_id_seq', greatest({EVENTS} + 1, (select last_value from outbox_id_seq)))"
        )
        workers = [start([sys.executable, "-m", "workers"], env, log) for log in logs]
        try:
            time.sleep(5)  # start-up is not measured: the workers connect and their relays start polling
            for worker, log in zip(workers, logs, strict=True):
                if worker.poll() is not None:
                    raise SystemExit(f"a worker exited:\n{log.read_text()[-3000:]}")
            # Counted through the outbox_id index (the queue's events are the ones above EVENTS): a
            # count(*) of the whole table, 20 times a second, took a core from the worker it measured.
            stored = f"select count(*) from activity_events where outbox_id > {EVENTS}"
            conn.execute(QUEUE_LOAD)
            started = time.monotonic()
            deadline = started + 600
            while scalar(conn, stored) < QUEUE_EVENTS:
                if time.monotonic() > deadline or any(worker.poll() is not None for worker in workers):
                    raise SystemExit(f"the queue did not drain:\n{logs[0].read_text()[-3000:]}")
                time.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            for worker in workers:
                stop(worker)
        jobs = scalar(
            conn, f"select count(distinct group_id) from activity_events where outbox_id > {EVENTS}"
        )
        drop_queue_events(conn)  # the HTTP measures read the data set as generated
    rate = QUEUE_EVENTS / elapsed
    say(
        f"feed queue, {processes} worker process(es): {QUEUE_EVENTS:,} events stored and grouped"
        f" in {elapsed:.1f} s: {rate:,.0f} events/s"
    )
    return Row(
        f"events through the feed queue ({processes} worker process{'es' if processes > 1 else ''})",
        None,
        None,
        rate,
        "events/s",
        ">= 5,000 events/s",
        rate >= 5000,
        f"{QUEUE_EVENTS:,} events into {jobs:,} groups, batches of {env['FEED_BATCH_SIZE']}",
    )


def explain(database_url: str) -> None:
    from app.db import activity as queries

    with psycopg.connect(database_url, autocommit=True) as conn:
        reader = scalar(conn, f"select id from users where email = '{READER_EMAIL}'")
        snapshot = scalar(conn, "select max(id) from activity_events")
        cursor = psycopg.ClientCursor(conn)
        plans = {
            "FeedPage": (queries.FEED_PAGE, (21, reader, None, None, None, None, None)),
            "UnreadCounts": (queries.UNREAD_COUNTS, (reader,)),
        }
        ids: list[int] = []
        for name, (sql, params) in plans.items():
            text = _inline(cursor, sql, params)
            print(
                f"\n-- {name}\n" + "\n".join(r[0] for r in conn.execute("explain (analyze, buffers) " + text))
            )
            if name == "FeedPage":
                ids = [row[0] for row in conn.execute(text).fetchall()][:20]
        text = _inline(cursor, queries.STORED_FEED_GROUPS, (snapshot, None, reader, ids))
        plan = conn.execute("explain (analyze, buffers) " + text)
        print("\n-- StoredFeedGroups\n" + "\n".join(r[0] for r in plan))


def _inline(cursor: psycopg.ClientCursor[Any], sql: str, params: tuple[Any, ...]) -> str:
    """The query with its $n parameters as literals (EXPLAIN of a one-off statement)."""
    return re.sub(r"\$(\d+)", lambda m: cursor.mogrify("%s", (params[int(m[1]) - 1],)), sql)


def table(rows: list[Row]) -> str:
    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    lines = [
        "| measure | p50 ms | p99 ms | rate | target | met | note |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.measure} | {ms(row.p50_ms)} | {ms(row.p99_ms)} | {row.rate:,.0f} {row.unit}"
            f" | {row.target} | {met} | {row.note} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("data", "http", "queue"), help="one part only")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the reader's queries")
    parser.add_argument(
        "--harness", action="store_true", help="use the load-test harness's database (replaces its data)"
    )
    parser.add_argument(
        "--queue-workers", type=int, default=1, help="worker processes for the queue measure (default 1)"
    )
    args = parser.parse_args()
    data_dir = Path(os.environ.get("DATA_DIR", ROOT / ".data" / "bench")).resolve()
    database = HARNESS_DATABASE if args.harness else DATABASE
    default = (ROOT / ".data" / "bench").resolve()
    if args.harness and (refused := claim_data_dir(data_dir, default=default, setting="DATA_DIR")):
        raise SystemExit(refused)  # it replaces the users, projects and sites of that database
    database_url, valkey_url = services(data_dir, database)
    say(f"{database} on the embedded PostgreSQL in {data_dir}")
    ensure_data(database_url)
    if args.only == "data":
        return
    rows: list[Row] = []
    if args.only in (None, "http"):
        rows += measure_http(database_url, valkey_url, data_dir)
    if args.only in (None, "queue"):
        rows.append(measure_queue(database_url, valkey_url, data_dir, args.queue_workers))
    print()
    print(f"{os.cpu_count()} CPUs, {CONNECTIONS} connections, {DURATION_S} s per HTTP measure")
    print(table(rows))
    if args.explain:
        explain(database_url)


if __name__ == "__main__":
    main()
