"""The service registry: the one way to obtain a domain service in handlers, jobs, the CLI and tests.

A process builds one ``Services`` from the settings and the module list: the pool, the Valkey
client, the end of its live streams (``app.core.stops``) and every domain's service, each built once
(in module order, so a service can take the ones listed before it). Handlers receive a service by the
module's name (``orders: OrderService``); everything else asks the registry by type
(``services[OrderService]``). The platform's own modules (the outbox's, ``app.core.relay``; the
idempotency keys', ``app.core.idempotency``) are modules like any other.

``start``/``close`` are reference counted: the web app's lifespan and its in-process SAQ workers share
one registry, and whichever starts first opens the pool, whichever stops last closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import structlog
from litestar import Litestar
from litestar.di import Provide
from saq.types import Context
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.cache import Cache
from app.core.channels import Broadcaster
from app.core.db import Database, UnitOfWork, create_pool
from app.core.modules import Module
from app.core.stops import StreamStops
from app.core.valkey import create_valkey

T = TypeVar("T")
log = structlog.get_logger("app.services")


class Services:
    def __init__(self, settings: Settings, modules: Sequence[Module]) -> None:
        assert settings.database_url and settings.valkey_url, "resolve the service URLs first"
        self.settings = settings
        self.modules = tuple(module for module in modules if module.enabled(settings))
        self.db = Database(create_pool(settings, settings.database_url))
        self.valkey: Valkey = create_valkey(settings, settings.valkey_url)
        self.cache = Cache(self.valkey, warn_interval_s=settings.rate_limit_warn_interval_s)
        self.broadcaster = Broadcaster(settings.valkey_url)
        self.stream_stops = StreamStops()
        self._by_type: dict[type[Any], object] = {}
        self._by_name: dict[str, object] = {}
        for module in self.modules:
            if module.service is not None:
                service = module.service(self)
                self._by_type[type(service)] = service
                self._by_name[module.name] = service
        self._users = 0
        self._lock = asyncio.Lock()

    def get(self, kind: type[T]) -> T | None:
        """The service of that type, or ``None`` when its module is not part of this assembly."""
        service = self._by_type.get(kind)
        assert service is None or isinstance(service, kind)
        return service

    def __getitem__(self, kind: type[T]) -> T:
        try:
            service = self._by_type[kind]
        except KeyError:
            raise LookupError(
                f"{kind.__name__} is not registered (is its module listed and enabled?)"
            ) from None
        assert isinstance(service, kind)
        return service

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A transaction for callers outside any service (jobs that compose services, tests)."""
        return self.db.transaction()

    def dependencies(self) -> dict[str, Provide]:
        """Litestar dependencies: each service under its module's name."""
        return {
            name: Provide(_constant(service), sync_to_thread=False) for name, service in self._by_name.items()
        }

    async def start(self) -> None:
        """Open the pool and start the services that have a ``start`` (the first caller does)."""
        async with self._lock:
            self._users += 1
            if self._users > 1:
                return
            await self.db.pool.open(wait=False)
            self.stream_stops.start()
            for service in self._by_name.values():
                start = getattr(service, "start", None)
                if start is not None:
                    await start()

    def stopping(self) -> None:
        """The process begins to stop, before it waits for running work (a worker's shutdown grace):
        every service that has a ``stopping`` stops starting work it could not finish in the grace.
        ``close`` still follows."""
        for name, service in self._by_name.items():
            stopping = getattr(service, "stopping", None)
            if stopping is None:
                continue
            try:
                stopping()
            except Exception:  # one service failing here must not keep the others going
                log.exception("service_stopping_failed", service=name)

    async def close(self) -> None:
        """Close what ``start`` opened, in reverse order (the last caller does)."""
        async with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            self.stream_stops.close()
            for name, service in reversed(list(self._by_name.items())):
                close = getattr(service, "close", None)
                if close is None:
                    continue
                try:
                    await close()
                except Exception:  # one service failing to close must not keep the others open
                    log.exception("service_close_failed", service=name)
            await self.db.pool.close()
            await self.cache.aclose()
            await self.valkey.aclose()
            await self.broadcaster.close()


def _constant(value: object) -> Any:
    def provide() -> object:
        return value

    return provide


@asynccontextmanager
async def open_services(settings: Settings, modules: Sequence[Module]) -> AsyncIterator[Services]:
    """``async with open_services(settings, MODULES) as services:`` for the CLI, scripts and tests."""
    services = Services(settings, modules)
    await services.start()
    try:
        yield services
    finally:
        await services.close()


def services_of(ctx: Context) -> Services:
    """The registry of the process running a SAQ job: ``services_of(ctx)[OrderService]``."""
    services: Services = ctx["services"]  # type: ignore[typeddict-item]
    return services


def services_of_app(app: Litestar) -> Services:
    """The registry of a web app, for code that gets no dependencies: guards, hooks and handlers
    that read their body themselves (``services_of_app(request.app)[PageViewService]``)."""
    services: Services = app.state.services
    return services
