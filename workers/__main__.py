"""The standalone worker process (``just worker``): every queue's worker plus the outbox relay."""

from __future__ import annotations

import asyncio

from app.cli import exit_scrubbed
from app.config import SettingsError, get_settings
from app.core.logging import configure_logging
from app.core.queues import run_workers
from app.core.runtime import resolve_services
from app.core.services import Services
from app.modules import MODULES

if __name__ == "__main__":
    try:
        configured = get_settings()
    except SettingsError as exc:  # its message names the setting, never its value
        raise SystemExit(f"configuration error: {exc}") from None
    with exit_scrubbed(configured.database_url, configured.valkey_url):
        settings = resolve_services(configured)
        configure_logging(settings.log_level, json=settings.log_json)
        asyncio.run(run_workers(Services(settings, MODULES)))
