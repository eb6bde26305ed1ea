"""``create_app()``: the one place where the application is assembled."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar_saq import SAQPlugin

from app.config import Settings, get_settings
from app.core.cache import Cache
from app.core.db import UnitOfWork, create_pool, transaction
from app.core.errors import exception_handlers
from app.core.logging import configure_logging
from app.core.middleware import RequestContextMiddleware
from app.core.ratelimit import RateLimitMiddleware
from app.core.runtime import resolve_services
from app.core.valkey import create_valkey
from app.domains.accounts.controllers import AdminUsersController, AuthController
from app.domains.accounts.guards import provide_current_user, requires_dashboard_admin
from app.domains.accounts.middleware import AuthenticationMiddleware
from app.domains.accounts.services import AccountService
from app.domains.files.controllers import ProjectFilesController
from app.domains.health.controllers import HealthController
from app.domains.orders.controllers import OrdersController
from app.domains.orders.services import OrderService
from app.domains.products.controllers import ProductsController
from app.domains.products.services import ProductService
from app.domains.projects.controllers import MembersController, ProjectsController
from app.domains.tasks.controllers import MyTasksController, ProjectTasksController, TasksController
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
    path = "/metrics"
    include_in_schema = False


def create_app(settings: Settings | None = None) -> Litestar:
    settings = resolve_services(settings or get_settings())
    assert settings.database_url is not None
    assert settings.valkey_url is not None
    configure_logging(settings.log_level, json=settings.log_json)

    pool = create_pool(settings, settings.database_url)
    valkey = create_valkey(settings, settings.valkey_url)
    saq_config = build_saq_config(
        settings,
        settings.valkey_url,
        run_workers_in_process=settings.worker_in_process,
        web_guards=[requires_dashboard_admin],
    )
    queues = saq_config.get_queues().queues
    saq_plugin = SAQPlugin(saq_config)
    for worker in saq_plugin.get_workers().values():
        # The batched heartbeat manager only serves litestar-saq's @monitored_job, which no task
        # uses; in the web process its thread only crashes noisily at shutdown.
        worker._enable_heartbeat_manager = False

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await pool.open(wait=False)
        try:
            yield
        finally:
            await pool.close()
            await valkey.aclose()
            await queues["default"].redis.aclose()  # type: ignore[attr-defined]

    services = {
        "accounts": AccountService(settings, pool, valkey),
        "products": ProductService(
            Cache(valkey).namespace("products"), settings.currency, settings.product_cache_ttl_s
        ),
        "orders": OrderService(settings, pool),
    }
    prometheus = PrometheusConfig(
        app_name=settings.app_name,
        prefix="app",
        group_path=True,
        exclude=["/metrics", "/health/live", "/health/ready", "/saq"],
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
        ],
        state=State(
            {
                "settings": settings,
                "db_pool": pool,
                "valkey": valkey,
                "health_queue": queues["default"],
                **services,
            }
        ),
        dependencies={
            "uow": Provide(provide_uow),
            "current_user": Provide(provide_current_user),
            **{name: _from_state(name) for name in services},
        },
        # Authentication before the limiter, so an authenticated caller is limited by user, not address.
        middleware=[prometheus.middleware, AuthenticationMiddleware, RateLimitMiddleware()],
        exception_handlers=exception_handlers,
        plugins=[saq_plugin],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="Monolith API",
            version="0.1.0",
            description="Accounts, work, commerce, analytics and activity in one SQL-first service. "
            "Every error is RFC 9457 problem+json with a `request_id`.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
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
        compression_config=CompressionConfig(backend="brotli", brotli_gzip_fallback=True, minimum_size=1024),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        debug=False,
    )
    # Outside Litestar's own exception handling, so 404/405 answers (raised before any route
    # middleware runs) get a request id and an access-log line too.
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler, trusted_proxies=settings.trusted_proxies)
    return app
