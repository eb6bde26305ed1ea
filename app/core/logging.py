"""Structured logs: one JSON object per line, with the request id of the request being served.

Two things keep a log call that is filtered out nearly free (the access log runs on every request):
``structlog.stdlib.filter_by_level`` is the first processor, so an event below its logger's level is
dropped before any other processor (time stamp, context merge, rendering) runs; and the hot path
checks ``isEnabledFor`` before it even builds the event's fields.

The request id travels in one ``ContextVar`` set by the request pipeline (``bind_request_id``) and
is added to every event logged while the request is served; ``structlog.contextvars`` stays
available for other context (it is merged too).
"""

from __future__ import annotations

import faulthandler
import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from typing import Any

import structlog

_SECRET_KEYS = frozenset(
    {"password", "secret_key", "token", "access_token", "refresh_token", "authorization"}
)

_REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_request_id(request_id: str) -> Token[str | None]:
    """Make ``request_id`` part of every event logged in the current context; returns the reset token."""
    return _REQUEST_ID.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def _add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = _REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: a secret passed to a log call by mistake is masked, never written."""
    for key in _SECRET_KEYS.intersection(event):
        event[key] = "***"
    return event


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library (litestar, granian, saq) through one renderer.

    Also turns on ``faulthandler``: a process that dies in C (a driver's use-after-free was one) leaves
    every thread's Python stack on stderr instead of granian's bare "Unexpected exit from worker".
    """
    if not faulthandler.is_enabled():
        faulthandler.enable()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # first: a filtered-out event costs nothing more
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
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
