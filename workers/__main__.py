"""The standalone worker process (``just worker``): every queue's worker plus the outbox relay."""

from __future__ import annotations

import asyncio
import signal

import structlog
from litestar_saq import SAQPlugin

from app.config import Settings, get_settings
from app.core.logging import configure_logging
from app.core.runtime import resolve_services
from workers.queues import build_saq_config

log = structlog.get_logger("workers")


async def run_workers(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop taking jobs and let running ones finish (grace period)."""
    configure_logging(settings.log_level, json=settings.log_json)
    assert settings.valkey_url
    plugin = SAQPlugin(build_saq_config(settings, settings.valkey_url, run_workers_in_process=True))
    workers = list(plugin.get_workers().values())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    for worker in workers:
        worker.SIGNALS = []  # signals are handled here, once for all queues
    tasks = [asyncio.create_task(worker.start(), name=f"worker-{worker.queue.name}") for worker in workers]
    log.info("workers_started", queues=[worker.queue.name for worker in workers])
    await stop.wait()
    log.info("workers_stopping", grace_s=settings.worker_shutdown_grace_s)
    await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("workers_stopped")


if __name__ == "__main__":
    asyncio.run(run_workers(resolve_services(get_settings())))
