"""``create_app()``: the one place where the application is assembled."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from litestar import Litestar
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme, Tag
from litestar.plugins.prometheus import PrometheusController
from litestar_saq import SAQPlugin

from app.config import Settings, SettingsError, get_settings
from app.core.channels import channels_plugin
from app.core.dashboard import dashboard_router
from app.core.docs import SwaggerUI, api_index, docs_router, site_icon
from app.core.errors import exception_handlers
from app.core.gate import GateConfig, RouteGate
from app.core.head import answer_head_as_get
from app.core.logging import build_formatter, configure_logging
from app.core.metrics import RequestMetrics, record_pool, record_process, sweep_dead_processes
from app.core.middleware import MULTIPART_OVERHEAD, RequestContextMiddleware, largest_body
from app.core.openapi import operation_id
from app.core.parameters import read_parameters_strictly
from app.core.problem_types import problem_types_router
from app.core.queues import build_saq_config, workers_running
from app.core.ratelimit import RateLimiter, policies_from_settings, provide_client_address
from app.core.repeating import repeating
from app.core.routing import (
    StrictJSONRequest,
    guard_without_handler_copies,
    parse_int_paths_canonically,
    resolve_dependencies_in_order,
)
from app.core.runtime import resolve_services
from app.core.services import Services
from app.core.strict_schema import StrictStructSchemaPlugin
from app.domains.accounts.guards import provide_current_user, requires_dashboard_admin
from app.domains.accounts.services import AccountService
from app.modules import MODULES, check_settings


async def _exact_metrics_path_only(connection: Any, _: Any) -> None:
    """Litestar normalises paths before routing, so ``/metrics/``, ``//metrics`` and percent-encoded
    spellings reached the metrics controller too, past a gateway rule written for the exact path.
    This compares the path as received (``raw_path``) and answers 404 to every other spelling."""
    from litestar.exceptions import NotFoundException

    raw = connection.scope.get("raw_path")
    if raw is not None and raw.split(b"?", 1)[0] != b"/metrics":
        raise NotFoundException()


async def _forget_dead_workers(_: Any) -> None:
    """Before a scrape: the in-flight gauges of granian workers that died are removed
    (``sweep_dead_processes``), else they stayed in every scrape until another worker started."""
    sweep_dead_processes()


class MetricsController(PrometheusController):
    """Prometheus text at exactly ``/metrics`` (see ``_exact_metrics_path_only``)."""

    path = "/metrics"
    include_in_schema = False
    guards = [_exact_metrics_path_only]
    before_request = _forget_dead_workers  # type: ignore[assignment]  # Litestar unbinds controller hooks


API_TAGS = [
    Tag(
        name="accounts",
        description="Registration, sign-in, sessions (access and refresh tokens), your account",
    ),
    Tag(name="projects", description="Projects, their members (owner, editor, viewer) and invitations"),
    Tag(
        name="tasks",
        description="A project's tasks and their comments; `If-Match` / `If-None-Match` on a task",
    ),
    Tag(name="files", description="A project's files: upload, resumable and conditional download"),
    Tag(name="commerce", description="The catalogue, orders (stock reserved by a background job), payments"),
    Tag(name="analytics", description="Sites, the page-view ingest (`site_key`, no token) and their reports"),
    Tag(
        name="activity",
        description="The permission-aware activity feed: grouped, unread counts, a live stream",
    ),
    Tag(name="github", description="GitHub profile analytics: lookups, refreshes, tracked users' history"),
    Tag(name="monitoring", description="Error monitoring (administrators): groups, events, alerts, crons"),
    Tag(name="admin", description="Administrators: users and refunds"),
    Tag(name="health", description="Liveness and readiness probes"),
    Tag(name="docs", description="This API's index"),
]
"""The groups of the OpenAPI UI, in this order, each with what it holds."""
PROCESS_GAUGES_INTERVAL_S = 5.0
"""How often each granian worker sets its pool gauge (``app_db_pool_connections``) and its process's
memory, CPU and open files (``app_process_*``)."""


def granian_formatter() -> logging.Formatter:
    """The formatter ``GRANIAN_LOG_CONFIG`` names, as ``LOG_JSON`` asks. granian builds it in its main
    process before any worker starts (the image's first step), so the settings are checked here,
    the modules' too (``check_settings``): a refusal ends the process with its one line, as
    ``app.cli`` does. Raised from here, it was the middle of a 50-line traceback whose last line
    blamed the formatter, or (a module's check, found by the workers) a crash loop."""
    try:
        settings = _checked_settings()
    except SettingsError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    return build_formatter(settings.log_json)


@cache
def _checked_settings() -> Settings:
    """The process's settings once the modules' checks passed: once per process, though granian
    builds a formatter for each of its two loggers (the checks write a probe file)."""
    settings = get_settings()
    check_settings(settings)
    return settings


def create_app(settings: Settings | None = None) -> Litestar:
    resolve_dependencies_in_order()
    guard_without_handler_copies()
    parse_int_paths_canonically()
    read_parameters_strictly()
    settings = resolve_services(settings or get_settings())
    assert settings.database_url is not None
    assert settings.valkey_url is not None
    configure_logging(settings.log_level, json=settings.log_json)

    services = Services(settings, MODULES)
    valkey = services.valkey
    saq_config = build_saq_config(
        services,
        settings.valkey_url,
        run_workers_in_process=settings.worker_in_process,
        web_guards=[requires_dashboard_admin],
    )
    queues = saq_config.get_queues().queues
    saq_plugin = SAQPlugin(saq_config)
    channels = channels_plugin(settings.valkey_url)
    workers = list(saq_plugin.get_workers().values())
    in_process = workers if settings.worker_in_process else []

    async def record_process_gauges() -> None:
        record_pool(services.db.pool)
        record_process()

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await services.start()
        try:
            async with (
                workers_running(services, in_process),
                repeating(record_process_gauges, PROCESS_GAUGES_INTERVAL_S),
            ):
                gc.collect()
                gc.freeze()  # start-up objects leave the collector's generations: p99 without GC pauses
                yield
        finally:
            await services.close()
            await queues["default"].redis.aclose()  # type: ignore[attr-defined]

    # Request metrics (Litestar's names, see app.core.metrics): the ingest hot path is measured by
    # the sink's own metrics (rows, batches, refusals); operational routes are not measured.
    metrics = RequestMetrics(
        settings.app_name,
        unmeasured=["/metrics", "/health/live", "/health/ready", "/saq", "/api/page-views", "/bench"],
    )
    limiter = RateLimiter(valkey, secret_key=settings.secret_key)
    gate = GateConfig(
        authenticate=services[AccountService].authenticate,
        limiter=limiter,
        policies=policies_from_settings(settings),
        rate_limits_enabled=settings.rate_limit_enabled,
        warn_interval_s=settings.rate_limit_warn_interval_s,
        compression=CompressionConfig(
            backend="brotli",
            brotli_gzip_fallback=True,
            minimum_size=1024,
            exclude=[
                # Tiny bodies: skip the wrapper.
                "/api/page-views",
                "/bench",
                "/health",
                # File downloads: stored bytes (often already compressed: images, zip, pdf) up to
                # FILE_MAX_BYTES, which brotli/gzip would encode chunk by chunk in the event loop.
                "/api/projects/{project_id}/files/{file_id}",
            ],
        ),
        metrics=metrics,
    )
    app = Litestar(
        route_handlers=[
            api_index,
            site_icon,
            MetricsController,
            dashboard_router(saq_config),
            problem_types_router(),
            *(controller for module in services.modules for controller in module.controllers),
        ],
        state=State(
            {
                "settings": settings,
                "services": services,
                "valkey": valkey,
                "rate_limiter": limiter,
            }
        ),
        dependencies={
            "current_user": Provide(provide_current_user, sync_to_thread=False),
            "client_address": Provide(provide_client_address, sync_to_thread=False),
            **services.dependencies(),
        },
        # One route layer: authentication, then the rate limit (by user when authenticated), the
        # dashboard's same-origin rule, compression and the in-progress metric, as each route needs.
        middleware=[DefineMiddleware(RouteGate, config=gate)],
        request_class=StrictJSONRequest,  # every route, not only controllers' (a module's plain handler too)
        exception_handlers=exception_handlers,
        after_exception=[hook for module in services.modules for hook in module.after_exception],
        plugins=[saq_plugin, channels, StrictStructSchemaPlugin()],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="Monolith API",
            version="0.1.0",
            description="Accounts, work, commerce, analytics and activity in one SQL-first service. "
            "Every error is RFC 9457 problem+json with a `request_id` (except the readiness probe's "
            "503, which answers its `Readiness` checks). A write that sends `If-Match` to a resource "
            "without versions (no `ETag`: anything but tasks, projects and products) is 412 "
            "`precondition-failed` unless it is `*`: no entity-tag can match.",
            tags=API_TAGS,
            operation_id_creator=operation_id,
            openapi_router=docs_router("/schema"),
            render_plugins=[SwaggerUI(path="/swagger")],  # also served at /schema itself
            components=Components(
                security_schemes={
                    "BearerToken": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT",
                        description="The `access_token` from POST /api/auth/login (15 minutes).",
                    )
                }
            ),
        ),
        cors_config=(
            # What a browser client on another origin must read: ETag (to send If-Match back), when to
            # retry (Retry-After, the rate-limit headers), whether an answer was replayed, where what
            # it created is (Location), a download's file name and a 206's range, the request id to
            # quote, what a 401 asks for, the body types a 415 names.
            CORSConfig(
                allow_origins=settings.cors_origins,
                expose_headers=[
                    "ETag",
                    "Retry-After",
                    "RateLimit",
                    "RateLimit-Policy",
                    "Idempotent-Replayed",
                    "Location",
                    "Content-Disposition",
                    "Content-Range",
                    "Accept-Ranges",
                    "X-Request-ID",
                    "WWW-Authenticate",
                    "Accept-Patch",
                    "Accept-Post",
                ],
            )
            if settings.cors_origins
            else None
        ),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        debug=False,
    )
    for worker in workers:
        # The lifespan runs the in-process workers (workers_running), not litestar-saq's hooks: its
        # shutdown hook only starts each worker's stop, after the lifespan closed the services and the
        # queues' Valkey client, and granian ends the loop once the lifespan returned (a running job
        # was cut off, the relay never stopped); nor their heartbeat manager, which only serves
        # litestar-saq's @monitored_job.
        app.on_startup.remove(worker.on_app_startup)
        app.on_shutdown.remove(worker.on_app_shutdown)
    gate.prepare(app)
    # The outer layer wraps Litestar's own exception handling, so 404/405 answers (raised before any
    # route exists) get a request id, the security headers, metrics and an access-log line too.
    app.asgi_handler = RequestContextMiddleware(
        answer_head_as_get(app.asgi_handler),
        trusted_proxies=settings.trusted_proxies,
        observers=[observe for module in services.modules for observe in module.request_observers],
        metrics=metrics,
        drain_at_most=largest_body(app, streamed=settings.file_max_bytes + MULTIPART_OVERHEAD),
    )
    return app
