"""``create_app()``: the one place where the application is assembled."""

from __future__ import annotations

import gc
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar_saq import SAQPlugin

from app.config import Settings, get_settings
from app.core.cache import Cache
from app.core.channels import channels_plugin
from app.core.compression import EncodedResponsePassThrough
from app.core.db import UnitOfWork, transaction
from app.core.docs import SwaggerUI, docs_router
from app.core.errors import exception_handlers
from app.core.logging import configure_logging
from app.core.middleware import RequestContextMiddleware
from app.core.ratelimit import RateLimitMiddleware
from app.core.runtime import resolve_services
from app.core.services import Services
from app.core.strict_schema import StrictStructSchemaPlugin
from app.domains.accounts.controllers import AdminUsersController, AuthController
from app.domains.accounts.guards import provide_current_user, requires_dashboard_admin
from app.domains.accounts.middleware import AuthenticationMiddleware
from app.domains.accounts.services import AccountService
from app.domains.analytics.bench import bench_naive, bench_noop
from app.domains.analytics.controllers import SitesController
from app.domains.analytics.ingest import (
    DailySalt,
    Ingest,
    LocalRateLimiter,
    SiteKeys,
    ingest_page_view,
    ingest_page_view_batch,
)
from app.domains.analytics.report_controllers import SiteReportsController
from app.domains.analytics.reports import ReportService
from app.domains.analytics.sink import PageViewSink, make_writer
from app.domains.files.controllers import ProjectFilesController
from app.domains.health.controllers import HealthController
from app.domains.orders.controllers import OrdersController
from app.domains.orders.services import OrderService
from app.domains.products.controllers import ProductsController
from app.domains.products.services import ProductService
from app.domains.projects.controllers import MembersController, ProjectsController
from app.domains.tasks.controllers import MyTasksController, ProjectTasksController, TasksController
from app.modules import MODULES
from workers.queues import build_saq_config


async def provide_uow(state: State) -> AsyncGenerator[UnitOfWork, None]:
    """The request's transaction: committed when the handler returns, rolled back if it raises."""
    async with transaction(state.db_pool) as uow:
        yield uow


def _from_state(name: str) -> Provide:
    """A dependency that hands out the service object built once in ``create_app``."""

    def provide(state: State) -> Any:
        return state[name]

    return Provide(provide, sync_to_thread=False)


class MetricsController(PrometheusController):
    """Prometheus text at exactly ``/metrics``.

    Litestar normalises paths before routing, so ``/metrics/``, ``//metrics`` and percent-encoded
    spellings reached this controller too, past a gateway rule written for the exact path. The guard
    compares the path as received (``raw_path``) and answers 404 to every other spelling.
    """

    path = "/metrics"
    include_in_schema = False

    @staticmethod
    def _exact_path_only(connection: Any, _: Any) -> None:
        from litestar.exceptions import NotFoundException

        raw = connection.scope.get("raw_path")
        if raw is not None and raw.split(b"?", 1)[0] != b"/metrics":
            raise NotFoundException()

    guards = [_exact_path_only]


def create_app(settings: Settings | None = None) -> Litestar:
    settings = resolve_services(settings or get_settings())
    assert settings.database_url is not None
    assert settings.valkey_url is not None
    configure_logging(settings.log_level, json=settings.log_json)

    services = Services(settings, MODULES)
    pool = services.db.pool
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
    for worker in saq_plugin.get_workers().values():
        # The batched heartbeat manager only serves litestar-saq's @monitored_job, which no task
        # uses; in the web process its thread only crashes noisily at shutdown.
        worker._enable_heartbeat_manager = False

    legacy_services = {
        "accounts": AccountService(settings, pool, valkey),
        "products": ProductService(
            pool, Cache(valkey).namespace("products"), settings.currency, settings.product_cache_ttl_s
        ),
        "orders": OrderService(settings, pool),
        "reports": ReportService(pool, Cache(valkey).namespace("reports"), settings.report_cache_ttl_s),
    }
    sink = PageViewSink(
        make_writer(settings.sink_driver, settings.database_url, settings.sink_flushers + 1),
        batch_size=settings.sink_batch_size,
        max_pending=settings.sink_max_pending,
        max_wait_s=settings.sink_max_wait_ms / 1000,
        flushers=settings.sink_flushers,
    )
    # The ingest handlers read it from app.state directly: no dependency injection on the hot path.
    ingest = Ingest(
        sink, SiteKeys(pool), DailySalt(pool), LocalRateLimiter(settings.rate_limit_ingest_per_minute)
    )

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await services.start()
        await sink.start()
        gc.collect()
        gc.freeze()  # start-up objects leave the collector's generations: p99 without GC pauses
        try:
            yield
        finally:
            await sink.close()
            await services.close()
            await queues["default"].redis.aclose()  # type: ignore[attr-defined]

    prometheus = PrometheusConfig(
        app_name=settings.app_name,
        prefix="app",
        group_path=True,
        # The ingest hot path is measured by the sink's own metrics (rows, batches, refusals).
        exclude=["/metrics", "/health/live", "/health/ready", "/saq", "/api/page-views", "/bench"],
    )
    app = Litestar(
        route_handlers=[
            HealthController,
            MetricsController,
            AuthController,
            AdminUsersController,
            ProjectsController,
            MembersController,
            ProjectTasksController,
            TasksController,
            MyTasksController,
            ProjectFilesController,
            ProductsController,
            OrdersController,
            SitesController,
            SiteReportsController,
            ingest_page_view,
            ingest_page_view_batch,
            *([bench_noop, bench_naive] if settings.bench_routes else []),
            *(controller for module in services.modules for controller in module.controllers),
        ],
        state=State(
            {
                "settings": settings,
                "services": services,
                "db_pool": pool,
                "valkey": valkey,
                "health_queue": queues["default"],
                "ingest": ingest,
                **legacy_services,
            }
        ),
        dependencies={
            "uow": Provide(provide_uow),
            "current_user": Provide(provide_current_user),
            **{name: _from_state(name) for name in legacy_services},
            **services.dependencies(),
        },
        # Authentication before the limiter, so an authenticated caller is limited by user, not address.
        middleware=[prometheus.middleware, AuthenticationMiddleware, RateLimitMiddleware()],
        exception_handlers=exception_handlers,
        after_exception=[hook for module in services.modules for hook in module.after_exception],
        plugins=[saq_plugin, channels, StrictStructSchemaPlugin()],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="Monolith API",
            version="0.1.0",
            description="Accounts, work, commerce, analytics and activity in one SQL-first service. "
            "Every error is RFC 9457 problem+json with a `request_id`.",
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
        cors_config=CORSConfig(allow_origins=settings.cors_origins) if settings.cors_origins else None,
        compression_config=CompressionConfig(
            backend="brotli",
            brotli_gzip_fallback=True,
            minimum_size=1024,
            exclude=["/api/page-views", "/bench", "/health"],  # tiny bodies: skip the wrapper
            middleware_class=EncodedResponsePassThrough,  # never re-encode e.g. the dashboard's *.js.gz
        ),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        debug=False,
    )
    # Outside Litestar's own exception handling, so 404/405 answers (raised before any route
    # middleware runs) get a request id and an access-log line too.
    app.asgi_handler = RequestContextMiddleware(
        app.asgi_handler,
        trusted_proxies=settings.trusted_proxies,
        observers=[observe for module in services.modules for observe in module.request_observers],
    )
    return app
