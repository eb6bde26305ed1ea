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
import functools
import logging
import re
import sys
import time
import traceback
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any

import stamina.instrumentation
import structlog

from app.core.scrub import MASK, exception_message, scrub_text

_SECRET_PARTS = re.compile(
    r"passw|passcode|secret|token|authori[sz]ation|cookie|session|credential|api[_-]?key"
    r"|(?<![a-z])t?otp(?![a-z])|(?<![a-z])sig(?![a-z])",
    re.I,
)
"""A field whose name contains one of these (any case, anywhere: ``current_password``,
``new_password``, ``refresh_token``, ``Set-Cookie``, ``saq_session``, ``X-Api-Key``; ``otp`` and
``sig`` as words of the name only: ``otp_code``, ``url_sig``, not ``footprint`` or ``signal``) is
masked, at any depth of the event (a mapping logged as a field is walked)."""
_NOT_SECRETS = frozenset(
    {"token_id", "token_fingerprint", "token_type", "sessions_ended", "sessions_revoked"}
)
"""Fields named like secrets that hold none, logged as they are: a token's fingerprint (the GitHub
client's ``token_id``), a token's kind, counts of sessions. Exact names: a new field named like a
secret is masked until it is listed here."""
_NESTING_MAX = 8
"""How deep a logged value is walked for secret keys; deeper, it is replaced by the mask whole."""

_REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_request_id(request_id: str) -> Token[str | None]:
    """Make ``request_id`` part of every event logged in the current context; returns the reset token."""
    return _REQUEST_ID.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def forget_request_id() -> None:
    """End a job's binding (``app.core.queues``: SAQ runs its hooks and jobs in one task, no token to
    reset to)."""
    _REQUEST_ID.set(None)


def current_request_id() -> str | None:
    """The id of the request being served in this context, or of the request that caused the job
    being run (both ``bind_request_id``); None outside both."""
    return _REQUEST_ID.get()


def _add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = _REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    return key not in _NOT_SECRETS and _SECRET_PARTS.search(key) is not None


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and _secret_key(key)


def _masked(value: Any, depth: int = 0) -> Any:
    """``value`` with what its mappings hold under secret keys masked and its strings scrubbed
    (``scrub_text``, as the event's own string fields are): a copy (the logged object is the
    caller's, never changed), lists and tuples walked too."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        if depth >= _NESTING_MAX:
            return MASK
        return {key: MASK if _is_secret(key) else _masked(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        if depth >= _NESTING_MAX:
            return MASK
        return [_masked(item, depth + 1) for item in value]
    return value


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: a secret passed to a log call by mistake is masked, never written: a
    field named like one (``_SECRET_PARTS``), at the top of the event or in a mapping it holds, and a
    secret-shaped string inside a mapping, list or tuple (``_scrub_strings`` does the top level's).
    """
    for key, value in event.items():
        if key in _OURS:
            continue
        if _is_secret(key):
            event[key] = MASK
        elif isinstance(value, Mapping | list | tuple):
            event[key] = _masked(value)
    return event


ERROR_MESSAGE_MAX_LENGTH = 300


def error_message(exc: BaseException, *urls: str | None) -> str:
    """What a log line may say about ``exc``: its message's first line, credentials masked (also the
    passwords of ``urls``, which a driver may quote alone), bounded (the type when it has no message)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return scrub_text(first, *urls)[:ERROR_MESSAGE_MAX_LENGTH]


class OncePerInterval:
    """Says when a recurring condition is due to be logged again: at most once per ``interval_s``
    for each key (an outage logs one line per interval, not one per request)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def due(self, key: str = "") -> bool:
        now = time.monotonic()
        if now - self._last.get(key, float("-inf")) >= self.interval_s:
            self._last[key] = now
            return True
        return False

    def admit(self, key: str = "") -> int | None:
        """``due``, counting what it holds back: None when not due (one more dropped), else how many
        were dropped since the last admitted (a line's ``repeated``)."""
        if not self.due(key):
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return None
        return self._dropped.pop(key, 0)


def _scrub_strings(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Every string field of an event (its message, a driver's error quoting a connection string, a
    URL, the traceback) with secrets masked (``app.core.scrub``); ``_drop_secrets`` did the nested ones."""
    for key, value in event.items():
        if isinstance(value, str) and key not in _OURS:
            event[key] = scrub_text(value)
    return event


_OURS = frozenset({"timestamp", "level", "logger", "request_id"})
"""Fields the pipeline itself writes: nothing to scrub."""


# --- SAQ's own log lines ------------------------------------------------------------------------

_SAQ_PER_JOB = ("Enqueuing ", "Processing ", "Retrying ", "Finished ", "Scheduled ")
_SAQ_UPKEEP_FAILED = "Upkeep task failed"
_RECORD_FIELDS = (
    "job_function",
    "job_key",
    "job_attempt",
    "error",
    "dependency",
    "setting",
    "cause",
    "repeated",
    "reason",
    "pool",
)
"""What the filters (``SaqLogFilter``, ``PoolLogFilter``, ``DiscardedConnectionLogFilter``) set on a
standard-library record, rendered."""
UPKEEP_WARN_INTERVAL_S = 60.0
"""A failing SAQ upkeep (its timers run every second or few, per queue) is logged once per interval."""
POOL_WARN_INTERVAL_S = 60.0
"""psycopg's "error connecting" warnings: one per this many seconds (``PoolLogFilter``)."""


def _valkey_error(error: BaseException) -> bool:
    """An error of the Valkey connection: every SAQ upkeep task (schedule, sweep, abort, stats) only
    talks to Valkey, through redis-py."""
    from redis.exceptions import RedisError

    return isinstance(error, RedisError | OSError | TimeoutError)


def _saq_job(value: Any) -> Any:
    from saq.job import Job

    return value if isinstance(value, Job) else None


def _describe_job(job: Any) -> str:
    """A job without its kwargs (display names, titles, file names) or its last error."""
    status = getattr(job.status, "name", str(job.status)).lower()
    return f"Job<function: {job.function}, key: {job.key}, attempt: {job.attempts}, status: {status}>"


class SaqLogFilter(logging.Filter):
    """Rewrites what SAQ logs (``saq.worker``, ``saq.queue``: all on the ``saq`` logger) so that:

    - no line carries a job's kwargs or its previous error. SAQ formats jobs with
      ``Job.info(logger.isEnabledFor(DEBUG))``, which lists the kwargs, result and error when DEBUG is
      on: ``configure_logging`` keeps the ``saq`` logger at INFO, so SAQ always builds the short form
      (function, queue, key, attempts, times). ``Job.__repr__`` (``Error processing job %s``) always
      lists them: each job argument becomes ``Job<function, key, attempt, status>``;
    - per-job chatter (``Enqueuing``, ``Processing``, ``Retrying``, ``Finished``, ``Scheduled``, all
      INFO in SAQ) is DEBUG;
    - ``Error processing job`` (``logger.exception`` on every failed attempt) becomes ``job_retrying``
      at WARNING without a traceback when the job will be tried again, and ``job_failed`` at ERROR
      with the exception's one traceback on the last attempt; both carry the function, key, attempt
      and error type. A failure of an outage (PostgreSQL or Valkey away) is a WARNING either way,
      without traceback, naming the dependency, once per interval per function and error type;
    - ``Upkeep task failed unexpectedly`` (``logger.exception`` from each worker's every timer tick:
      hundreds of tracebacks a minute while Valkey is away) becomes ``worker_upkeep_failed``, once per
      ``UPKEEP_WARN_INTERVAL_S`` per error type, the others dropped: a Valkey error at WARNING without
      traceback, naming ``VALKEY_URL`` and the error's first line (``cause``, credentials masked);
      anything else at ERROR with its traceback (a bug, not an outage);
    - what is then below the root logger's level is dropped (the ``saq`` logger's own level is
      pinned at INFO, so the root's decides, as for every other logger).
    """

    def __init__(self, upkeep_interval_s: float = UPKEEP_WARN_INTERVAL_S) -> None:
        super().__init__()
        self.upkeep_warnings = OncePerInterval(upkeep_interval_s)
        self.outage_warnings = OncePerInterval(upkeep_interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        jobs = [job for job in map(_saq_job, args) if job is not None]
        message = str(record.msg)
        if message.startswith(_SAQ_UPKEEP_FAILED):
            return self._upkeep_failure(record)
        if jobs and message.startswith("Error processing job"):
            if not self._failure(record, jobs[0]):
                return False
        else:
            if message.startswith(_SAQ_PER_JOB):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            if jobs:
                record.args = tuple(_describe_job(arg) if _saq_job(arg) is not None else arg for arg in args)
        return record.levelno >= logging.getLogger().getEffectiveLevel()

    def _upkeep_failure(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        error_type = type(error).__name__ if error is not None else "unknown"
        if not self.upkeep_warnings.due(error_type):
            return False
        record.msg, record.args = "worker_upkeep_failed", ()
        record.error = error_type
        if error is not None and _valkey_error(error):
            record.dependency, record.setting = "valkey", "VALKEY_URL"
            record.cause = error_message(error)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        else:
            record.levelno, record.levelname = logging.ERROR, "ERROR"
        return record.levelno >= logging.getLogger().getEffectiveLevel()

    def _failure(self, record: logging.LogRecord, job: Any) -> bool:
        """Rewrite a failed attempt's record; False to drop it (an outage's, already said)."""
        error = record.exc_info[1] if record.exc_info else None
        record.job_function = job.function
        record.job_key = job.key
        record.job_attempt = job.attempts
        record.error = type(error).__name__ if error is not None else None
        record.args = ()
        if error is not None and _job_outage(error):
            return self._outage_failure(record, job, error)
        if job.retryable:
            record.msg = "job_retrying"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
            if error is not None:  # the traceback goes: what went wrong stays
                record.cause = error_message(error)
        else:
            record.msg = "job_failed"
            record.levelno, record.levelname = logging.ERROR, "ERROR"
        return True

    def _outage_failure(self, record: logging.LogRecord, job: Any, error: BaseException) -> bool:
        """A job failing because PostgreSQL or Valkey is away is not a bug: a warning without its
        traceback, naming the dependency and its setting. A retry is said once per interval for each
        function and error type, with how many were dropped since (``repeated``): a 50 s PostgreSQL
        pause wrote 18 warnings a minute per worker, none saying which dependency failed. A job's last
        failure is always said (it will not run again); a cron's, whose next run comes on schedule,
        once per interval apart from its retries (a cron every 10 s not retried said each run of an
        outage, and a daily purge's last failure must not hide behind its first retry's line)."""
        from app.core.errors import database_down

        if job.retryable:
            throttle: str | None = f"{job.function}:{type(error).__name__}"
        elif str(job.key).startswith(CRON_KEY_PREFIX):
            throttle = f"last:{job.function}:{type(error).__name__}"
        else:
            throttle = None
        if throttle is not None:
            repeated = self.outage_warnings.admit(throttle)
            if repeated is None:
                return False
            record.repeated = repeated
        else:
            record.repeated = 0
        record.msg = "job_retrying" if job.retryable else "job_failed"
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        record.cause = error_message(error)
        record.dependency, record.setting = (
            ("postgresql", "DATABASE_URL") if database_down(error) else ("valkey", "VALKEY_URL")
        )
        return True


def _job_outage(error: BaseException) -> bool:
    """A job's failure that says PostgreSQL or Valkey is unreachable: a driver's, never a bare
    ``OSError`` or ``TimeoutError`` (a job past its time limit, a full disk) which ``_valkey_error``
    takes for Valkey's on the upkeep path, where every call is to Valkey."""
    from redis.exceptions import RedisError
    from valkey.exceptions import ConnectionError as ValkeyConnectionError
    from valkey.exceptions import TimeoutError as ValkeyTimeoutError

    from app.core.errors import database_down

    return database_down(error) or isinstance(error, RedisError | ValkeyConnectionError | ValkeyTimeoutError)


CRON_KEY_PREFIX = "cron:"
"""The key SAQ gives the runs of a cron (``Worker.schedule``: one run queued at a time)."""

_SAQ_FILTER = SaqLogFilter()


class PoolLogFilter(logging.Filter):
    """psycopg's pool logs a warning at every failed attempt to connect (about one a second while
    PostgreSQL is away: 75 lines in a 70 s outage). The first of each ``interval_s`` is kept, with
    how many were dropped before it (``repeated``), as one event, ``database_pool_connect_failed``,
    naming the dependency and its setting with the cause (credentials masked) apart, as the jobs'
    outage lines do: the pool's own text held the cause, so no two lines had one event to group by.
    The pool's line that it gives up a chain of attempts ("reconnection attempt ... failed") is
    dropped: the pools give their chains up after ``reconnect_timeout_s`` (seconds) and start new
    ones, and the failed attempts' line says the outage goes on. Every other line of the pool passes
    as it is. (The line that says PostgreSQL is back is the app pool's own:
    ``app.core.pool.FailFastPool``.)"""

    def __init__(self, interval_s: float = POOL_WARN_INTERVAL_S) -> None:
        super().__init__()
        self.warnings = OncePerInterval(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if text.startswith("reconnection attempt in pool"):
            return False  # a chain of attempts given up (``app.core.pool.reconnect_timeout_s``): routine
        if not text.startswith("error connecting"):
            return True
        pool = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        repeated = self.warnings.admit(pool)  # per pool: the app's and the sink's fail together
        if repeated is None:
            return False
        cause = record.getMessage().partition(": ")[2]
        record.pool = pool or None
        record.msg, record.args = "database_pool_connect_failed", ()
        record.dependency, record.setting = "postgresql", "DATABASE_URL"
        record.cause = scrub_text(cause)[:ERROR_MESSAGE_MAX_LENGTH]
        record.repeated = repeated
        return True


_POOL_FILTER = PoolLogFilter()


DISCARDED_CONNECTION_LINES = (
    "error ignored in rollback",
    "closing returned connection",
    "discarding closed connection",
    "discarding broken connection",
    "rollback failed",
    "error resetting connection",
    "query cancellation failed",
    "query not terminated after cancellation",
    "query cancellation interrupted",
)
"""How psycopg's warnings about one connection lost or given up on begin (``psycopg``,
``psycopg.transaction``, ``psycopg.pool``). Not "rolling back returned connection": the pool keeps
that connection, and the line says that our code gave one back inside a transaction (a bug, whose
every occurrence is worth its line)."""


class DiscardedConnectionLogFilter(logging.Filter):
    """psycopg warns about each connection it gives up on: a rollback that fails on a connection cut
    mid-statement (by the transaction and the connection, each), the pool closing it when it comes
    back. When PostgreSQL freezes, every request in flight is cut at its bound, and those are three
    lines of psycopg's text per request, while the request's own 503 is already logged with its
    cause, once a minute (``dependency_unavailable``). The first of each kind per ``interval_s`` is
    kept, as one event, ``database_connection_discarded``, with psycopg's text (``cause``) and how
    many were dropped before it (``repeated``); every other line of psycopg passes as it is."""

    def __init__(self, interval_s: float = POOL_WARN_INTERVAL_S) -> None:
        super().__init__()
        self.warnings = OncePerInterval(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        reason = next((line for line in DISCARDED_CONNECTION_LINES if text.startswith(line)), None)
        if reason is None:
            return True
        repeated = self.warnings.admit(reason)
        if repeated is None:
            return False
        cause = record.getMessage()
        record.msg, record.args = "database_connection_discarded", ()
        record.dependency, record.reason = "postgresql", reason
        record.cause = scrub_text(cause)[:ERROR_MESSAGE_MAX_LENGTH]
        record.repeated = repeated
        return True


_DISCARD_FILTER = DiscardedConnectionLogFilter()
_PSYCOPG_LOGGERS = ("psycopg", "psycopg.transaction", "psycopg.pool")
"""The loggers psycopg warns on (a filter applies to its own logger's records only)."""


_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    _add_request_id,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _drop_secrets,
]


def told_traceback(error: BaseException) -> str:
    """``error``'s traceback as ``traceback`` prints it, each exception of the chain told by its
    ``exception_message``: a database error's DETAIL line (a whole row: an e-mail, a password hash)
    is masked by no pattern of ``scrub_text``, and was written with every unexpected error."""
    text = "".join(traceback.format_exception(error)).rstrip("\n")
    pending: list[BaseException | None] = [error]
    seen: set[int] = set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        pending += [exc.__cause__, exc.__context__, *getattr(exc, "exceptions", ())]
        try:
            told, whole = exception_message(exc), str(exc)
        except Exception:  # an unprintable exception: ``traceback`` already said so
            told = whole = ""
        if told != whole and whole:
            text = text.replace(whole, told)
    return text


_format_exc_info = structlog.processors.ExceptionRenderer(lambda exc_info: told_traceback(exc_info[1]))


GRANIAN_LOG_CONFIG = Path(__file__).with_name("granian_logging.json")
"""granian's own log lines (a worker's unexpected exit, its start and stop) through ``build_formatter``
(``app.main.granian_formatter``): ``--log-config`` of the image's granian, and ``serve``'s. Its
default was plain text (``[ERROR] Unexpected exit from worker-2``) in a JSON log."""


def build_formatter(json: bool = True) -> logging.Formatter:
    """How every record is rendered: structlog's events and the standard library's (litestar,
    granian, saq: with the job fields ``SaqLogFilter`` sets), every string field with secrets masked."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(allow=_RECORD_FIELDS)],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _format_exc_info,
            _scrub_strings,
            renderer,
        ],
    )


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library (litestar, granian, saq) through one renderer.

    Also turns on ``faulthandler``: a process that dies in C (a driver's use-after-free was one) leaves
    every thread's Python stack on stderr instead of granian's bare "Unexpected exit from worker".
    """
    if not faulthandler.is_enabled():
        faulthandler.enable()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # first: a filtered-out event costs nothing more
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(build_formatter(json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    pool = logging.getLogger("psycopg.pool")
    if _POOL_FILTER not in pool.filters:
        pool.addFilter(_POOL_FILTER)
    for name in _PSYCOPG_LOGGERS:
        psycopg_logger = logging.getLogger(name)
        if _DISCARD_FILTER not in psycopg_logger.filters:
            psycopg_logger.addFilter(_DISCARD_FILTER)
    # stamina (the GitHub client's retries) logged each scheduled retry as a warning, two per failed
    # request, without the host or the error: the client counts them (github_retries_total) and its
    # caller logs the outcome once, with its cause.
    stamina.instrumentation.set_on_retry_hooks([])
    saq = logging.getLogger("saq")
    saq.setLevel(logging.INFO)  # never DEBUG: SAQ would format jobs with their kwargs (SaqLogFilter)
    if _SAQ_FILTER not in saq.filters:
        saq.addFilter(_SAQ_FILTER)
