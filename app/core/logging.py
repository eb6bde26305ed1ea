"""Structured logs: one JSON object per line, with the request id bound by the middleware."""

from __future__ import annotations

import logging
import sys

import structlog

_SECRET_KEYS = frozenset(
    {"password", "secret_key", "token", "access_token", "refresh_token", "authorization"}
)


def _drop_secrets(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
    """Last line of defence: a secret passed to a log call by mistake is masked, never written."""
    for key in _SECRET_KEYS.intersection(event):
        event[key] = "***"
    return event


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library (litestar, granian, saq) through one renderer."""
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
