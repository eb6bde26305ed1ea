"""The standalone worker process (``just worker``): every queue's worker plus the outbox relay."""

from __future__ import annotations

import asyncio

from app.config import get_settings
from app.core.logging import configure_logging
from app.core.queues import run_workers
from app.core.runtime import resolve_services
from app.core.services import Services
from app.modules import MODULES

if __name__ == "__main__":
    settings = resolve_services(get_settings())
    configure_logging(settings.log_level, json=settings.log_json)
    asyncio.run(run_workers(Services(settings, MODULES)))
